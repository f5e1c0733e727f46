"""`icseg batch` on Ray: a local Ray or an existing cluster, and the pool of model-holding actors.

Ray is an optional extra (``pip install -e '.[batch]'``): it is imported only inside these functions, never
when the command line or the rest of the product is imported. What each actor does with its inputs is
``cli.batch.segment_items``, the same code as without Ray.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

from cli.batch import SUMMARY_FIELDS, Item, Plan, segment_items
from cli.common import UsageError, progress_bar, volume_options

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[batch]'"


def import_ray():
    """The ``ray`` module with Ray Data, or None after saying how to install it (stderr)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read when Ray starts: nothing is reported anywhere
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is part of the extra, not of every Ray install
    except ImportError as exc:
        print(f"error: icseg batch needs Ray Data ({exc}): {INSTALL_HINT}", file=sys.stderr)
        return None
    return ray


def start_ray(ray, address: str | None, num_cpus: float) -> bool:
    """Connect to ``address``, or start a local Ray limited to ``num_cpus``; False if one was already running.

    Local Ray keeps to this machine: no dashboard, no usage statistics (RAY_USAGE_STATS_ENABLED=0).
    """
    if ray.is_initialized():
        return False
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local": a new Ray of our own, even where RAY_ADDRESS or an earlier `ray start` names another
        ray.init(address="local", num_cpus=max(1, math.ceil(num_cpus)), include_dashboard=False, **quiet)
    return True


def _segment_on_ray(ray, args, plan: Plan, todo: list[Item], support_arrays: dict, weights: str | None):
    """Yield one result row per input of ``todo`` (with the replica that did it) as the actors finish them."""
    from ray.data import ActorPoolStrategy, DataContext

    started = start_ray(ray, args.address, args.replicas * args.cpus_per_replica)
    try:
        _check_resources(ray.cluster_resources(), args)
        context = DataContext.get_current()
        context.enable_progress_bars = False  # our bar counts inputs; Ray's would repeat it per operator
        logging.getLogger("ray.data").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        plan.out.mkdir(parents=True, exist_ok=True)
        support_ref = ray.put(support_arrays)  # prepared once here, fetched once per actor
        blocks = math.ceil(len(todo) / args.batch_size)  # one block per actor call: idle actors can take the next
        dataset = ray.data.from_items(
            [{"input": str(item.input), "output": str(item.output)} for item in todo], override_num_blocks=blocks
        ).map_batches(
            SegmentActor,
            batch_size=args.batch_size,
            batch_format="numpy",
            # two calls in flight per actor: one running, one queued, and the rest left for idle actors
            compute=ActorPoolStrategy(size=min(args.replicas, blocks), max_tasks_in_flight_per_actor=2),
            num_cpus=args.cpus_per_replica,
            num_gpus=args.gpus_per_replica or None,
            fn_constructor_kwargs={
                "weights": weights, "support": support_ref, "device": "cuda" if args.gpus_per_replica else "cpu",
                "threads": max(1, int(args.cpus_per_replica)),
                "options": actor_options(args),
            },
        )
        with progress_bar("input", "batch", args.progress, total=len(todo)) as bar:
            for row in dataset.iter_rows():
                bar.update(1)
                yield {key: _plain(row[key]) for key in (*SUMMARY_FIELDS, "replica")}
    finally:
        if started:
            ray.shutdown()


def actor_options(args) -> dict:
    """What each actor needs of the command line: threshold, ensemble, axis, the volume options, and select and
    support_size (the driver has filled in their defaults)."""
    return {"threshold": args.threshold, "ensemble": args.ensemble, "axis": args.axis, "select": args.select,
            "support_size": args.support_size, **volume_options(args)}


def _check_resources(total: dict, args) -> None:
    """Fail now when not one replica fits (Ray would wait forever); warn when only some do (they take turns)."""
    needs = {"CPU": args.cpus_per_replica, "GPU": args.gpus_per_replica}
    fits = min(int(total.get(k, 0) // v) if v else args.replicas for k, v in needs.items())
    have = ", ".join(f"{total.get(k, 0):g} {k}" for k in needs)
    if fits == 0:
        raise UsageError(f"the Ray cluster has {have}: not enough for one replica ({args.cpus_per_replica:g} CPU, "
                         f"{args.gpus_per_replica:g} GPU); lower --cpus-per-replica/--gpus-per-replica")
    if fits < args.replicas:
        log.warning("the Ray cluster has %s: %d of %d replicas fit at once", have, fits, args.replicas)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


class SegmentActor:
    """One model replica in Ray's actor pool: the network, and the support set prepared by the driver.

    Args:
        weights: the weights path (None: the embedded default model), as seen on the actor's node.
        support: an ObjectRef of ``PreparedSupport.to_arrays()`` (Ray Data hands constructor arguments over as
            they are: the actor fetches the arrays once, here), or the arrays themselves.
        device: torch device ("cuda" is the GPU Ray assigned to this actor).
        threads: torch intra-op threads (the actor's CPUs).
        options: ``actor_options``: threshold, ensemble, axis, select, support_size, the volume options.
    """

    def __init__(self, weights: str | None, support, device: str, threads: int, options: dict):
        import numpy as np
        import ray
        import torch

        from model.segmenter import Segmenter
        from model.support import PreparedSupport

        torch.set_num_threads(threads)
        self.segmenter = Segmenter.from_pretrained(weights, device=device)
        arrays = ray.get(support) if isinstance(support, ray.ObjectRef) else support
        # the object store hands out read-only views; torch wants its own writable copy
        self.support = PreparedSupport.from_arrays({key: np.array(value) for key, value in arrays.items()})
        self.options = SimpleNamespace(**options)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        """``{"input": (B,) str, "output": (B,) str}`` -> the summary columns and "replica", (B,) each."""
        items = [Item(Path(str(i)), Path(str(o))) for i, o in zip(batch["input"], batch["output"])]
        rows = segment_items(self.segmenter, self.support, items, self.options)
        return {key: [row[key] for row in rows] for key in SUMMARY_FIELDS} | {"replica": [self.replica] * len(rows)}
