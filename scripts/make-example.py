"""Write the viewer's example prompt: synthetic PNGs under app/static/example/ (no patient data, no licence).

One task from ``data.synthetic``: subject 0 is the query, the next ``--support`` subjects are the support
pairs. The seed is searched from ``--seed`` upward until every mask holds a visible but not dominant
foreground, so the example stays the same run after run.

    python scripts/make-example.py                 # rewrite app/static/example/
    python scripts/make-example.py --out /tmp/ex   # elsewhere
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy import ndimage  # noqa: E402

from data.io import to_png_bytes  # noqa: E402
from data.synthetic import synthetic_episode  # noqa: E402

log = logging.getLogger("make-example")


def _readable(mask: np.ndarray) -> bool:
    """5-30 % foreground in at most two pieces (of 40 pixels or more): a structure a person can see."""
    labelled, _ = ndimage.label(mask)
    pieces = int((np.bincount(labelled.ravel())[1:] >= 40).sum())
    return 0.05 < mask.mean() < 0.30 and pieces <= 2


def make_episode(seed: int, support: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The first seed >= ``seed`` whose every mask is readable (see ``_readable``).

    Returns:
        images (S + 1, N, N) uint8, masks (S + 1, N, N) uint8 in {0, 1}, and the seed used.
    """
    for candidate in range(seed, seed + 1000):
        images, masks = synthetic_episode(support + 1, size, torch.Generator().manual_seed(candidate))
        masks = masks.numpy().astype(np.uint8)
        if all(_readable(m) for m in masks):
            return (images.numpy() * 255).round().astype(np.uint8), masks, candidate
    raise RuntimeError(f"no seed in [{seed}, {seed + 1000}) gives readable masks")


def write_example(out: Path, seed: int, support: int, size: int) -> dict:
    images, masks, used = make_episode(seed, support, size)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(1, support + 1):
        image_name, mask_name = f"support-{i}.png", f"support-{i}-mask.png"
        (out / image_name).write_bytes(to_png_bytes(images[i]))
        (out / mask_name).write_bytes(to_png_bytes(masks[i]))
        pairs.append({"image": image_name, "mask": mask_name})
    (out / "query.png").write_bytes(to_png_bytes(images[0]))
    manifest = {
        "name": "synthetic example",
        "description": f"one synthetic task from data/synthetic.py (seed {used}, {size} x {size}); "
        "written by scripts/make-example.py",
        "support": pairs,
        "query": "query.png",
        "label_names": {"1": "structure"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "app" / "static" / "example", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="first seed tried")
    parser.add_argument("--support", type=int, default=4, help="support pairs")
    parser.add_argument("--size", type=int, default=192, help="side of the square images in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(message)s")
    manifest = write_example(args.out, args.seed, args.support, args.size)
    log.info("wrote %d support pairs and a query to %s (%s)", len(manifest["support"]), args.out,
             manifest["description"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
