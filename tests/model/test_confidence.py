"""Confidence per label, uncertainty maps, the mismatch check and the calibration sidecar (model.confidence)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.preprocess import prepare_gray
from model import confidence as conf
from model.segmenter import Segmenter, merge_labels
from model.support import PreparedSupport


@pytest.fixture
def segmenter(tiny_net) -> Segmenter:
    return Segmenter(tiny_net, seed=0)


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def _blobs(rng, n, shape=(40, 48)):
    images, masks = [], []
    for _ in range(n):
        mask = _disc(shape, (rng.uniform(15, 25), rng.uniform(18, 30)), 8)
        images.append((rng.normal(0.2, 0.03, shape) + 0.6 * mask).astype(np.float32))
        masks.append(mask)
    return images, masks


def test_confidence_in_range_and_monotone_in_the_probability_inside():
    region = _disc((32, 32), (16, 16), 7).astype(bool)
    values = []
    for p_in in (0.55, 0.7, 0.85, 0.99):
        probs = np.where(region, p_in, 0.05)[None].astype(np.float32)
        mask = merge_labels(probs, (1,), 0.5)
        (c,) = conf.label_confidence(probs, mask, (1,))
        assert 0.0 <= c <= 1.0
        values.append(c)
    assert values == sorted(values) and values[0] < values[-1] - 0.2


def test_confidence_falls_with_probability_outside_the_region_and_with_disagreement():
    region = _disc((32, 32), (16, 16), 7).astype(bool)
    base = None
    for p_out in (0.0, 0.2, 0.4):
        probs = np.where(region, 0.95, p_out)[None].astype(np.float32)
        (c,) = conf.label_confidence(probs, merge_labels(probs, (1,), 0.5), (1,))
        assert base is None or c < base
        base = c
    probs = np.where(region, 0.95, 0.0)[None].astype(np.float32)
    mask = merge_labels(probs, (1,), 0.5)
    agree, some, much = (conf.label_confidence(probs, mask, (1,), np.full_like(probs, s))[0] for s in (0, 0.1, 0.3))
    assert agree > some > much >= 0.0


def test_label_the_mask_does_not_hold_has_confidence_zero():
    probs = np.stack([np.full((8, 8), 0.9), np.full((8, 8), 0.1)]).astype(np.float32)
    expected = 2 * 0.9 * 64 / (0.9 * 64 + 64)  # soft Dice of p = 0.9 everywhere against the whole image
    assert conf.label_confidence(probs, merge_labels(probs, (1, 2), 0.5), (1, 2)) == [pytest.approx(expected), 0.0]


def test_members_spread_is_their_std_and_zero_when_all_members_agree(segmenter, rng):
    images, masks = _blobs(rng, 4)
    query = images[0] + rng.normal(0, 0.01, images[0].shape).astype(np.float32)
    support = segmenter.prepare_support(images, masks)
    probs, spread = segmenter.predict_many([query], support, ensemble=3, spread=True)[0]
    assert spread.shape == probs.shape == (1, *query.shape)
    # the members, one by one, through the same subsets
    q = prepare_gray(query, segmenter.size)[None]
    members = [segmenter.predict_prepared(q, [PreparedSupport(support.images[s], support.masks[:, s], support.labels)])
               for s in segmenter._subsets(support.size, 3)]
    members = torch.stack(members)[:, 0]  # (M, K, N, N)
    direct = segmenter.predict_prepared(q, [support], ensemble=3, spread=True)[1][0]
    assert torch.allclose(direct, members.std(0, unbiased=False), atol=5e-4)  # sqrt of a float32 variance
    assert float(direct.max()) > 0  # different subsets disagree somewhere
    # identical support items: every subset is the same set, every member the same answer
    same = segmenter.prepare_support([images[0]] * 4, [masks[0]] * 4)
    probs, spread = segmenter.predict_many([query], same, ensemble=3, spread=True)[0]
    u = conf.uncertainty_map(probs, spread)
    assert u.shape == (1, *query.shape) and float(np.abs(u).max()) < 1e-3


def test_one_member_gives_no_spread_and_the_entropy_map(segmenter, rng):
    images, masks = _blobs(rng, 3)
    probs, spread = segmenter.predict_many([images[0]], segmenter.prepare_support(images, masks), spread=True)[0]
    assert spread is None
    u = conf.uncertainty_map(probs)
    assert u.shape == probs.shape and 0.0 <= u.min() and u.max() <= 1.0
    assert conf.uncertainty_map(np.array([[0.0, 0.5, 1.0]]))[0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_mismatch_score_flags_a_clearly_different_query(segmenter, rng):
    images, masks = _blobs(rng, 8)
    support = segmenter.prepare_support(images[1:], masks[1:])
    matched = prepare_gray(images[0], segmenter.size)
    yy, xx = np.mgrid[:40, :48]
    stripes = ((xx // 2) % 2).astype(np.float32)  # high-frequency stripes: nothing like smooth blobs on noise
    other = prepare_gray(stripes, segmenter.size)
    scale = np.full(conf.image_features(segmenter.net, support.images).shape[1], 0.05)
    cal = conf.Calibration(calibrated=True, mismatch_scale=scale, mismatch_thresholds={1: 3.0})
    good, _ = conf.support_mismatch(segmenter.net, matched, support.images, cal)
    bad, size = conf.support_mismatch(segmenter.net, other, support.images, cal)
    assert size == 7 and bad > 3 * good
    assert bad > 3.0 > good
    a = conf.assess(np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.uint8), (1,), cal, mismatch=(bad, size))
    assert a.mismatch is True and conf.MISMATCH_WARNING in a.warnings
    b = conf.assess(np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.uint8), (1,), cal, mismatch=(good, size))
    assert b.mismatch is False and b.warnings == []


def test_sidecar_applies_only_to_the_weights_it_was_written_for(tmp_path, tiny_weights):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    assert conf.sidecar_path(weights) == tmp_path / "w.calibration.json"
    assert conf.load_calibration(weights).calibrated is False  # no sidecar
    side = {"weights_sha256": conf.file_sha256(str(weights)), "low_confidence": 0.42,
            "mismatch": {"scale": [1.0, 2.0], "thresholds": {"1": 3.0, "8": 2.0}}}
    conf.sidecar_path(weights).write_text(json.dumps(side))
    cal = conf.load_calibration(weights)
    assert cal.calibrated and cal.low_confidence == 0.42
    assert (cal.mismatch_threshold(1), cal.mismatch_threshold(5), cal.mismatch_threshold(20)) == (3.0, 3.0, 2.0)
    conf.sidecar_path(weights).write_text(json.dumps({**side, "weights_sha256": "0" * 64}))
    other = conf.load_calibration(weights)
    assert other.calibrated is False and other.low_confidence == conf.FALLBACK_LOW_CONFIDENCE
    assert other.mismatch_threshold(8) is None
    a = conf.assess(np.full((1, 4, 4), 0.9, np.float32), np.ones((4, 4), np.uint8), (1,), other, mismatch=(99.0, 8))
    d = a.to_dict()
    assert d["calibrated"] is False and d["mismatch"]["flagged"] is None and d["mismatch"]["score"] == 99.0
