"""Inference options of the Segmenter: flip test-time augmentation is the mean of the plain and mirrored task."""

from __future__ import annotations

import numpy as np

from model.segmenter import Segmenter


def test_flip_is_the_mean_of_plain_and_mirrored(tiny_net):
    rng = np.random.default_rng(0)
    seg = Segmenter(tiny_net, seed=0)
    query = rng.random((40, 48)).astype(np.float32)
    images = [rng.random((40, 48)).astype(np.float32) for _ in range(3)]
    masks = [(rng.random((40, 48)) > 0.7).astype(np.uint8) for _ in range(3)]
    plain = seg.predict_proba(query, images, masks)
    mirrored = seg.predict_proba(query[:, ::-1], [i[:, ::-1] for i in images], [m[:, ::-1] for m in masks])[:, :, ::-1]
    both = seg.predict_proba(query, images, masks, flip=True)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the tiny net is not mirror-symmetric: the test can fail
    np.testing.assert_allclose(both, (plain + mirrored) / 2, atol=2e-3)
    mask = seg.predict(query, images, masks, flip=True, ensemble=2)
    assert mask.shape == (40, 48) and set(np.unique(mask)) <= {0, 1}
