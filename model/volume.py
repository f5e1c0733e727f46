"""Volumes, in one place: a 3D query segmented slice by slice, with a 2D support set (a prompt applied to
every slice) or with 3D support volumes (position-matched: each query slice gets the support slices at the
same relative depth). ``Segmenter.predict_volume`` is the door; the service, the CLI and the batch use it.

Letters: D slices along the slicing axis, H x W a slice, S support items, K labels, N the network side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from data.errors import InputError
from data.preprocess import normalize, prepare_mask, resize
from model.support import PreparedSupport, check_support_counts, label_set, merge_labels

if TYPE_CHECKING:
    from model.segmenter import Segmenter

ProgressFn = Callable[[int, int], None]
SLICE_CHUNK = 32  # slices per predict_many call against a 2D support set: bounds memory, lets progress cancel


@dataclass
class VolumeSupport:
    """3D support pairs prepared once for position matching.

    Attributes:
        images: S volumes (D_i, H_i, W_i) float32 in [0, 1], each normalised as a whole, slicing axis first.
        masks: S label maps (D_i, H_i, W_i) int64.
        present: per item and label, the indices of the slices that hold the label.
        labels: the K label values, ascending.
        axis: the slicing axis of the original (H, W, D) volumes.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    present: list[list[np.ndarray]]
    labels: tuple[int, ...]
    axis: int

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


def predict_with_2d_support(segmenter: Segmenter, volume: np.ndarray, support: PreparedSupport, axis: int,
                            ensemble: int, threshold: float, progress: ProgressFn | None) -> np.ndarray:
    """Every slice along ``axis`` segmented with one 2D support set, SLICE_CHUNK slices per call."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}", field="threshold")
    slices = np.moveaxis(volume, axis, 0)  # (D, H, W)
    depth = slices.shape[0]
    out = np.zeros(slices.shape, dtype=np.uint8 if max(support.labels) <= 255 else np.uint16)
    for first in range(0, depth, SLICE_CHUNK):
        chunk = list(slices[first:first + SLICE_CHUNK])
        inner = None
        if progress is not None:
            def inner(done, _total, first=first):
                progress(first + done, depth)
        probs = segmenter.predict_many(chunk, support, ensemble=ensemble, progress=inner)  # per slice (K, H, W)
        out[first:first + len(chunk)] = merge_labels(np.stack(probs, axis=1), support.labels, threshold)
    return np.moveaxis(out, 0, axis)


def predict_with_volumes(segmenter: Segmenter, volume: np.ndarray, support: VolumeSupport, axis: int,
                         slices_per_volume: int | None, ensemble: int, threshold: float,
                         progress: ProgressFn | None) -> np.ndarray:
    """Position-matched: for the query slice at relative depth p, each support volume gives the
    ``slices_per_volume`` slices nearest to p that hold the label (per label)."""
    if support.axis != axis:
        raise InputError(f"the support volumes were prepared for axis {support.axis}, not {axis}", field="axis")
    n_items = support.size
    per_volume = slices_per_volume or max(1, segmenter.max_support // n_items)
    if per_volume * n_items > segmenter.max_support:
        raise InputError(f"{per_volume * n_items} support slices exceed {segmenter.max_support}",
                         field="slices_per_volume")
    query = _normalize_volume(np.moveaxis(volume, support.axis, 0), segmenter.clip_percentiles)  # (D, H, W)
    depth, n_labels, size = query.shape[0], len(support.labels), segmenter.size
    out_probs = np.zeros((n_labels, *query.shape), dtype=np.float32)  # (K, D, H, W)
    batch = max(1, segmenter.max_batch_items // (per_volume * n_items * n_labels * ensemble))
    for start in range(0, depth, batch):
        idx = range(start, min(depth, start + batch))
        q = torch.stack([resize(torch.from_numpy(query[i]), (size, size)) for i in idx])  # (B, N, N)
        # one single-label support set per (slice, label): B * K binary tasks
        supports = [s for i in idx for s in _matched(support, i / max(1, depth - 1), per_volume, size)]
        probs = segmenter.predict_prepared(q.repeat_interleave(n_labels, dim=0), supports, ensemble)  # (B*K, 1, N, N)
        probs = probs[:, 0].unflatten(0, (len(idx), n_labels))  # (B, K, N, N)
        for j, i in enumerate(idx):
            # clamp, not clamp_: at the network's own size resize returns the inference tensor itself
            out_probs[:, i] = resize(probs[j], query.shape[1:]).clamp(0, 1).numpy()
        if progress is not None:
            progress(idx[-1] + 1, depth)
    return np.moveaxis(merge_labels(out_probs, support.labels, threshold), 0, support.axis)


def _matched(support: VolumeSupport, pos: float, per_volume: int, size: int) -> list[PreparedSupport]:
    """One PreparedSupport per label: the slices nearest to relative position ``pos`` holding the label."""
    out = []
    for li, lab in enumerate(support.labels):
        images, masks = [], []
        for v, m, present in zip(support.images, support.masks, support.present):
            candidates = present[li]
            if candidates.size == 0:
                continue
            target = pos * (v.shape[0] - 1)
            chosen = candidates[np.argsort(np.abs(candidates - target), kind="stable")[:per_volume]]
            for c in chosen:
                images.append(resize(torch.from_numpy(v[c]), (size, size)))
                masks.append(prepare_mask(m[c], [lab], size)[0])
        out.append(PreparedSupport(torch.stack(images), torch.stack(masks)[None], (lab,)))  # (S', N, N), (1, S', N, N)
    return out


def _normalize_volume(volume: np.ndarray, clip_percentiles, field: str = "query") -> np.ndarray:
    volume = volume.astype(np.float32)
    if not np.isfinite(volume).all():
        raise InputError(f"{field} has NaN or infinite voxels; replace them before segmenting", field=field)
    return normalize(volume, clip_percentiles)
