"""Support selection (model.retrieval): similar picks the nearest items, random is seeded, the defaults and the
errors; a support set over the old cap of 64 is accepted up to the pool limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import InputError
from model import retrieval
from model.segmenter import Segmenter
from model.support import PreparedSupport

N = 32


def _disk(cx: float, cy: float = 16.0, r: float = 5.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float32), torch.arange(N, dtype=torch.float32), indexing="ij")
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).float()  # (N, N) in {0, 1}


def _support(images: torch.Tensor) -> PreparedSupport:
    return PreparedSupport(images, (images > 0.5).float()[None], (1,))  # masks (K=1, S, N, N)


def _row_of_disks(n: int = 10, order: list[int] | None = None) -> PreparedSupport:
    """Item i is a disk at x = 4 + 2.5 i; ``order`` shuffles the items (item j of the set is disk order[j])."""
    order = order if order is not None else list(range(n))
    return _support(torch.stack([_disk(4 + 2.5 * i) for i in order]))


def test_similar_picks_the_nearest_items():
    support = _row_of_disks()
    query = _disk(4 + 2.5 * 4)  # the disk of item 4
    assert retrieval.choose(query, support, 1, "similar").tolist() == [4]
    assert retrieval.choose(query, support, 3, "similar").tolist() == [3, 4, 5]
    # a query between items 6 and 7: those two first, then their outer neighbours
    between = _disk(4 + 2.5 * 6.5)
    assert retrieval.choose(between, support, 2, "similar").tolist() == [6, 7]
    assert retrieval.choose(between, support, 4, "similar").tolist() == [5, 6, 7, 8]


def test_similar_follows_the_items_not_their_positions():
    order = [9, 2, 7, 0, 4, 1, 8, 3, 6, 5]  # item j of the set is disk order[j]
    support = _row_of_disks(order=order)
    picked = retrieval.choose(_disk(4 + 2.5 * 4), support, 3, "similar")
    assert sorted(order[j] for j in picked.tolist()) == [3, 4, 5]
    assert picked.tolist() == sorted(picked.tolist())  # indices come back ascending


def test_similar_ignores_brightness_and_contrast():
    support = _row_of_disks()
    query = 0.2 + 0.5 * _disk(4 + 2.5 * 8)  # the same shape, darker and flatter
    assert retrieval.choose(query, support, 1, "similar").tolist() == [8]


def test_a_volume_query_ranks_by_its_slices_mean_similarity():
    support = _row_of_disks()
    slices = torch.stack([_disk(4 + 2.5 * 2), _disk(4 + 2.5 * 3)])  # (D', N, N): between items 2 and 3
    assert retrieval.choose(slices, support, 2, "similar").tolist() == [2, 3]
    volume = np.stack([s.numpy() * 100 for s in slices], axis=-1)  # (H, W, D)
    prepared = retrieval.prepare_query(volume, N, axis=2)
    assert prepared.shape == (2, N, N)
    assert retrieval.choose(prepared, support, 2, "similar").tolist() == [2, 3]


def test_random_is_seeded_and_draws_distinct_items():
    support = _support(torch.rand(50, N, N, generator=torch.Generator().manual_seed(1)))
    query = torch.zeros(N, N)
    first = retrieval.choose(query, support, 8, "random", seed=3)
    assert torch.equal(first, retrieval.choose(query, support, 8, "random", seed=3))
    assert not torch.equal(first, retrieval.choose(query, support, 8, "random", seed=4))
    assert len(set(first.tolist())) == 8 and all(0 <= i < 50 for i in first.tolist())
    assert first.tolist() == sorted(first.tolist())


def test_subset_keeps_the_chosen_items_and_labels():
    support = _row_of_disks()
    picked = retrieval.subset(support, torch.tensor([1, 5]))
    assert picked.size == 2 and picked.labels == (1,)
    assert torch.equal(picked.images[1], support.images[5]) and torch.equal(picked.masks[0, 0], support.masks[0, 1])
    assert retrieval.subset(support, torch.arange(support.size)) is support


@pytest.mark.parametrize("select,size,pool,field", [
    ("closest", None, 10, "select"),
    ("similar", 11, 10, "support_size"),
    ("similar", 0, 10, "support_size"),
    ("random", 9, 10, "support_size"),  # above max_support = 8
    ("all", 4, 10, "select"),  # all with fewer items than the set
    ("all", None, 10, "select"),  # all with more items than the model takes
])
def test_bad_selections_name_the_field(select, size, pool, field):
    with pytest.raises(InputError) as info:
        retrieval.resolve(select, size, pool, max_support=8, large_default="similar")
    assert info.value.field == field and info.value.code == "invalid_request"


def test_defaults():
    # a set that fits the model: all of it
    assert retrieval.resolve(None, None, 8, max_support=8, large_default="similar") == ("all", 8)
    assert retrieval.resolve(None, 8, 8, max_support=8, large_default="similar") == ("all", 8)
    # a larger set, or fewer asked: the large default, at most what the model takes
    assert retrieval.resolve(None, None, 100, max_support=8, large_default="similar") == ("similar", 8)
    assert retrieval.resolve(None, None, 100, max_support=64, large_default="similar") == ("similar", 16)
    assert retrieval.resolve("random", None, 100, max_support=64, large_default="similar") == ("random", 16)
    assert retrieval.resolve(None, 3, 6, max_support=8, large_default="random") == ("random", 3)
    assert retrieval.resolve("random", None, 5, max_support=8, large_default="similar") == ("random", 5)


def test_for_query_reports_what_ran():
    support = _row_of_disks()
    picked, info = retrieval.for_query(_disk(4 + 2.5 * 4), support, "similar", 3, max_support=8)
    assert info == {"select": "similar", "support_size": 3, "pool": 10}
    assert torch.equal(picked.images, support.images[[3, 4, 5]])


def test_a_support_set_over_the_old_cap_is_a_pool(tiny_net, rng):
    segmenter = Segmenter(tiny_net)  # the tiny model takes 8 at once; a set may hold 512
    assert segmenter.max_support == 8 and segmenter.max_pool == 512
    images = [rng.random((20, 24)).astype(np.float32) for _ in range(70)]
    masks = [(im > 0.5).astype(np.uint8) for im in images]
    support = segmenter.prepare_support(images, masks)
    assert support.size == 70
    picked, info = retrieval.for_query(retrieval.prepare_query(images[0], segmenter.size), support, None, None,
                                       segmenter.max_support)
    assert info == {"select": "similar", "support_size": 8, "pool": 70}
    assert retrieval.choose(retrieval.prepare_query(images[0], segmenter.size), support, 1, "similar").tolist() == [0]
    assert segmenter.predict_proba(images[0], support=picked).shape == (1, 20, 24)
    small = Segmenter(tiny_net, max_pool=9)
    with pytest.raises(InputError) as info:
        small.prepare_support(images[:10], masks[:10])
    assert info.value.code == "too_many_support_items"
