"""Training throughput: episode generation, and one optimiser step of the fast path vs the reference formulation.

Prints one markdown table. Seeded random weights (speed only). Ratios matter, not absolute times:
the machine is shared and noisy.

    python bench/bench_train.py [--features 64] [--batch-size 4] [--support 8] [--sizes 64 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from data.augment import apply_in_task, apply_task_level, in_task_transform
from data.synthetic import synthetic_episode
from model.network import build_network
from model.train import TrainConfig, loss_fn


def _episodes_per_second(size: int, n_images: int, seconds: float = 5.0, augment: bool = False) -> float:
    """Episodes per second on one thread, as in the training run's data worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    transform = in_task_transform(0.5)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images, masks = synthetic_episode(n_images, size, gen)
        if augment:
            images, masks = apply_in_task(transform, images, masks, count)
            images, masks = apply_task_level(images, masks, rng)
        count += 1
    torch.set_num_threads(threads)
    return count / (time.perf_counter() - start)


def _step_seconds(net, forward, batch, repeats: int, bf16: bool = False) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch["query"], batch["support_images"], batch["support_masks"])
        loss, _ = loss_fn(logits, batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--support", type=int, default=8)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"| episode source (S + 1 = {args.support + 1} images, 128x128, one thread) | episodes/s |")
    print("| --- | --- |")
    print(f"| synthetic | {_episodes_per_second(128, args.support + 1):.1f} |")
    augmented = _episodes_per_second(128, args.support + 1, augment=True)
    print(f"| synthetic + in-task and task-level augmentation | {augmented:.1f} |")

    print(
        "\n| size | B | S | reference step (s) | fast step (s) | fast channels_last step (s) "
        "| fast CL bf16 step (s) | speed-up (fast CL / ref) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    cfg = TrainConfig(features=args.features)
    for size in args.sizes:
        g = torch.Generator().manual_seed(1)
        b, s = args.batch_size, args.support
        batch = {
            "query": torch.rand(b, 1, size, size, generator=g),
            "support_images": torch.rand(b, s, 1, size, size, generator=g),
            "support_masks": (torch.rand(b, s, 1, size, size, generator=g) > 0.5).float(),
            "target": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
        }
        net = build_network(cfg.network_config())
        ref = _step_seconds(net, net.forward_reference, batch, args.repeats)
        fast = _step_seconds(net, net.forward, batch, args.repeats)
        net_cl = build_network(cfg.network_config()).to(memory_format=torch.channels_last)
        fast_cl = _step_seconds(net_cl, net_cl.forward, batch, args.repeats)
        fast_bf16 = _step_seconds(net_cl, net_cl.forward, batch, args.repeats, bf16=True)
        print(
            f"| {size} | {b} | {s} | {ref:.2f} | {fast:.2f} | {fast_cl:.2f} | {fast_bf16:.2f} | {ref / fast_cl:.2f}x |"
        )


if __name__ == "__main__":
    main()
