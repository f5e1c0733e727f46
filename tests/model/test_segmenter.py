"""The numpy door: any size, RGB, label values, ensembles, volumes, and typed errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from data.io import encode_mask, read_image, read_mask, save_image
from model.errors import InputError
from model.segmenter import Segmenter, merge_labels


@pytest.fixture
def segmenter(tiny_net) -> Segmenter:
    return Segmenter(tiny_net, seed=0)


def _disc(shape: tuple[int, int], center: tuple[float, float], radius: float, label: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inside = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
    return (inside * label).astype(np.uint8)


def _support(rng, n: int, shape=(40, 48), labels=(1,)):
    """n (image, label map) pairs: bright discs on noise, one disc per label."""
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros(shape, np.uint8)
        for k, label in enumerate(labels):
            center = (rng.uniform(0.3, 0.7) * shape[0], (0.25 + 0.5 * k / max(1, len(labels) - 1)) * shape[1])
            mask = np.where(mask == 0, _disc(shape, center, min(shape) / 6, label), mask)
        images.append((rng.normal(0.2, 0.05, shape) + 0.6 * (mask > 0)).astype(np.float32))
        masks.append(mask)
    return images, masks


def test_odd_query_size_gives_mask_at_query_size(segmenter, rng):
    images, masks = _support(rng, 3)
    query = rng.random((37, 53)).astype(np.float32)
    mask = segmenter.predict(query, images, masks)
    assert mask.shape == (37, 53)
    assert mask.dtype == np.uint8
    probs = segmenter.predict_proba(query, images, masks)
    assert probs.shape == (1, 37, 53)
    assert probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1
    np.testing.assert_array_equal(mask, merge_labels(probs, (1,), 0.5))


def test_rgb_query_with_equal_channels_equals_gray(segmenter, rng):
    images, masks = _support(rng, 2)
    gray = rng.integers(0, 256, (30, 45), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    probs_rgb = segmenter.predict_proba(rgb, images, masks)
    assert probs_rgb.shape == (1, 30, 45)
    np.testing.assert_allclose(probs_rgb, segmenter.predict_proba(gray, images, masks), atol=1e-5)
    colour = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    assert segmenter.predict(colour, images, masks).shape == (30, 45)


def test_intensity_scale_and_offset_do_not_change_probs(segmenter, rng):
    images, masks = _support(rng, 3)
    query = rng.random((33, 40)).astype(np.float32)
    base = segmenter.predict_proba(query, images, masks)
    shifted = segmenter.predict_proba(query * 1000.0 - 300.0, images, masks)
    np.testing.assert_allclose(base, shifted, atol=1e-4)
    as_uint16 = segmenter.predict_proba((query * 65535).astype(np.uint16), images, masks)
    np.testing.assert_allclose(base, as_uint16, atol=1e-3)


def test_support_order_does_not_matter(segmenter, rng):
    images, masks = _support(rng, 5)
    query = rng.random((36, 36)).astype(np.float32)
    base = segmenter.predict_proba(query, images, masks)
    order = [3, 0, 4, 2, 1]
    permuted = segmenter.predict_proba(query, [images[i] for i in order], [masks[i] for i in order])
    np.testing.assert_allclose(base, permuted, atol=1e-5)
    # ...but the support set does matter
    other = segmenter.predict_proba(query, images, [np.fliplr(m) for m in masks])
    assert np.abs(base - other).max() > 1e-4


def test_multi_label_values_come_back(segmenter, rng):
    images, masks = _support(rng, 4, labels=(2, 7))
    assert set(np.unique(masks[0])) == {0, 2, 7}
    query = images[0]
    probs = segmenter.predict_proba(query, images, masks)
    assert probs.shape == (2, 40, 48)
    everywhere = segmenter.predict(query, images, masks, threshold=0.0)
    assert set(np.unique(everywhere)) <= {2, 7}
    np.testing.assert_array_equal(everywhere, np.where(probs[1] > probs[0], 7, 2))
    assert set(np.unique(segmenter.predict(query, images, masks))) <= {0, 2, 7}
    support = segmenter.prepare_support(images, masks)
    assert support.labels == (2, 7)
    np.testing.assert_allclose(segmenter.predict_proba(query, support=support), probs, atol=1e-6)


def test_merge_labels_maps_indices_to_values():
    probs = np.array([[[0.9, 0.2, 0.1]], [[0.6, 0.7, 0.2]]], dtype=np.float32)  # (K=2, 1, 3)
    np.testing.assert_array_equal(merge_labels(probs, (2, 7), 0.5), [[2, 7, 0]])
    wide = merge_labels(probs, (2, 300), 0.5)
    assert wide.dtype == np.uint16
    np.testing.assert_array_equal(wide, [[2, 300, 0]])


def test_support_items_of_different_sizes(segmenter, rng):
    images, masks = [], []
    for shape in [(20, 30), (41, 17), (64, 64)]:
        i, m = _support(rng, 1, shape=shape)
        images += i
        masks += m
    mask = segmenter.predict(rng.random((25, 25)), images, masks)
    assert mask.shape == (25, 25)


def test_ensemble_is_deterministic_for_a_seed(tiny_net, rng):
    images, masks = _support(rng, 6)
    query = rng.random((32, 40)).astype(np.float32)
    first = Segmenter(tiny_net, seed=3).predict_proba(query, images, masks, ensemble=3)
    again = Segmenter(tiny_net, seed=3).predict_proba(query, images, masks, ensemble=3)
    np.testing.assert_array_equal(first, again)
    other_seed = Segmenter(tiny_net, seed=4).predict_proba(query, images, masks, ensemble=3)
    single = Segmenter(tiny_net, seed=3).predict_proba(query, images, masks, ensemble=1)
    assert np.abs(first - other_seed).max() > 1e-6
    assert np.abs(first - single).max() > 1e-6


def test_predict_many_matches_predict(segmenter, rng):
    images, masks = _support(rng, 3)
    support = segmenter.prepare_support(images, masks)
    queries = [rng.random((31, 29)), rng.random((16, 70))]
    calls = []
    many = segmenter.predict_many(queries, support, progress=lambda done, total: calls.append((done, total)))
    for query, probs in zip(queries, many, strict=True):
        np.testing.assert_allclose(probs, segmenter.predict_proba(query, support=support), atol=1e-5)
    assert calls[-1] == (2, 2)


def test_progress_counts_finished_queries(tiny_net, rng, monkeypatch):
    images, masks = _support(rng, 4, labels=(2, 7))
    segmenter = Segmenter(tiny_net, max_batch_items=4)  # one (query, label) task per forward pass
    support = segmenter.prepare_support(images, masks)
    forwards = []
    original = tiny_net.forward
    monkeypatch.setattr(tiny_net, "forward", lambda *args: (forwards.append(1), original(*args))[1])
    calls = []
    segmenter.predict_many(
        [rng.random((20, 20)), rng.random((20, 20))], support, progress=lambda d, t: calls.append((d, t, len(forwards)))
    )
    # a query counts as done once both of its labels went through the network
    assert calls == [(1, 2, 2), (2, 2, 4)]


def _errors(segmenter: Segmenter, rng):
    images, masks = _support(rng, 2)
    nan_query = rng.random((20, 20))
    nan_query[3, 4] = np.nan
    nan_support = [images[0].copy(), images[1]]
    nan_support[0][0, 0] = np.inf
    return {
        "no support": (lambda: segmenter.predict(images[0], [], []), "support_images"),
        "count mismatch": (lambda: segmenter.predict(images[0], images, masks[:1]), "support_masks"),
        "mask size": (lambda: segmenter.predict(images[0], images, [masks[0], masks[1][:-1]]), "support_masks[1]"),
        "nan query": (lambda: segmenter.predict(nan_query, images, masks), "query"),
        "inf support": (lambda: segmenter.predict(images[0], nan_support, masks), "support_images[0]"),
        "no foreground": (lambda: segmenter.predict(images[0], images, [m * 0 for m in masks]), "support_masks"),
        "too many": (lambda: segmenter.predict(images[0], images * 5, masks * 5), "support_images"),
        "3D query": (lambda: segmenter.predict(rng.random((4, 20, 20)), images, masks), "query"),
        "1D query": (lambda: segmenter.predict(rng.random(20), images, masks), "query"),
        "fractional mask": (lambda: segmenter.predict(images[0], images, [m * 0.5 for m in masks]), "support_masks[0]"),
        "negative mask": (lambda: segmenter.predict(images[0], images, [m.astype(int) - 1 for m in masks]), None),
        "bad threshold": (lambda: segmenter.predict(images[0], images, masks, threshold=2.0), "threshold"),
        "bad ensemble": (lambda: segmenter.predict(images[0], images, masks, ensemble=0), "ensemble"),
        "2D volume": (lambda: segmenter.predict_volume(images[0], [images[0][..., None]], [masks[0]]), "query"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no support",
        "count mismatch",
        "mask size",
        "nan query",
        "inf support",
        "no foreground",
        "too many",
        "3D query",
        "1D query",
        "fractional mask",
        "negative mask",
        "bad threshold",
        "bad ensemble",
        "2D volume",
    ],
)
def test_errors_name_the_field(segmenter, rng, case):
    call, field = _errors(segmenter, rng)[case]
    with pytest.raises(InputError) as info:
        call()
    if field is not None:
        assert info.value.field == field
    else:
        assert info.value.field.startswith("support_masks")
    assert info.value.message


def _volume_task(rng, shape=(24, 20, 6), labels=(2, 7)):
    """A volume with a bright ball per label and its label map."""
    xx, yy, zz = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, np.uint8)
    for k, label in enumerate(labels):
        center = (shape[0] * (0.3 + 0.4 * k), shape[1] / 2, shape[2] / 2)
        ball = (xx - center[0]) ** 2 + (yy - center[1]) ** 2 + ((zz - center[2]) * 2) ** 2 <= (shape[1] / 4) ** 2
        mask[ball] = label
    volume = rng.normal(100, 10, shape) + 300 * (mask > 0)
    return volume.astype(np.int16), mask


def test_predict_volume_keeps_shape_and_labels(segmenter, rng):
    query, _ = _volume_task(rng, shape=(24, 20, 7))
    support = [_volume_task(rng) for _ in range(2)]
    calls = []
    mask = segmenter.predict_volume(
        query,
        [v for v, _ in support],
        [m for _, m in support],
        slices_per_volume=2,
        skip_margin=None,  # every slice runs: at threshold 0 each gets a label
        threshold=0.0,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert mask.shape == query.shape
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {2, 7}
    assert {2, 7} & set(np.unique(mask))
    assert calls and calls[-1] == (7, 7)
    assert all(total == 7 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    default = segmenter.predict_volume(query, [v for v, _ in support], [m for _, m in support], axis=0)
    assert default.shape == query.shape
    assert set(np.unique(default)) <= {0, 2, 7}


def test_predict_volume_errors(segmenter, rng):
    volume, mask = _volume_task(rng)
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(volume, [volume], [mask[:-1]])
    assert info.value.field == "support_masks"
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(volume, [volume], [mask * 0])
    assert info.value.field == "support_masks"
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(np.where(mask > 0, np.nan, volume), [volume], [mask])
    assert info.value.field == "query"
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(volume, [volume, np.where(mask > 0, np.inf, volume)], [mask, mask])
    assert info.value.field == "support_images[1]"
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(volume, [volume], [mask], axis=3)
    assert info.value.field == "axis"
    with pytest.raises(InputError) as info:
        segmenter.predict_volume(volume, [volume] * 3, [mask] * 3, slices_per_volume=3)
    assert info.value.field == "slices_per_volume"


def test_nifti_in_nifti_out_through_the_segmenter(segmenter, rng, tmp_path):
    affine = np.array([[0.0, -0.8, 0.1, 12.5], [0.9, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    query_volume, _ = _volume_task(rng, shape=(24, 20, 5))
    support_volume, support_mask = _volume_task(rng)
    query = read_image(save_image(query_volume, tmp_path / "query.nii.gz", affine=affine))
    assert query.kind == "volume"
    mask = segmenter.predict_volume(query.array, [support_volume], [support_mask], slices_per_volume=2)
    payload, media_type, extension = encode_mask(mask, query)
    assert (media_type, extension) == ("application/gzip", ".nii.gz")
    back = read_mask(payload)
    assert back.array.shape == query.array.shape == (24, 20, 5)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_array_equal(back.affine, query.affine)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
