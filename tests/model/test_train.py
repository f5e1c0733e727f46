"""Training: exact resume, a loss that learns, the batch stream as a function of (seed, step)."""

import torch

from data.augment import in_task_transform
from model.train import TrainConfig, Trainer, batch_for_step, lr_at


def _cfg(run_dir, steps):
    return TrainConfig(
        run_dir=str(run_dir),
        steps=steps,
        batch_size=2,
        support_min=2,
        support_max=3,
        features=8,
        size=32,
        warmup_size=16,
        warmup_steps=2,
        lr=3e-3,
        lr_warmup_steps=2,
        workers=0,
        progress=False,
        checkpoint_minutes=60,
    )


def test_resume_is_exact(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", 6), tasks={})
    straight.run()

    first = Trainer(_cfg(tmp_path / "b", 3), tasks={})
    first.run()
    second = Trainer(_cfg(tmp_path / "b", 6), tasks={})  # same folder: resumes at step 3
    assert second.step == 3
    second.run()

    a, b = straight.net.state_dict(), second.net.state_dict()
    assert straight.step == second.step == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run is not trivially unchanged from its initialisation
    fresh = Trainer(_cfg(tmp_path / "c", 6), tasks={}).net.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)


def test_batch_depends_only_on_seed_and_step():
    cfg = _cfg("unused", 10)
    t = in_task_transform(cfg.augment_p)
    b1 = batch_for_step(cfg, 5, {}, t)
    b2 = batch_for_step(cfg, 5, {}, in_task_transform(cfg.augment_p))
    b3 = batch_for_step(cfg, 6, {}, t)
    for k in b1:
        assert torch.equal(b1[k], b2[k])
    assert not torch.equal(b1["query"], b3["query"]) or b1["query"].shape != b3["query"].shape
    assert b1["query"].shape[-1] == 32 and batch_for_step(cfg, 0, {}, t)["query"].shape[-1] == 16  # warm-up size
    assert set(torch.unique(b1["target"]).tolist()) <= {0.0, 1.0}


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, lr_warmup_steps=10)
    assert lr_at(cfg, 0) < lr_at(cfg, 9) <= 1.0
    assert lr_at(cfg, 99) < lr_at(cfg, 50) < lr_at(cfg, 10)
