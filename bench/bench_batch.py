"""Images per second of `icseg batch` on local Ray (1 and 2 actors) against the single-process `icseg segment`.

All three are run as the user runs them (fresh subprocesses) on the same generated inputs, with the same
seeded checkpoint of the UniverSeg v1 shape (nf = 64, 128 x 128; random weights: a conv's speed does not depend
on its values) and the same CPU budget: `segment` with torch's default threads, 1 actor x 2 CPUs, 2 actors x 1
CPU (``--cpus-per-replica``, which also sets the actor's torch threads).

Figures per command:

* wall: the whole process, from exec to exit (Python and torch imports, model load, Ray start for batch),
  once on 1 input and once on all of them;
* images/s (wall): inputs / wall;
* images/s past start-up: (inputs - 1) / (wall on all - wall on 1): the rate once the fixed costs are paid;
* batch's own line: the Ray stage only (local Ray start, actors loading the model, the work), as printed;
* same masks: how many masks equal `icseg segment`'s, pixel for pixel.

Usage::

    python bench/bench_batch.py                      # 32 PNGs of 256 x 256, 8 support items
    python bench/bench_batch.py --count 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.io import read_mask, save_image
from model.config import universeg_v1_config
from model.network import build_network
from model.weights import save_checkpoint


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2).astype(np.uint8)
    image = np.clip(rng.normal(50, 15, (size, size)) + 140 * mask, 0, 255).astype(np.uint8)
    return image, mask


def _task(root: Path, count: int, size: int, support: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(support):
        image, mask = _scene(rng, size)
        save_image(image, root / "prompt" / "images" / f"s{i:02d}.png")
        save_image(mask, root / "prompt" / "masks" / f"s{i:02d}.png")
    for i in range(count):
        save_image(_scene(rng, size)[0], root / "inputs" / f"scan{i:03d}.png")
    torch.manual_seed(0)
    save_checkpoint(build_network(universeg_v1_config()), root / "v1-random.safetensors")


def _run(argv: list[str]) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")} | {"RAY_USAGE_STATS_ENABLED": "0"}
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=32, help="input PNGs")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--support", type=int, default=8, help="support items")
    parser.add_argument("--batch-size", type=int, default=4, help="icseg batch --batch-size")
    args = parser.parse_args()
    icseg = str(Path(sys.executable).with_name("icseg"))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        _task(root, args.count, args.size, args.support)
        weights = str(root / "v1-random.safetensors")
        (root / "one").mkdir()
        (root / "one" / "scan000.png").write_bytes((root / "inputs" / "scan000.png").read_bytes())

        def argv(command: str, inputs: str, out: str) -> list[str]:
            common = [icseg, command, "--weights", weights, "--no-progress", "--out", f"{root}/{out}"]
            if command == "segment":
                return [*common, "--support-images", f"{root}/prompt/images", "--support-masks",
                        f"{root}/prompt/masks", "--query", f"{root}/{inputs}"]
            replicas, cpus = (1, 2) if out.endswith("1") else (2, 1)
            return [*common, "--prompt-dir", f"{root}/prompt", "--inputs", f"{root}/{inputs}", "--replicas",
                    str(replicas), "--cpus-per-replica", str(cpus), "--batch-size", str(args.batch_size)]

        runs = [("icseg segment (1 process, torch threads: default)", "segment", "segment"),
                ("icseg batch --replicas 1 --cpus-per-replica 2", "batch", "batch1"),
                ("icseg batch --replicas 2 --cpus-per-replica 1", "batch", "batch2")]
        rows = []
        for label, command, out in runs:
            wall_one, _ = _run(argv(command, "one", out + "-one"))
            wall, stdout = _run(argv(command, "inputs", out))
            found = re.search(r"in ([\d.]+) s \(([\d.]+) inputs/s", stdout)
            own = f"{float(found[1]):.1f} s, {float(found[2]):.2f}/s" if found else "-"
            steady = (args.count - 1) / (wall - wall_one) if wall > wall_one else float("nan")
            rows.append((label, out, wall_one, wall, steady, own))
            print(f"done: {label}: {wall_one:.1f} s for 1 input, {wall:.1f} s for {args.count}", file=sys.stderr)
        reference = {p.name: read_mask(p).array for p in sorted((root / "segment").glob("*.png"))}
        print(f"\n{args.count} PNGs of {args.size} x {args.size}, {args.support} support items, "
              f"v1-shape network (nf 64, 128 x 128), batch size {args.batch_size}, {os.cpu_count()} CPUs\n")
        print(f"| command | wall, 1 input (s) | wall, {args.count} inputs (s) | images/s (wall) | "
              "images/s past start-up | batch's own line (Ray stage) | same masks as segment |")
        print("|---|---:|---:|---:|---:|---|---:|")
        for label, out, wall_one, wall, steady, own in rows:
            masks = {p.name: read_mask(p).array for p in sorted((root / out).glob("*.png"))}
            same = sum(np.array_equal(masks.get(name), mask) for name, mask in reference.items())
            print(f"| `{label}` | {wall_one:.1f} | {wall:.1f} | {args.count / wall:.2f} | {steady:.2f} | {own} | "
                  f"{same}/{len(reference)} |")

if __name__ == "__main__":
    main()
