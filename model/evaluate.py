"""In-context evaluation on held-out datasets, against two non-learned baselines.

For each dataset and label: held-out queries, each with support sets of several sizes drawn (nested, seeded)
from the other images holding the label. Dice from monai.metrics at the query's own resolution.

Baselines: (a) naive Bayes on the support set's foreground/background intensity histograms;
(b) the mean support mask (resized to the query), thresholded at 0.5.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import DiceMetric
from PIL import Image
from tqdm import tqdm

from data.datasets import DatasetFolder, may_pair
from data.preprocess import normalize, resize, to_gray
from model.segmenter import Segmenter

log = logging.getLogger(__name__)


def naive_bayes(
    query: np.ndarray, support_images: list[np.ndarray], support_masks: list[np.ndarray], bins: int = 32
) -> np.ndarray:
    """Per-pixel Bayes rule on intensity histograms of support foreground and background (Laplace-smoothed)."""
    fg = np.ones(bins)
    bg = np.ones(bins)
    for image, mask in zip(support_images, support_masks):
        b = np.minimum((normalize(to_gray(image)) * bins).astype(int), bins - 1)
        fg += np.bincount(b[mask > 0], minlength=bins)
        bg += np.bincount(b[mask == 0], minlength=bins)
    prior = (fg.sum() - bins) / max(1.0, fg.sum() + bg.sum() - 2 * bins)
    p_fg = fg / fg.sum() * prior
    p_bg = bg / bg.sum() * (1 - prior)
    posterior = p_fg / (p_fg + p_bg)
    q = np.minimum((normalize(to_gray(query)) * bins).astype(int), bins - 1)
    return posterior[q] >= 0.5


def mean_mask(query_shape: tuple[int, int], support_masks: list[np.ndarray]) -> np.ndarray:
    """Average of the support masks, each resized to the query's size."""
    acc = torch.zeros(query_shape)
    for m in support_masks:
        acc += resize(torch.from_numpy((m > 0).astype(np.float32)), query_shape)
    return (acc / len(support_masks)).numpy() >= 0.5


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    return float(metric(p, t)[0, 0])


def _load_2d(folder: DatasetFolder, name: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    images, masks, cases = [], [], []
    for case, image_path, mask_path in folder.cases(name):
        with Image.open(image_path) as im:
            images.append(np.asarray(im))
        with Image.open(mask_path) as im:
            m = np.asarray(im)
        masks.append(m[..., 0] if m.ndim == 3 else m)
        cases.append(case)
    return images, masks, cases


Predictor = Callable[[np.ndarray, list[np.ndarray], list[np.ndarray]], np.ndarray]


def segmenter_predictor(segmenter: Segmenter, **options) -> Predictor:
    """(query, support_images, support_masks) -> (H, W) probabilities of the one label, with ``options``
    passed to ``Segmenter.predict_proba`` (e.g. ``ensemble``)."""

    def predict(query, support_images, support_masks):
        return segmenter.predict_proba(query, support_images, support_masks, **options)[0]

    return predict


def draw_queries(name: str, label: int, present: np.ndarray, seed: int, n_queries: int
                 ) -> tuple[np.random.Generator, np.ndarray]:
    """The held-out queries of one (dataset, label), and the generator that then draws their support sets:
    the same for every evaluation of the same seed (``evaluate`` and ``model.evaluate_select``)."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{label}".encode())])
    return rng, rng.choice(present, size=min(n_queries, present.size - 1), replace=False)


def evaluate(
    predictors: dict[str, Predictor],
    folder: DatasetFolder,
    datasets: tuple[str, ...],
    support_sizes: list[int],
    n_queries: int,
    seed: int,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Rows of {dataset, label, support_size, method, dice, n, seconds}: every predictor and both baselines
    on the same queries and the same (nested, seeded) support sets.

    Support items never come from the query's own patient or volume, nor from its neighbouring slices
    (``may_pair``), so that near-copies of a query cannot flatter its Dice. ``seconds`` is the mean time of one
    prediction (baselines included). ``on_result``, when given, gets every single prediction's
    {dataset, label, support_size, method, query, dice} right after the predictor ran (calibration).
    """
    methods: dict[str, Predictor] = {
        **predictors,
        "naive_bayes": naive_bayes,
        "mean_mask": lambda query, _, support_masks: mean_mask(query.shape[:2], support_masks),
    }
    scores: dict[tuple, list[float]] = defaultdict(list)
    times: dict[tuple, list[float]] = defaultdict(list)
    for name in datasets:
        if folder.is_volume(name):
            log.warning("skipping %s: eval covers 2D datasets", name)
            continue
        images, masks, cases = _load_2d(folder, name)
        labels = sorted(set().union(*(np.unique(m).tolist() for m in masks)) - {0})
        for label in labels:
            present = np.array([i for i, m in enumerate(masks) if (m == label).any()])
            if present.size < 2:
                continue
            rng, queries = draw_queries(name, label, present, seed, n_queries)
            for q in tqdm(queries, desc=f"{name}/{label}", disable=not progress):
                pool = np.array([i for i in present if may_pair(cases[q], cases[i])], dtype=int)
                if pool.size == 0:
                    continue
                others = rng.permutation(pool)  # nested support sets across sizes
                truth = masks[q] == label
                for size in support_sizes:
                    chosen = others[: min(size, others.size)]
                    s_img = [images[i] for i in chosen]
                    s_msk = [(masks[i] == label).astype(np.uint8) for i in chosen]
                    for method, run in methods.items():
                        start = time.perf_counter()
                        pred = run(images[q], s_img, s_msk) >= 0.5
                        times[(name, label, size, method)].append(time.perf_counter() - start)
                        scores[(name, label, size, method)].append(_dice(pred, truth))
                        if on_result is not None:
                            on_result({"dataset": name, "label": int(label), "support_size": size, "method": method,
                                       "query": int(q), "dice": scores[(name, label, size, method)][-1]})
    return [
        {"dataset": d, "label": lab, "support_size": s, "method": m, "dice": float(np.mean(v)), "n": len(v),
         "seconds": float(np.mean(times[(d, lab, s, m)]))}
        for (d, lab, s, m), v in scores.items()  # dataset, label, S, then methods in the order given
    ]


def methods_of(rows: list[dict]) -> list[str]:
    """Method names in first-seen order (predictors first, then the baselines)."""
    return list(dict.fromkeys(r["method"] for r in rows))


def dataset_means(rows: list[dict]) -> dict[tuple[str, int], float]:
    """{(method, S): mean Dice over datasets, labels averaged within a dataset first}."""
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per[(r["method"], r["support_size"])][r["dataset"]].append(r["dice"])
    return {k: float(np.mean([np.mean(v) for v in d.values()])) for k, d in per.items()}


def summary_table(rows: list[dict], support_sizes: list[int]) -> str:
    """Markdown: one line per dataset/label and support size, plus the mean over datasets (labels averaged first)."""
    methods = methods_of(rows)
    by = {(r["dataset"], r["label"], r["support_size"], r["method"]): r["dice"] for r in rows}
    keys = sorted({(r["dataset"], r["label"]) for r in rows})
    lines = ["| dataset/label | S | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]
    for d, lab in keys:
        for s in support_sizes:
            if all((d, lab, s, m) in by for m in methods):
                lines.append(f"| {d}/{lab} | {s} | " + " | ".join(f"{by[(d, lab, s, m)]:.3f}" for m in methods) + " |")
    means = dataset_means(rows)
    for s in support_sizes:
        vals = " | ".join(f"**{means[(m, s)]:.3f}**" if (m, s) in means else "n/a" for m in methods)
        lines.append(f"| **mean over datasets** | {s} | {vals} |")
    return "\n".join(lines)


def latency_table(rows: list[dict], support_sizes: list[int]) -> str:
    """Markdown: mean Dice over datasets and mean seconds per prediction, per method and support size."""
    means = dataset_means(rows)
    secs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        secs[(r["method"], r["support_size"])].append(r["seconds"])
    lines = ["| method | S | mean Dice | s / prediction |", "| --- | --- | --- | --- |"]
    for m in methods_of(rows):
        for s in support_sizes:
            if (m, s) in means:
                lines.append(f"| {m} | {s} | {means[(m, s)]:.3f} | {np.mean(secs[(m, s)]):.3f} |")
    return "\n".join(lines)
