"""Which support items a query uses when the support set (a large stored prompt) holds more than it needs.

``select``:

- ``all``: every item (the model takes the whole set at once; ``support_size`` must be unset or cover it);
- ``similar``: per query, the ``support_size`` items whose images are nearest to the query by a cheap
  embedding (``embed``: the image average-pooled to 16 x 16, centred and scaled to unit length; cosine
  similarity), ties broken by item order;
- ``random``: ``support_size`` items drawn uniformly without replacement, seeded (the same prompt, size and
  seed give the same items).

Selection happens before the model runs; ensembling (``Segmenter``'s ``ensemble``) then draws its subsets
from the selected items. Letters: S support items, k the selected ones, N the network side, D the embedding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import InputError
from data.preprocess import prepare_gray, to_gray
from model.support import PreparedSupport

Select = Literal["all", "similar", "random"]
SELECTS: tuple[str, ...] = ("all", "similar", "random")
# what an unset ``select`` means for a support set larger than the model takes at once: chosen by the table of
# docs/examples-guide.md (`icseg eval --select similar,random`)
LARGE_DEFAULT: Select = "similar"
LARGE_SIZE = 16  # and how many items of such a set a query uses when support_size is unset (same table)
EMBED_SLICES = 16  # a volume query embeds as the mean of this many evenly spaced slices
EMBED_SIDE = 16  # the pooled image's side: D = 256; cheap, and coarse enough to ignore texture noise


def check_select(select: str, support_size: int | None, pool: int, max_support: int) -> None:
    """The one validation of a request's (select, support_size) against a support set of ``pool`` items.

    Args:
        max_support: the most items the model takes at once (``Segmenter.max_support``).

    Raises:
        InputError: field "select" (unknown value, or ``all`` on a set larger than ``max_support``) or
            "support_size" (below 1, above the set or above ``max_support``).
    """
    if select not in SELECTS:
        raise InputError(f"select must be one of {', '.join(SELECTS)}, got {select!r}", field="select",
                         code="invalid_request")
    if support_size is not None:
        if support_size < 1:
            raise InputError(f"support_size must be at least 1, got {support_size}", field="support_size",
                             code="invalid_request")
        if support_size > pool:
            raise InputError(f"support_size {support_size} is larger than the support set ({pool} items); send at "
                             f"most {pool}", field="support_size", code="invalid_request")
        if support_size > max_support:
            raise InputError(f"support_size {support_size} is above the {max_support} items the model takes at once",
                             field="support_size", code="invalid_request")
    if select == "all" and support_size is not None and support_size < pool:
        raise InputError(f"select=all uses every one of the {pool} support items, but support_size is "
                         f"{support_size}; choose select=similar or random, or drop support_size", field="select",
                         code="invalid_request")
    if select == "all" and pool > max_support:
        raise InputError(f"the support set holds {pool} items, more than the {max_support} the model takes at once; "
                         "set support_size and select=similar or random", field="select", code="invalid_request")


def resolve(select: str | None, support_size: int | None, pool: int, max_support: int,
            large_default: Select) -> tuple[Select, int]:
    """A request's (select, k) with the defaults filled in, validated (``check_select``).

    Unset ``select``: ``all`` when the set fits the model (``pool <= max_support``) and no smaller
    ``support_size`` is asked, else ``large_default``. Unset ``support_size``: the whole set when it fits the
    model, else ``LARGE_SIZE`` (capped at ``max_support``).
    """
    if select is None:
        fits = pool <= max_support and (support_size is None or support_size >= pool)
        select = "all" if fits else large_default
    if select == "all":
        check_select(select, support_size, pool, max_support)
        return "all", pool
    k = support_size if support_size is not None else (pool if pool <= max_support else min(LARGE_SIZE, max_support))
    check_select(select, k, pool, max_support)
    return select, k  # type: ignore[return-value]


def prepare_query(query: np.ndarray, size: int, clip_percentiles: tuple[float, float] | None = None,
                  axis: int | None = None) -> torch.Tensor:
    """A user's query as ``choose`` compares it: (N, N), or (D', N, N) for a volume (``axis`` set): up to
    ``EMBED_SLICES`` evenly spaced slices along ``axis``, each prepared like a 2D support image.

    Args:
        query: (H, W) or (H, W, 3) any dtype; or a volume (H, W, D) with ``axis``.
    """
    if axis is None:
        return prepare_gray(to_gray(query), size, clip_percentiles)
    slices = np.moveaxis(np.asarray(query), axis, 0)  # (D, ...)
    picks = np.unique(np.linspace(0, slices.shape[0] - 1, min(EMBED_SLICES, slices.shape[0])).round().astype(int))
    return torch.stack([prepare_gray(to_gray(slices[i]), size, clip_percentiles) for i in picks])


def for_query(query: torch.Tensor, support: PreparedSupport, select: str | None, support_size: int | None,
              max_support: int, seed: int = 0, large_default: Select = LARGE_DEFAULT) -> tuple[PreparedSupport, dict]:
    """The support set a request uses, and what was chosen.

    Args:
        query: ``prepare_query``'s (N, N) or (D', N, N).
        select, support_size: the request's (None: defaults, see ``resolve``).
        max_support: the most items the model takes at once.

    Returns:
        (the selected support set, {"select", "support_size", "pool"}: what ran).

    Raises:
        InputError: fields "select" or "support_size" (``check_select``).
    """
    chosen, k = resolve(select, support_size, support.size, max_support, large_default)
    picked = subset(support, choose(query, support, k, chosen, seed))
    return picked, {"select": chosen, "support_size": picked.size, "pool": support.size}


def embed(images: torch.Tensor) -> torch.Tensor:
    """Cheap image embedding for retrieval.

    Args:
        images: (S, N, N) float32 in [0, 1] (prepared, as a ``PreparedSupport`` holds them).

    Returns:
        (S, D) float32, unit length (a constant image embeds as zeros), D = ``EMBED_SIDE`` squared.
    """
    pooled = F.adaptive_avg_pool2d(images.float().unsqueeze(1), EMBED_SIDE).flatten(1)  # (S, D)
    pooled = pooled - pooled.mean(dim=1, keepdim=True)
    return F.normalize(pooled, dim=1)


def choose(query: torch.Tensor, support: PreparedSupport, k: int, select: Select, seed: int = 0,
           embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """The indices of the support items one query uses.

    Args:
        query: (N, N) float32 in [0, 1], prepared like the support images; or (D', N, N) slices of a volume,
            whose similarities are averaged.
        support: the full support set (S items).
        k: how many items (1 <= k <= S).
        select: ``all``, ``similar`` or ``random``.
        seed: seeds ``random``.
        embeddings: ``embed(support.images)`` when already computed (several queries on one prompt).

    Returns:
        (k,) int64 indices in ascending order (S of them for ``all``).
    """
    n = support.size
    if select == "all" or k >= n:
        return torch.arange(n)
    if select == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=gen)[:k].sort().values
    if select != "similar":
        raise InputError(f"select must be one of {', '.join(SELECTS)}, got {select!r}", field="select",
                         code="invalid_request")
    emb = embed(support.images) if embeddings is None else embeddings  # (S, D)
    queries = query.unsqueeze(0) if query.ndim == 2 else query  # (D', N, N)
    sims = (emb @ embed(queries).T).mean(dim=1)  # (S,)
    # stable: equal similarities keep item order, so the choice never depends on sort internals
    order = torch.sort(-sims, stable=True).indices
    return order[:k].sort().values


def subset(support: PreparedSupport, indices: torch.Tensor) -> PreparedSupport:
    """The support set restricted to ``indices`` (views where possible; labels unchanged)."""
    if indices.numel() == support.size and bool((indices == torch.arange(support.size)).all()):
        return support
    return PreparedSupport(support.images[indices], support.masks[:, indices], support.labels)


def select_support(query: torch.Tensor, support: PreparedSupport, k: int, select: Select,
                   seed: int = 0) -> PreparedSupport:
    """``subset(support, choose(...))``: the support set one prepared query (N, N) uses."""
    return subset(support, choose(query, support, k, select, seed))
