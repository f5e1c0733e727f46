"""What a volume costs, decided before the network runs: the skip rule, the per-label support budget spread
over the volumes by position, the cascade's order, and the options' errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import InputError
from model import volume_plan as plan


def test_skip_keeps_the_labelled_ranges_and_their_margin():
    # support volume 0 labels relative depths [0.4, 0.6] for label 0; volume 1 [0.5, 0.7]; label 1 [0.0, 0.1]
    ranges = [[(0.4, 0.6), (0.5, 0.7)], [(0.0, 0.1)]]
    run = plan.runs(11, ranges, 0.1)  # query slices at 0.0, 0.1, ..., 1.0
    assert list(np.flatnonzero(run[0])) == [3, 4, 5, 6, 7, 8]  # 0.3 .. 0.8: the union and 0.1 beyond it
    assert list(np.flatnonzero(run[1])) == [0, 1, 2]
    assert list(np.flatnonzero(plan.runs(11, ranges, 0.0)[0])) == [4, 5, 6, 7]
    assert plan.runs(11, ranges, None).all()  # no margin: nothing skipped
    assert plan.runs(11, ranges, 1.0).all()


def test_labelled_ranges_are_relative_per_volume():
    present = [[np.array([2, 3, 4]), np.array([], int)], [np.array([10, 20]), np.array([0])]]
    ranges = plan.labelled_ranges(present, depths=[5, 21], n_labels=2)
    assert ranges[0] == [(0.5, 1.0), (0.5, 1.0)]
    assert ranges[1] == [(0.0, 0.0)]  # volume 0 does not hold label 1


def test_budget_is_spread_over_volumes_by_position():
    present = [np.arange(0, 50), np.arange(0, 50), np.arange(0, 50), np.arange(40, 50)]
    chosen = plan.select(present, depths=[50] * 4, pos=0.5, budget=16, spacing=0.0)
    assert len(chosen) == 16
    per_volume = np.bincount([v for v, _ in chosen], minlength=4)
    assert list(per_volume) == [4, 4, 4, 4]
    # each volume gives its slices nearest to the query's relative depth (0.5 -> slice 24.5; volume 3 from 40)
    assert sorted(j for v, j in chosen if v == 0) == [23, 24, 25, 26]
    assert sorted(j for v, j in chosen if v == 3) == [40, 41, 42, 43]
    # a remainder goes to the volume whose labelled slices lie nearest the position
    apart = [np.arange(0, 10), np.arange(20, 30), np.arange(40, 50)]
    counts = np.bincount([v for v, _ in plan.select(apart, [50] * 3, pos=0.52, budget=5)], minlength=3)
    assert list(counts) == [1, 2, 2]  # volume 1 holds the position, volume 2 is next nearest


def test_budget_moves_to_volumes_that_hold_enough():
    present = [np.array([5]), np.arange(0, 30), np.array([], int)]  # volume 2 lacks the label
    chosen = plan.select(present, depths=[30, 30, 30], pos=0.2, budget=8)
    assert len(chosen) == 8
    assert [j for v, j in chosen if v == 0] == [5]
    assert sum(v == 1 for v, _ in chosen) == 7 and all(v != 2 for v, _ in chosen)
    assert len(plan.select(present, [30, 30, 30], 0.2, budget=64)) == 31  # every labelled slice, no more


def test_spacing_keeps_a_volumes_support_slices_apart():
    present = [np.arange(0, 51), np.arange(30, 40)]
    near = plan.select(present, depths=[51, 51], pos=0.5, budget=6, spacing=0.0)
    assert sorted(j for v, j in near if v == 0) == [24, 25, 26]  # the nearest: near-copies of each other
    apart = plan.select(present, depths=[51, 51], pos=0.5, budget=6, spacing=0.1)  # 5 slices of 50
    assert sorted(j for v, j in apart if v == 0) == [20, 25, 30]  # nearest first, then 5 slices apart
    assert sorted(j for v, j in apart if v == 1) == [30, 31, 35]  # a short range: 30 and 35, then the nearest
    assert len(plan.select(present, [51, 51], 0.5, budget=70, spacing=0.1)) == 61  # then the rest, nearest first


def test_centred_support_sits_around_the_query_and_moves_with_it(monkeypatch):
    monkeypatch.setattr(plan, "SUPPORT_CENTRED", True)
    present = [np.arange(0, 51), np.arange(30, 40)]
    chosen = plan.select(present, depths=[51, 51], pos=0.5, budget=4, spacing=0.1)  # 5 slices of 50
    assert sorted(j for v, j in chosen if v == 0) == [22, 27]  # 25 -/+ 2.5: the nearest (ties: the shallower)
    assert sorted(j for v, j in chosen if v == 1) == [30, 31]  # a short range: its nearest, none taken twice
    moved = plan.select(present, depths=[51, 51], pos=0.52, budget=4, spacing=0.1)  # one slice deeper
    assert sorted(j for v, j in moved if v == 0) == [23, 28]
    assert plan.select(present, [51, 51], 0.52, budget=4, spacing=0.1) == moved  # deterministic


def test_share_is_fair_and_exact():
    assert plan.share(16, [0.3, 0.1, 0.2]) == [5, 6, 5]
    assert plan.share(2, [0.3, 0.1, 0.2]) == [0, 1, 1]
    assert plan.share(5, []) == []


def test_cascade_order_goes_outward_from_the_start():
    run = np.zeros(12, bool)
    run[2:10] = True
    start = np.zeros(12, bool)
    start[5:7] = True
    waves = plan.cascade_order(run, start)
    assert waves == [[5, 6], [4, 7], [3, 8], [2, 9]]
    assert plan.cascade_order(np.zeros(4, bool), start[:4]) == []


@pytest.mark.parametrize("options,field", [
    (plan.VolumeOptions(support_slices=0), "support_slices"),
    (plan.VolumeOptions(support_slices=9), "support_slices"),
    (plan.VolumeOptions(skip_margin=-0.5), "skip_margin"),
    (plan.VolumeOptions(skip_margin=1.5), "skip_margin"),
    (plan.VolumeOptions(ensemble=0), "ensemble"),
    (plan.VolumeOptions(axis=3), "axis"),
    (plan.VolumeOptions(threshold=2.0), "threshold"),
    (plan.VolumeOptions(coarse=0), "coarse"),
    (plan.VolumeOptions(coarse=17), "coarse"),
])
def test_bad_options_name_their_field(options, field):
    with pytest.raises(InputError) as info:
        options.check(max_support=8)
    assert info.value.field == field and info.value.message


def test_default_budget_is_capped_by_the_model():
    assert plan.VolumeOptions().budget(64) == plan.DEFAULT_SUPPORT_SLICES == 12
    assert plan.VolumeOptions().budget(4) == 4


def test_cascade_starts_in_the_middle_of_the_labelled_range():
    start = plan.core(21, [[(0.4, 0.8), (0.2, 0.6)], []])  # mean centre 0.5, mean half-width 0.2 -> 0.4..0.6
    assert list(np.flatnonzero(start[0])) == [8, 9, 10, 11, 12]
    assert not start[1].any()


def test_coarse_slices_take_every_kth_and_both_ends_of_each_run():
    run = np.zeros((2, 14), bool)
    run[0, 2:11] = True  # one run, 2..10
    run[1, 0:3] = run[1, 6:8] = True  # two runs
    first = plan.coarse_slices(run, 3)
    assert list(np.flatnonzero(first[0])) == [2, 5, 8, 10]
    assert list(np.flatnonzero(first[1])) == [0, 2, 6, 7]
    assert (plan.coarse_slices(run, 1) == run).all()  # stride 1: every running slice is coarse


def test_fine_slices_run_only_next_to_a_coarse_slice_with_foreground():
    run = np.zeros((1, 14), bool)
    run[0, 2:11] = True
    first = plan.coarse_slices(run, 3)  # 2, 5, 8, 10
    foreground = np.zeros((1, 14), bool)
    foreground[0, 8] = True  # the structure was found on coarse slice 8 only
    then = plan.fine_slices(run, first, foreground)
    assert list(np.flatnonzero(then[0])) == [6, 7, 9]  # the gaps 5..8 and 8..10; gap 2..5 stays background
    assert not plan.fine_slices(run, first, np.zeros_like(foreground)).any()
    assert (plan.fine_slices(run, first, run) == (run & ~first)).all()  # found everywhere: every slice runs


def test_fine_slices_of_any_label_refine_every_label_where_one_was_found():
    run = np.zeros((2, 14), bool)
    run[:, 2:11] = True
    first = plan.coarse_slices(run, 3)  # 2, 5, 8, 10 for both labels
    foreground = np.zeros((2, 14), bool)
    foreground[0, 8] = True  # only label 0 (the whole) was found, on slice 8; label 1 (a part of it) nowhere
    own = plan.fine_slices(run, first, foreground)
    assert list(np.flatnonzero(own[0])) == [6, 7, 9] and not own[1].any()
    shared = plan.fine_slices(run, first, foreground, any_label=True)
    assert list(np.flatnonzero(shared[1])) == [6, 7, 9] and (shared[0] == own[0]).all()
    assert not (shared & first).any()  # a coarse slice never runs twice
