"""Inference options on the validation set: Dice against latency for support-set ensembles and flip TTA.

Every option runs on the same queries and the same support sets (``model.evaluate``), so the Dice
differences are the options' own. Needs ../shared/datasets (or --data-root). Latency is seconds per
prediction on this machine, from the same run, so compare the ratios.

    python bench/bench_inference_options.py [--weights W] [--support-sizes 4 16] [--queries 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import DatasetFolder  # noqa: E402
from model.evaluate import evaluate, latency_table, segmenter_predictor  # noqa: E402
from model.segmenter import Segmenter  # noqa: E402

VALIDATION = ("ph2", "kvasir_seg", "faz_octa", "ddti_thyroid", "aorta_ct", "left_atrium_mri", "monuseg", "em_membrane")
OPTIONS = {
    "plain": {},
    "flip": {"flip": True},
    "ensemble 4": {"ensemble": 4},
    "ensemble 4 + flip": {"ensemble": 4, "flip": True},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    p.add_argument("--weights", default=None, help="default: the embedded default model")
    p.add_argument("--datasets", default=",".join(VALIDATION))
    p.add_argument("--support-sizes", type=int, nargs="+", default=[4, 16])
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    seg = Segmenter.from_pretrained(args.weights, seed=args.seed)
    predictors = {name: segmenter_predictor(seg, **opts) for name, opts in OPTIONS.items()}
    rows = evaluate(predictors, DatasetFolder(args.data_root), tuple(args.datasets.split(",")), args.support_sizes,
                    args.queries, args.seed, progress=False)
    print(latency_table(rows, args.support_sizes))


if __name__ == "__main__":
    main()
