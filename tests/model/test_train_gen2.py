"""The second-generation trainer: exact resume with WSD and the EMA, seeded generators, the pack, the GPU burst."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.datasets import Task
from data.pack import read_pack, write_pack
from data.superpixel import superpixel_episode
from data.synthetic import synthetic_episode
from data.synthetic_shapes import FAMILIES, shape_episode
from model.train import TrainConfig, Trainer, loss_fn, lr_at

ROOT = Path(__file__).resolve().parents[2]


def _tasks(size=32, n=12):
    gen = torch.Generator().manual_seed(3)
    out = {}
    for d in range(2):
        im, m = synthetic_episode(n, size, gen)
        present = np.ones(n, bool)
        present[-2:] = False
        m[-2:] = 0
        out[f"d{d}"] = [Task(f"d{d}", 1, None, im.half(), m.half(), present, [f"c{i}" for i in range(n)])]
    return out


def _cfg(run_dir, steps, **kw):
    base = dict(
        run_dir=str(run_dir), steps=steps, batch_size=2, support_min=1, support_max=6, support_dist="loguniform",
        features=8, size=32, lr=3e-3, lr_warmup_steps=2, schedule="wsd", decay_steps=3, ema_decay=0.9,
        synthetic_fraction=0.5, shape_fraction=0.5, superpixel_fraction=0.3, augment_backend="batched",
        empty_query_fraction=0.3, workers=0, progress=False, checkpoint_minutes=60, loss="focal_dice",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_exact_with_wsd_and_ema(tmp_path):
    tasks = _tasks()
    straight = Trainer(_cfg(tmp_path / "a", 6), tasks=tasks)
    straight.run()
    first = Trainer(_cfg(tmp_path / "b", 6, max_minutes=0.0), tasks=tasks)  # interrupted after its first step
    first.run()
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # the interrupted process had logged past its checkpoint
        f.write(json.dumps({"step": 5, "loss": 9.0, "dice": 0.0}) + "\n")
    second = Trainer(_cfg(tmp_path / "b", 6), tasks=tasks)
    assert second.step == 1
    second.run()
    logged = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [e["step"] for e in straight_log]  # the line past the checkpoint went
    for a, b in ((straight.net, second.net), (straight.ema.module, second.ema.module)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    # the logged loss and Dice (EMAs over steps) go on across the resume, not from one batch after it
    assert second.log_ema == straight.log_ema and set(straight.log_ema) == {"loss", "dice"}
    # the EMA is what is exported, and it is not the raw weights
    ema, raw = straight.ema.module.state_dict(), straight.net.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    from model.weights import load_model

    shipped = load_model(tmp_path / "a" / "model.safetensors").state_dict()
    assert all(torch.allclose(shipped[k].float(), ema[k].float()) for k in shipped)


def test_wsd_schedule_extends_without_jumps():
    short = _cfg("unused", 1000, lr=1.0, lr_warmup_steps=10, decay_steps=100)
    longer = _cfg("unused", 5000, lr=1.0, lr_warmup_steps=10, decay_steps=100)
    assert lr_at(short, 5) < lr_at(short, 9) <= 1.0
    assert [lr_at(short, s) for s in range(10, 900)] == [lr_at(longer, s) for s in range(10, 900)]
    assert lr_at(short, 950) < lr_at(short, 920) < 1.0 == lr_at(longer, 950)
    assert 0 < lr_at(short, 999) <= 0.05


def test_focal_dice_loss_prefers_the_right_answer():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    good, bad = (target * 2 - 1) * 6, -(target * 2 - 1) * 6
    for kind in ("dice_bce", "focal_dice"):
        lg, dg = loss_fn(good, target, kind)
        lb, db = loss_fn(bad, target, kind)
        assert torch.isfinite(lg) and lg < lb and float(dg.mean()) > 0.99 > float(db.mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_families_are_seeded(family):
    a = shape_episode(family, 5, 48, torch.Generator().manual_seed(7))
    b = shape_episode(family, 5, 48, torch.Generator().manual_seed(7))
    c = shape_episode(family, 5, 48, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    images, masks = a
    assert images.shape == masks.shape == (5, 48, 48)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0} and bool((masks.flatten(1).sum(1) > 0).all())


def test_superpixel_tasks_are_seeded():
    image = synthetic_episode(1, 64, torch.Generator().manual_seed(1))[0][0]

    def draw(seed):
        for k in range(20):  # the first seeds that give a usable region
            out = superpixel_episode(image, 4, torch.Generator().manual_seed(seed + k),
                                     np.random.default_rng(seed + k))
            if out is not None:
                return out
        raise AssertionError("no superpixel task in 20 draws")

    a, b = draw(0), draw(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    images, masks = a
    assert images.shape == masks.shape == (4, 64, 64)
    assert bool((masks.flatten(1).amax(1) >= 0.5).all()) and float(masks.mean()) < 0.6


def test_pack_round_trip(tmp_path):
    tasks = _tasks()
    write_pack(tmp_path / "p.npz", tasks)
    back = read_pack(tmp_path / "p.npz")
    assert sorted(back) == sorted(tasks)
    for name in tasks:
        for t, u in zip(tasks[name], back[name]):
            assert (t.dataset, t.label, t.axis, t.cases) == (u.dataset, u.label, u.axis, u.cases)
            assert np.array_equal(t.present, u.present)
            assert float((t.images.float() - u.images.float()).abs().max()) <= 0.5 / 255 + 1e-3
            assert float((t.masks.float() - u.masks.float()).abs().max()) <= 0.5 / 255 + 1e-3
    capped = tmp_path / "capped.npz"
    write_pack(capped, tasks, max_images=5)
    assert all(len(t.images) == 5 for ts in read_pack(capped).values() for t in ts)


def test_gpu_burst_command_runs_on_cpu_with_a_tiny_budget(tmp_path):
    """scripts/gpu-burst.sh resumes a run from its files, trains, and leaves the new state in OUT only."""
    run_dir = tmp_path / "run"
    Trainer(_cfg(run_dir, 2), tasks=_tasks()).run()
    (run_dir / "launch.sh").write_text(
        "#!/usr/bin/env bash\nexec \"$ICSEG_BIN\" train --features 8 --size 32 --support-min 1 --support-max 4 "
        "--schedule wsd --decay-steps 3 --ema-decay 0.9 --steps 100000 --no-progress \"$@\"\n"
    )
    os.chmod(run_dir / "launch.sh", 0o755)
    write_pack(tmp_path / "pack.npz", _tasks())
    before = (run_dir / "last.pt").read_bytes()
    icseg = str(Path(sys.executable).parent / "icseg")
    env = dict(os.environ, DEVICE="cpu", BATCH_SIZE="2", WORKERS="0", ICSEG_BIN=icseg)
    out = tmp_path / "out"
    subprocess.run([str(ROOT / "scripts" / "gpu-burst.sh"), str(run_dir), str(tmp_path / "pack.npz"), str(out), "0.05"],
                   check=True, env=env, timeout=240, cwd=ROOT)
    state = torch.load(out / "run" / "last.pt", weights_only=True)
    assert state["step"] > 2 and "ema" in state
    assert (out / "run" / "model.safetensors").exists()
    assert (run_dir / "last.pt").read_bytes() == before


def test_sigterm_stops_after_a_step_with_a_checkpoint(tmp_path):
    """A run told to stop (SIGTERM) saves a resumable state at the step it reached."""
    import signal
    import threading

    trainer = Trainer(_cfg(tmp_path / "r", 10**6), tasks=_tasks())
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    trainer.run()
    timer.cancel()
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert 0 < state["step"] == trainer.step < 10**6
    assert Trainer(_cfg(tmp_path / "r", 10**6), tasks=_tasks()).step == trainer.step


@pytest.mark.parametrize("native", [True, False])
def test_bf16_falls_back_to_float32_on_a_cpu_without_native_bf16(tmp_path, monkeypatch, caplog, native):
    """On a CPU that only emulates bf16 (about 20x slower there) ``bf16`` trains in float32 and says so."""
    import model.train as train

    monkeypatch.setattr(train.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    trainer = Trainer(_cfg(tmp_path / "r", 1, bf16=True), tasks=_tasks())
    assert trainer.bf16 is native
    assert ("bf16 is off" in caplog.text) is not native
    assert Trainer(_cfg(tmp_path / "s", 1), tasks=_tasks()).bf16 is False
