"""`icseg train`: the flags of ``TrainConfig``; the work is ``model.train``'s (imported when the command runs)."""

from __future__ import annotations

import argparse
import dataclasses


def _tuple(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def register(sub: argparse._SubParsersAction) -> None:
    from model.train_config import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("train", help="train an in-context model on datasets and synthetic tasks (resumes a run)")
    p.add_argument("--run-dir", default=defaults.run_dir, help="run folder: last.pt (resume state), model.safetensors")
    p.add_argument(
        "--data-root", default=None, help="dataset folder (layout in docs/model-card.md); omit: synthetic only"
    )
    p.add_argument("--exclude", type=_tuple, default=(), help="comma-separated datasets never trained on (validation)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("run_dir", "data_root", "exclude", "extra", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=getattr(defaults, f.name))
        elif f.name == "max_minutes":
            p.add_argument(flag, type=float, default=None)
        elif f.name == "data_pack":
            p.add_argument(flag, default=None, help="train on a pack of scripts/pack-training-data.py")
        elif f.name == "init_weights":
            p.add_argument(flag, default=None, help="start a new run from these weights (ignored when resuming)")
        else:
            kind = type(getattr(defaults, f.name))
            p.add_argument(flag, type=kind, default=getattr(defaults, f.name))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_train)



def _train(args: argparse.Namespace) -> int:
    from model.train import Trainer
    from model.train_config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    Trainer(cfg).run()
    return 0

