"""The loaded model as the service sees it: one Segmenter, one model thread, a micro-batcher.

Routes never touch the network: they call ``prepare_support`` (in a worker thread), ``predict``
(micro-batched on the model thread) or ``segment_volume`` (blocking; the model thread for synchronous
requests, a job worker for jobs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from app.batcher import MicroBatcher, QueueFull
from app.errors import ApiError
from app.metrics import Metrics
from app.settings import Settings
from model.errors import InputError
from model.network import count_parameters
from model.segmenter import PreparedSupport, Segmenter, merge_labels
from model.weights import load_model

log = logging.getLogger(__name__)

FORMATS = ["png", "jpeg", "tiff", "bmp", "nifti", "dicom"]
SLICE_CHUNK = 32  # slices per predict_many call for a volume against a 2D prompt: bounds memory, allows cancel

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
        self._info = self._build_info()

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> ModelService:
        """Load the weights named by the settings (blocking). Raises ``WeightsError`` with what to set."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        net = load_model(settings.weights, device=settings.device)
        max_support = min(settings.max_support, net.config.max_support)
        return cls(Segmenter(net, device=settings.device, max_support=max_support), settings, metrics)

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

    def _build_info(self) -> dict:
        net = self.segmenter.net
        cfg = net.config
        weights = dict(getattr(net, "weights_info", {}))
        # the file name, not the server's directory layout
        if weights.get("path"):
            weights["path"] = Path(weights["path"]).name
        return {
            "model": cfg.name,
            "parameters": count_parameters(net),
            "weights": {key: weights.get(src) for key, src in (("file", "path"), ("source", "source"),
                                                                ("licence", "licence"))},
            "network": {
                "size": cfg.size,
                "encoder_features": list(cfg.encoder_features),
                "decoder_features": list(cfg.decoder_features),
            },
            "max_support": self.max_support,
            "formats": FORMATS,
            "device": str(self.segmenter.device),
        }

    # -- the queue ---------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for the model thread (2D queries and synchronous volumes)."""
        return self.batcher.depth + self._volumes_waiting

    def _busy(self) -> ApiError:
        waiting = self.waiting
        return ApiError(429, f"{waiting} requests are waiting for the model, the most this server queues "
                        "(ICSEG_QUEUE_SIZE); retry after the time in Retry-After", code="busy",
                        headers={"Retry-After": str(self.batcher.retry_after(waiting))})

    def ensure_room(self) -> None:
        """429 at once when the queue is full, before the upload is decoded (``predict`` checks again)."""
        if self.waiting >= self.settings.queue_size:
            raise self._busy()

    # -- inference ---------------------------------------------------------------------------------------

    def prepare_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> PreparedSupport:
        """Blocking; see ``Segmenter.prepare_support``."""
        return self.segmenter.prepare_support(images, masks)

    def _predict_many(self, queries: Sequence[np.ndarray], support: PreparedSupport, ensemble: int) -> list[np.ndarray]:
        return self.segmenter.predict_many(queries, support, ensemble=ensemble)

    async def predict(self, query: np.ndarray, support: PreparedSupport, ensemble: int = 1) -> np.ndarray:
        """Micro-batched on the model thread: (K, H, W) float32 probabilities for one 2D query.

        Raises:
            ApiError: 429 ``busy`` when ICSEG_QUEUE_SIZE requests already wait.
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

        def stop_counting() -> None:  # exactly once: when it starts, or when it gives up while queued
            with self._lock:
                if counted[0]:
                    counted[0] = False
                    self._volumes_waiting -= 1

        def run():
            stop_counting()
            return fn(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, run)
        finally:
            stop_counting()

    def segment_volume(
        self,
        volume: np.ndarray,
        *,
        support: PreparedSupport | None = None,
        support_volumes: Sequence[np.ndarray] | None = None,
        support_masks: Sequence[np.ndarray] | None = None,
        axis: int = 2,
        ensemble: int = 1,
        threshold: float = 0.5,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """A label map with the volume's shape (blocking).

        Args:
            volume: (X, Y, Z) query.
            support: a 2D support set (a prompt): every slice along ``axis`` is segmented with it; or
            support_volumes, support_masks: 3D pairs, position-matched per slice (``Segmenter.predict_volume``).
            progress: called with (slices done, total); it may raise to cancel.
        """
        start = time.perf_counter()
        try:
            if support_volumes is not None:
                return self.segmenter.predict_volume(
                    volume, support_volumes, support_masks, axis=axis, ensemble=ensemble,
                    threshold=threshold, progress=progress,
                )
            return self._volume_with_prompt(volume, support, axis, ensemble, threshold, progress)
        finally:
            self.metrics.model_seconds.labels("volume").observe(time.perf_counter() - start)

    def _volume_with_prompt(self, volume, support, axis, ensemble, threshold, progress) -> np.ndarray:
        if axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {axis}", field="axis")
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {threshold}", field="threshold")
        slices = np.moveaxis(np.asarray(volume), axis, 0)  # (D, H, W)
        depth = slices.shape[0]
        dtype = np.uint8 if max(support.labels) <= 255 else np.uint16
        out = np.zeros(slices.shape, dtype=dtype)
        for first in range(0, depth, SLICE_CHUNK):
            chunk = list(slices[first:first + SLICE_CHUNK])
            inner = None
            if progress is not None:
                def inner(done, _total, first=first):
                    progress(first + done, depth)
            probs = self.segmenter.predict_many(chunk, support, ensemble=ensemble, progress=inner)
            out[first:first + len(chunk)] = merge_labels(np.stack(probs, axis=1), support.labels, threshold)
        return np.moveaxis(out, 0, axis)
