"""Volumes against 3D support volumes through ``Segmenter.predict_volume_result``: skipped slices are
background and counted as done, progress moves several times per chunk of a slow model, and the cascade is
deterministic."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from data.errors import InputError
from model import volume as volumes
from model import volume_run
from model.segmenter import Segmenter
from model.volume_plan import VolumeOptions


@pytest.fixture
def segmenter(tiny_net) -> Segmenter:
    return Segmenter(tiny_net, seed=0)


def _ball_volume(rng, depth: int, z: tuple[int, int], labels=(1, 2), shape=(24, 20)):
    """(H, W, D) with a bright disc per label on the slices z[0]..z[1] (label 2 on the upper half only)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros((*shape, depth), np.uint8)
    for k, label in enumerate(labels):
        disc = (yy - shape[0] * (0.3 + 0.4 * k)) ** 2 + (xx - shape[1] / 2) ** 2 <= (shape[1] / 5) ** 2
        lo = z[0] if k == 0 else (z[0] + z[1]) // 2
        mask[disc, lo:z[1] + 1] = label
    volume = rng.normal(100, 10, mask.shape) + 300 * (mask > 0)
    return volume.astype(np.float32), mask


def _support(rng, n=2):
    pairs = [_ball_volume(rng, 20, (8, 12)) for _ in range(n)]
    return [v for v, _ in pairs], [m for _, m in pairs]


def _every_slice(segmenter, query, images, masks, support_slices, **kwargs):
    """The volume run without coarse-to-fine (coarse=1) and without skipping: every slice, every label."""
    return volumes.predict_with_volumes(segmenter, query, segmenter.prepare_volume_support(images, masks),
                                        VolumeOptions(support_slices=support_slices, skip_margin=None, coarse=1),
                                        **kwargs)


def test_slices_outside_the_labelled_range_are_skipped_and_background(segmenter, rng):
    query, _ = _ball_volume(rng, 40, (15, 25))
    images, masks = _support(rng)
    calls = []
    result = segmenter.predict_volume_result(query, images, masks, support_slices=4, skip_margin=0.1, threshold=0.0,
                                             progress=lambda d, t: calls.append((d, t)))
    # support labels 8..12 of 20 slices: relative 0.42..0.63, with the margin 0.32..0.73 -> slices 13..28 of 40
    assert result.skipped == list(range(0, 13)) + list(range(29, 40))
    assert np.all(result.mask[..., result.skipped] == 0)
    assert np.all(result.mask[..., 13:29] != 0)  # threshold 0: every slice that ran is labelled
    assert result.tasks == 16 + 12  # label 1 on 13..28; label 2 (support 10..12, 0.53..0.63) on 17..28
    assert calls[0] == (24, 40)  # skipped slices are done from the start
    assert calls[-1] == (40, 40) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    full = _every_slice(segmenter, query, images, masks, 4)
    assert full.skipped == [] and full.tasks == 80


def test_per_label_budget_sets_the_support_size(segmenter, rng, monkeypatch):
    query, _ = _ball_volume(rng, 10, (3, 6))
    images, masks = _support(rng, n=3)
    sizes = []
    original = segmenter.predict_torch

    def spy(q, si, sm):
        sizes.append(si.shape[1])
        return original(q, si, sm)

    monkeypatch.setattr(segmenter, "predict_torch", spy)
    monkeypatch.setattr(volume_run, "COARSE_SUPPORT", None)  # the coarse pass at the full budget too
    segmenter.predict_volume_result(query, images, masks, support_slices=6, skip_margin=None)
    assert set(sizes) == {6}  # 2 per volume, every task
    sizes.clear()
    segmenter.predict_volume_result(query, images, masks, skip_margin=None)  # default 12, capped at max_support 8
    assert set(sizes) == {8}
    sizes.clear()
    monkeypatch.setattr(volume_run, "COARSE_SUPPORT", 4)  # the default: the coarse pass scouts at 4
    segmenter.predict_volume_result(query, images, masks, skip_margin=None)
    assert set(sizes) <= {4, 8} and 4 in sizes


def test_progress_moves_several_times_per_chunk_of_a_slow_model(segmenter, rng, monkeypatch):
    query, _ = _ball_volume(rng, 16, (2, 14))
    images, masks = _support(rng)
    original = segmenter.predict_torch

    def slow(q, si, sm):  # ~20 ms per (query, support item set): a model far slower than the tiny one
        time.sleep(0.02 * q.shape[0])
        return original(q, si, sm)

    monkeypatch.setattr(segmenter, "predict_torch", slow)
    monkeypatch.setattr(volume_run, "PROGRESS_EVERY_S", 0.05)
    monkeypatch.setattr(volume_run, "MIN_PASS_ITEMS", 1)  # the efficiency floor is tested on its own below
    stamps = []
    _every_slice(segmenter, query, images, masks, 2, progress=lambda d, t: stamps.append((time.perf_counter(), d, t)))
    done = [d for _, d, _ in stamps]
    # 16 slices x 2 labels = 32 tasks; max_batch_items 256 would allow them all in one pass, yet progress
    # moved slice by slice, each update within a few passes of the last
    assert len(set(done)) >= 6 and done[-1] == 16 and done == sorted(done)
    gaps = np.diff([s for s, _, _ in stamps])
    assert gaps.max() < 2.0  # generous on a shared machine; the count above is what one big pass cannot give


def test_progress_of_a_2d_support_moves_within_a_chunk(segmenter, rng, monkeypatch):
    query, _ = _ball_volume(rng, 12, (2, 10))
    support = segmenter.prepare_support([query[..., 5]], [_ball_volume(rng, 12, (2, 10))[1][..., 5]])
    original = segmenter.predict_torch

    def slow(q, si, sm):
        time.sleep(0.02 * q.shape[0])
        return original(q, si, sm)

    monkeypatch.setattr(segmenter, "predict_torch", slow)
    monkeypatch.setattr(volume_run, "PROGRESS_EVERY_S", 0.05)
    calls = []
    segmenter.predict_volume(query, support=support, progress=lambda d, t: calls.append(d))
    assert len(set(calls)) >= 6 and calls[-1] == 12  # one chunk of 32 slices would have given 1 update


def test_cascade_is_deterministic_and_independent_of_batching(segmenter, rng):
    query, _ = _ball_volume(rng, 30, (8, 22))
    images, masks = _support(rng)
    kwargs = dict(support_slices=4, skip_margin=0.3, cascade=True, probs=True)
    first = segmenter.predict_volume_result(query, images, masks, **kwargs)
    again = segmenter.predict_volume_result(query, images, masks, **kwargs)
    np.testing.assert_array_equal(first.mask, again.mask)
    np.testing.assert_array_equal(first.probs, again.probs)
    small = Segmenter(segmenter.net, seed=0, max_batch_items=4)  # one task per forward pass
    other = small.predict_volume_result(query, images, masks, **kwargs)
    np.testing.assert_array_equal(first.mask, other.mask)
    np.testing.assert_allclose(first.probs, other.probs, atol=1e-5)
    assert first.options["cascade"] is True and first.probs.shape == (2, *query.shape)


def test_cascade_stops_where_the_structure_ends(segmenter, rng, monkeypatch):
    """A neighbour without foreground ends its direction: slices beyond it are background, not run."""
    query, _ = _ball_volume(rng, 30, (8, 22))
    images, masks = _support(rng)
    original = segmenter.predict_torch

    def nothing_far_out(q, si, sm):
        probs = original(q, si, sm)
        return torch.zeros_like(probs)  # the model sees no structure anywhere

    monkeypatch.setattr(segmenter, "predict_torch", nothing_far_out)
    plain = segmenter.predict_volume_result(query, images, masks, support_slices=4, skip_margin=0.3)
    cascade = segmenter.predict_volume_result(query, images, masks, support_slices=4, skip_margin=0.3, cascade=True)
    assert cascade.tasks < plain.tasks
    assert not cascade.mask.any()


def test_passes_hold_at_least_the_minimum_of_support_items(segmenter, rng, monkeypatch):
    """A slow CPU must not shrink passes to one task: a task alone costs about twice one in a full pass."""
    query, _ = _ball_volume(rng, 16, (2, 14))
    images, masks = _support(rng)
    batches = []
    original = segmenter.predict_torch

    def slow(q, si, sm):
        batches.append(q.shape[0] * si.shape[1])
        time.sleep(0.05 * q.shape[0])  # far above PROGRESS_EVERY_S per pass: the time rule alone gives 1 task
        return original(q, si, sm)

    monkeypatch.setattr(segmenter, "predict_torch", slow)
    monkeypatch.setattr(volume_run, "PROGRESS_EVERY_S", 0.01)
    monkeypatch.setattr(volume_run, "MIN_PASS_ITEMS", 8)
    _every_slice(segmenter, query, images, masks, 2)
    assert sum(batches) == 16 * 2 * 2 and min(batches) >= 8  # 32 tasks of 2 support items, 4 tasks a pass


def test_coarse_to_fine_runs_fewer_tasks_for_the_same_mask(segmenter, rng, monkeypatch):
    """A model that finds the structure exactly where it is (bright query pixels): coarse slices every 3rd,
    then only the gaps next to a coarse slice with foreground; the structure is longer than the stride, so
    the mask is that of running every slice."""
    query, truth = _ball_volume(rng, 30, (8, 22))
    images, masks = _support(rng)
    monkeypatch.setattr(segmenter, "predict_torch", lambda q, si, sm: (q > 0.6).float())
    support = segmenter.prepare_volume_support(images, masks)
    full = volumes.predict_with_volumes(segmenter, query, support,
                                        VolumeOptions(support_slices=4, skip_margin=None, coarse=1))
    coarse = volumes.predict_with_volumes(segmenter, query, support,
                                          VolumeOptions(support_slices=4, skip_margin=None, coarse=3))
    assert (full.mask > 0).any(axis=(0, 1)).tolist() == (truth > 0).any(axis=(0, 1)).tolist()
    np.testing.assert_array_equal(coarse.mask, full.mask)
    # per label 0..29: 11 coarse slices; label 1 (slices 8..22) adds the gaps 7..23 minus coarse ones
    assert coarse.tasks < full.tasks == 60 and coarse.options["coarse"] == 3
    assert set(coarse.skipped) >= {1, 2, 4, 5, 25, 26, 28}  # far from the structure: never run


def test_stray_foreground_below_half_the_support_area_refines_nothing(segmenter, rng, monkeypatch):
    """A model that finds the structure and also marks one stray pixel on every slice: under the relative rule
    (REFINE_AREA 0.5 of the label's median support area) the strays refine no gap and the structure's do; under
    the old rule (0: any voxel) every gap refines."""
    query, truth = _ball_volume(rng, 30, (8, 22))
    images, masks = _support(rng)

    def stray(q, si, sm):
        out = (q > 0.6).float()
        out[..., 0, 0] = 1.0
        return out

    monkeypatch.setattr(segmenter, "predict_torch", stray)
    support = segmenter.prepare_volume_support(images, masks)
    options = VolumeOptions(support_slices=4, skip_margin=None, coarse=3)
    monkeypatch.setattr(volume_run, "COARSE_SUPPORT", None)
    full = volumes.predict_with_volumes(segmenter, query, support,
                                        VolumeOptions(support_slices=4, skip_margin=None, coarse=1))
    monkeypatch.setattr(volume_run, "REFINE_AREA", 0.0)
    any_voxel = volumes.predict_with_volumes(segmenter, query, support, options)
    monkeypatch.setattr(volume_run, "REFINE_AREA", 0.5)
    relative = volumes.predict_with_volumes(segmenter, query, support, options)
    assert any_voxel.tasks == full.tasks == 60  # a stray pixel on every coarse slice: every gap refines
    assert relative.tasks < any_voxel.tasks and set(relative.skipped) >= {1, 2, 4, 5, 25, 26, 28}
    held = (truth > 0).any(axis=(0, 1))  # the structure's slices are refined all the same
    np.testing.assert_array_equal(relative.mask[..., held], full.mask[..., held])
    monkeypatch.setattr(volume_run, "REFINE_AREA", 3.0)  # above the structure's own area: nothing refines
    assert volumes.predict_with_volumes(segmenter, query, support, options).tasks == 2 * 11  # the coarse slices alone


def test_a_smaller_coarse_support_spends_the_budget_where_the_structure_is(segmenter, rng, monkeypatch):
    """The coarse pass at 2 support slices finds the structure; its neighbourhood, the coarse slices that found
    it included, runs again at the full 4: same mask, and only the coarse slices without it stay at 2."""
    query, _ = _ball_volume(rng, 30, (8, 22))
    images, masks = _support(rng)
    sizes = []

    def exact(q, si, sm):
        sizes.extend([si.shape[1]] * si.shape[0])
        return (q > 0.6).float()

    monkeypatch.setattr(segmenter, "predict_torch", exact)
    support = segmenter.prepare_volume_support(images, masks)
    options = VolumeOptions(support_slices=4, skip_margin=None, coarse=3)
    monkeypatch.setattr(volume_run, "COARSE_SUPPORT", None)
    plain = volumes.predict_with_volumes(segmenter, query, support, options)
    plain_sizes, sizes[:] = list(sizes), []
    monkeypatch.setattr(volume_run, "COARSE_SUPPORT", 2)
    calls = []
    scouted = volumes.predict_with_volumes(segmenter, query, support, options,
                                           progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(scouted.mask, plain.mask)
    assert set(plain_sizes) == {4} and set(sizes) == {2, 4}
    found = 2 * 5  # per label, the coarse slices 9, 12, ..., 21 that hold the disc (bright on 8..22)
    assert scouted.tasks == plain.tasks + found and sizes.count(4) == plain.tasks - 2 * 11 + found
    assert calls[-1] == (30, 30) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_2d_support_with_positions_skips_slices_far_from_them(segmenter, rng):
    query, truth = _ball_volume(rng, 21, (8, 12))
    support = segmenter.prepare_support([query[..., 9], query[..., 11]], [truth[..., 9], truth[..., 11]])
    # the pairs sit at relative depths 0.45 and 0.55; margin 0.1 -> 0.35..0.65 -> slices 7..13 of 21
    result = segmenter.predict_volume_result(query, support=support, support_positions=[0.45, 0.55],
                                             skip_margin=0.1, threshold=0.0)
    assert result.skipped == list(range(0, 7)) + list(range(14, 21))
    assert not result.mask[..., result.skipped].any()
    assert result.tasks == 7 * 2 and result.options["support_positions"] == [0.45, 0.55]
    plain = segmenter.predict_volume_result(query, support=support, threshold=0.0)
    assert plain.skipped == [] and plain.tasks == 21 * 2
    # label 2 is on the second pair only (0.55, so slices 9..13): there both labels are the plain answer;
    # on slices 7 and 8 label 1 alone
    np.testing.assert_array_equal(result.mask[..., 9:14], plain.mask[..., 9:14])
    assert not (result.mask[..., 7:9] == 2).any() and (plain.mask[..., 7:9] == 2).any()
    never = segmenter.predict_volume_result(query, support=support, support_positions=[0.45, 0.55], skip_margin=None)
    assert never.skipped == []  # no margin: positions skip nothing


def test_2d_positions_are_per_label(segmenter, rng):
    """A label runs only near the pairs that hold it: label 2 is on the second pair alone (depth 0.9)."""
    query, truth = _ball_volume(rng, 11, (2, 8))
    one = np.where(truth[..., 3] == 2, 0, truth[..., 3])  # label 1 only
    support = segmenter.prepare_support([query[..., 3], query[..., 7]], [one, truth[..., 7]])
    result = segmenter.predict_volume_result(query, support=support, support_positions=[0.1, 0.9], skip_margin=0.0,
                                             threshold=0.0, probs=True)
    # label 1 spans 0.1..0.9 (slices 1..9), label 2 only 0.9 (slice 9)
    assert result.skipped == [0, 10]
    assert result.probs[1, ..., 1:9].max() == 0 and result.probs[1, ..., 9].max() > 0


@pytest.mark.parametrize("positions,match", [([0.5], "2 support"), ([0.5, 1.5], "between 0 and 1"),
                                             ([0.5, float("nan")], "between 0 and 1"), ([True, 0.5], "between")])
def test_bad_positions_name_their_field(segmenter, rng, positions, match):
    query, truth = _ball_volume(rng, 11, (2, 8))
    support = segmenter.prepare_support([query[..., 3], query[..., 7]], [truth[..., 3], truth[..., 7]])
    with pytest.raises(InputError, match=match) as info:
        segmenter.predict_volume_result(query, support=support, support_positions=positions)
    assert info.value.field == "support_positions"
