"""The plots of docs/examples-guide.md, from the measurements it cites (nothing is measured here).

    python scripts/plot-examples-guide.py  # docs/eval-gen3-decay3.json and docs/eval-select.json -> docs/*.png

- ``docs/examples-dice-vs-s.png``: Dice against the number of examples S (``icseg eval``, docs/eval-gen3-decay3.json:
  the shipped model and the first default model, per held-out dataset and their mean);
- ``docs/examples-selection.png``: Dice of k examples chosen by ``select=similar`` against ``random``, with and
  without ensembling, and the whole pool at once (``icseg eval --select``, docs/eval-select.json).

It also prints the mean tables in Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
# eval-gen3-decay3.json's names: "icseg" is the shipped default model, "previous" the first default model
MODELS = {"icseg": "shipped default", "previous": "first default model"}


def _means(rows: list[dict], key=lambda r: (r["method"], r["support_size"])) -> dict:
    """{key: mean over datasets (labels averaged within a dataset first)}."""
    per: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per[key(r)][r["dataset"]].append(r["dice"])
    return {k: float(np.mean([np.mean(v) for v in d.values()])) for k, d in per.items()}


def plot_dice_vs_s(data: dict, out: Path) -> str:
    rows = data["rows"]
    sizes = sorted({r["support_size"] for r in rows})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    per = {(r["dataset"], r["method"], r["support_size"]): r["dice"] for r in rows}
    for i, d in enumerate(datasets):
        ys = [per.get((d, "icseg", s), np.nan) for s in sizes]
        ax.plot(sizes, ys, "-", color=colours[i % 10], alpha=0.55, lw=1, label=d)
    means = _means(rows)
    for method, style in (("icseg", "k-o"), ("previous", "k--s")):
        ax.plot(sizes, [means[(method, s)] for s in sizes], style, lw=2.5, label=f"mean, {MODELS[method]}")
    for method, style in (("naive_bayes", ":"), ("mean_mask", "-.")):
        ax.plot(sizes, [means[(method, s)] for s in sizes], style, color="grey", lw=1.5, label=f"mean, {method}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("examples S (support set size)")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"Dice against S, {data['queries']} queries per held-out dataset (thin: shipped model)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    lines = ["| method | " + " | ".join(f"S = {s}" for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for method in ("icseg", "previous", "naive_bayes", "mean_mask"):
        name = MODELS.get(method, method)
        lines.append(f"| {name} | " + " | ".join(f"{means[(method, s)]:.3f}" for s in sizes) + " |")
    return "\n".join(lines)


def plot_selection(data: dict, out: Path) -> str:
    rows = data["rows"]
    ks = data["support_sizes"]
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "all"]
    means = _means(rows)
    reference = _means([r for r in rows if r["method"] == "all"], key=lambda r: "all").get("all")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 1.4]})
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = np.arange(len(ks)) + (j - (len(methods) - 1) / 2) * width
        vals = [means.get((m, k), np.nan) for k in ks]
        left.bar(xs, vals, width, label=m)
        for x, v in zip(xs, vals):
            left.text(x, v + 0.005, f"{v:.3f}", ha="center", fontsize=7)
    if reference is not None:
        left.axhline(reference, color="k", ls="--", lw=1, label=f"the whole pool at once ({reference:.3f})")
    left.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
    lo = min(v for v in means.values()) - 0.05
    left.set_ylim(max(0, lo), min(1, max(means.values()) + 0.05))
    left.set_ylabel("mean Dice over datasets")
    left.set_title(f"k examples from a pool of up to {data['pool_size']}")
    left.legend(fontsize=7, loc="lower right")
    # per dataset: similar - random, both without ensembling
    per = {(r["dataset"], r["method"], r["support_size"]): r["dice"] for r in rows}
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        diffs = [np.nanmean([per.get((d, "similar", k), np.nan)]) - np.nanmean([per.get((d, "random", k), np.nan)])
                 for d in datasets]
        right.bar(np.arange(len(datasets)) + (j - (len(ks) - 1) / 2) * width, diffs, width, label=f"k = {k}")
    right.axhline(0, color="k", lw=0.8)
    right.set_xticks(range(len(datasets)), datasets, rotation=35, ha="right", fontsize=8)
    right.set_ylabel("Dice, similar minus random")
    right.set_title("per dataset (no ensembling)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    lines = ["| k | " + " | ".join(methods) + " | all at once |", "|---" * (len(methods) + 2) + "|"]
    for k in ks:
        ref = f"{reference:.3f}" if reference is not None else "n/a"
        cells = " | ".join(f"{means.get((m, k), float('nan')):.3f}" for m in methods)
        lines.append(f"| {k} | {cells} | {ref} |")
    return "\n".join(lines)


def paired_differences(data: dict) -> str:
    """similar minus random per dataset (labels averaged first), with and without ensembling: the mean over
    datasets, its standard error and how many datasets favour similar."""
    rows = data["rows"]
    per: dict = defaultdict(list)
    for r in rows:
        per[(r["dataset"], r["method"], r["support_size"])].append(r["dice"])
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = ["| k | ensemble | similar - random (mean over datasets) | standard error | datasets favouring similar |",
             "|---|---|---|---|---|"]
    for k in data["support_sizes"]:
        for suffix, ens in (("", 1), (" ens4", 4)):
            diffs = np.array([np.mean(per[(d, "similar" + suffix, k)]) - np.mean(per[(d, "random" + suffix, k)])
                              for d in datasets if (d, "similar" + suffix, k) in per])
            if diffs.size == 0:
                continue
            se = diffs.std(ddof=1) / np.sqrt(diffs.size) if diffs.size > 1 else float("nan")
            lines.append(f"| {k} | {ens} | {diffs.mean():+.3f} | {se:.3f} | {(diffs > 0).sum()} of {diffs.size} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=Path, default=DOCS / "eval-gen3-decay3.json", help="icseg eval JSON (Dice vs S)")
    parser.add_argument("--select", type=Path, default=DOCS / "eval-select.json", help="icseg eval --select's JSON")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs")
    args = parser.parse_args(argv)
    table = plot_dice_vs_s(json.loads(args.eval.read_text()), args.out / "examples-dice-vs-s.png")
    sys.stdout.write("Dice against S (mean over datasets)\n\n" + table + "\n\n")
    if args.select.exists():
        table = plot_selection(json.loads(args.select.read_text()), args.out / "examples-selection.png")
        sys.stdout.write("select (mean over datasets)\n\n" + table + "\n\n")
        sys.stdout.write(paired_differences(json.loads(args.select.read_text())) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
