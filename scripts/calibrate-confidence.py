"""Calibrate the confidence flag and the mismatch check for one set of weights, in one command.

    python scripts/calibrate-confidence.py                       # the embedded default model
    python scripts/calibrate-confidence.py --weights runs/x/model.safetensors

On the validation datasets (those excluded from training), with ``model.evaluate``'s queries and nested
support sets (the same protocol as ``icseg eval``), it:

1. records every prediction's confidence (``model.confidence.label_confidence``) and Dice; prints their
   correlation; picks the low-confidence threshold: the highest one that flags under 10 % of the queries with
   Dice > 0.7 (so that as many as possible of those with Dice < 0.3 are flagged; the target is at least half);
2. scores every matched pair (query and support from one dataset) and mismatched pairs (the query against the
   support sets drawn for each other dataset at the same size); picks, per support size, the lowest threshold
   flagging under 10 % of matched pairs; the target is at least 90 % of mismatched pairs flagged;
3. reports both also cross-fitted (thresholds fitted on half of the queries, rates measured on the other
   half), writes the sidecar next to the weights (``model.confidence.sidecar_path``, keyed by their sha256),
   a reliability plot (PNG) and every measurement (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.datasets import DatasetFolder  # noqa: E402
from data.io import write_atomic  # noqa: E402
from data.preprocess import prepare_gray, to_gray  # noqa: E402
from model import confidence as conf  # noqa: E402
from model.evaluate import evaluate  # noqa: E402
from model.segmenter import Segmenter  # noqa: E402
from model.support import merge_labels  # noqa: E402

VALIDATION = "ph2,kvasir_seg,faz_octa,ddti_thyroid,aorta_ct,left_atrium_mri,monuseg,em_membrane"
LOW, HIGH = 0.3, 0.7  # Dice below LOW should be flagged (>= half), above HIGH should not (< 10 %)
MAX_FALSE = 0.10
log = logging.getLogger("calibrate")


def low_confidence_threshold(c: np.ndarray, dice: np.ndarray) -> float:
    """The highest threshold t (confidence < t is flagged) flagging under MAX_FALSE of the Dice > HIGH queries."""
    good = np.sort(c[dice > HIGH])
    if good.size == 0:
        return conf.FALLBACK_LOW_CONFIDENCE
    allowed = int(np.ceil(MAX_FALSE * good.size)) - 1  # flag at most this many good queries: strictly under 10 %
    return float(good[max(allowed, 0)]) if allowed >= 0 else float(good[0])


def confidence_rates(c: np.ndarray, dice: np.ndarray, t: float) -> dict:
    flagged = c < t
    return {"threshold": t, "flagged_low_dice": float(flagged[dice < LOW].mean()) if (dice < LOW).any() else None,
            "flagged_high_dice": float(flagged[dice > HIGH].mean()) if (dice > HIGH).any() else None,
            "n_low_dice": int((dice < LOW).sum()), "n_high_dice": int((dice > HIGH).sum())}


def mismatch_threshold(matched: np.ndarray) -> float:
    """The lowest threshold (score > t is flagged) flagging under MAX_FALSE of the matched pairs."""
    m = np.sort(matched)
    keep = int(np.floor((1 - MAX_FALSE) * m.size)) + 1  # at least this many at or below t: under 10 % above
    return float(m[min(keep, m.size) - 1])


def pairs(records: list[dict], scale: np.ndarray, rng: np.random.Generator, per_dataset: int) -> list[dict]:
    """Matched (each record's own support set) and mismatched (its query against other datasets' sets) scores."""
    by = defaultdict(list)
    for r in records:
        by[(r["dataset"], r["support_size"])].append(r)
    out = []
    for r in records:
        out.append({"size": r["support_size"], "query": r["key"], "matched": True,
                    "score": conf.mismatch_score(r["qf"], r["sf"], scale)})
        others = [d for d, s in by if s == r["support_size"] and d != r["dataset"]]
        for d in others:
            pool = by[(d, r["support_size"])]
            for i in rng.choice(len(pool), size=min(per_dataset, len(pool)), replace=False):
                out.append({"size": r["support_size"], "query": r["key"], "matched": False,
                            "score": conf.mismatch_score(r["qf"], pool[i]["sf"], scale)})
    return out


def mismatch_table(scored: list[dict], fit: set | None, test: set | None) -> dict[int, dict]:
    """Per support size: threshold (fitted on queries in ``fit``) and rates on queries in ``test``."""
    out = {}
    for size in sorted({p["size"] for p in scored}):
        at = [p for p in scored if p["size"] == size]
        fitted = np.array([p["score"] for p in at if p["matched"] and (fit is None or p["query"] in fit)])
        t = mismatch_threshold(fitted)
        m = np.array([p["score"] for p in at if p["matched"] and (test is None or p["query"] in test)])
        mm = np.array([p["score"] for p in at if not p["matched"] and (test is None or p["query"] in test)])
        out[size] = {"threshold": t, "flagged_matched": float((m > t).mean()), "flagged_mismatched":
                     float((mm > t).mean()), "n_matched": int(m.size), "n_mismatched": int(mm.size)}
    return out


def reliability_plot(c: np.ndarray, dice: np.ndarray, t: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(c, edges) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for i in range(10):
        if (idx == i).any():
            xs.append(c[idx == i].mean())
            ys.append(dice[idx == i].mean())
            ns.append(int((idx == i).sum()))
    a.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="confidence = Dice")
    a.plot(xs, ys, "o-", color="C0", label="mean Dice per confidence bin")
    for x, y, n in zip(xs, ys, ns):
        a.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    a.axvline(t, color="C3", lw=1, label=f"low_confidence below {t:.3f}")
    a.set(xlabel="confidence", ylabel="Dice", xlim=(0, 1), ylim=(0, 1), title="reliability (n per bin)")
    a.legend(fontsize=7, loc="upper left")
    b.scatter(c, dice, s=6, alpha=0.5)
    b.axvline(t, color="C3", lw=1)
    b.axhline(LOW, color="grey", lw=0.5)
    b.axhline(HIGH, color="grey", lw=0.5)
    b.set(xlabel="confidence", ylabel="Dice", xlim=(0, 1), ylim=(0, 1), title="every query")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="weights to calibrate (default: the embedded default model)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--datasets", default=VALIDATION, help="comma-separated validation datasets")
    ap.add_argument("--support-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--queries", type=int, default=12, help="held-out queries per dataset and label")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mismatched-per-dataset", type=int, default=6,
                    help="mismatched pairs per query and other dataset")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "confidence-reliability.png"))
    ap.add_argument("--json", dest="json_path", default=str(ROOT / "docs" / "confidence-calibration.json"))
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    seg = Segmenter.from_pretrained(args.weights, seed=args.seed)
    weights_path = Path(seg.net.weights_info["path"])
    datasets = tuple(d for d in args.datasets.split(",") if d)
    records: list[dict] = []
    current = {}

    def predictor(query, support_images, support_masks):
        support = seg.prepare_support(support_images, support_masks)
        probs, spread = seg.predict_many([query], support, ensemble=args.ensemble, spread=True)[0]
        mask = merge_labels(probs, support.labels, 0.5)
        q = prepare_gray(to_gray(query), seg.size, seg.clip_percentiles)
        current.update(confidence=conf.label_confidence(probs, mask, support.labels, spread)[0],
                       mean_inside=float(probs[0][mask > 0].mean()) if (mask > 0).any() else 0.0,
                       qf=conf.image_features(seg.net, q[None])[0], sf=conf.image_features(seg.net, support.images))
        return probs[0]

    def on_result(row: dict) -> None:
        if row["method"] == "icseg":
            records.append({**row, **current, "key": (row["dataset"], row["label"], row["query"])})

    evaluate({"icseg": predictor}, DatasetFolder(args.data_root), datasets, args.support_sizes, args.queries,
             args.seed, args.progress, on_result=on_result)
    if not records:
        log.error("no predictions: are the datasets under %s?", args.data_root)
        return 2

    # -- confidence -----------------------------------------------------------------------------------------
    c = np.array([r["confidence"] for r in records])
    dice = np.array([r["dice"] for r in records])
    keys = sorted({r["key"] for r in records})
    half = [set(keys[0::2]), set(keys[1::2])]
    in_half = [np.array([r["key"] in h for r in records]) for h in half]
    t_low = low_confidence_threshold(c, dice)
    cross = [confidence_rates(c[in_half[1 - i]], dice[in_half[1 - i]],
                              low_confidence_threshold(c[in_half[i]], dice[in_half[i]])) for i in (0, 1)]
    pearson = float(np.corrcoef(c, dice)[0, 1])
    spearman = float(np.corrcoef(np.argsort(np.argsort(c)), np.argsort(np.argsort(dice)))[0, 1])
    mean_in = np.array([r["mean_inside"] for r in records])
    confidence_report = {
        "pearson": pearson, "spearman": spearman, "fitted": confidence_rates(c, dice, t_low),
        "cross_fitted": cross, "n": int(c.size),
        "alternative_mean_probability_inside": {"pearson": float(np.corrcoef(mean_in, dice)[0, 1])},
    }

    # -- mismatch -------------------------------------------------------------------------------------------
    per_dataset = defaultdict(list)
    for r in records:
        per_dataset[r["dataset"]].extend([r["qf"], *r["sf"]])
    within = [np.unique(np.round(np.array(v), 6), axis=0).var(0) for v in per_dataset.values()]
    scale = np.sqrt(np.mean(within, axis=0)) + 1e-6  # (F,) within-dataset spread, pooled over datasets
    scored = pairs(records, scale, np.random.default_rng(args.seed), args.mismatched_per_dataset)
    fitted = mismatch_table(scored, None, None)
    cross_mm = [mismatch_table(scored, half[i], half[1 - i]) for i in (0, 1)]
    matched = [p for p in scored if p["matched"]]
    mismatched = [p for p in scored if not p["matched"]]

    def overall(table, test):
        m = [p for p in matched if test is None or p["query"] in test]
        mm = [p for p in mismatched if test is None or p["query"] in test]
        return {"flagged_matched": float(np.mean([p["score"] > table[p["size"]]["threshold"] for p in m])),
                "flagged_mismatched": float(np.mean([p["score"] > table[p["size"]]["threshold"] for p in mm]))}

    mismatch_report = {"per_size": fitted, "overall": overall(fitted, None),
                       "cross_fitted_per_size": cross_mm,
                       "cross_fitted_overall": [overall(cross_mm[i], half[1 - i]) for i in (0, 1)]}

    # -- outputs --------------------------------------------------------------------------------------------
    sha = conf.file_sha256(str(weights_path))
    sidecar = {"weights_file": weights_path.name, "weights_sha256": sha, "low_confidence": t_low,
               "mismatch": {"scale": scale.tolist(), "thresholds": {str(s): v["threshold"] for s, v in fitted.items()}},
               "measured": {"command": " ".join(["python", "scripts/calibrate-confidence.py", *sys.argv[1:]]),
                            "datasets": list(datasets), "support_sizes": args.support_sizes,
                            "queries": args.queries, "ensemble": args.ensemble, "seed": args.seed,
                            "confidence": confidence_report, "mismatch": mismatch_report}}
    side_path = conf.sidecar_path(weights_path)
    write_atomic(side_path, (json.dumps(sidecar, indent=1) + "\n").encode())
    reliability_plot(c, dice, t_low, Path(args.plot),
                     f"{weights_path.name}, {len(datasets)} validation datasets, S in {args.support_sizes}, "
                     f"ensemble {args.ensemble}, n = {c.size}; Pearson {pearson:.2f}")
    if args.json_path:
        rows = [{k: (list(v) if k == "key" else v) for k, v in r.items() if k not in ("qf", "sf")} for r in records]
        write_atomic(Path(args.json_path), json.dumps({**sidecar, "rows": rows}, indent=1).encode())

    f = confidence_report["fitted"]
    out = [f"weights {weights_path.name} (sha256 {sha[:12]}...), {c.size} predictions",
           f"confidence vs Dice: Pearson {pearson:.3f}, Spearman {spearman:.3f} "
           f"(mean probability inside alone: Pearson {np.corrcoef(mean_in, dice)[0, 1]:.3f})",
           f"low_confidence threshold {t_low:.4f}: flags {_pct(f['flagged_low_dice'])} of {f['n_low_dice']} queries "
           f"with Dice < {LOW} (target >= 50 %), {_pct(f['flagged_high_dice'])} of {f['n_high_dice']} with Dice > "
           f"{HIGH} (target < 10 %)",
           "  cross-fitted: " + "; ".join(f"low {_pct(x['flagged_low_dice'])}, high {_pct(x['flagged_high_dice'])}"
                                         for x in cross),
           "mismatch (flagged matched / mismatched pairs; targets < 10 % / >= 90 %):",
           "| S | threshold | matched | mismatched | cross-fitted matched | cross-fitted mismatched |",
           "| --- | --- | --- | --- | --- | --- |"]
    for s, v in fitted.items():
        cm = " / ".join(f"{x[s]['flagged_matched']:.1%}" for x in cross_mm)
        cmm = " / ".join(f"{x[s]['flagged_mismatched']:.1%}" for x in cross_mm)
        out.append(f"| {s} | {v['threshold']:.3f} | {v['flagged_matched']:.1%} of {v['n_matched']} | "
                   f"{v['flagged_mismatched']:.1%} of {v['n_mismatched']} | {cm} | {cmm} |")
    o = mismatch_report["overall"]
    out.append(f"| all | | {o['flagged_matched']:.1%} | {o['flagged_mismatched']:.1%} | "
               + " / ".join(f"{x['flagged_matched']:.1%}" for x in mismatch_report["cross_fitted_overall"]) + " | "
               + " / ".join(f"{x['flagged_mismatched']:.1%}" for x in mismatch_report["cross_fitted_overall"]) + " |")
    out.append(f"wrote {side_path.relative_to(ROOT) if side_path.is_relative_to(ROOT) else side_path}, {args.plot}, "
               f"{args.json_path}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
