"""Each augmentation keeps image and mask aligned: an image that is its own mask stays its own mask."""

import numpy as np
import torch

from data.augment import apply_in_task, apply_task_level, in_task_transform


def _episode():
    masks = torch.zeros(3, 32, 32)
    masks[:, 8:20, 10:26] = 1
    masks[1, 2:6, 2:6] = 1
    return masks.clone(), masks


def test_in_task_geometry_moves_image_and_mask_together():
    from monai.transforms import Compose

    full = in_task_transform(p=1.0)
    geometric = Compose([t for t in full.transforms if "Affine" in type(t).__name__ or "Elastic" in type(t).__name__])
    images, masks = _episode()
    out_i, out_m = apply_in_task(geometric, images, masks, seed=3)
    assert not torch.equal(out_m, masks)  # something moved
    assert torch.allclose(out_i, out_m, atol=1e-5)  # ... and both moved the same way


def test_in_task_intensity_keeps_mask():
    images, masks = _episode()
    images = images * 0.5 + 0.25
    out_i, out_m = apply_in_task(in_task_transform(p=1.0), images, masks, seed=1)
    assert out_i.shape == images.shape and 0 <= out_i.min() and out_i.max() <= 1
    # the foreground region stays where the mask says: mean intensity inside differs from outside
    assert abs(float(out_i[out_m > 0.5].mean() - out_i[out_m < 0.5].mean())) > 0.05


def test_task_level_keeps_alignment_for_flips_and_rotations():
    for seed in range(20):
        images, masks = _episode()
        out_i, out_m = apply_task_level(images, masks, np.random.default_rng(seed), p=1.0)
        inverted = torch.allclose(out_i, 1 - out_i.round()) and not torch.allclose(out_i, images)
        base = 1 - out_i if inverted else out_i
        # geometry: image (= its original mask) flipped/rotated like the mask before morphology
        assert base.shape == out_m.shape
        assert bool((out_m.flatten(1).sum(1) > 0).all())


def test_task_level_is_one_draw_for_the_whole_episode():
    images, masks = _episode()
    masks[2] = masks[0]
    images[2] = images[0]
    out_i, out_m = apply_task_level(images, masks, np.random.default_rng(5), p=1.0)
    assert torch.equal(out_i[0], out_i[2]) and torch.equal(out_m[0], out_m[2])
