"""Which support items to use from a large pool: ``select`` (``model.retrieval``) measured on held-out datasets.

The queries and pools are those of ``model.evaluate.evaluate`` with the same seed (a pool of P items is the
S = P support set of ``icseg eval``): for each dataset, label and query, a pool of up to P items (never the
query's own patient or volume, ``may_pair``), from which ``similar`` and ``random`` pick k items, each with
and without ensembling; ``all`` runs the whole pool at once as the reference. Dice at the query's resolution.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import DatasetFolder, may_pair
from data.preprocess import prepare_gray, prepare_mask, resize, to_gray
from model.evaluate import _dice, _load_2d, draw_queries
from model.retrieval import choose, embed, subset
from model.segmenter import Segmenter
from model.support import PreparedSupport


def method_name(select: str, ensemble: int) -> str:
    return select if ensemble == 1 else f"{select} ens{ensemble}"


def evaluate_selection(
    segmenter: Segmenter,
    folder: DatasetFolder,
    datasets: tuple[str, ...],
    support_sizes: list[int],
    pool_size: int,
    selects: tuple[str, ...] = ("similar", "random"),
    ensembles: tuple[int, ...] = (1, 4),
    n_queries: int = 16,
    seed: int = 0,
    progress: bool = True,
    reference: bool = True,
) -> list[dict]:
    """Rows of {dataset, label, support_size, method, select, ensemble, dice, n, pool, seconds}.

    ``support_size`` is k (the pool's size for the ``all`` reference), ``pool`` the mean pool size (smaller
    than ``pool_size`` where a dataset has fewer images), ``seconds`` the mean time of one prediction
    (selection included).
    """
    size = segmenter.size
    scores: dict[tuple, list[float]] = defaultdict(list)
    times: dict[tuple, list[float]] = defaultdict(list)
    pools: dict[tuple[str, int], list[int]] = defaultdict(list)
    for name in datasets:
        if folder.is_volume(name):
            continue
        images, masks, cases = _load_2d(folder, name)
        prepared = torch.stack([prepare_gray(to_gray(im), size, segmenter.clip_percentiles) for im in images])
        emb = embed(prepared)  # (n, D): what a stored prompt's items embed to, computed once per dataset
        labels = sorted(set().union(*(np.unique(m).tolist() for m in masks)) - {0})
        for label in labels:
            present = np.array([i for i, m in enumerate(masks) if (m == label).any()])
            if present.size < 2:
                continue
            label_masks = {int(i): prepare_mask(masks[i], [label], size)[0] for i in present}  # (N, N) each
            # the same draws as model.evaluate.evaluate: same queries, and the pool is its first P support items
            rng, queries = draw_queries(name, label, present, seed, n_queries)
            for q in tqdm(queries, desc=f"{name}/{label}", disable=not progress):
                allowed = np.array([i for i in present if may_pair(cases[q], cases[i])], dtype=int)
                if allowed.size == 0:
                    continue
                chosen = rng.permutation(allowed)[:pool_size]
                idx = torch.as_tensor(chosen, dtype=torch.long)
                pool = PreparedSupport(prepared[idx], torch.stack([label_masks[int(i)] for i in chosen])[None],
                                       (label,))
                pools[(name, label)].append(len(chosen))
                truth = masks[q] == label
                runs = [(s, k, e) for k in support_sizes for s in selects for e in ensembles]
                if reference:
                    runs.append(("all", pool_size, 1))
                for select, k, ensemble in runs:
                    start = time.perf_counter()
                    picked = choose(prepared[q], pool, min(k, pool.size), select, segmenter.seed, emb[idx])
                    probs = segmenter.predict_prepared(prepared[q][None], [subset(pool, picked)], ensemble)[0, 0]
                    pred = resize(probs[None], truth.shape)[0].numpy() >= 0.5
                    key = (name, label, k, method_name(select, ensemble))
                    times[key].append(time.perf_counter() - start)
                    scores[key].append(_dice(pred, truth))
    return [
        {"dataset": d, "label": lab, "support_size": k, "method": m, "select": m.split(" ")[0],
         "ensemble": int(m.split("ens")[1]) if "ens" in m else 1, "dice": float(np.mean(v)), "n": len(v),
         "pool": float(np.mean(pools[(d, lab)])), "seconds": float(np.mean(times[(d, lab, k, m)]))}
        for (d, lab, k, m), v in scores.items()
    ]


def selection_table(rows: list[dict], support_sizes: list[int]) -> str:
    """Markdown, side by side: per dataset/label and k, Dice of every (select, ensemble); the ``all`` reference
    (the whole pool at once) in the last column; then the mean over datasets (labels averaged first)."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["select"] != "all"))
    by = {(r["dataset"], r["label"], r["support_size"], r["method"]): r for r in rows}
    ref = {(r["dataset"], r["label"]): r["dice"] for r in rows if r["select"] == "all"}
    keys = sorted({(r["dataset"], r["label"]) for r in rows})
    head = ["dataset/label", "pool", "k", *methods, "all (pool)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d, lab in keys:
        for k in support_sizes:
            cells = [by.get((d, lab, k, m)) for m in methods]
            if not all(cells):
                continue
            pool = cells[0]["pool"]
            vals = " | ".join(f"{c['dice']:.3f}" for c in cells)
            lines.append(f"| {d}/{lab} | {pool:.0f} | {k} | {vals} | {ref.get((d, lab), float('nan')):.3f} |")
            for m, c in zip(methods, cells):
                per[(m, k)][d].append(c["dice"])
            per[("all", k)][d].append(ref.get((d, lab), float("nan")))
    for k in support_sizes:
        means = [np.mean([np.mean(v) for v in per[(m, k)].values()]) for m in [*methods, "all"]]
        lines.append(f"| **mean over datasets** | | {k} | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    return "\n".join(lines)


def selection_means(rows: list[dict]) -> dict[tuple[str, int], float]:
    """{(method, k): mean Dice over datasets, labels averaged within a dataset first}."""
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per[(r["method"], r["support_size"])][r["dataset"]].append(r["dice"])
    return {key: float(np.mean([np.mean(v) for v in d.values()])) for key, d in per.items()}
