"""Preprocessing: grey conversion, normalisation, resizing, label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import InputError
from data.preprocess import check_mask, label_values, normalize, prepare_image, prepare_mask, resize, to_gray


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((7, 9), np.uint8), ((7, 9), np.uint16), ((7, 9), np.float64), ((7, 9, 1), np.int32), ((7, 9), bool)],
)
def test_to_gray_single_channel_keeps_values(rng, shape, dtype):
    image = (rng.random(shape) * 200).astype(dtype)
    gray = to_gray(image)
    assert gray.shape == (7, 9) and gray.dtype == np.float32
    np.testing.assert_allclose(gray, image.reshape(7, 9).astype(np.float32))


def test_to_gray_colour_uses_luma(rng):
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(to_gray(rgb), expected, rtol=1e-5)
    rgba = np.dstack([rgb, np.zeros((5, 6), np.uint8)])
    np.testing.assert_allclose(to_gray(rgba), expected, rtol=1e-5)  # alpha is ignored
    grey_rgb = np.repeat(rgb[..., :1], 3, axis=-1)
    np.testing.assert_allclose(to_gray(grey_rgb), rgb[..., 0], rtol=1e-5)


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 5, 6)), np.zeros(5), np.zeros((0, 5)), np.array([["a", "b"]]), np.zeros((2, 2), np.complex64)],
)
def test_to_gray_refuses(image):
    with pytest.raises(InputError) as info:
        to_gray(image, field="support_images[3]")
    assert info.value.field == "support_images[3]"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_to_gray_refuses_non_finite(bad):
    image = np.ones((3, 3), np.float32)
    image[1, 2] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        to_gray(image)


def test_normalize(rng):
    image = rng.normal(50, 20, (16, 16)).astype(np.float32)
    out = normalize(image)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    np.testing.assert_allclose(normalize(image * 3 + 7), out, atol=1e-6)  # affine intensity changes vanish
    np.testing.assert_array_equal(normalize(np.full((4, 4), 9.0)), np.zeros((4, 4)))
    image[0, 0] = 1e6  # one outlier
    clipped = normalize(image, (1, 99))
    assert clipped.min() == 0 and clipped.max() == 1
    assert np.median(clipped) > 0.3  # plain min-max would squash everything near 0
    assert np.median(normalize(image)) < 1e-3


def test_resize(rng):
    x = torch.from_numpy(rng.random((2, 3, 10, 14)).astype(np.float32))
    assert resize(x, (10, 14)) is x
    out = resize(x, (20, 7))
    assert out.shape == (2, 3, 20, 7)
    constant = torch.full((1, 9, 13), 0.25)
    torch.testing.assert_close(resize(constant, (32, 32)), torch.full((1, 32, 32), 0.25))
    torch.testing.assert_close(resize(constant, (4, 5)), torch.full((1, 4, 5), 0.25))


def test_resize_shrinking_is_antialiased():
    stripes = torch.zeros(64, 64)
    stripes[:, ::2] = 1.0  # one-pixel stripes: without antialiasing a 4x shrink samples only one phase
    small = resize(stripes, (16, 16))
    torch.testing.assert_close(small, torch.full((16, 16), 0.5), atol=0.05, rtol=0)


def test_prepare_image_range_and_size(rng):
    out = prepare_image(rng.integers(0, 4096, (37, 53), dtype=np.uint16), 32, "query")
    assert out.shape == (32, 32) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1


def test_label_values_and_check_mask():
    mask = np.array([[0, 7, 7], [2, 0, 2]])
    assert label_values(mask) == [2, 7]
    assert label_values(np.zeros((2, 2))) == []
    assert check_mask(mask.astype(np.float32), (2, 3), "m").dtype == np.int64
    np.testing.assert_array_equal(check_mask(mask > 0, (2, 3), "m"), mask > 0)
    np.testing.assert_array_equal(check_mask(np.dstack([mask] * 3), (2, 3), "m"), mask)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((2, 4)), "must match"),
        (np.zeros((2, 3, 5)), "2D label map"),
        (np.full((2, 3), 0.5), "integer labels"),
        (np.full((2, 3), np.nan), "NaN"),
        (np.full((2, 3), -1), "negative"),
    ],
)
def test_check_mask_refuses(mask, message):
    with pytest.raises(InputError, match=message) as info:
        check_mask(mask, (2, 3), "support_masks[2]")
    assert info.value.field == "support_masks[2]"


def test_prepare_mask(rng):
    mask = np.zeros((64, 48), np.int64)
    mask[8:40, 8:24] = 2
    mask[40:56, 30:46] = 7
    out = prepare_mask(mask, [2, 7], 32)
    assert out.shape == (2, 32, 32)
    assert 0 <= out.min() and out.max() <= 1
    # the area fraction of each label survives the resize
    for k, label in enumerate([2, 7]):
        np.testing.assert_allclose(out[k].mean().item(), (mask == label).mean(), atol=0.01)
    exact = prepare_mask(mask[:32, :32], [2], 32)
    np.testing.assert_array_equal(exact[0].numpy(), (mask[:32, :32] == 2).astype(np.float32))
