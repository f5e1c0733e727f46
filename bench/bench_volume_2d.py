"""A 2D support set over a volume: how many structure-free slices get labelled, and the whole-tumour Dice,
for minimum predicted areas (the ``min_area`` of ``model.volume.predict_with_2d_support``) and for the support
pairs' positions (``support_positions``: each pair's relative depth in its volume; slices farther than the
margin from them are skipped) side by side.

    python bench/bench_volume_2d.py                    # BraTS pat0001, 8 support slices from pat0002-0005
    python bench/bench_volume_2d.py --query-step 2

The support set is 2D: the slices with the largest tumour area of each support volume (whole tumour, one
label), as a user would pick examples. Every query slice is predicted once; each ``min_area`` is then
applied to the same probabilities, so the rows differ only in the decision (a slice skipped by position
costs nothing: "slices run" is what the model would run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_volume import BRATS, dice, load_brats  # noqa: E402
from model import volume as volumes  # noqa: E402
from model.segmenter import Segmenter  # noqa: E402

AREAS = [0.0, 0.005, 0.01, 0.02, 0.05]
MARGINS = [0.0, 0.05, 0.1, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", default="pat0001")
    parser.add_argument("--support", nargs="+", default=["pat0002", "pat0003", "pat0004", "pat0005"])
    parser.add_argument("--per-volume", type=int, default=2, help="2D support slices taken from each volume")
    parser.add_argument("--query-step", type=int, default=1)
    args = parser.parse_args()
    if not (BRATS / "images").is_dir():
        sys.exit(f"needs BraTS in {BRATS}")
    segmenter = Segmenter.from_pretrained()
    images, masks, positions = [], [], []
    for volume, mask in load_brats(BRATS, args.support):
        area = (mask > 0).sum(axis=(0, 1))
        for z in np.argsort(-area, kind="stable")[: args.per_volume]:
            images.append(volume[..., z])
            masks.append((mask[..., z] > 0).astype(np.uint8))
            positions.append(float(z) / (mask.shape[2] - 1))
    support = segmenter.prepare_support(images, masks)
    [(query, truth)] = load_brats(BRATS, [args.query])
    query, truth = query[..., :: args.query_step], truth[..., :: args.query_step] > 0
    default_area = volumes.MIN_AREA_2D
    volumes.MIN_AREA_2D = 0.0  # the raw probabilities: each row below applies its own minimum
    start = time.perf_counter()
    result = segmenter.predict_volume_result(query, support=support, probs=True)
    seconds = time.perf_counter() - start
    probs = result.probs[0]  # (H, W, D)
    empty = ~truth.any(axis=(0, 1))
    print(f"query {args.query}: {query.shape[2]} slices, {empty.sum()} without tumour; support {support.size} "
          f"2D slices; {seconds:.1f} s\n")
    print("| decision | slices run | tumour-free slices labelled | tumour slices left empty | Dice WT |")
    print("|---|---:|---:|---:|---:|")
    depth = query.shape[2]
    rel = np.arange(depth) / max(1, depth - 1)
    rows = [(f"min area {a:g}", None, a) for a in AREAS]
    rows += [(f"positions, margin {m:g}" + (f" + min area {a:g}" if a else ""), m, a)
             for m in MARGINS for a in (0.0, default_area)]
    for name, margin, min_area in rows:
        fg = probs >= 0.5
        keep = fg.mean(axis=(0, 1)) >= min_area
        run = np.ones(depth, bool)
        if margin is not None:  # the rule of model.volume: within the margin of the pairs' span
            run = (rel >= min(positions) - margin - 1e-9) & (rel <= max(positions) + margin + 1e-9)
        pred = fg & (keep & run)[None, None, :]
        labelled = pred.any(axis=(0, 1))
        print(f"| {name} | {int(run.sum())} of {depth} | {int((labelled & empty).sum())} of {int(empty.sum())} | "
              f"{int((~labelled & ~empty).sum())} of {int((~empty).sum())} | {dice(pred, truth):.3f} |")
    print(f"\nsupport positions: {', '.join(f'{p:.2f}' for p in positions)}")

if __name__ == "__main__":
    main()
