import torch

from data.synthetic import synthetic_episode


def test_seeded_determinism_and_masks():
    a = synthetic_episode(5, 64, torch.Generator().manual_seed(7))
    b = synthetic_episode(5, 64, torch.Generator().manual_seed(7))
    c = synthetic_episode(5, 64, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    images, masks = a
    assert images.shape == masks.shape == (5, 64, 64)
    assert images.min() >= 0 and images.max() <= 1
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}


def test_masks_non_empty_over_many_seeds():
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        _, masks = synthetic_episode(4, 32, gen)
        assert bool((masks.flatten(1).sum(1) > 0).all())


def test_subjects_of_a_task_differ_but_share_structure():
    images, masks = synthetic_episode(2, 64, torch.Generator().manual_seed(3))
    assert not torch.equal(images[0], images[1])
    inter = (masks[0] * masks[1]).sum()
    union = ((masks[0] + masks[1]) > 0).sum()
    assert inter / union > 0.2  # deformations of one label map, not unrelated maps
