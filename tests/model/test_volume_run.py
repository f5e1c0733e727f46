"""Volumes against 3D support volumes through ``Segmenter.predict_volume_result``: skipped slices are
background and counted as done, progress moves several times per chunk of a slow model, and the cascade is
deterministic."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from model import volume_run
from model.segmenter import Segmenter


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
    full = segmenter.predict_volume_result(query, images, masks, support_slices=4, skip_margin=None)
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
    segmenter.predict_volume_result(query, images, masks, support_slices=6, skip_margin=None)
    assert set(sizes) == {6}  # 2 per volume, every task
    sizes.clear()
    segmenter.predict_volume_result(query, images, masks, skip_margin=None)  # default 16, capped by max_support 8
    assert set(sizes) == {8}


def test_progress_moves_several_times_per_chunk_of_a_slow_model(segmenter, rng, monkeypatch):
    query, _ = _ball_volume(rng, 16, (2, 14))
    images, masks = _support(rng)
    original = segmenter.predict_torch

    def slow(q, si, sm):  # ~20 ms per (query, support item set): a model far slower than the tiny one
        time.sleep(0.02 * q.shape[0])
        return original(q, si, sm)

    monkeypatch.setattr(segmenter, "predict_torch", slow)
    monkeypatch.setattr(volume_run, "PROGRESS_EVERY_S", 0.05)
    stamps = []
    segmenter.predict_volume_result(query, images, masks, support_slices=2, skip_margin=None,
                                    progress=lambda d, t: stamps.append((time.perf_counter(), d, t)))
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
