"""The numpy door into inference: any image size, RGB, label-map masks, 3D volumes slice by slice; and the
torch door, ``predict_torch``, for prepared tensors.

Letters: B queries, S support items, K labels, N the network side, H x W the query's size, D slices.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data.errors import InputError
from data.preprocess import prepare_gray, resize, to_gray
from model import cancel, volume_plan
from model import volume as volumes
from model.cancel import CHUNK_S, ShouldStop
from model.network import UniverSegNet, count_parameters
from model.support import MAX_POOL, PreparedSupport, check_at_once, merge_labels, prepare_support
from model.volume import VolumeSupport
from model.weights import load_model

__all__ = ["PreparedSupport", "Segmenter", "VolumeSupport", "merge_labels"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


class Segmenter:
    """In-context segmentation of numpy images with a loaded network.

    Args:
        net: the network (eval mode).
        device: where to run it; defaults to the network's device.
        max_support: the most support items the network takes at once (defaults to the network config's).
        max_pool: the most items a 2D support set may hold (default 512; ``model.retrieval`` picks per query).
        max_labels: the most distinct labels a support set may hold (None: no limit); each label is a pass.
        clip_percentiles: clip intensities to these percentiles before min-max (e.g. (0.5, 99.5) for CT/MR);
            None for plain min-max.
        max_batch_items: queries x support items per forward pass; bounds memory.
        seed: seeds the ensemble's subset draws, so results are reproducible.
    """

    def __init__(
        self,
        net: UniverSegNet,
        device: str | torch.device | None = None,
        max_support: int | None = None,
        clip_percentiles: tuple[float, float] | None = None,
        max_batch_items: int = 256,
        seed: int = 0,
        max_labels: int | None = None,
        max_pool: int | None = None,
    ):
        self.net = net.eval()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net.to(self.device)
        self.size = net.config.size
        self.max_support = max_support or net.config.max_support
        self.max_pool = max(max_pool or MAX_POOL, self.max_support)
        self.max_labels = max_labels
        self.clip_percentiles = clip_percentiles
        self.max_batch_items = max_batch_items
        self.seed = seed

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "cpu", **kwargs) -> Segmenter:
        """Load local weights (None: the embedded default model) and wrap them."""
        return cls(load_model(path, device=device), **kwargs)

    def info(self) -> dict:
        """What runs: model name, parameter count, weights (file name, source, licence), network shape,
        the support limit and the device. The service reports it without touching the network."""
        cfg = self.net.config
        weights = dict(getattr(self.net, "weights_info", {}))
        return {
            "model": cfg.name,
            "parameters": count_parameters(self.net),
            # the file name, not the directory layout of the machine
            "weights": {"file": Path(weights["path"]).name if weights.get("path") else None,
                        "source": weights.get("source"), "licence": weights.get("licence")},
            "network": {"size": cfg.size, "encoder_features": list(cfg.encoder_features),
                        "decoder_features": list(cfg.decoder_features)},
            "max_support": self.max_support,
            "device": str(self.device),
        }

    # -- support sets ------------------------------------------------------------------------------------

    def prepare_support(
        self, support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray]
    ) -> PreparedSupport:
        """Validate, normalise and resize a 2D support set once.

        Args:
            support_images: S 2D images (H_i, W_i) or (H_i, W_i, 3), any dtype; sizes may differ.
            support_masks: S label maps (H_i, W_i), 0 background and 1..K structures.

        Raises:
            InputError: no items, count mismatch, too many items or labels (each with its code); size
                mismatch, bad values, no foreground.
        """
        return prepare_support(support_images, support_masks, size=self.size, max_support=self.max_pool,
                               max_labels=self.max_labels, clip_percentiles=self.clip_percentiles)

    def prepare_volume_support(
        self, support_volumes: Sequence[np.ndarray], support_masks: Sequence[np.ndarray], axis: int = 2
    ) -> VolumeSupport:
        """Check, normalise and index 3D support pairs once, for ``predict_volume`` along ``axis``.

        Args:
            support_volumes: S volumes (H_i, W_i, D_i), any dtype.
            support_masks: S label maps, each the shape of its volume.
        """
        return volumes.prepare_volume_support(self, support_volumes, support_masks, axis)

    # -- 2D ----------------------------------------------------------------------------------------------

    def predict_proba(
        self,
        query: np.ndarray,
        support_images: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        *,
        support: PreparedSupport | None = None,
        ensemble: int = 1,
        flip: bool = False,
    ) -> np.ndarray:
        """Probabilities per label at the query's size.

        Args:
            query: (H, W) or (H, W, 3) of any dtype.
            support_images, support_masks: the support set (see ``prepare_support``), or
            support: an already prepared support set (a stored prompt).
            ensemble: average over this many random subsets of the support set.
            flip: average with the left-right mirrored task (test-time augmentation, twice the work).

        Returns:
            probs: (K, H, W) float32 in [0, 1], in the order of ``support.labels`` (ascending label values).
        """
        support = support or self.prepare_support(support_images, support_masks)
        return self.predict_many([query], support, ensemble=ensemble, flip=flip)[0]

    def predict(
        self,
        query: np.ndarray,
        support_images: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        *,
        support: PreparedSupport | None = None,
        ensemble: int = 1,
        flip: bool = False,
        threshold: float = 0.5,
    ) -> np.ndarray:
        """A label map at the query's size with the support set's label values.

        Returns:
            mask: (H, W) uint8 (uint16 when a label exceeds 255); 0 where no label reaches ``threshold``.
        """
        support = support or self.prepare_support(support_images, support_masks)
        probs = self.predict_proba(query, support=support, ensemble=ensemble, flip=flip)
        return merge_labels(probs, support.labels, threshold)

    def predict_many(
        self,
        queries: Sequence[np.ndarray],
        support: PreparedSupport,
        *,
        ensemble: int = 1,
        flip: bool = False,
        progress: ProgressFn | None = None,
        should_stop: ShouldStop | None = None,
        spread: bool = False,
    ) -> list:
        """Probabilities for several queries sharing one support set, batched.

        ``should_stop``: checked between forward passes (``model.cancel``); raises ``Cancelled`` when True.

        Returns:
            One (K, H_i, W_i) float32 array in [0, 1] per query (B in all); ``spread``: (probs, std) pairs.
        """
        check_at_once(support.size, self.max_support)  # a larger set is a pool: model.retrieval picks from it
        shapes, prepared = [], []
        for i, q in enumerate(queries):
            gray = to_gray(q, field="query" if len(queries) == 1 else f"query[{i}]")  # (H_i, W_i)
            shapes.append(gray.shape)
            prepared.append(prepare_gray(gray, self.size, self.clip_percentiles))
        probs, std = self.predict_prepared(torch.stack(prepared), [support] * len(prepared), ensemble, flip=flip,
                                           progress=progress, should_stop=should_stop, spread=True)
        # (B, K, N, N) -> per query (K, H_i, W_i); clamp, not clamp_: at the network's own size resize returns
        # the inference tensor itself, which cannot be changed in place outside inference mode
        out = [resize(p, s).clamp(0, 1).numpy() for p, s in zip(probs, shapes)]
        std = [None] * len(out) if std is None else [resize(d, s).clamp(0, 0.5).numpy() for d, s in zip(std, shapes)]
        return list(zip(out, std)) if spread else out

    def _subsets(self, n: int, ensemble: int) -> list[torch.Tensor]:
        if ensemble < 1:
            raise InputError("ensemble must be at least 1", field="ensemble")
        if ensemble == 1 or n == 1:
            return [torch.arange(n)]
        gen = torch.Generator().manual_seed(self.seed)
        k = max(1, math.ceil(0.75 * n))
        return [torch.randperm(n, generator=gen)[:k].sort().values for _ in range(ensemble)]

    @torch.inference_mode()
    def predict_prepared(
        self, queries: torch.Tensor, supports: list[PreparedSupport], ensemble: int = 1, flip: bool = False,
        progress: ProgressFn | None = None, should_stop: ShouldStop | None = None, spread: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Prepared queries, one prepared support per query -> probabilities at the network's size.

        Every (query, label, ensemble member) is one binary task; tasks are stacked into batches whose
        queries x support items stay under ``max_batch_items``.

        Args:
            queries: (B, N, N) float32 in [0, 1].
            supports: B prepared supports with the same K labels.
            progress: called with (queries done, B).
            flip: also run every task mirrored left-right (query and support set together) and average the
                mirrored-back probabilities with the plain ones (test-time augmentation; twice the work).
            should_stop: checked before every forward pass, with the enclosing ``model.cancel.stop_when``;
                passes are sized to last about ``CHUNK_S``, so that a caller that gives up frees the thread
                within about a second.

        Raises:
            Cancelled: ``should_stop`` said so between two passes.

        Returns:
            probs: (B, K, N, N) float32 in [0, 1], on the CPU; ``spread``: (probs, the members' std or None).
        """
        tasks = []  # (query index, label index, support images (S', N, N), support masks (S', N, N), mirrored)
        for qi, sup in enumerate(supports):
            for subset in self._subsets(sup.size, ensemble):
                for li in range(len(sup.labels)):
                    for mirrored in (False, True) if flip else (False,):
                        tasks.append((qi, li, sup.images[subset], sup.masks[li][subset], mirrored))
        n_labels = len(supports[0].labels)
        out = torch.zeros(len(supports), n_labels, self.size, self.size)
        counts = torch.zeros(len(supports), n_labels, 1, 1)
        squares = torch.zeros_like(out)  # the members' squares, summed: their std without keeping them
        done_queries = 0
        start = 0
        limit = self.max_batch_items  # query x support items per pass; shrunk to about CHUNK_S of work
        while start < len(tasks):
            cancel.check(should_stop)
            began = time.perf_counter()
            s, mirrored = tasks[start][2].shape[0], tasks[start][4]
            stop = start + 1
            while (stop < len(tasks) and (stop - start + 1) * s <= limit
                   and tasks[stop][2].shape[0] == s and tasks[stop][4] == mirrored):
                stop += 1
            chunk = tasks[start:stop]
            q = queries[[t[0] for t in chunk]].unsqueeze(1)  # (B', 1, N, N)
            si = torch.stack([t[2] for t in chunk]).unsqueeze(2)  # (B', S', 1, N, N)
            sm = torch.stack([t[3] for t in chunk]).unsqueeze(2)
            if mirrored:
                q, si, sm = q.flip(-1), si.flip(-1), sm.flip(-1)
            p = self.predict_torch(q, si, sm)[:, 0]  # (B', N, N)
            if mirrored:
                p = p.flip(-1)
            for (qi, li, _, _, _), pi in zip(chunk, p):
                out[qi, li] += pi
                counts[qi, li] += 1
                squares[qi, li] += pi * pi
            per_item = (time.perf_counter() - began) / (len(chunk) * s)
            limit = int(min(self.max_batch_items, max(s, CHUNK_S / max(per_item, 1e-9))))
            start = stop
            if progress is not None:
                # tasks are ordered by query: every query before the next pending task is complete
                now = tasks[stop][0] if stop < len(tasks) else len(supports)
                if now > done_queries:
                    done_queries = now
                    progress(done_queries, len(supports))
        mean = out / counts.clamp_min(1)
        if not spread:
            return mean
        many = counts.numel() and float(counts.max()) > 1  # members: subsets x mirrors; one member has no std
        return mean, (squares / counts.clamp_min(1) - mean * mean).clamp_min(0).sqrt() if many else None

    @torch.inference_mode()
    def predict_torch(
        self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> torch.Tensor:
        """The torch door: prepared tensors in, probabilities out (no resizing, no label handling).

        Args:
            query: (B, 1, N, N) float32 in [0, 1].
            support_images: (B, S, 1, N, N) float32 in [0, 1], or (1, S, 1, N, N) shared by all queries.
            support_masks: the same shape as support_images, {0, 1} (soft values allowed).

        Returns:
            probs: (B, 1, N, N) float32 in [0, 1], on the CPU: the sigmoid of the network's logits.
        """
        logits = self.net(query.to(self.device), support_images.to(self.device), support_masks.to(self.device))
        return torch.sigmoid(logits.float()).cpu()

    # -- 3D ----------------------------------------------------------------------------------------------

    def predict_volume(self, query_volume: np.ndarray, support_volumes: Sequence[np.ndarray] | None = None,
                       support_masks: Sequence[np.ndarray] | None = None, **kwargs) -> np.ndarray:
        """Segment a 3D volume slice by slice: the mask of ``predict_volume_result`` (same arguments).

        Returns:
            mask: the query volume's shape, uint8 (uint16 for labels above 255).
        """
        return self.predict_volume_result(query_volume, support_volumes, support_masks, **kwargs).mask

    def predict_volume_result(
        self,
        query_volume: np.ndarray,
        support_volumes: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        *,
        support: PreparedSupport | VolumeSupport | None = None,
        axis: int = 2,
        support_slices: int | None = None,
        skip_margin: float | None = volume_plan.DEFAULT_SKIP_MARGIN,
        cascade: bool = False,
        support_positions: Sequence[float] | None = None,
        ensemble: int = 1,
        threshold: float = 0.5,
        probs: bool = False,
        spread: bool = False,
        slices_per_volume: int | None = None,
        progress: ProgressFn | None = None,
    ) -> volumes.VolumeResult:
        """Segment a 3D volume slice by slice along ``axis``, at a cost set before it runs.

        With 3D support volumes, each (query slice, label) at relative depth p is one task with
        ``support_slices`` support slices in all: those nearest to p holding the label, spread over the
        volumes. Query slices more than ``skip_margin`` (relative depth) outside every volume's labelled range
        of a label are not run for it (background). With a 2D support set (a ``PreparedSupport``, e.g. a
        stored prompt), every slice is segmented with it.

        Args:
            query_volume: (H, W, D) any dtype.
            support_volumes, support_masks: 3D volumes and their label maps, each pair the same shape; or
            support: a ``VolumeSupport`` (``prepare_volume_support``) or a 2D ``PreparedSupport``.
            axis: the slicing axis (0, 1 or 2; 2 is axial for RAS NIfTI).
            support_slices: support slices per task, in all (None: 12, capped by ``max_support``).
            skip_margin: relative depth (0-1) beyond the labelled ranges that still runs; None: no skipping.
            cascade: confident neighbouring predictions join the support of the next slices, outward.
            support_positions: a 2D support set's relative depth (0-1) per pair; far slices skip (``model.volume``).
            probs: also return the (K, *query shape) probabilities; spread: their members' std (ensemble > 1).
            slices_per_volume: the earlier knob: support slices per volume (``support_slices`` = this x S).
            progress: called with (slices done, total slices), skipped slices counted as done; it may raise
                to cancel.

        Returns:
            A ``VolumeResult``: ``mask`` (the query's shape), ``skipped`` slices, ``probs`` and ``spread`` when asked.
        """
        query_volume = np.asarray(query_volume)
        if query_volume.ndim != 3:
            raise InputError(f"query_volume must be 3D, got shape {query_volume.shape}", field="query")
        volumes.check_axis(axis)
        if support is None:
            support = self.prepare_volume_support(support_volumes, support_masks, axis)
        if isinstance(support, VolumeSupport) and slices_per_volume is not None:
            support_slices = slices_per_volume * support.size
            if support_slices > self.max_support:
                raise InputError(f"{support_slices} support slices exceed {self.max_support}",
                                 field="slices_per_volume")
        options = volume_plan.VolumeOptions(support_slices=support_slices, ensemble=ensemble, axis=axis,
                                            skip_margin=skip_margin, cascade=cascade, threshold=threshold,
                                            support_positions=support_positions)
        run = volumes.predict_with_volumes if isinstance(support, VolumeSupport) else volumes.predict_with_2d_support
        return run(self, query_volume, support, options, progress, probs, want_spread=spread)


def predict_each(
    predict_many: Callable[[list], list], queries: list, retry_on: type[Exception] | tuple = InputError
) -> list:
    """One batched call for ``queries``; when it fails with ``retry_on``, each query alone, so that only a
    bad query fails (the micro-batcher, ``icseg batch``).

    Args:
        predict_many: queries -> one result per query (e.g. ``Segmenter.predict_many`` with a support bound).
        retry_on: the errors of the batched call that may come from one query; others are raised.

    Returns:
        One result, or the exception that query raised alone, per query.
    """
    try:
        return list(predict_many(queries))
    except retry_on as exc:
        if len(queries) == 1:
            return [exc]
        out = []
        for query in queries:
            try:
                out.append(predict_many([query])[0])
            except Exception as single:  # noqa: BLE001 - handed to that query's caller
                out.append(single)
        return out
