"""A query volume against 3D support volumes, at a cost chosen before it runs (``model.volume_plan``): every
(query slice, label) that runs is one binary task with its own support slices; tasks of several slices and
labels share each forward pass, whose size adapts so that progress moves every ``PROGRESS_EVERY_S`` seconds.

With ``cascade`` the tasks run in waves outward from the support's labelled range; a task takes, in place of
its farthest support slice, the already segmented neighbouring query slice with its predicted mask when that
prediction is confident, and a direction stops (background) after a slice without any foreground.

With ``want_spread`` and ``ensemble`` > 1 the members' std is kept beside their mean, per task, in every mode
(the cascade and coarse-to-fine too: the members run anyway); a task that did not run has std 0, as probs 0.

Letters: D slices, K labels, S support items, N the network side, H x W a slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from data.preprocess import prepare_mask, resize
from model import volume_plan as plan
from model.support import PreparedSupport, merge_labels

if TYPE_CHECKING:
    from model.segmenter import Segmenter
    from model.volume import VolumeSupport

ProgressFn = Callable[[int, int], None]
PROGRESS_EVERY_S = 2.0  # a forward pass is sized to take about this long, so progress never sits still
# ... but never to fewer support items (tasks x S) than this: a CPU pass of 16 items costs about as much as one
# of 32 and a task in a pass of 64 or more costs half of one alone (bench_volume.py; docs/performance.md)
MIN_PASS_ITEMS = 64
CONFIDENT = 0.7  # cascade: a neighbour joins the support when its foreground's mean probability reaches this
MIN_AREA = 0.002  # cascade: ... and its foreground covers at least this fraction of the slice
# coarse-to-fine: a gap between two coarse slices is refined when one of them holds foreground at this probability
# (None: the request's threshold) of its own label, or of any label when REFINE_ANY_LABEL (nested structures),
# covering at least REFINE_AREA times the label's median area on the support slices that hold it. Relative, so
# that a large structure's stray false-positive voxels (the scout at 4 slices makes them) refine nothing while a
# small structure still refines; 0: any foreground voxel (bench_volume.py; docs/performance.md)
REFINE_THRESHOLD: float | None = None
REFINE_AREA = 0.5
REFINE_ANY_LABEL = False
# coarse-to-fine: support slices of the coarse pass (None: the request's budget). With fewer than the budget, the
# coarse pass only finds where the structure is; the slices around it, the coarse ones that found it included, then
# run at the full budget, so the budget is spent where the mask is
COARSE_SUPPORT: int | None = 4


@dataclass
class VolumeResult:
    """What a volume request produced.

    Attributes:
        mask: the query's shape, uint8 (uint16 for labels above 255).
        labels: the K label values.
        skipped: slice indices along the axis that ran for no label (set to background).
        slices: D, the slices along the axis.
        probs: (K, *query shape) float32 in [0, 1] when asked for, else None.
        spread: (K, *query shape) float32 in [0, 0.5], the ensemble members' std, when asked for and more than
            one member ran (``ensemble`` > 1 and a support of more than one item), else None; 0 where no task ran
            and where a task had one member.
        tasks: the (slice, label) tasks the network ran.
        options: the cost options it ran with (support_slices, skip_margin, cascade).
    """

    mask: np.ndarray
    labels: tuple[int, ...]
    skipped: list[int]
    slices: int
    probs: np.ndarray | None = None
    tasks: int = 0
    options: dict = field(default_factory=dict)
    spread: np.ndarray | None = None


class _Progress:
    """Slices done out of D: a slice is done once every label's task on it ran or was skipped."""

    def __init__(self, pending: np.ndarray, progress: ProgressFn | None):
        self.pending = pending.sum(axis=0)  # (D,) tasks left per slice
        self.progress = progress
        self.report()

    def done(self, slice_index: int) -> None:
        self.pending[slice_index] -= 1

    def report(self) -> None:
        if self.progress is not None:
            self.progress(int((self.pending <= 0).sum()), int(self.pending.size))


def _support_slice(support: VolumeSupport, v: int, j: int, li: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support slice j of volume v at the network's size, and its mask of label ``li``: each prepared once per
    request and reused by every query slice that draws it."""
    key = (v, j, li)
    if key not in support.cache:
        image_key = (v, j, None)
        if image_key not in support.cache:
            support.cache[image_key] = resize(torch.from_numpy(support.images[v][j]), (size, size))
        mask = prepare_mask(support.masks[v][j], [support.labels[li]], size)[0]
        support.cache[key] = (support.cache[image_key], mask)
    return support.cache[key]


def run_volume(segmenter: Segmenter, query: np.ndarray, support: VolumeSupport, options: plan.VolumeOptions,
               progress: ProgressFn | None = None, want_probs: bool = False, want_spread: bool = False) -> VolumeResult:
    """Segment a normalised query (D, H, W) against prepared support volumes (slicing axis already first).

    ``want_spread``: also the ensemble members' std (``VolumeResult.spread``); nothing is kept for ensemble 1.

    Returns:
        A ``VolumeResult`` whose arrays are still slicing-axis first.
    """
    budget = options.budget(segmenter.max_support)
    size, depth, n_labels = segmenter.size, query.shape[0], len(support.labels)
    depths = [m.shape[0] for m in support.masks]
    ranges = plan.labelled_ranges(support.present, depths, n_labels)
    run = plan.runs(depth, ranges, options.skip_margin)  # (K, D)
    net_probs = np.zeros((n_labels, depth, size, size), dtype=np.float32)  # (K, D, N, N)
    ran = np.zeros((n_labels, depth), dtype=bool)
    net_spread = np.zeros_like(net_probs) if want_spread and options.ensemble > 1 else None  # (K, D, N, N)
    has_spread = False  # some task had more than one member
    queries: dict[int, torch.Tensor] = {}
    tracker = _Progress(run.copy(), progress)
    runner = _Batches(segmenter, budget)

    def task(i: int, li: int, neighbour: int | None, items: int = budget) -> tuple[int, int, PreparedSupport]:
        chosen = plan.select([p[li] for p in support.present], depths, float(plan.relative(i, depth)), items)
        pairs = [_support_slice(support, v, j, li, size) for v, j in chosen]
        if neighbour is not None:  # the cascade's context replaces the farthest support slice
            context = (queries[neighbour], torch.from_numpy(net_probs[li, neighbour] >= options.threshold).float())
            pairs = [context] + pairs[: items - 1]
        images = torch.stack([p[0] for p in pairs])  # (S, N, N)
        masks = torch.stack([p[1] for p in pairs])[None]  # (1, S, N, N)
        return i, li, PreparedSupport(images, masks, (support.labels[li],))

    def query_slice(i: int) -> torch.Tensor:
        if i not in queries:
            queries[i] = resize(torch.from_numpy(query[i]), (size, size))
        return queries[i]

    def coarse_to_fine():
        """The coarse slices, then those between two coarse slices of which one found the structure; the rest
        are background (done without running)."""
        first = plan.coarse_slices(run, options.coarse)
        scout = budget if COARSE_SUPPORT is None else min(COARSE_SUPPORT, budget)
        yield [(i, li, None, scout) for i in range(depth) for li in range(n_labels) if first[li, i]]
        at = options.threshold if REFINE_THRESHOLD is None else REFINE_THRESHOLD
        area = (net_probs >= at).mean(axis=(2, 3))  # (K, D) fraction of the slice
        least = REFINE_AREA * plan.label_areas(support.masks, support.present, support.labels)  # (K,)
        foreground = ran & (area > 0) & (area >= least[:, None])  # (K, D)
        then = plan.fine_slices(run, first, foreground, any_label=REFINE_ANY_LABEL)
        for li, i in zip(*np.nonzero(run & ~first & ~then)):
            run[li, i] = False
            tracker.done(int(i))
        if scout < budget:  # the coarse slices that found the structure run again at the full budget
            again = first & foreground
            then |= again
            tracker.pending += again.sum(axis=0)
        tracker.report()
        yield [(i, li, None) for i in range(depth) for li in range(n_labels) if then[li, i]]

    if options.cascade:
        waves = _cascade_waves(run, plan.core(depth, ranges))
    elif options.coarse > 1:
        waves = coarse_to_fine()
    else:
        waves = [[(i, li, None) for i in range(depth) for li in range(n_labels) if run[li, i]]]
    for wave in waves:
        tasks = []
        for i, li, neighbour, *items in wave:  # items: a smaller support for this task (the coarse pass)
            if neighbour is not None and not _confident(net_probs[li, neighbour], options.threshold):
                if not (net_probs[li, neighbour] >= options.threshold).any():
                    run[li, i] = False  # the structure ended on the way out: background from here on
                    tracker.done(i)
                    continue
                neighbour = None  # a weak neighbour adds no context
            query_slice(i)
            tasks.append(task(i, li, neighbour, *items))
        for (i, li, _), probs, std in runner.run(tasks, queries, options.ensemble, tracker, net_spread is not None):
            net_probs[li, i] = probs
            ran[li, i] = True
            if std is not None:
                net_spread[li, i] = std
                has_spread = True
        tracker.report()

    out = _at_query_size(net_probs, ran, query.shape, 1.0)  # (K, D, H, W)
    spread = _at_query_size(net_spread, ran, query.shape, 0.5) if has_spread else None
    skipped = [int(i) for i in np.flatnonzero(~ran.any(axis=0))]
    mask = merge_labels(out, support.labels, options.threshold)
    mask[skipped] = 0  # background even at threshold 0
    return VolumeResult(mask, support.labels, skipped, depth,
                        out if want_probs else None, runner.count,
                        {"support_slices": budget, "skip_margin": options.skip_margin, "cascade": options.cascade,
                         "coarse": 1 if options.cascade else options.coarse}, spread)


def _at_query_size(net: np.ndarray, ran: np.ndarray, shape: tuple[int, ...], top: float) -> np.ndarray:
    """(K, D, N, N) at the network's size -> (K, D, H, W) float32 in [0, top]; 0 for every task that did not run."""
    out = np.zeros((net.shape[0], *shape), dtype=np.float32)
    for i in np.flatnonzero(ran.any(axis=0)):
        out[:, i] = resize(torch.from_numpy(net[:, i] * ran[:, i, None, None]), shape[1:]).clamp(0, top)
    return out


def _confident(probs: np.ndarray, threshold: float) -> bool:
    fg = probs >= threshold
    return bool(fg.mean() >= MIN_AREA) and float(probs[fg].mean()) >= CONFIDENT


def _cascade_waves(run: np.ndarray, start: np.ndarray):
    """Waves of (slice, label, neighbour) over all labels: the core first, then outward; a generator, so that
    each wave sees the predictions of the ones before."""
    per_label = [plan.cascade_order(run[li], start[li]) for li in range(run.shape[0])]
    seen = [set() for _ in per_label]
    for w in range(max((len(p) for p in per_label), default=0)):
        wave = []
        for li, waves in enumerate(per_label):
            if w >= len(waves):
                continue
            for i in waves[w]:
                neighbour = None
                if w > 0:  # the adjacent slice already done, on the side of the core
                    neighbour = next((n for n in (i - 1, i + 1) if n in seen[li]), None)
                wave.append((i, li, neighbour))
            seen[li].update(waves[w])
        yield wave


class _Batches:
    """Runs tasks in forward passes sized to take about ``PROGRESS_EVERY_S`` seconds, yet of at least
    ``MIN_PASS_ITEMS`` support items (at most the segmenter's ``max_batch_items``), reporting each finished
    slice."""

    def __init__(self, segmenter: Segmenter, budget: int):
        self.segmenter = segmenter
        self.limit = max(1, segmenter.max_batch_items // budget)
        self.floor = int(np.clip(-(-MIN_PASS_ITEMS // budget), 1, self.limit))
        self.size = self.floor  # the first pass times the model; the next ones are sized from it
        self.every = PROGRESS_EVERY_S
        self.count = 0  # tasks run

    def forward(self, chunk, queries, ensemble, spread: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, N) probabilities of a chunk of tasks, and with ``spread`` the (B, N, N) members' std (None for
        one member). One support subset: a single forward pass of the whole chunk (``predict_prepared`` would
        split it into ~1 s passes, which on a CPU means one task per pass at twice the cost per task); an
        ensemble goes through ``predict_prepared``."""
        q = torch.stack([queries[i] for i, _, _ in chunk])  # (B, N, N)
        supports = [s for _, _, s in chunk]
        if ensemble > 1:
            if not spread:
                return self.segmenter.predict_prepared(q, supports, ensemble)[:, 0], None
            probs, std = self.segmenter.predict_prepared(q, supports, ensemble, spread=True)  # (B, 1, N, N) each
            return probs[:, 0], None if std is None else std[:, 0]
        out = torch.empty(q.shape)
        for size in {s.size for s in supports}:  # one pass per support size (a label with few slices: fewer)
            rows = [b for b, s in enumerate(supports) if s.size == size]
            images = torch.stack([supports[b].images for b in rows]).unsqueeze(2)  # (B', S, 1, N, N)
            masks = torch.stack([supports[b].masks[0] for b in rows]).unsqueeze(2)  # (B', S, 1, N, N)
            out[rows] = self.segmenter.predict_torch(q[rows].unsqueeze(1), images, masks)[:, 0]
        return out, None

    def run(self, tasks, queries, ensemble, tracker, spread: bool = False):
        """Yields (task, (N, N) probabilities, (N, N) members' std or None) per task."""
        start = 0
        while start < len(tasks):
            chunk = tasks[start:start + self.size]
            began = time.perf_counter()
            probs, std = self.forward(chunk, queries, ensemble, spread)  # (B, N, N) each
            per_task = (time.perf_counter() - began) / len(chunk)
            self.size = int(np.clip(self.every / max(per_task, 1e-6), self.floor, self.limit))
            self.count += len(chunk)
            for b, ((i, li, s), p) in enumerate(zip(chunk, probs)):
                tracker.done(i)
                yield (i, li, s), p.numpy(), None if std is None else std[b].numpy()
            tracker.report()
            start += len(chunk)
