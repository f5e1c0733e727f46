"""Training throughput, end to end: episodes per second of today's trainer and the new one, side by side.

Each trainer runs its real loop for a fixed time: the data worker builds batches (episode sources, in-task and
task-level augmentation) while the main process runs forward, backward and the optimiser, exactly as
``icseg train`` does. Same network (UniverSeg v1 shape, seeded random weights), same batch size and support size
for both; only what the trainers do differs:

* today: the previous defaults (fp32, MONAI per-image augmentation, the region-map generator only);
* today + bf16: the same with bf16 autocast, as the first default model's run used it;
* new: bf16, batched in-task augmentation, the second-generation episode mix (shape families, superpixel tasks),
  torch threads fixed to the cores;
* new, contiguous memory format: the same without channels-last (which measured slower in float32 on an AVX2-only
  CPU, faster on the machines with native bf16).

A small in-memory dataset of generated tasks stands in for ../shared, so that real-dataset and superpixel
episodes are part of the mix. torch.compile was measured slower for this network on these CPUs (about 1.4 s
against 1.0 s per step at 128 px, B = 4, S = 8) and is not used. Ratios matter, not absolute times: the
machines are shared and noisy.

    python bench/bench_train.py [--sizes 64 128] [--seconds 60] [--batch-size 4] [--support 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.datasets import Task
from data.synthetic import synthetic_episode
from model.train import EpisodeStream, TrainConfig, Trainer


def _tasks(size: int, datasets: int = 4, images: int = 24) -> dict[str, list[Task]]:
    """Generated 'datasets' with one task each, in the shape load_tasks returns."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for d in range(datasets):
        im, m = synthetic_episode(images, size, gen)
        out[f"generated{d}"] = [Task(f"generated{d}", 1, None, im.half(), m.half(), np.ones(images, bool))]
    return out


def _variants(size: int, batch: int, support: int) -> dict[str, TrainConfig]:
    common = dict(size=size, warmup_steps=0, batch_size=batch, support_min=support, support_max=support,
                  steps=10**6, progress=False, checkpoint_minutes=10**6)
    today = TrainConfig(**common)
    variants = {
        "today (fp32, MONAI augmentation)": today,
        "today + bf16": dataclasses.replace(today, bf16=True),
        "new (bf16, batched augmentation, gen-2 mix)": dataclasses.replace(
            today, bf16=True, augment_backend="batched", synthetic_fraction=0.3, shape_fraction=0.6,
            superpixel_fraction=0.15, threads=torch.get_num_threads(), ema_decay=0.998, schedule="wsd",
        ),
    }
    # channels-last measured faster on the machines with native bf16, slower in float32 on an AVX2-only one
    variants["new, contiguous memory format"] = dataclasses.replace(
        variants["new (bf16, batched augmentation, gen-2 mix)"], channels_last=False)
    return variants


def _episodes_per_second(cfg: TrainConfig, tasks, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(dataclasses.replace(cfg, run_dir=run_dir), tasks=tasks)
        loader = DataLoader(EpisodeStream(trainer.cfg, tasks, 0), batch_size=None, num_workers=cfg.workers,
                            prefetch_factor=4 if cfg.workers else None)
        trainer.net.train()
        start, steps = None, 0
        for _, batch in loader:
            trainer.train_step(batch)
            if start is None:  # the first step pays for worker start-up and warm-up
                start = time.perf_counter()
                continue
            steps += 1
            if time.perf_counter() - start > seconds:
                break
        return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seconds", type=float, default=60.0, help="timed seconds per trainer and size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--support", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = {args.batch_size}, S = {args.support}\n")
    print("| size | trainer | episodes/s | vs today |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        tasks = _tasks(size)
        base = None
        for name, cfg in _variants(size, args.batch_size, args.support).items():
            eps = _episodes_per_second(cfg, tasks, args.seconds)
            base = base or eps
            print(f"| {size} | {name} | {eps:.2f} | {eps / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
