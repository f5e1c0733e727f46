"""The numpy door into inference: any image size, RGB, label-map masks, 3D volumes slice by slice.

Letters: K labels, S support items, N the network side, H x W the query's size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.preprocess import check_mask, label_values, normalize, prepare_image, prepare_mask, resize, to_gray
from model.errors import InputError
from model.network import UniverSegNet
from model.weights import load_model

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass
class PreparedSupport:
    """A support set after normalisation and resizing: what a stored prompt keeps.

    Attributes:
        images: (S, N, N) float32 in [0, 1].
        masks: (K, S, N, N) float32 in [0, 1], one soft binary mask per label.
        labels: the K label values, ascending.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"images": self.images.numpy(), "masks": self.masks.numpy(), "labels": np.array(self.labels)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PreparedSupport:
        return cls(
            torch.from_numpy(np.asarray(arrays["images"], dtype=np.float32)),
            torch.from_numpy(np.asarray(arrays["masks"], dtype=np.float32)),
            tuple(int(v) for v in arrays["labels"]),
        )


class Segmenter:
    """In-context segmentation of numpy images with a loaded network.

    Args:
        net: the network (eval mode).
        device: where to run it; defaults to the network's device.
        max_support: the largest support set accepted (defaults to the network config's).
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
    ):
        self.net = net.eval()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net.to(self.device)
        self.size = net.config.size
        self.max_support = max_support or net.config.max_support
        self.clip_percentiles = clip_percentiles
        self.max_batch_items = max_batch_items
        self.seed = seed

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "cpu", **kwargs) -> Segmenter:
        """Load local weights (None: the embedded default model) and wrap them."""
        return cls(load_model(path, device=device), **kwargs)

    # -- support sets ------------------------------------------------------------------------------------

    def prepare_support(
        self, support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray]
    ) -> PreparedSupport:
        """Validate, normalise and resize a support set once.

        Args:
            support_images: S 2D images (H_i, W_i) or (H_i, W_i, 3), any dtype; sizes may differ.
            support_masks: S label maps (H_i, W_i), 0 background and 1..K structures.

        Raises:
            InputError: no items, count mismatch, size mismatch, bad values, too many items, no foreground.
        """
        if support_images is None or support_masks is None or len(support_images) == 0:
            raise InputError("the support set is empty: give at least one image/mask pair", field="support_images")
        if len(support_images) != len(support_masks):
            raise InputError(
                f"{len(support_images)} support images but {len(support_masks)} support masks; pair them one to one",
                field="support_masks",
            )
        if len(support_images) > self.max_support:
            raise InputError(
                f"{len(support_images)} support items exceed the maximum of {self.max_support}; send fewer",
                field="support_images",
            )
        grays, masks = [], []
        for i, (image, mask) in enumerate(zip(support_images, support_masks)):
            gray = to_gray(image, field=f"support_images[{i}]")
            masks.append(check_mask(mask, gray.shape, field=f"support_masks[{i}]"))
            grays.append(gray)
        labels = sorted(set().union(*(label_values(m) for m in masks)))
        if not labels:
            raise InputError(
                "no support mask has any foreground: label the structure (values 1..K)", field="support_masks"
            )
        images = torch.stack([prepare_image(g, self.size, "support_images", self.clip_percentiles) for g in grays])
        per_item = torch.stack([prepare_mask(m, labels, self.size) for m in masks])  # (S, K, N, N)
        return PreparedSupport(images, per_item.transpose(0, 1).contiguous(), tuple(labels))

    # -- 2D ----------------------------------------------------------------------------------------------

    def predict_proba(
        self,
        query: np.ndarray,
        support_images: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        *,
        support: PreparedSupport | None = None,
        ensemble: int = 1,
    ) -> np.ndarray:
        """Probabilities per label at the query's size.

        Args:
            query: (H, W) or (H, W, 3) of any dtype.
            support_images, support_masks: the support set (see ``prepare_support``), or
            support: an already prepared support set (a stored prompt).
            ensemble: average over this many random subsets of the support set.

        Returns:
            (K, H, W) float32 in [0, 1], in the order of ``support.labels`` (ascending label values).
        """
        support = support or self.prepare_support(support_images, support_masks)
        return self._predict_batch([query], support, ensemble)[0]

    def predict(
        self,
        query: np.ndarray,
        support_images: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        *,
        support: PreparedSupport | None = None,
        ensemble: int = 1,
        threshold: float = 0.5,
    ) -> np.ndarray:
        """A label map at the query's size with the support set's label values.

        Returns:
            (H, W) uint8 (uint16 when a label exceeds 255); 0 where no label reaches ``threshold``.
        """
        support = support or self.prepare_support(support_images, support_masks)
        probs = self.predict_proba(query, support=support, ensemble=ensemble)
        return merge_labels(probs, support.labels, threshold)

    def predict_many(
        self,
        queries: Sequence[np.ndarray],
        support: PreparedSupport,
        *,
        ensemble: int = 1,
        progress: ProgressFn | None = None,
    ) -> list[np.ndarray]:
        """(K, H_i, W_i) probabilities for several queries sharing one support set, batched."""
        return self._predict_batch(list(queries), support, ensemble, progress)

    def _subsets(self, n: int, ensemble: int) -> list[torch.Tensor]:
        if ensemble < 1:
            raise InputError("ensemble must be at least 1", field="ensemble")
        if ensemble == 1 or n == 1:
            return [torch.arange(n)]
        gen = torch.Generator().manual_seed(self.seed)
        k = max(1, math.ceil(0.75 * n))
        return [torch.randperm(n, generator=gen)[:k].sort().values for _ in range(ensemble)]

    def _predict_batch(
        self, queries: list[np.ndarray], support: PreparedSupport, ensemble: int, progress: ProgressFn | None = None
    ) -> list[np.ndarray]:
        shapes, prepared = [], []
        for i, q in enumerate(queries):
            gray = to_gray(q, field="query" if len(queries) == 1 else f"query[{i}]")
            shapes.append(gray.shape)
            prepared.append(prepare_image(gray, self.size, "query", self.clip_percentiles))
        probs = self._run(torch.stack(prepared), [support] * len(prepared), ensemble, progress)  # (Q, K, N, N)
        # clamp, not clamp_: at the network's own size resize returns the inference tensor itself, which
        # cannot be changed in place outside inference mode
        return [resize(p, s).clamp(0, 1).numpy() for p, s in zip(probs, shapes)]

    @torch.inference_mode()
    def _run(
        self, queries: torch.Tensor, supports: list[PreparedSupport], ensemble: int, progress: ProgressFn | None = None
    ) -> torch.Tensor:
        """(Q, N, N) queries, one prepared support per query -> (Q, K, N, N) probabilities.

        Every (query, label, ensemble member) is one binary task; tasks are stacked into batches whose
        queries x support items stay under ``max_batch_items``.
        """
        tasks = []  # (query index, label index, support images (S', N, N), support masks (S', N, N))
        for qi, sup in enumerate(supports):
            for subset in self._subsets(sup.size, ensemble):
                for li in range(len(sup.labels)):
                    tasks.append((qi, li, sup.images[subset], sup.masks[li][subset]))
        n_labels = len(supports[0].labels)
        out = torch.zeros(len(supports), n_labels, self.size, self.size)
        counts = torch.zeros(len(supports), n_labels, 1, 1)
        done_queries = 0
        start = 0
        while start < len(tasks):
            s = tasks[start][2].shape[0]
            stop = start + 1
            while stop < len(tasks) and (stop - start + 1) * s <= self.max_batch_items and tasks[stop][2].shape[0] == s:
                stop += 1
            chunk = tasks[start:stop]
            q = queries[[t[0] for t in chunk]].unsqueeze(1).to(self.device)  # (B, 1, N, N)
            si = torch.stack([t[2] for t in chunk]).unsqueeze(2).to(self.device)  # (B, S, 1, N, N)
            sm = torch.stack([t[3] for t in chunk]).unsqueeze(2).to(self.device)
            p = torch.sigmoid(self.net(q, si, sm).float()).cpu()[:, 0]  # (B, N, N)
            for (qi, li, _, _), pi in zip(chunk, p):
                out[qi, li] += pi
                counts[qi, li] += 1
            start = stop
            if progress is not None:
                # tasks are ordered by query: every query before the next pending task is complete
                now = tasks[stop][0] if stop < len(tasks) else len(supports)
                if now > done_queries:
                    done_queries = now
                    progress(done_queries, len(supports))
        return out / counts.clamp_min(1)

    # -- 3D ----------------------------------------------------------------------------------------------

    def predict_volume(
        self,
        query_volume: np.ndarray,
        support_volumes: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        *,
        axis: int = 2,
        slices_per_volume: int | None = None,
        ensemble: int = 1,
        threshold: float = 0.5,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Segment a 3D volume slice by slice with position-matched support slices.

        For each query slice at relative position p along ``axis``, each support volume gives the
        ``slices_per_volume`` slices nearest to p that contain the label (per label).

        Args:
            query_volume: (X, Y, Z) any dtype.
            support_volumes, support_masks: lists of 3D volumes and label maps, each pair the same shape.
            axis: the slicing axis (0, 1 or 2; 2 is axial for RAS NIfTI).
            slices_per_volume: support slices drawn per volume and label; default fills ``max_support``.
            progress: called with (slices done, total slices).

        Returns:
            Label map with the query volume's shape (uint8, or uint16 for labels above 255).
        """
        query_volume = np.asarray(query_volume)
        if query_volume.ndim != 3:
            raise InputError(f"query_volume must be 3D, got shape {query_volume.shape}", field="query")
        if axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {axis}", field="axis")
        if not support_volumes or len(support_volumes) != len(support_masks):
            raise InputError("give as many support volumes as support masks (at least one)", field="support_masks")
        vols, masks = [], []
        for i, (v, m) in enumerate(zip(support_volumes, support_masks)):
            v, m = np.asarray(v), np.asarray(m)
            if v.ndim != 3 or v.shape != m.shape:
                raise InputError(
                    f"support volume {i} and its mask must be 3D and the same shape", field="support_masks"
                )
            vols.append(np.moveaxis(v, axis, 0))
            masks.append(np.moveaxis(m, axis, 0).astype(np.int64))
        labels = sorted(set().union(*(label_values(m) for m in masks)))
        if not labels:
            raise InputError("no support mask has any foreground", field="support_masks")
        per_volume = slices_per_volume or max(1, self.max_support // len(vols))
        if per_volume * len(vols) > self.max_support:
            raise InputError(
                f"{per_volume * len(vols)} support slices exceed {self.max_support}", field="slices_per_volume"
            )
        query = np.moveaxis(query_volume, axis, 0)
        depth = query.shape[0]
        # the whole volume is normalised together so that slices keep their relative intensities
        qnorm = _normalize_volume(query, self.clip_percentiles)
        snorm = [_normalize_volume(v, self.clip_percentiles, f"support_images[{i}]") for i, v in enumerate(vols)]
        present = [[np.flatnonzero((m == lab).any(axis=(1, 2))) for lab in labels] for m in masks]
        out_probs = np.zeros((len(labels), *query.shape), dtype=np.float32)
        batch = max(1, self.max_batch_items // (per_volume * len(vols) * len(labels) * ensemble))
        for start in range(0, depth, batch):
            idx = range(start, min(depth, start + batch))
            q = torch.stack([resize(torch.from_numpy(qnorm[i]), (self.size, self.size)) for i in idx])
            supports = [
                self._matched_support(i / max(1, depth - 1), snorm, masks, present, labels, per_volume) for i in idx
            ]
            probs = self._run_per_label(q, supports, ensemble)  # (b, K, N, N)
            for j, i in enumerate(idx):
                out_probs[:, i] = resize(probs[j], query.shape[1:]).clamp(0, 1).numpy()  # not in place: see above
            if progress is not None:
                progress(idx[-1] + 1, depth)
        mask = merge_labels(out_probs, tuple(labels), threshold)
        return np.moveaxis(mask, 0, axis)

    def _matched_support(self, pos, vols, masks, present, labels, per_volume) -> list[PreparedSupport]:
        """One PreparedSupport per label: the slices nearest to relative position ``pos`` holding the label."""
        out = []
        for li, lab in enumerate(labels):
            imgs, msks = [], []
            for v, m, pres in zip(vols, masks, present):
                candidates = pres[li]
                if candidates.size == 0:
                    continue
                target = pos * (v.shape[0] - 1)
                chosen = candidates[np.argsort(np.abs(candidates - target), kind="stable")[:per_volume]]
                for c in chosen:
                    imgs.append(resize(torch.from_numpy(v[c]), (self.size, self.size)))
                    msks.append(prepare_mask(m[c], [lab], self.size)[0])
            out.append(PreparedSupport(torch.stack(imgs), torch.stack(msks)[None], (lab,)))
        return out

    def _run_per_label(
        self, queries: torch.Tensor, supports: list[list[PreparedSupport]], ensemble: int
    ) -> torch.Tensor:
        n_labels = len(supports[0])
        flat_q = queries.repeat_interleave(n_labels, dim=0)
        flat_s = [sup for per_query in supports for sup in per_query]
        probs = self._run(flat_q, flat_s, ensemble)  # (b * K, 1, N, N)
        return probs[:, 0].unflatten(0, (len(supports), n_labels))


def _normalize_volume(volume: np.ndarray, clip_percentiles, field: str = "query") -> np.ndarray:
    volume = volume.astype(np.float32)
    if not np.isfinite(volume).all():
        raise InputError(f"{field} has NaN or infinite voxels; replace them before segmenting", field=field)
    return normalize(volume, clip_percentiles)


def merge_labels(probs: np.ndarray, labels: Sequence[int], threshold: float) -> np.ndarray:
    """(K, ...) probabilities -> label map: the most probable label where it reaches ``threshold``, else 0."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}", field="threshold")
    dtype = np.uint8 if max(labels) <= 255 else np.uint16
    best = probs.argmax(axis=0)
    values = np.asarray(labels, dtype=dtype)[best]
    return np.where(probs.max(axis=0) >= threshold, values, 0).astype(dtype)
