"""How sure an answer is, as the SDK reads it: the quality keys of a /segment body or a finished job, and the
uncertainty maps (docs/confidence.md)."""

from __future__ import annotations

import base64

import numpy as np

from ._inputs import decode_2d, decode_probs


def uncertainty_maps(files: list[str] | None, volume: bool) -> np.ndarray | None:
    """The uncertainty maps of a JSON answer: (K, H, W) from 8-bit PNGs (/255) or (K, H, W, D) from a float
    NIfTI (H, W, D, K)."""
    if not files:
        return None
    if volume:
        return decode_probs(base64.b64decode(files[0]))
    return np.stack([decode_2d(base64.b64decode(f)) for f in files]).astype(np.float32) / 255


def quality_fields(body: dict) -> dict:
    """How sure an answer is (a /segment body or a finished job): ``SegmentResult``'s quality attributes."""
    return {"confidence": {int(k): float(v) for k, v in (body.get("confidence") or {}).items()},
            "low_confidence": bool(body.get("low_confidence")),
            "low_confidence_labels": [int(v) for v in body.get("low_confidence_labels") or []],
            "mismatch": body.get("mismatch"), "calibrated": body.get("calibrated"),
            "warnings": list(body.get("warnings") or [])}
