"""Micro-batching of 2D queries on one model thread.

Requests put their query on an asyncio-side list and await a future. One consumer task takes the oldest
query and every other waiting query against the *same* prepared support (a stored prompt is one shared
object, see ``app.prompts.Prompts``) and runs them as one ``Segmenter.predict_many`` call on the
model thread. While a pass runs, new queries pile up and form the next batch, so batching needs no
timer; ``wait_s`` adds one for lightly loaded servers that prefer throughput over latency.
Queries with different supports (inline support sets) are run one group after another: serialised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.metrics import Metrics
from model.cancel import Cancelled, stop_when
from model.segmenter import PreparedSupport, predict_each

log = logging.getLogger(__name__)

RunMany = Callable[[Sequence[np.ndarray], PreparedSupport, int], list[np.ndarray]]


class QueueFull(Exception):
    """``max_pending`` queries already wait: the caller answers 429 instead of queueing without bound."""


@dataclass
class _Item:
    query: np.ndarray
    support: PreparedSupport
    ensemble: int
    future: asyncio.Future


class MicroBatcher:
    """Groups concurrent queries that share a support set into one forward pass.

    Args:
        run_many: (queries, support, ensemble) -> one (K, H_i, W_i) float32 array per query; blocking.
        executor: where ``run_many`` runs (a single model thread).
        max_batch: most queries per pass.
        wait_s: extra time to wait for company before a pass.
        metrics: batch size, queue depth and model time are recorded here.
        max_pending: most queries waiting (not counting the pass that runs); ``submit`` raises ``QueueFull``
            beyond it. None: no bound.
    """

    def __init__(self, run_many: RunMany, executor: Executor, max_batch: int, wait_s: float, metrics: Metrics,
                 max_pending: int | None = None):
        self._run_many = run_many
        self._executor = executor
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._metrics = metrics
        self._max_pending = max_pending
        self._recent: deque[tuple[float, int]] = deque(maxlen=20)  # (seconds, queries) of the last passes
        self._pending: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return self._max_pending is not None and len(self._pending) >= self._max_pending

    def seconds_per_query(self) -> float:
        """Mean model time per query over the last passes (1 s before the first pass)."""
        seconds = sum(s for s, _ in self._recent)
        queries = sum(n for _, n in self._recent)
        return seconds / queries if queries else 1.0

    def retry_after(self, waiting: int | None = None) -> int:
        """Seconds until the queries waiting now are likely through: what a 429 asks a client to wait."""
        waiting = self.depth if waiting is None else waiting
        return int(min(300, max(1, math.ceil(self.seconds_per_query() * (waiting + 1)))))

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="icseg-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    async def submit(self, query: np.ndarray, support: PreparedSupport, ensemble: int = 1) -> np.ndarray:
        """Queue one query; returns its (K, H, W) float32 probabilities in [0, 1]."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self.full:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(query, support, ensemble, future))
        self._metrics.queue_depth.set(len(self._pending))
        self._wake.set()
        return await future

    def _take_group(self) -> list[_Item]:
        self._pending = [it for it in self._pending if not it.future.done()]  # callers that gave up
        if not self._pending:
            return []
        first = self._pending[0]
        group, rest = [], []
        for item in self._pending:
            if len(group) < self._max_batch and item.support is first.support and item.ensemble == first.ensemble:
                group.append(item)
            else:
                rest.append(item)
        self._pending = rest
        return group

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self._wait_s:
                await asyncio.sleep(self._wait_s)
            group = self._take_group()
            if not self._pending:
                self._wake.clear()
            self._metrics.queue_depth.set(len(self._pending))
            if not group:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_group, group)
            except Exception as exc:  # the executor itself failed (shutdown)
                results = [exc] * len(group)
            for item, result in zip(group, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _run_group(self, group: list[_Item]) -> list[np.ndarray | BaseException]:
        """On the model thread: one pass for the group; on a bad query, retry one by one to blame only it."""
        start = time.perf_counter()
        support, ensemble = group[0].support, group[0].ensemble
        try:
            # every caller of the group gave up (deadline, disconnect, server stop): the pass stops at its next chunk
            with stop_when(lambda: all(it.future.done() for it in group)):
                out = predict_each(lambda queries: self._run_many(queries, support, ensemble),
                                   [it.query for it in group])
        except Cancelled as exc:
            return [exc] * len(group)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the group
            log.exception("model pass failed")
            return [exc] * len(group)
        finally:
            self._recent.append((time.perf_counter() - start, len(group)))
            self._metrics.model_seconds.labels("segment").observe(time.perf_counter() - start)
            self._metrics.batch_size.observe(len(group))
        return out
