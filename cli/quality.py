"""How sure `icseg segment`'s answers are, in both modes: OUT/<name>.quality.json (confidence per label,
low_confidence, mismatch, calibrated, warnings: the service's keys), a warning line on stderr for a flagged
query, and with --uncertainty the maps: OUT/uncertainty/<name>_label<v>.png (2D, 255 = 1.0) or
OUT/uncertainty/<name>.nii.gz (volumes, float, (H, W, D, K) in the query's geometry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

QUALITY_KEYS = ("confidence", "low_confidence", "low_confidence_labels", "mismatch", "calibrated", "warnings")


def local_assessment(segmenter, query, support, mask: np.ndarray, probs: np.ndarray, spread, axis: int) -> dict:
    """The service's quality keys for an answer computed in this process (``model.confidence``)."""
    from model import confidence

    calibration = confidence.calibration_for(segmenter)
    mismatch = confidence.query_mismatch(segmenter, query.array, support, calibration,
                                         volume=query.kind == "volume", axis=axis)
    return confidence.assess(probs, mask, tuple(support.labels), calibration, spread, mismatch).to_dict()


def local_uncertainty(probs: np.ndarray, spread) -> np.ndarray:
    from model.confidence import uncertainty_map

    return uncertainty_map(probs, spread)


def write_quality(out: Path, name: str, path: Path, quality: dict, labels: list[int],
                  maps: np.ndarray | None = None, query=None) -> None:
    """Write OUT/<name>.quality.json (and the uncertainty maps when given); warn on stderr when flagged.

    Args:
        quality: the service's keys (a JSON answer's, ``SegmentResult``'s or ``local_assessment``'s).
        maps: (K, H, W) or (K, H, W, D) in [0, 1], or None; query: the decoded query (``ImageData``), for a
            volume's geometry.
    """
    from data.io import encode_probs, to_png_bytes, write_atomic

    body = {key: quality.get(key) for key in QUALITY_KEYS}
    body["confidence"] = {str(k): v for k, v in (body["confidence"] or {}).items()}
    write_atomic(out / f"{name}.quality.json", (json.dumps(body, indent=1) + "\n").encode())
    for warning in body["warnings"] or []:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    if maps is None:
        return
    if maps.ndim == 4:
        write_atomic(out / "uncertainty" / f"{name}.nii.gz", encode_probs(maps.astype(np.float32), query))
        return
    for label, m in zip(labels, maps):
        write_atomic(out / "uncertainty" / f"{name}_label{label}.png",
                     to_png_bytes(np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)))
