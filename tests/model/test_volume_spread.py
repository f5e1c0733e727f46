"""The ensemble members' std of a volume (``Segmenter.predict_volume_result(..., spread=True)``), the input of
its uncertainty map: the query's shape, zero where every member agrees and where nothing ran, nonzero where
the members differ; with 3D support (plain, coarse-to-fine, cascade) and with a 2D support set. Ensemble 1
keeps no spread (its map is the entropy, docs/confidence.md).

The tiny random network hardly tells one support subset from another, so where the members must differ a
deterministic fake answers each task with the mean of its support masks: subsets of masks that differ give
members that differ, by design."""

from __future__ import annotations

import numpy as np
import pytest

from model import volume as volumes
from model.segmenter import Segmenter
from model.volume_plan import VolumeOptions

AGREE = 1e-3  # identical members: what float rounding of E[p^2] - E[p]^2 leaves of their std
DIFFER = 0.03  # members from subsets of masks that differ: a rim pixel in or out of some of them


@pytest.fixture
def segmenter(tiny_net) -> Segmenter:
    return Segmenter(tiny_net, seed=0)


@pytest.fixture
def by_masks(segmenter, monkeypatch) -> Segmenter:
    """The segmenter with the fake network: probs (B, 1, N, N) = the mean of the task's support masks."""
    monkeypatch.setattr(segmenter, "predict_torch", lambda q, si, sm: sm.mean(dim=1))
    return segmenter


def _volume(rng, depth: int, z: tuple[int, int], shape=(24, 20), noise: float = 10.0, ball: bool = True):
    """(H, W, D) with a bright label 1 on the slices z[0]..z[1]: a ball (a disc widest mid-way), or with
    ``ball`` False the same disc on every slice; ``noise`` 0: no noise."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros((*shape, depth), np.uint8)
    mid, half = (z[0] + z[1]) / 2, (z[1] - z[0]) / 2 + 1
    for i in range(z[0], z[1] + 1):
        radius = shape[1] / 4 * ((1 - abs(i - mid) / half) if ball else 1) + 1
        mask[(yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 <= radius ** 2, i] = 1
    volume = 100 + 300 * (mask > 0) + (rng.normal(0, noise, mask.shape) if noise else 0)
    return volume.astype(np.float32), mask


def _support(rng, n=3):
    pairs = [_volume(rng, 20, (4, 16)) for _ in range(n)]
    return [v for v, _ in pairs], [m for _, m in pairs]


def test_an_ensemble_volume_returns_the_members_std_in_the_querys_shape(by_masks, rng):
    query, _ = _volume(rng, 30, (10, 20))
    images, masks = _support(rng)
    kwargs = dict(support_slices=6, skip_margin=0.1, ensemble=3, probs=True)
    result = by_masks.predict_volume_result(query, images, masks, spread=True, **kwargs)
    assert result.spread.shape == result.probs.shape == (1, *query.shape) and result.spread.dtype == np.float32
    assert result.spread.min() >= 0 and result.spread.max() <= 0.5
    assert result.spread.max() > DIFFER
    assert result.skipped and not result.spread[..., result.skipped].any()  # not run: std 0, as probs 0
    assert not result.spread[result.probs == 0].any()
    plain = by_masks.predict_volume_result(query, images, masks, **kwargs)  # spread not asked: none kept
    assert plain.spread is None
    np.testing.assert_array_equal(plain.probs, result.probs)
    np.testing.assert_array_equal(plain.mask, result.mask)


def test_members_that_agree_give_a_zero_spread(segmenter, rng):
    """Support volumes whose slices are all alike: every subset of support slices is the same set (the real
    network, so that agreeing members are not an artefact of the fake)."""
    query, _ = _volume(rng, 12, (3, 8))
    image, mask = _volume(rng, 20, (0, 19), noise=0, ball=False)
    result = segmenter.predict_volume_result(query, [image, image], [mask, mask], support_slices=6, skip_margin=None,
                                             ensemble=4, probs=True, spread=True)
    assert result.spread is not None and result.spread.shape == (1, *query.shape)
    assert result.spread.max() < AGREE
    assert result.probs.max() > 0  # the members ran (and agreed)


def test_ensemble_1_keeps_no_spread_and_the_same_answer(segmenter, rng):
    query, _ = _volume(rng, 16, (5, 10))
    images, masks = _support(rng)
    with_spread = segmenter.predict_volume_result(query, images, masks, probs=True, spread=True)
    without = segmenter.predict_volume_result(query, images, masks, probs=True)
    assert with_spread.spread is None and without.spread is None
    np.testing.assert_array_equal(with_spread.probs, without.probs)


@pytest.mark.parametrize("options", [dict(cascade=True), dict(coarse=3), dict(coarse=1)])
def test_cascade_and_coarse_to_fine_give_a_spread_without_changing_their_answer(by_masks, rng, options):
    query, _ = _volume(rng, 30, (8, 22))
    images, masks = _support(rng)
    support = by_masks.prepare_volume_support(images, masks)
    opts = VolumeOptions(support_slices=4, skip_margin=0.1, ensemble=3, **options)
    result = volumes.predict_with_volumes(by_masks, query, support, opts, want_probs=True, want_spread=True)
    plain = volumes.predict_with_volumes(by_masks, query, support, opts, want_probs=True)
    np.testing.assert_array_equal(result.mask, plain.mask)
    np.testing.assert_array_equal(result.probs, plain.probs)
    assert result.tasks == plain.tasks and plain.spread is None
    assert result.spread.shape == (1, *query.shape) and result.spread.max() > DIFFER
    assert result.skipped and not result.spread[..., result.skipped].any()
    assert not result.spread[result.probs == 0].any()


def test_a_2d_support_set_over_a_volume_gives_the_members_std(by_masks, rng):
    query, truth = _volume(rng, 12, (2, 9))
    pick = (2, 4, 6, 9)  # discs of different sizes
    different = by_masks.prepare_support([query[..., i] for i in pick], [truth[..., i] for i in pick])
    same = by_masks.prepare_support([query[..., 5]] * 4, [truth[..., 5]] * 4)
    kwargs = dict(ensemble=3, probs=True, spread=True)
    differ = by_masks.predict_volume_result(query, support=different, **kwargs)
    agree = by_masks.predict_volume_result(query, support=same, **kwargs)
    assert differ.spread.shape == agree.spread.shape == (1, *query.shape)
    assert differ.spread.max() > DIFFER and agree.spread.max() < AGREE
    cleared = volumes.predict_with_2d_support(by_masks, query, different, VolumeOptions(ensemble=3), want_probs=True,
                                              min_area=1.0, want_spread=True)  # every label below the minimum area
    assert not cleared.probs.any() and not cleared.spread.any()  # cleared: std 0 too
    positioned = by_masks.predict_volume_result(query, support=different, support_positions=[0.2, 0.4, 0.6, 0.8],
                                                skip_margin=0.0, **kwargs)
    assert positioned.skipped and not positioned.spread[..., positioned.skipped].any()
    one = by_masks.prepare_support([query[..., 5]], [truth[..., 5]])
    assert by_masks.predict_volume_result(query, support=one, **kwargs).spread is None  # one member
