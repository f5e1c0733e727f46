"""Volumes, in one place: a 3D query segmented slice by slice, with a 2D support set (a prompt applied to
every slice) or with 3D support volumes (position-matched: each query slice gets the support slices at the
same relative depth). ``Segmenter.predict_volume`` is the door; the service, the CLI and the batch use it.

Letters: D slices along the slicing axis, H x W a slice, S support items, K labels, N the network side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from data.errors import InputError
from data.preprocess import normalize
from model import volume_plan as plan
from model import volume_run
from model.support import PreparedSupport, check_support_counts, label_set, merge_labels
from model.volume_plan import VolumeOptions
from model.volume_run import VolumeResult, run_volume

if TYPE_CHECKING:
    from model.segmenter import Segmenter

ProgressFn = Callable[[int, int], None]
SLICE_CHUNK = 32  # slices per predict_many call against a 2D support set: bounds memory, lets progress cancel
MIN_AREA_2D = 0.01  # 2D support over a volume: a label covering less of a slice is cleared (bench_volume_2d)


@dataclass
class VolumeSupport:
    """3D support pairs prepared once for position matching.

    Attributes:
        images: S volumes (D_i, H_i, W_i) float32 in [0, 1], each normalised as a whole, slicing axis first.
        masks: S label maps (D_i, H_i, W_i) int64.
        present: per item and label, the indices of the slices that hold the label.
        labels: the K label values, ascending.
        axis: the slicing axis of the original (H, W, D) volumes.
        cache: support slices and masks at the network's size, prepared once and shared by every query slice.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    present: list[list[np.ndarray]]
    labels: tuple[int, ...]
    axis: int
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """S, the number of support volumes."""
        return len(self.images)


def check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}", field="axis")


def prepare_volume_support(
    segmenter: Segmenter, support_volumes: Sequence[np.ndarray], support_masks: Sequence[np.ndarray], axis: int = 2
) -> VolumeSupport:
    """Check, normalise and index 3D support pairs once (see ``Segmenter.prepare_volume_support``)."""
    check_axis(axis)
    support_volumes = [] if support_volumes is None else support_volumes
    support_masks = [] if support_masks is None else support_masks
    check_support_counts(len(support_volumes), len(support_masks), segmenter.max_support)
    images, masks = [], []
    for i, (v, m) in enumerate(zip(support_volumes, support_masks)):
        v, m = np.asarray(v), np.asarray(m)
        if v.ndim != 3 or v.shape != m.shape:
            raise InputError(f"support volume {i} and its mask must be 3D and the same shape", field="support_masks")
        # the whole volume is normalised together so that slices keep their relative intensities
        images.append(_normalize_volume(np.moveaxis(v, axis, 0), segmenter.clip_percentiles, f"support_images[{i}]"))
        masks.append(np.moveaxis(m, axis, 0).astype(np.int64))  # (D_i, H_i, W_i)
    labels = label_set(masks, segmenter.max_labels)
    present = [[np.flatnonzero((m == lab).any(axis=(1, 2))) for lab in labels] for m in masks]
    return VolumeSupport(images, masks, present, labels, axis)


def predict_with_2d_support(segmenter: Segmenter, volume: np.ndarray, support: PreparedSupport,
                            options: VolumeOptions, progress: ProgressFn | None = None,
                            want_probs: bool = False, min_area: float | None = None,
                            want_spread: bool = False) -> VolumeResult:
    """Every slice along ``axis`` segmented with one 2D support set, in calls sized to ~PROGRESS_EVERY_S.

    With ``options.support_positions`` (each pair's relative depth), a label runs only on the query slices
    within ``options.skip_margin`` of the span of the positions of the pairs holding it; a slice where no label
    runs is skipped (background, not run). Without positions every slice runs. Then a label whose predicted
    area on a slice is below ``min_area`` (a fraction of the slice; None: ``MIN_AREA_2D``) is cleared there:
    the same support on a slice without the structure otherwise labels a few faint blobs. ``want_spread``
    (ensemble > 1): also the members' std, 0 wherever the probabilities were cleared or not run.
    """
    if not 0.0 <= options.threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {options.threshold}", field="threshold")
    min_area = MIN_AREA_2D if min_area is None else min_area
    slices = np.moveaxis(volume, options.axis, 0)  # (D, H, W)
    depth = slices.shape[0]
    run = _position_runs(support, options, depth)  # (K, D)
    todo = np.flatnonzero(run.any(axis=0))  # the slices that run for some label
    skipped = [int(i) for i in np.flatnonzero(~run.any(axis=0))]
    out_probs = np.zeros((len(support.labels), *slices.shape), dtype=np.float32)  # (K, D, H, W)
    want_spread = want_spread and options.ensemble > 1
    out_spread = np.zeros_like(out_probs) if want_spread else None  # (K, D, H, W)
    if progress is not None:
        progress(len(skipped), depth)
    first, step = 0, 1  # the first call is one slice: it times the model, then calls last ~PROGRESS_EVERY_S
    while first < todo.size:
        chunk = todo[first:first + step]
        inner = None
        if progress is not None:
            def inner(done, _total, first=first):
                progress(len(skipped) + first + done, depth)
        began = time.perf_counter()
        probs = segmenter.predict_many(list(slices[chunk]), support, ensemble=options.ensemble,
                                       progress=inner, spread=want_spread)  # (K, H, W) each, or (probs, std) pairs
        if want_spread:
            probs, std = zip(*probs)
            if std[0] is None:  # one member (a support of one item): no spread anywhere
                want_spread, out_spread = False, None
            else:
                out_spread[:, chunk] = np.stack(std, axis=1)
        out_probs[:, chunk] = np.stack(probs, axis=1)
        per_slice = (time.perf_counter() - began) / len(chunk)
        first += len(chunk)
        step = int(np.clip(volume_run.PROGRESS_EVERY_S / max(per_slice, 1e-6), 1, SLICE_CHUNK))
    out_probs[~run] = 0.0  # a label outside its pairs' positions, on a slice another label ran
    area = (out_probs >= options.threshold).mean(axis=(2, 3))  # (K, D)
    out_probs[area < min_area] = 0.0
    if out_spread is not None:
        out_spread[~run | (area < min_area)] = 0.0
    mask = merge_labels(out_probs, support.labels, options.threshold)
    mask[skipped] = 0  # background even at threshold 0
    probs = np.moveaxis(out_probs, 1, options.axis + 1) if want_probs else None
    spread = None if out_spread is None else np.moveaxis(out_spread, 1, options.axis + 1)
    positions = None if options.support_positions is None else [float(p) for p in options.support_positions]
    return VolumeResult(np.moveaxis(mask, 0, options.axis), support.labels, skipped, depth, probs,
                        int(todo.size) * len(support.labels),
                        {"support_slices": None, "skip_margin": options.skip_margin if positions else None,
                         "cascade": False, "support_positions": positions}, spread)


def _position_runs(support: PreparedSupport, options: VolumeOptions, depth: int) -> np.ndarray:
    """(K, D) bool: which query slices run for which label, from the 2D pairs' positions (all without)."""
    if options.support_positions is None:
        return np.ones((len(support.labels), depth), dtype=bool)
    options.check_positions()
    if len(options.support_positions) != support.size:
        raise InputError(f"support_positions has {len(options.support_positions)} values for {support.size} support "
                         "pairs; give one relative depth (0-1) per pair, in their order", field="support_positions")
    holds = (support.masks.flatten(2) > 0).any(dim=2).tolist()  # (K, S): pair s holds label k
    ranges = plan.position_ranges(tuple(float(p) for p in options.support_positions), holds)
    return plan.runs(depth, ranges, options.skip_margin)


def predict_with_volumes(segmenter: Segmenter, volume: np.ndarray, support: VolumeSupport,
                         options: VolumeOptions, progress: ProgressFn | None = None,
                         want_probs: bool = False, want_spread: bool = False) -> VolumeResult:
    """Position-matched, at the cost ``options`` set (``model.volume_plan``, ``model.volume_run``): each
    (query slice, label) task gets ``support_slices`` support slices in all, nearest its relative depth and
    spread over the volumes; slices far outside every volume's labelled range are skipped (background).
    ``want_spread`` (ensemble > 1): also the members' std, 0 on what did not run."""
    options.check(segmenter.max_support)
    if support.axis != options.axis:
        raise InputError(f"the support volumes were prepared for axis {support.axis}, not {options.axis}",
                         field="axis")
    query = _normalize_volume(np.moveaxis(volume, support.axis, 0), segmenter.clip_percentiles)  # (D, H, W)
    result = run_volume(segmenter, query, support, options, progress, want_probs, want_spread)
    result.mask = np.moveaxis(result.mask, 0, support.axis)
    if result.probs is not None:
        result.probs = np.moveaxis(result.probs, 1, support.axis + 1)  # (K, H, W, D) for axis 2
    if result.spread is not None:
        result.spread = np.moveaxis(result.spread, 1, support.axis + 1)
    return result


def _normalize_volume(volume: np.ndarray, clip_percentiles, field: str = "query") -> np.ndarray:
    volume = volume.astype(np.float32)
    if not np.isfinite(volume).all():
        raise InputError(f"{field} has NaN or infinite voxels; replace them before segmenting", field=field)
    return normalize(volume, clip_percentiles)
