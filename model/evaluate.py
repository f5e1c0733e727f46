"""In-context evaluation on held-out datasets, against two non-learned baselines.

For each dataset and label: held-out queries, each with support sets of several sizes drawn (nested, seeded)
from the other images holding the label. Dice from monai.metrics at the query's own resolution.

Baselines: (a) naive Bayes on the support set's foreground/background intensity histograms;
(b) the mean support mask (resized to the query), thresholded at 0.5.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import defaultdict

import numpy as np
import torch
from monai.metrics import DiceMetric
from PIL import Image
from tqdm import tqdm

from data.datasets import DatasetFolder
from data.preprocess import normalize, resize, to_gray
from model.segmenter import Segmenter

log = logging.getLogger(__name__)

METHODS = ("icseg", "naive_bayes", "mean_mask")


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


def _load_2d(folder: DatasetFolder, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for _, image_path, mask_path in folder.cases(name):
        with Image.open(image_path) as im:
            images.append(np.asarray(im))
        with Image.open(mask_path) as im:
            m = np.asarray(im)
        masks.append(m[..., 0] if m.ndim == 3 else m)
    return images, masks


def evaluate(
    segmenter: Segmenter,
    folder: DatasetFolder,
    datasets: tuple[str, ...],
    support_sizes: list[int],
    n_queries: int,
    seed: int,
    progress: bool = True,
) -> list[dict]:
    """Rows of {dataset, label, support_size, method, dice, n}."""
    scores: dict[tuple, list[float]] = defaultdict(list)
    for name in datasets:
        if folder.is_volume(name):
            log.warning("skipping %s: eval covers 2D datasets", name)
            continue
        images, masks = _load_2d(folder, name)
        labels = sorted(set().union(*(np.unique(m).tolist() for m in masks)) - {0})
        for label in labels:
            present = np.array([i for i, m in enumerate(masks) if (m == label).any()])
            if present.size < 2:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{label}".encode())])
            queries = rng.choice(present, size=min(n_queries, present.size - 1), replace=False)
            for q in tqdm(queries, desc=f"{name}/{label}", disable=not progress):
                others = rng.permutation(present[present != q])  # nested support sets across sizes
                truth = masks[q] == label
                for size in support_sizes:
                    chosen = others[: min(size, others.size)]
                    s_img = [images[i] for i in chosen]
                    s_msk = [(masks[i] == label).astype(np.uint8) for i in chosen]
                    probs = segmenter.predict_proba(images[q], s_img, s_msk)[0]
                    preds = {
                        "icseg": probs >= 0.5,
                        "naive_bayes": naive_bayes(images[q], s_img, s_msk),
                        "mean_mask": mean_mask(truth.shape, s_msk),
                    }
                    for method, pred in preds.items():
                        scores[(name, label, size, method)].append(_dice(pred, truth))
    return [
        {"dataset": d, "label": lab, "support_size": s, "method": m, "dice": float(np.mean(v)), "n": len(v)}
        for (d, lab, s, m), v in sorted(scores.items())
    ]


def summary_table(rows: list[dict], support_sizes: list[int]) -> str:
    """Markdown: one line per dataset/label and support size, plus the mean over datasets (labels averaged first)."""
    by = {(r["dataset"], r["label"], r["support_size"], r["method"]): r["dice"] for r in rows}
    keys = sorted({(r["dataset"], r["label"]) for r in rows})
    lines = ["| dataset/label | S | icseg | naive Bayes | mean mask |", "| --- | --- | --- | --- | --- |"]
    for d, lab in keys:
        for s in support_sizes:
            if (d, lab, s, "icseg") in by:
                vals = " | ".join(f"{by[(d, lab, s, m)]:.3f}" for m in METHODS)
                lines.append(f"| {d}/{lab} | {s} | {vals} |")
    for s in support_sizes:
        means = []
        for m in METHODS:
            per_dataset = defaultdict(list)
            for (d, _, ss, mm), v in by.items():
                if ss == s and mm == m:
                    per_dataset[d].append(v)
            means.append(np.mean([np.mean(v) for v in per_dataset.values()]) if per_dataset else float("nan"))
        lines.append(f"| **mean over datasets** | {s} | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    return "\n".join(lines)


def main_eval(args) -> int:
    segmenter = Segmenter.from_pretrained(args.weights, seed=args.seed)
    folder = DatasetFolder(args.data_root)
    missing = [d for d in args.datasets if d not in folder.names()]
    if missing:
        log.error("datasets not found under %s: %s", args.data_root, ", ".join(missing))
        return 2
    rows = evaluate(segmenter, folder, args.datasets, args.support_sizes, args.queries, args.seed, args.progress)
    table = summary_table(rows, args.support_sizes)
    print(table)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "weights": segmenter.net.weights_info,
                    "seed": args.seed,
                    "queries": args.queries,
                    "support_sizes": args.support_sizes,
                    "rows": rows,
                },
                f,
                indent=2,
            )
    return 0
