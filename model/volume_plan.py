"""What a volume costs, decided before the network runs: the options of a volume request, which query slices
run for which label (the rest are skipped and set to background), and which support slices each (slice,
label) task gets within its budget.

All of it is plain numpy on relative positions: a query slice i of D sits at p = i / (D - 1); support volume
v's slice j of D_v at j / (D_v - 1). Letters: D slices, K labels, S support items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.errors import InputError

# the defaults, chosen with bench/bench_volume.py on the six BraTS cases, each against four others (docs/performance.md,
# "Volumes: choosing the defaults, leave-one-out" and "Volumes: a relative refine rule"): a coarse pass every 8th
# slice at 4 support slices (volume_run.COARSE_SUPPORT) finds the structure, the slices around a coarse slice whose
# foreground covers half the label's support area (volume_run.REFINE_AREA) run at 12 slices 0.08 apart
DEFAULT_SUPPORT_SLICES = 12  # per query slice and label, in all (a task costs about a + b * S, a small)
DEFAULT_SKIP_MARGIN = 0.1  # relative depth beyond every support volume's labelled range that still runs
DEFAULT_COARSE = 8  # coarse-to-fine stride: 1 runs every slice in range (see ``coarse``)
# least relative depth between two support slices of one volume (``select``): the nearest slices are near-copies;
# 8 slices 0.1 apart matched the old 64 nearest on BraTS (docs/performance.md, "Spacing the support slices"), 12 go
# 0.08 apart at the defaults
SUPPORT_SPACING = 0.08
# how a volume's share is laid out (``select``): False: the nearest slice, then the nearest at least the spacing
# from every pick; True: centred on the query's depth, the spacing apart (a share of 2: half a spacing each side)
SUPPORT_CENTRED = False


@dataclass(frozen=True)
class VolumeOptions:
    """The cost-aware knobs of a volume request (the same names in the API, the SDK and the CLI).

    Attributes:
        support_slices: support slices per query slice and label, in all, spread over the support volumes
            by position (None: ``DEFAULT_SUPPORT_SLICES``, capped by the model's ``max_support``).
        ensemble: average over this many random subsets of each task's support slices.
        axis: the slicing axis of the (H, W, D) volumes.
        skip_margin: query slices farther than this (relative depth, 0-1) outside every support volume's
            labelled range of a label are not run for it; None never skips.
        cascade: confident predictions of already segmented neighbouring slices join the support of the next
            slices, outward from the support's labelled range (in-context cascade, arXiv 2412.13299).
        threshold: probability at which a voxel gets a label.
        support_positions: 2D support over a volume: each support pair's relative depth (0-1) along the axis;
            query slices farther than ``skip_margin`` from every position of a pair holding a label (outside
            their span) are not run for it. None: every slice runs.
        coarse: coarse-to-fine stride (without the cascade): per label, every ``coarse``-th running slice
            runs first (and each run's two ends); a slice between two of them runs only when one of the two
            has foreground, the others are background; the coarse pass runs at ``volume_run.COARSE_SUPPORT``
            support slices, and a coarse slice that found the structure runs again at the full budget. 1 runs
            every slice in range.
    """

    support_slices: int | None = None
    ensemble: int = 1
    axis: int = 2
    skip_margin: float | None = DEFAULT_SKIP_MARGIN
    cascade: bool = False
    threshold: float = 0.5
    coarse: int = DEFAULT_COARSE
    support_positions: Sequence[float] | None = None

    def budget(self, max_support: int) -> int:
        """The support slices per task, checked against the model's limit (raises InputError)."""
        budget = min(DEFAULT_SUPPORT_SLICES, max_support) if self.support_slices is None else self.support_slices
        if not 1 <= budget <= max_support:
            raise InputError(f"support_slices must be between 1 and {max_support} (the support limit), got {budget}",
                             field="support_slices")
        return int(budget)

    def check(self, max_support: int) -> None:
        """Raises InputError naming the field for any option out of range."""
        self.budget(max_support)
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}", field="axis")
        if not 1 <= self.ensemble <= 16:
            raise InputError(f"ensemble must be between 1 and 16, got {self.ensemble}", field="ensemble")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {self.threshold}", field="threshold")
        if not 1 <= self.coarse <= 16:
            raise InputError(f"coarse must be between 1 and 16 (slices), got {self.coarse}", field="coarse")
        self.check_positions()

    def check_positions(self) -> None:
        """Raises InputError for a skip margin or a support position out of range (the 2D path's options)."""
        if self.skip_margin is not None and not 0.0 <= self.skip_margin <= 1.0:
            raise InputError(f"skip_margin must be between 0 and 1 (relative depth), got {self.skip_margin}",
                             field="skip_margin")
        for p in self.support_positions or ():
            if isinstance(p, bool) or not (isinstance(p, int | float) and np.isfinite(p) and 0.0 <= p <= 1.0):
                raise InputError("support_positions must be relative depths between 0 and 1 (0: first slice, 1: "
                                 f"last), one per support pair; got {p!r}", field="support_positions")


def position_ranges(positions: tuple[float, ...], holds: list[list[bool]]) -> list[list[tuple]]:
    """Per label, the span (first, last) of the relative depths of the 2D support pairs holding it (as
    ``labelled_ranges`` for volumes); ``holds[k][s]``: pair s holds label k."""
    out = []
    for row in holds:
        at = [p for p, h in zip(positions, row) if h]
        out.append([(min(at), max(at))] if at else [])
    return out


def relative(index: np.ndarray | int, depth: int) -> np.ndarray:
    """Relative depth in [0, 1] of slice ``index`` of ``depth`` slices."""
    return np.asarray(index, dtype=np.float64) / max(1, depth - 1)


def labelled_ranges(present: list[list[np.ndarray]], depths: list[int], n_labels: int) -> list[list[tuple]]:
    """Per label, the (first, last) relative depth of each support volume holding it."""
    out = []
    for li in range(n_labels):
        ranges = []
        for slices, depth in zip(present, depths):
            if slices[li].size:
                ranges.append((float(relative(slices[li][0], depth)), float(relative(slices[li][-1], depth))))
        out.append(ranges)
    return out


def label_areas(masks: list[np.ndarray], present: list[list[np.ndarray]], labels: Sequence[int]) -> np.ndarray:
    """(K,) per label, the median fraction of a slice it covers over the support slices that hold it (0 where
    none does): the scale a coarse slice's predicted foreground is judged on."""
    out = np.zeros(len(labels))
    for li, label in enumerate(labels):
        areas = [(m[slices[li]] == label).mean(axis=(1, 2)) for m, slices in zip(masks, present) if slices[li].size]
        if areas:
            out[li] = float(np.median(np.concatenate(areas)))
    return out


def runs(depth: int, ranges: list[list[tuple]], margin: float | None) -> np.ndarray:
    """(K, D) bool: which query slices run for which label.

    A slice is skipped for a label when its relative depth lies more than ``margin`` outside every support
    volume's labelled range of that label; ``margin`` None runs everything.
    """
    out = np.ones((len(ranges), depth), dtype=bool)
    if margin is None:
        return out
    pos = relative(np.arange(depth), depth)
    for li, label_ranges in enumerate(ranges):
        keep = np.zeros(depth, dtype=bool)
        for lo, hi in label_ranges:
            keep |= (pos >= lo - margin - 1e-9) & (pos <= hi + margin + 1e-9)
        out[li] = keep
    return out


def _segments(row: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in a 1D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def coarse_slices(run: np.ndarray, stride: int) -> np.ndarray:
    """(K, D) bool: the slices a coarse-to-fine pass runs first: in every run of slices of a label, its first
    slice, every ``stride``-th after it and its last."""
    out = np.zeros_like(run, dtype=bool)
    for li, row in enumerate(run):
        for lo, hi in _segments(row):
            out[li, lo:hi + 1:stride] = True
            out[li, hi] = True
    return out


def fine_slices(run: np.ndarray, first: np.ndarray, foreground: np.ndarray, any_label: bool = False) -> np.ndarray:
    """(K, D) bool: the running slices left after the coarse ones (``first``) that still run: those between
    two coarse slices of the same run of which at least one has ``foreground`` (K, D), of the same label, or of
    any label with ``any_label`` (nested structures such as a tumour's parts: a small part is then looked for
    wherever the whole was found)."""
    if any_label:
        foreground = np.broadcast_to(foreground.any(axis=0), foreground.shape)
    out = np.zeros_like(run, dtype=bool)
    for li in range(run.shape[0]):
        for lo, hi in _segments(run[li]):
            anchors = lo + np.flatnonzero(first[li, lo:hi + 1])  # ascending; holds lo and hi
            for a, b in zip(anchors[:-1], anchors[1:]):
                if b - a > 1 and (foreground[li, a] or foreground[li, b]):
                    out[li, a + 1:b] = True
    return out


START_FRACTION = 0.5  # the cascade starts on the middle half of the support volumes' mean labelled range


def core(depth: int, ranges: list[list[tuple]]) -> np.ndarray:
    """(K, D) bool: where a cascade starts, per label: the query slices within the middle ``START_FRACTION``
    of the support volumes' mean labelled range (its mean centre, half its mean width). From there it goes
    outward as long as the structure goes on, so a query whose structure is shorter, or shifted, than the
    support's costs only its own extent."""
    out = np.zeros((len(ranges), depth), dtype=bool)
    pos = relative(np.arange(depth), depth)
    for li, label_ranges in enumerate(ranges):
        if not label_ranges:
            continue
        centre = float(np.mean([(lo + hi) / 2 for lo, hi in label_ranges]))
        half = START_FRACTION * float(np.mean([(hi - lo) / 2 for lo, hi in label_ranges]))
        out[li] = np.abs(pos - centre) <= half + 1e-9
    return out


def share(budget: int, distances: list[float]) -> list[int]:
    """Spread ``budget`` support slices over the volumes holding a label: equal shares, the remainder to the
    volumes whose labelled slices lie nearest to the query's position (ties: the earlier volume)."""
    n = len(distances)
    if n == 0:
        return []
    base, extra = divmod(budget, n)
    order = np.argsort(np.asarray(distances), kind="stable")
    counts = [base] * n
    for v in order[:extra]:
        counts[int(v)] += 1
    return counts


def _spaced(ranked: np.ndarray, gap: float) -> np.ndarray:
    """``ranked`` (slice indices, nearest first) reordered so that slices at least ``gap`` slices from every
    earlier pick come first (greedy, nearest first); the others follow in their order."""
    if gap <= 1 or ranked.size < 2:
        return ranked
    first, rest = [], []
    for j in ranked:
        (first if all(abs(int(j) - k) >= gap - 1e-9 for k in first) else rest).append(int(j))
    return np.asarray(first + rest, dtype=ranked.dtype)


def _centred(present: np.ndarray, centre: float, n: int, gap: float) -> np.ndarray:
    """``n`` of the labelled slices ``present``: for each of n depths centred on ``centre``, ``gap`` slices apart,
    the nearest labelled slice not yet taken (so a small shift of the query moves every pick a little, where the
    nearest-first rule may flip a pick from one side to the other)."""
    taken: list[int] = []
    for k in range(min(n, present.size)):
        target = centre + (k - (n - 1) / 2) * gap
        free = present[~np.isin(present, taken)]
        taken.append(int(free[np.argmin(np.abs(free - target))]))
    return np.asarray(taken, dtype=present.dtype)


def select(present: list[np.ndarray], depths: list[int], pos: float, budget: int,
           spacing: float | None = None) -> list[tuple[int, int]]:
    """The support slices of one (query slice, label) task: (volume, slice) pairs, at most ``budget``.

    Each volume holding the label gives its ``share`` of the slices nearest to relative position ``pos`` that
    hold it, at least ``spacing`` (relative depth; None: ``SUPPORT_SPACING``) apart where the volume has such
    slices, so that a small share is not spent on near-copies; a volume with fewer labelled slices than its
    share hands the rest to the others.

    Args:
        present: per support volume, the indices of its slices holding the label (ascending).
        depths: per support volume, its number of slices D_v.
        pos: the query slice's relative depth.
        budget: support slices wanted in all.
        spacing: the least relative depth between two slices taken from one volume, where it can be kept.
    """
    spacing = SUPPORT_SPACING if spacing is None else spacing
    holders = [v for v, p in enumerate(present) if p.size]
    ranked = {v: _spaced(present[v][np.argsort(np.abs(present[v] - pos * (depths[v] - 1)), kind="stable")],
                         spacing * (depths[v] - 1)) for v in holders}
    distances = [float(np.abs(relative(ranked[v][0], depths[v]) - pos)) for v in holders]
    counts = dict(zip(holders, share(budget, distances)))
    # volumes with too few labelled slices hand their unused share to the others, nearest first
    spare = sum(max(0, counts[v] - ranked[v].size) for v in holders)
    counts = {v: min(c, ranked[v].size) for v, c in counts.items()}
    for v in [holders[i] for i in np.argsort(distances, kind="stable")]:
        if spare <= 0:
            break
        take = min(spare, ranked[v].size - counts[v])
        counts[v] += take
        spare -= take
    if SUPPORT_CENTRED:
        return [(v, int(j)) for v in holders
                for j in _centred(present[v], pos * (depths[v] - 1), counts[v], spacing * (depths[v] - 1))]
    return [(v, int(j)) for v in holders for j in ranked[v][:counts[v]]]


def cascade_order(run: np.ndarray, start: np.ndarray) -> list[list[int]]:
    """Waves of slices for one label: first the ``start`` slices that run, then, wave by wave, the running
    slices next to those already done (outward from the support's labelled range)."""
    depth = run.size
    done = run & start
    if not done.any():  # the labelled range maps between slices: start from the running slice nearest it
        idx = np.flatnonzero(run)
        if idx.size == 0:
            return []
        done = np.zeros(depth, dtype=bool)
        done[idx[idx.size // 2]] = True
    waves = [list(np.flatnonzero(done))]
    while True:
        left = np.zeros(depth, dtype=bool)
        left[:-1] = done[1:]
        right = np.zeros(depth, dtype=bool)
        right[1:] = done[:-1]
        nxt = run & ~done & (left | right)
        if not nxt.any():
            break
        waves.append(list(np.flatnonzero(nxt)))
        done |= nxt
    if (run & ~done).any():  # running slices cut off from the start: last, without a neighbour's context
        waves.append(list(np.flatnonzero(run & ~done)))
    return waves
