"""In-context training: episodes from datasets and synthetic tasks, the fast path with autograd, exact resume.

Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would, whatever the number of data workers. Letters: B episodes per batch, S support items, N side.
"""

from __future__ import annotations

import io
import json
import logging
import math
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from data.augment import apply_in_task, apply_task_level, in_task_batched, in_task_transform
from data.datasets import Task, choose_task, load_tasks, sample_episode
from data.io import write_atomic
from data.pack import read_pack
from data.superpixel import superpixel_episode
from data.synthetic import synthetic_episode
from data.synthetic_shapes import FAMILIES, shape_episode
from model.network import build_network
from model.train_config import TrainConfig
from model.weights import load_model, save_checkpoint

log = logging.getLogger(__name__)


def support_size(cfg: TrainConfig, rng: np.random.Generator) -> int:
    """S for one step: uniform in [support_min, support_max], or log-uniform (small sets more often)."""
    if cfg.support_dist == "loguniform":
        lo, hi = math.log(cfg.support_min), math.log(cfg.support_max + 1)
        return min(cfg.support_max, int(math.exp(rng.uniform(lo, hi))))
    return int(rng.integers(cfg.support_min, cfg.support_max + 1))


def _episode(cfg: TrainConfig, tasks, rng: np.random.Generator, gen: torch.Generator, n_support: int, size: int):
    """One episode (S + 1 images and masks, (S + 1, N, N)) from the mix the config asks for."""
    n = n_support + 1
    if tasks and rng.random() < cfg.superpixel_fraction:
        task = choose_task(tasks, rng)
        for _ in range(3):
            image = task.images[int(rng.integers(len(task.images)))]
            if image.shape[-1] != size:
                image = F.interpolate(image[None, None].float(), size=(size, size), mode="area")[0, 0]
            episode = superpixel_episode(image, n, gen, rng)
            if episode is not None:
                return episode
    if not tasks or rng.random() < cfg.synthetic_fraction:
        if rng.random() < cfg.shape_fraction:
            return shape_episode(FAMILIES[int(rng.integers(len(FAMILIES)))], n, size, gen)
        return synthetic_episode(n, size, gen)
    im, m = sample_episode(tasks, rng, n_support, cfg.empty_query_fraction)
    if im.shape[-1] != size:
        im = F.interpolate(im[:, None], size=(size, size), mode="area")[:, 0]
        m = F.interpolate(m[:, None], size=(size, size), mode="area")[:, 0]
    return im, m


def batch_for_step(cfg: TrainConfig, step: int, tasks: dict[str, list[Task]], transform) -> dict[str, torch.Tensor]:
    """The batch of one step, determined by (cfg.seed, step) alone.

    Returns:
        query (B, 1, N, N), support_images (B, S, 1, N, N), support_masks (B, S, 1, N, N), target (B, 1, N, N).
    """
    rng = np.random.default_rng([cfg.seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    size = cfg.warmup_size if step < cfg.warmup_steps else cfg.size
    n_support = support_size(cfg, rng)
    images, masks = [], []
    for _ in range(cfg.batch_size):
        im, m = _episode(cfg, tasks, rng, gen, n_support, size)
        if cfg.augment_p > 0:
            if cfg.augment_backend == "batched":
                im, m = in_task_batched(im, m, gen, cfg.augment_p)
            else:
                im, m = apply_in_task(transform, im, m, int(rng.integers(2**31)))
        if cfg.task_augment_p > 0:
            im, m = apply_task_level(im, m, rng, cfg.task_augment_p)
        images.append(im)
        masks.append(m)
    images, masks = torch.stack(images), torch.stack(masks)  # (B, S+1, N, N)
    return {
        "query": images[:, :1].contiguous(),
        "support_images": images[:, 1:, None].contiguous(),
        "support_masks": masks[:, 1:, None].contiguous(),
        "target": (masks[:, :1] > 0.5).float(),
    }


class EpisodeStream(IterableDataset):
    """Batches for steps start, start + 1, ..., split across workers by step."""

    def __init__(self, cfg: TrainConfig, tasks: dict[str, list[Task]], start: int):
        self.cfg, self.tasks, self.start = cfg, tasks, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        torch.set_num_threads(1)
        transform = in_task_transform(self.cfg.augment_p) if self.cfg.augment_backend == "monai" else None
        for step in range(self.start + wid, self.cfg.steps, nw):
            yield step, batch_for_step(self.cfg, step, self.tasks, transform)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice_bce") -> tuple[torch.Tensor, torch.Tensor]:
    """A pixel loss + soft Dice on (B, 1, H, W) logits; also returns the hard Dice per item (B,) for logging.

    ``dice_bce``: binary cross-entropy + soft Dice. ``focal_dice``: focal loss with gamma 20 + soft Dice
    (ScribblePrompt, MultiverSeg). The soft Dice of an empty target with an empty prediction is 1.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "focal_dice":
        p_true = torch.exp(-bce)  # probability given to the true class
        pixel = ((1 - p_true) ** 20 * bce).mean()
    else:
        pixel = bce.mean()
    probs = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (probs * t).sum(1)
    dice = (2 * inter + 1) / (probs.sum(1) + t.sum(1) + 1)
    with torch.no_grad():
        hard = (probs > 0.5).float()
        hard_dice = (2 * (hard * t).sum(1) + 1e-6) / (hard.sum(1) + t.sum(1) + 1e-6)
    return pixel + (1 - dice).mean(), hard_dice


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak; or WSD: warm-up, stable, linear decay at the end.

    WSD depends on ``steps`` only through the last ``decay_steps``, so a run extended while in its stable
    phase keeps a continuous curve.
    """
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.schedule == "wsd":
        to_end = cfg.steps - step
        if to_end >= cfg.decay_steps:
            return cfg.lr
        return cfg.lr * (0.02 + 0.98 * to_end / max(1, cfg.decay_steps))
    t = (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` through the tree's one atomic writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _trim_log(path: Path, step: int) -> None:
    """Drop the log lines past ``step``, the resume point: a process that died after its last checkpoint wrote
    them, and the resumed run writes those steps again (exactly), so keeping them would log each step twice."""
    if not path.exists():
        return
    def before(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:  # a line cut short by the kill: it is past the checkpoint too
            return False

    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and before(line)]
    if len(kept) < len(lines):
        write_atomic(path, "".join(kept).encode())
        log.info("dropped %d log lines past step %d from %s", len(lines) - len(kept), step, path)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast can pay off on ``device``: any accelerator, or a CPU whose oneDNN has bf16 kernels
    (AVX-512 BF16 or AMX); elsewhere the CPU emulates it."""
    return device.type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Trainer:
    """Owns the network, the optimiser and the run folder; ``run()`` trains until ``steps`` or ``max_minutes``."""

    def __init__(self, cfg: TrainConfig, tasks: dict[str, list[Task]] | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.net = build_network(cfg.network_config()).to(self.device)
        if cfg.channels_last:  # measured faster for training on CPU too (docs/performance.md)
            self.net = self.net.to(memory_format=torch.channels_last)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.bf16 = cfg.bf16 and native_bf16(self.device)
        if cfg.bf16 and not self.bf16:
            log.warning("bf16 is off: this CPU has no native bf16, where autocast measured about 20x slower than "
                        "float32 (docs/performance.md); training in float32")
        if cfg.init_weights and not self.state_path.exists():
            init = load_model(cfg.init_weights)
            self.net.load_state_dict(init.state_dict())
            log.info("new run initialised from %s", cfg.init_weights)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # the EMA of the weights is what a run exports; its buffers follow the network's (use_buffers)
        self.ema = (
            AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay > 0
            else None
        )
        self.step = 0
        self.seconds = 0.0
        # the logged loss and Dice are EMAs over steps; kept in the resume state so that a resumed run's log goes
        # on from where it stopped instead of restarting from one batch's value
        self.log_ema: dict[str, float] = {}
        if tasks is None and cfg.data_pack:
            tasks = read_pack(cfg.data_pack)
        if tasks is None:
            tasks = load_tasks(
                cfg.data_root, None, cfg.size, exclude=tuple(cfg.exclude), empty_step=cfg.empty_slice_step
            ) if cfg.data_root else {}
        self.tasks = tasks
        self.resume()

    @property
    def state_path(self) -> Path:
        return self.run_dir / "last.pt"

    def resume(self) -> None:
        if not self.state_path.exists():
            return
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        optim = state.get("optimizer")
        if optim is None:  # kept in its own file so that neither file is large
            optim_state = torch.load(self.optim_path, map_location=self.device, weights_only=True)
            if int(optim_state["step"]) != int(state["step"]):
                raise RuntimeError(
                    f"{self.optim_path} is at step {optim_state['step']}, {self.state_path} at {state['step']}"
                )
            optim = optim_state["optimizer"]
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(optim)
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.log_ema = {k: float(v) for k, v in state.get("log_ema", {}).items()}  # absent in older states
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d", self.state_path, self.step)

    @property
    def optim_path(self) -> Path:
        return self.run_dir / "optimizer.pt"

    def save(self) -> None:
        """Training state and the deployable weights of this step, each file written atomically.

        The optimiser state goes first, then ``last.pt`` names the step; resume checks they agree.
        """
        _atomic_save({"optimizer": self.opt.state_dict(), "step": self.step}, self.optim_path)
        state = {
            "model": self.net.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "log_ema": dict(self.log_ema),
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(asdict(self.cfg)),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        _atomic_save(state, self.state_path)
        save_checkpoint(
            self.export_net,
            self.run_dir / "model.safetensors",
            {"steps": str(self.step), "train_hours": f"{self.seconds / 3600:.3f}", "train_config": asdict(self.cfg)},
        )

    @property
    def export_net(self) -> torch.nn.Module:
        """The weights a run ships: the EMA when the run keeps one."""
        return self.ema.module if self.ema is not None else self.net

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.cfg, self.step)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(batch["query"], batch["support_images"], batch["support_masks"])
        loss, hard_dice = loss_fn(logits, batch["target"], self.cfg.loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.step += 1
        return float(loss.detach()), float(hard_dice.mean())

    def run(self) -> Path:
        cfg = self.cfg
        (self.run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        if self.step >= cfg.steps:
            log.info("run already at %d of %d steps", self.step, cfg.steps)
            self.save()
            return self.run_dir
        stream = EpisodeStream(cfg, self.tasks, self.step)
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=cfg.workers,
            prefetch_factor=4 if cfg.workers else None,
            persistent_workers=False,
        )
        started = last_save = time.monotonic()
        seconds_at_start = self.seconds
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, dynamic_ncols=True)
        _trim_log(self.run_dir / "log.jsonl", self.step)
        logf = open(self.run_dir / "log.jsonl", "a")
        self.net.train()
        stop = []  # SIGTERM (a machine going away, `kill`) ends the run after this step, with a checkpoint
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True)) if _main_thread() else None
        try:
            for step, batch in loader:
                assert step == self.step, f"data stream at step {step}, trainer at {self.step}"
                loss, dice = self.train_step(batch)
                for key, value in (("loss", loss), ("dice", dice)):
                    old = self.log_ema.get(key)
                    self.log_ema[key] = value if old is None else 0.98 * old + 0.02 * value
                now = time.monotonic()
                self.seconds = seconds_at_start + now - started
                bar.update(1)
                bar.set_postfix(loss=f"{self.log_ema['loss']:.3f}", dice=f"{self.log_ema['dice']:.3f}")
                if self.step % 25 == 0:
                    logf.write(
                        json.dumps(
                            {
                                "step": self.step,
                                "loss": self.log_ema["loss"],
                                "dice": self.log_ema["dice"],
                                "lr": lr_at(cfg, self.step - 1),
                                "seconds": round(self.seconds, 1),
                            }
                        )
                        + "\n"
                    )
                    logf.flush()
                if now - last_save > cfg.checkpoint_minutes * 60:
                    self.save()
                    last_save = now
                if cfg.max_minutes is not None and now - started > cfg.max_minutes * 60:
                    log.info("stopping at step %d: --max-minutes reached", self.step)
                    break
                if stop:
                    log.info("stopping at step %d: SIGTERM", self.step)
                    break
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            bar.close()
            logf.close()
            self.save()
        return self.run_dir
