"""Per-query latency and peak memory of the network's formulations, side by side.

Variants (all on the v1 shape, nf = 64, seeded random weights, batch 1, 128 x 128, fp32 weights):

* ``reference``: the concatenation formulation of the paper (``forward_reference``), NCHW;
* ``fast``: the split formulation (``forward``), NCHW;
* ``fast-cl``: ``forward`` with channels-last weights (what ``load_model`` picks on CPU);
* ``fast-cl-bf16``: ``fast-cl`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Every (variant, S) runs in a fresh subprocess so that memory figures do not leak between configurations.
Memory is the growth of the worker's peak resident set size (``ru_maxrss``) from just before the first
forward pass (network, inputs and torch already loaded) to the end of the timed runs: what the forward
passes add at their high-water mark, including allocator caching, not a tensor-by-tensor count.

Usage::

    python bench/bench_network.py                      # S = 1 8 16 64, 5 timed runs after 1 warm-up
    python bench/bench_network.py --sizes 1 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.config import universeg_v1_config
from model.network import build_network

VARIANTS = ("reference", "fast", "fast-cl", "fast-cl-bf16")


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def worker(variant: str, n_support: int, size: int, warmup: int, repeats: int, logits_path: str) -> dict:
    """One configuration in this process; returns its figures and saves its logits for the comparison."""
    torch.manual_seed(0)
    net = build_network(universeg_v1_config()).eval()
    if variant.startswith("fast-cl"):
        net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    query = torch.rand(1, 1, size, size, generator=gen)  # (B, 1, H, W)
    support_images = torch.rand(1, n_support, 1, size, size, generator=gen)  # (B, S, 1, H, W)
    support_masks = (torch.rand(1, n_support, 1, size, size, generator=gen) > 0.5).float()
    run = net.forward_reference if variant == "reference" else net.forward

    def once() -> torch.Tensor:
        with torch.inference_mode():
            if variant.endswith("bf16"):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return run(query, support_images, support_masks)
            return run(query, support_images, support_masks)

    baseline = _peak_rss_mib()
    for _ in range(warmup):
        logits = once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logits = once()
        times.append(time.perf_counter() - start)
    peak = _peak_rss_mib()
    np.save(logits_path, logits.float().numpy())
    return {"median_s": statistics.median(times), "min_s": min(times), "rss_growth_mib": peak - baseline}


def _run_worker(variant: str, n_support: int, args, tmp: Path) -> dict:
    logits_path = tmp / f"{variant}-{n_support}.npy"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        variant,
        "--sizes",
        str(n_support),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--image-size",
        str(args.image_size),
        "--logits",
        str(logits_path),
    ] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["logits"] = np.load(logits_path)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 64], help="support set sizes S")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--image-size", type=int, default=128, help="H = W")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        figures = worker(args.worker, args.sizes[0], args.image_size, args.warmup, args.repeats, args.logits)
        print(json.dumps(figures))
        return

    variants = ["reference"] + [v for v in args.variants if v != "reference"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs; "
        f"v1 network (nf 64), batch 1, {args.image_size}x{args.image_size}, median of {args.repeats} runs "
        f"after {args.warmup} warm-up; memory = peak RSS growth of a fresh process during the forward passes\n"
    )
    print("| S | variant | median latency (s) | speed-up vs reference | peak RSS growth (MiB) | max abs logit diff |")
    print("|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_support in args.sizes:
            reference = None
            for variant in variants:
                result = _run_worker(variant, n_support, args, Path(tmp))
                if variant == "reference":
                    reference = result
                speedup = reference["median_s"] / result["median_s"]
                diff = float(np.abs(result["logits"] - reference["logits"]).max())
                print(
                    f"| {n_support} | {variant} | {result['median_s']:.3f} | {speedup:.2f}x | "
                    f"{result['rss_growth_mib']:.0f} | {diff:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
