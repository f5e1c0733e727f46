"""How sure an answer is, as the service says it: confidence per label, ``low_confidence``, the mismatch
warning ("the query looks unlike the examples") and, with ``uncertainty=true``, the uncertainty maps.

The numbers are ``model.confidence``'s; this module only runs them for a request (blocking: the thread pool
or a job worker) and puts them on the wire: JSON keys of ``SegmentResult`` / ``JobInfo`` and ``X-`` headers.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from data.io import encode_probs, to_png_bytes
from model import confidence

QUALITY_KEYS = ("confidence", "low_confidence", "low_confidence_labels", "mismatch", "calibrated", "warnings")


def assess(model, query: np.ndarray, support, mask: np.ndarray, probs: np.ndarray, spread: np.ndarray | None,
           labels: tuple[int, ...], *, volume: bool = False, axis: int = 2) -> dict:
    """Blocking: the quality keys of one answer (``model.confidence.Assessment.to_dict``).

    Args:
        model: the ``ModelService`` (its Segmenter and calibration).
        query: the decoded query array; support: the support set the model used.
        mask, probs, spread: the label map, (K, *shape) probabilities and the members' std (or None).
    """
    mismatch = confidence.query_mismatch(model.segmenter, query, support, model.calibration, volume=volume,
                                         axis=axis)
    return confidence.assess(probs, mask, labels, model.calibration, spread, mismatch).to_dict()


def uncertainty_files(probs: np.ndarray, spread: np.ndarray | None, query, *, volume: bool) -> list[str]:
    """Blocking: base64 uncertainty maps: one 8-bit grayscale PNG per label (2D; 255 = 1.0), or one gzipped
    float32 NIfTI (H, W, D, K) in the query's geometry (volumes)."""
    maps = confidence.uncertainty_map(probs, spread)  # (K, *shape) in [0, 1]
    if volume:
        return [base64.b64encode(encode_probs(maps, query)).decode()]
    return [base64.b64encode(to_png_bytes(np.round(m * 255).astype(np.uint8))).decode() for m in maps]


def quality_headers(quality: dict) -> dict[str, str]:
    """The quality keys of a binary answer: X-Confidence (label=value,...), X-Low-Confidence, X-Mismatch
    (true, false or unknown when uncalibrated), X-Mismatch-Score, X-Calibrated, X-Warnings (JSON, ASCII)."""
    flagged = quality["mismatch"]["flagged"]
    score = quality["mismatch"]["score"]
    return {"X-Confidence": ",".join(f"{k}={v:.4f}" for k, v in quality["confidence"].items()),
            "X-Low-Confidence": str(quality["low_confidence"]).lower(),
            "X-Mismatch": "unknown" if flagged is None else str(flagged).lower(),
            "X-Mismatch-Score": "" if score is None else f"{score:.4f}",
            "X-Calibrated": str(quality["calibrated"]).lower(),
            "X-Warnings": json.dumps(quality["warnings"], ensure_ascii=True)}


def assess_task(task, model, mask: np.ndarray, probs: np.ndarray, spread: np.ndarray | None) -> dict:
    """Blocking: ``assess`` for a ``app.pipeline.SegmentTask``."""
    return assess(model, task.query.array, task.support, mask, probs, spread, task.labels, volume=task.is_volume,
                  axis=task.axis)


def task_uncertainty(task, probs: np.ndarray, spread: np.ndarray | None) -> list[str]:
    """Blocking: ``uncertainty_files`` for a ``app.pipeline.SegmentTask``."""
    return uncertainty_files(probs, spread, task.query, volume=task.is_volume)
