"""Plot a training run's curve (EMA of training loss and Dice, and the learning rate) from RUN_DIR/log.jsonl.

    python scripts/plot-training-curve.py --run-dir runs/gen2 --out docs/training-curve.png [--label "gen 2"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "log.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", action="append", required=True, help="one or more runs, plotted in order")
    p.add_argument("--label", action="append", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    labels = args.label or args.run_dir
    fig, (ax_dice, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for run_dir, label in zip(args.run_dir, labels):
        rows = read_log(run_dir)
        steps = [r["step"] for r in rows]
        ax_dice.plot(steps, [r["dice"] for r in rows], label=f"{label}: training Dice (EMA)")
        ax_dice.plot(steps, [r["loss"] for r in rows], "--", label=f"{label}: training loss (EMA)")
        ax_lr.plot(steps, [r["lr"] for r in rows], label=label)
    ax_dice.set_ylabel("Dice / loss")
    ax_dice.grid(alpha=0.3)
    ax_dice.legend(fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step (4 episodes each)")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
