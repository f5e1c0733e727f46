"""The loaded model as the service sees it: one Segmenter, one model thread, a micro-batcher.

Routes never touch the network, nor does this module: it calls the Segmenter's doors, ``prepare_support``
(in a worker thread), ``predict_many`` (micro-batched on the model thread), ``predict_volume`` (blocking;
the model thread for synchronous requests, a job worker for jobs) and ``info``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from app.batcher import MicroBatcher, QueueFull
from app.errors import Busy
from app.metrics import Metrics
from app.settings import Settings
from data.io import FORMATS
from model import confidence, retrieval
from model.cancel import Cancelled, stop_when
from model.inputs import SupportFiles
from model.segmenter import PreparedSupport, Segmenter
from model.volume import VolumeSupport
from model.volume_plan import VolumeOptions
from model.volume_run import VolumeResult

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class ModelService:
    """Owns the Segmenter and the single model thread."""

    def __init__(self, segmenter: Segmenter, settings: Settings, metrics: Metrics):
        self.segmenter = segmenter
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icseg-model")
        self.batcher = MicroBatcher(
            self._predict_many, self.executor, settings.batch_max_queries, settings.batch_wait_ms / 1000, metrics,
            max_pending=settings.queue_size,
        )
        self._volumes_waiting = 0  # synchronous volumes queued on the model thread; they share the queue bound
        self._lock = threading.Lock()
        self._info = {**segmenter.info(), "formats": list(FORMATS)}
        self.calibration = confidence.calibration_for(segmenter)  # the low-confidence and mismatch thresholds

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> ModelService:
        """Load the weights named by the settings (blocking). Raises ``WeightsError`` with what to set."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        segmenter = Segmenter.from_pretrained(settings.weights, device=settings.device, max_labels=settings.max_labels)
        # what a support set (a prompt) may hold, and the most items one query uses (the model's own cap stays)
        segmenter.max_pool = settings.max_prompt_support
        segmenter.max_support = min(settings.max_support, segmenter.max_support, segmenter.max_pool)
        return cls(segmenter, settings, metrics)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- facts -------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.segmenter.size

    @property
    def max_support(self) -> int:
        return self.segmenter.max_support

    def info(self) -> dict:
        return self._info

    # -- the queue ---------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for the model thread (2D queries and synchronous volumes)."""
        return self.batcher.depth + self._volumes_waiting

    def _busy(self) -> Busy:
        waiting = self.waiting
        return Busy(f"{waiting} requests are waiting for the model, the most this server queues "
                    "(ICSEG_QUEUE_SIZE); retry after the time in Retry-After",
                    retry_after=self.batcher.retry_after(waiting))

    def ensure_room(self) -> None:
        """429 at once when the queue is full, before the upload is decoded (``predict`` checks again)."""
        if self.waiting >= self.settings.queue_size:
            raise self._busy()

    # -- inference ---------------------------------------------------------------------------------------

    def prepare_support(self, files: SupportFiles, axis: int = 2) -> PreparedSupport | VolumeSupport:
        """Blocking: decoded support files prepared for the network (``model.inputs.SupportFiles.prepare``)."""
        return files.prepare(self.segmenter, axis)

    def select_support(self, query: np.ndarray, support: PreparedSupport, select: str | None,
                       support_size: int | None, axis: int | None = None) -> tuple[PreparedSupport, dict]:
        """Blocking: the items of a 2D support set one query uses (``model.retrieval.for_query``) and
        {"select", "support_size", "pool"}. ``axis``: the query is a volume sliced along it."""
        prepared = retrieval.prepare_query(query, self.size, self.segmenter.clip_percentiles, axis)
        return retrieval.for_query(prepared, support, select, support_size, self.max_support, self.segmenter.seed)

    def _predict_many(self, queries: Sequence[np.ndarray], support: PreparedSupport, ensemble: int) -> list[tuple]:
        return self.segmenter.predict_many(queries, support, ensemble=ensemble, spread=True)

    def predict_blocking(self, query: np.ndarray, support: PreparedSupport, ensemble: int = 1,
                         progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(probs, spread) for one 2D query on the calling thread (a job worker): (K, H, W) float32
        probabilities and the ensemble members' std (None for one member)."""
        return self.segmenter.predict_many([query], support, ensemble=ensemble, progress=progress, spread=True)[0]

    async def predict(self, query: np.ndarray, support: PreparedSupport,
                      ensemble: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
        """Micro-batched on the model thread: (probs, spread) for one 2D query, as ``predict_blocking``.

        Raises:
            Busy: 429 ``busy`` when ICSEG_QUEUE_SIZE requests already wait.
        """
        if self._volumes_waiting and self.waiting >= self.settings.queue_size:
            raise self._busy()
        try:
            return await self.batcher.submit(query, support, ensemble)
        except QueueFull:
            raise self._busy() from None

    async def run_on_model_thread(self, fn: Callable, *args):
        """Run blocking model work (a synchronous volume) serialised with the micro-batches (429 when full)."""
        self.ensure_room()
        with self._lock:
            self._volumes_waiting += 1
        counted = [True]
        given_up = threading.Event()  # the caller's deadline passed or it was cancelled: stop at the next chunk

        def stop_counting() -> None:  # exactly once: when it starts, or when it gives up while queued
            with self._lock:
                if counted[0]:
                    counted[0] = False
                    self._volumes_waiting -= 1

        def run():
            stop_counting()
            if given_up.is_set():
                raise Cancelled
            with stop_when(given_up.is_set):
                return fn(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, run)
        finally:
            given_up.set()
            stop_counting()

    def segment_volume(
        self,
        volume: np.ndarray,
        *,
        support: PreparedSupport | VolumeSupport,
        axis: int = 2,
        ensemble: int = 1,
        threshold: float = 0.5,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """A label map with the volume's shape (blocking): ``Segmenter.predict_volume``.

        Args:
            volume: (H, W, D) query.
            support: a 2D support set (a prompt), applied to every slice along ``axis``, or 3D support volumes
                (position-matched per slice).
            progress: called with (slices done, total); it may raise to cancel.
        """
        start = time.perf_counter()
        try:
            return self.segmenter.predict_volume(volume, support=support, axis=axis, ensemble=ensemble,
                                                 threshold=threshold, progress=progress)
        finally:
            self.metrics.model_seconds.labels("volume").observe(time.perf_counter() - start)

    def segment_volume_result(self, volume: np.ndarray, *, support: PreparedSupport | VolumeSupport,
                              options: VolumeOptions, probs: bool = False, spread: bool = False,
                              progress: Progress | None = None) -> VolumeResult:
        """Blocking: ``Segmenter.predict_volume_result`` with a request's cost options (mask, skipped slices,
        probabilities and, with an ensemble, the members' std when asked)."""
        start = time.perf_counter()
        try:
            return self.segmenter.predict_volume_result(
                volume, support=support, axis=options.axis, support_slices=options.support_slices,
                skip_margin=options.skip_margin, cascade=options.cascade, ensemble=options.ensemble,
                support_positions=options.support_positions,
                threshold=options.threshold, probs=probs, spread=spread, progress=progress)
        finally:
            self.metrics.model_seconds.labels("volume").observe(time.perf_counter() - start)
