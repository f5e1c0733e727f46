"""`icseg eval`: in-context Dice on held-out datasets for one or more models and both baselines, in one run.

The work is ``model.evaluate``'s; this module parses flags, prints the tables and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def _tuple(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def _named(text: str) -> tuple[str, str | None]:
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (PATH 'default' for the embedded model), got {text!r}")
    return name, None if path == "default" else path


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="in-context Dice per dataset and label, models against two non-learned baselines")
    e.add_argument("--data-root", required=True, help="dataset folder")
    e.add_argument("--datasets", type=_tuple, required=True, help="comma-separated dataset names")
    e.add_argument("--weights", default=None, help="weights of the model 'icseg' (default: the embedded default model)")
    e.add_argument("--compare", type=_named, action="append", default=[], metavar="NAME=PATH",
                   help="another model on the same queries and support sets (repeatable): previous=old.safetensors")
    e.add_argument("--ensemble", type=int, default=1, help="support-set ensemble size for every model")
    e.add_argument("--flip", action="store_true", help="flip test-time augmentation for every model")
    e.add_argument("--support-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    e.add_argument("--queries", type=int, default=20, help="held-out queries per dataset and label")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--select", type=_tuple, default=(), metavar="similar,random",
                   help="measure support selection instead: each --support-sizes k picked per query by these "
                   "(model.retrieval) from a pool of --pool-size, with each of --ensembles; plus the whole pool")
    e.add_argument("--pool-size", type=int, default=64, help="with --select: the pool the k items come from")
    e.add_argument("--ensembles", type=int, nargs="+", default=[1, 4], help="with --select: ensemble sizes")
    e.add_argument("--json", dest="json_path", default=None, help="write the results here")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from data.datasets import DatasetFolder
    from model.evaluate import evaluate, latency_table, segmenter_predictor, summary_table
    from model.segmenter import Segmenter

    folder = DatasetFolder(args.data_root)
    missing = [d for d in args.datasets if d not in folder.names()]
    if missing:
        log.error("datasets not found under %s: %s", args.data_root, ", ".join(missing))
        return 2
    if args.select:
        return _eval_select(args, folder)
    options = {"ensemble": args.ensemble, "flip": args.flip}
    models = {"icseg": Segmenter.from_pretrained(args.weights, seed=args.seed)}
    for name, path in args.compare:
        models[name] = Segmenter.from_pretrained(path, seed=args.seed)
    predictors = {name: segmenter_predictor(seg, **options) for name, seg in models.items()}
    rows = evaluate(predictors, folder, args.datasets, args.support_sizes, args.queries, args.seed, args.progress)
    sys.stdout.write(summary_table(rows, args.support_sizes) + "\n\n" + latency_table(rows, args.support_sizes) + "\n")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"models": {name: seg.info() for name, seg in models.items()}, "options": options,
                       "seed": args.seed, "queries": args.queries, "support_sizes": args.support_sizes,
                       "datasets": list(args.datasets), "rows": rows}, f, indent=2)
    return 0


def _eval_select(args: argparse.Namespace, folder) -> int:
    from model.evaluate_select import evaluate_selection, selection_table
    from model.retrieval import SELECTS
    from model.segmenter import Segmenter

    unknown = [s for s in args.select if s not in SELECTS]
    if unknown:
        log.error("--select takes %s; got %s", ",".join(SELECTS), ",".join(unknown))
        return 2
    seg = Segmenter.from_pretrained(args.weights, seed=args.seed)
    rows: list[dict] = []
    for name in args.datasets:  # the JSON is rewritten after every dataset: a long run keeps what it measured
        rows += evaluate_selection(seg, folder, (name,), args.support_sizes, args.pool_size, args.select,
                                   tuple(args.ensembles), args.queries, args.seed, args.progress)
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump({"models": {"icseg": seg.info()}, "select": list(args.select), "pool_size": args.pool_size,
                           "ensembles": args.ensembles, "seed": args.seed, "queries": args.queries,
                           "support_sizes": args.support_sizes, "datasets": list(args.datasets), "rows": rows}, f,
                          indent=2)
    sys.stdout.write(selection_table(rows, args.support_sizes) + "\n")
    return 0
