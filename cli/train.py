"""`icseg train` and `icseg eval`: the flags of ``TrainConfig``; the work is ``model.train`` and
``model.evaluate``'s (imported when the command runs)."""

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

    e = sub.add_parser("eval", help="in-context Dice per dataset and label against two non-learned baselines")
    e.add_argument("--data-root", required=True, help="dataset folder")
    e.add_argument("--datasets", type=_tuple, required=True, help="comma-separated dataset names")
    e.add_argument("--weights", default=None, help="weights file (default: the embedded default model)")
    e.add_argument("--support-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    e.add_argument("--queries", type=int, default=20, help="held-out queries per dataset and label")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", dest="json_path", default=None, help="write the results here")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from model.train import Trainer
    from model.train_config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    Trainer(cfg).run()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model.evaluate import main_eval

    return main_eval(args)
