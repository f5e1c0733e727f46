"""Micro-batching: concurrent queries against the same prepared support share one model call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.batcher import MicroBatcher
from app.metrics import Metrics
from model.errors import InputError
from model.segmenter import PreparedSupport


def _support(label: int) -> PreparedSupport:
    return PreparedSupport(torch.zeros(2, 8, 8), torch.zeros(1, 2, 8, 8), (label,))


def test_queries_against_one_support_are_batched():
    calls = []
    gate = threading.Event()

    def run_many(queries, support, ensemble):
        calls.append((len(queries), support.labels[0], threading.current_thread().name))
        gate.wait(10)  # the first pass is slow: everything submitted meanwhile queues up
        return [np.full((1, *q.shape), support.labels[0], np.float32) for q in queries]

    async def scenario():
        executor = ThreadPoolExecutor(1, thread_name_prefix="icseg-model")
        batcher = MicroBatcher(run_many, executor, max_batch=4, wait_s=0, metrics=Metrics())
        batcher.start()
        a, b = _support(1), _support(2)
        first = asyncio.create_task(batcher.submit(np.zeros((3, 3)), a))
        while not calls:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit(np.zeros((3, 3)), s)) for s in [a, a, b, a, a, a, b]]
        await asyncio.sleep(0.01)
        assert batcher.depth == 7
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        executor.shutdown()
        return results

    results = asyncio.run(scenario())
    # the oldest query leads; same-support queries join it up to max_batch; the other support goes next
    assert [(n, label) for n, label, _ in calls] == [(1, 1), (4, 1), (2, 2), (1, 1)]
    assert all(name.startswith("icseg-model") for *_, name in calls)
    assert [int(r[0, 0, 0]) for r in results] == [1, 1, 1, 2, 1, 1, 1, 2]


def test_a_bad_query_fails_alone():
    def run_many(queries, support, ensemble):
        if any(q.ndim != 2 for q in queries):
            raise InputError("query must be 2D", field="query")
        return [np.zeros((1, *q.shape), np.float32) for q in queries]

    async def scenario():
        executor = ThreadPoolExecutor(1)
        batcher = MicroBatcher(run_many, executor, max_batch=8, wait_s=0.005, metrics=Metrics())
        batcher.start()
        s = _support(1)
        results = await asyncio.gather(batcher.submit(np.zeros((2, 2)), s), batcher.submit(np.zeros((2, 2, 2, 2)), s),
                                       batcher.submit(np.zeros((4, 4)), s), return_exceptions=True)
        await batcher.stop()
        executor.shutdown()
        return results

    good, bad, other = asyncio.run(scenario())
    assert good.shape == (1, 2, 2) and other.shape == (1, 4, 4)
    assert isinstance(bad, InputError)


def test_submit_needs_a_started_batcher():
    batcher = MicroBatcher(lambda *a: [], ThreadPoolExecutor(1), 4, 0, Metrics())
    with pytest.raises(RuntimeError):
        asyncio.run(batcher.submit(np.zeros((2, 2)), _support(1)))
