"""How sure an answer is: a confidence per label, a per-pixel uncertainty map, and the check that the query
looks like the support images ("mismatch"), with the thresholds calibrated for one set of weights.

- **confidence** of label k: the Dice between the soft prediction and the predicted region R_k,
  ``2 * sum_R p / (sum p + |R|)`` (1 when every pixel is either surely in or surely out; low when probability
  is spread beyond the region or weak inside it), times the members' agreement ``1 - 2 * mean_R std`` when
  an ensemble ran (std of the members' probabilities, at most 0.5). A label the mask does not hold has
  confidence 0. ``low_confidence`` is confidence below the calibrated threshold.
- **uncertainty** per pixel, in [0, 1]: ``2 * std`` of the ensemble members' probabilities, or the binary
  entropy (bits) of the probability when one member ran.
- **mismatch**: every image is described by the statistics of the first encoder block's query-side features
  (the cross conv's query filters on the image alone): per channel mean, log std, and log std of the 8 x 8
  pooled map. The score is the RMS z-distance of the query from the support mean, each feature scaled by the
  support set's own spread combined with the within-dataset spread measured at calibration. Above the
  calibrated threshold for the support set's size: "the query looks unlike the examples".

The thresholds live in a JSON sidecar next to the weights (``<weights stem>.calibration.json``), written by
``scripts/calibrate-confidence.py`` and keyed by the weights file's sha256. For other weights (no sidecar, or a
different sha256) the answer says ``calibrated: false``: low confidence falls back to ``FALLBACK_LOW_CONFIDENCE``
and the mismatch check gives a score but no verdict.

Letters: K labels, H x W the query's size, S support items, N the network side, F features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.preprocess import prepare_gray, to_gray

log = logging.getLogger(__name__)

FALLBACK_LOW_CONFIDENCE = 0.5  # uncalibrated weights: a label below this is low confidence
MISMATCH_WARNING = "the query looks unlike the examples"
LOW_CONFIDENCE_WARNING = "low confidence"
SIDECAR_SUFFIX = ".calibration.json"
_POOL = 8  # the pooled map of the third feature group: 8 x 8 cells
_EPS = 1e-3


# -- confidence and uncertainty ------------------------------------------------------------------------------

def label_confidence(probs: np.ndarray, mask: np.ndarray, labels: tuple[int, ...] | list[int],
                     spread: np.ndarray | None = None) -> list[float]:
    """Confidence of every label.

    Args:
        probs: (K, *shape) float32 in [0, 1] (a 2D query's (K, H, W) or a volume's (K, H, W, D)).
        mask: the label map merged from ``probs`` (the shape without K).
        labels: the K label values.
        spread: (K, *shape) std of the ensemble members' probabilities, or None (one member).

    Returns:
        K floats in [0, 1]; 0 for a label the mask does not hold.
    """
    out = []
    for k, label in enumerate(labels):
        region = mask == label
        n = int(region.sum())
        if n == 0:
            out.append(0.0)
            continue
        p = probs[k]
        inside = float(p[region].sum(dtype=np.float64))
        value = 2.0 * inside / (float(p.sum(dtype=np.float64)) + n)
        if spread is not None:
            value *= 1.0 - 2.0 * float(spread[k][region].mean(dtype=np.float64))
        out.append(float(np.clip(value, 0.0, 1.0)))
    return out


def uncertainty_map(probs: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel uncertainty, (K, *shape) float32 in [0, 1]: 2 x the members' std, else the binary entropy
    (bits) of ``probs``. All members agreeing gives 0; a pixel at p = 0.5 of one member gives 1."""
    if spread is not None:
        return np.clip(2.0 * spread, 0.0, 1.0).astype(np.float32)
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


# -- the mismatch statistic --------------------------------------------------------------------------------

@torch.inference_mode()
def image_features(net: torch.nn.Module, images: torch.Tensor, chunk: int = 32) -> np.ndarray:
    """Appearance features of prepared images from the first encoder block's query-side filters.

    Args:
        net: a ``UniverSegNet``.
        images: (B, N, N) float32 in [0, 1] (prepared like the network's input).

    Returns:
        (B, F) float64, F = 3 x the first block's features.
    """
    conv = net.enc_blocks[0].cross.cross_conv
    cq = net.enc_blocks[0].cross.query_channels
    weight, bias = conv.weight[:, :cq].float(), conv.bias.float()
    slope = net.config.negative_slope
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk, None].float().to(weight.device)  # (B', 1, N, N)
        z = F.leaky_relu(F.conv2d(x, weight, bias, padding=1), slope)  # (B', C, N, N)
        pooled = F.adaptive_avg_pool2d(z, _POOL)  # (B', C, 8, 8)
        out.append(torch.cat([z.mean((2, 3)), torch.log(z.std((2, 3)) + _EPS),
                              torch.log(pooled.std((2, 3)) + _EPS)], 1).double().cpu())
    return torch.cat(out).numpy()


def mismatch_score(query_features: np.ndarray, support_features: np.ndarray, scale: np.ndarray | None) -> float:
    """RMS z-distance of the query from the support mean.

    Args:
        query_features: (F,); support_features: (S, F).
        scale: (F,) the within-dataset spread of each feature (calibration), or None: the support set's own
            spread only, floored (uncalibrated: the score is reported but not judged).
    """
    mu = support_features.mean(0)
    var = support_features.var(0)
    if scale is None:
        var = var + (0.05 * np.abs(mu) + 0.05) ** 2
    else:
        var = var + scale ** 2
    return float(np.sqrt(np.mean((query_features - mu) ** 2 / var)))


# -- calibration -------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """The thresholds for one set of weights.

    Attributes:
        calibrated: whether a sidecar for exactly these weights (sha256) was found.
        low_confidence: a label whose confidence is below this is low confidence.
        mismatch_scale: (F,) within-dataset feature spread, or None (uncalibrated).
        mismatch_thresholds: support-set size -> score above which the query is flagged; a set of S items
            uses the entry of the largest size <= S.
        weights_sha256: the weights' hash (None when unknown).
    """

    calibrated: bool = False
    low_confidence: float = FALLBACK_LOW_CONFIDENCE
    mismatch_scale: np.ndarray | None = None
    mismatch_thresholds: dict[int, float] = field(default_factory=dict)
    weights_sha256: str | None = None

    def mismatch_threshold(self, support_size: int) -> float | None:
        sizes = [s for s in self.mismatch_thresholds if s <= support_size]
        if not self.calibrated or not sizes:
            return None
        return self.mismatch_thresholds[max(sizes)]


def sidecar_path(weights_path: str | Path) -> Path:
    """``model/weights/icseg-default.safetensors`` -> ``model/weights/icseg-default.calibration.json``."""
    path = Path(weights_path)
    return path.with_name(path.name.split(".")[0] + SIDECAR_SUFFIX)


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_calibration(weights_path: str | Path | None) -> Calibration:
    """The sidecar's thresholds when it was written for exactly these weights; else the uncalibrated fallback."""
    if not weights_path or not Path(weights_path).is_file():
        return Calibration()
    sha = file_sha256(str(weights_path))
    side = sidecar_path(weights_path)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        return Calibration(weights_sha256=sha)
    except (OSError, ValueError):
        log.warning("calibration sidecar %s is unreadable: confidence flags are uncalibrated", side.name)
        return Calibration(weights_sha256=sha)
    if data.get("weights_sha256") != sha:
        log.warning("calibration sidecar %s is for other weights: confidence flags are uncalibrated", side.name)
        return Calibration(weights_sha256=sha)
    mismatch = data.get("mismatch") or {}
    return Calibration(calibrated=True, low_confidence=float(data["low_confidence"]),
                       mismatch_scale=np.asarray(mismatch["scale"], dtype=np.float64),
                       mismatch_thresholds={int(k): float(v) for k, v in mismatch["thresholds"].items()},
                       weights_sha256=sha)


# -- what an answer carries --------------------------------------------------------------------------------

@dataclass
class Assessment:
    """How sure one answer is (``assess``); ``to_dict`` is the JSON the service and the SDK carry."""

    labels: tuple[int, ...]
    confidence: list[float]
    low_confidence: list[bool]
    mismatch_score: float | None
    mismatch_threshold: float | None
    calibrated: bool

    @property
    def mismatch(self) -> bool | None:
        if self.mismatch_score is None or self.mismatch_threshold is None:
            return None
        return self.mismatch_score > self.mismatch_threshold

    @property
    def warnings(self) -> list[str]:
        out = [MISMATCH_WARNING] if self.mismatch else []
        low = [str(v) for v, flag in zip(self.labels, self.low_confidence) if flag]
        if low:
            out.append(f"{LOW_CONFIDENCE_WARNING} for label {', '.join(low)}")
        return out

    def to_dict(self) -> dict:
        return {
            "confidence": {str(v): round(c, 4) for v, c in zip(self.labels, self.confidence)},
            "low_confidence": any(self.low_confidence),
            "low_confidence_labels": [int(v) for v, f in zip(self.labels, self.low_confidence) if f],
            "mismatch": {"score": None if self.mismatch_score is None else round(self.mismatch_score, 4),
                         "threshold": None if self.mismatch_threshold is None else round(self.mismatch_threshold, 4),
                         "flagged": self.mismatch},
            "calibrated": self.calibrated,
            "warnings": self.warnings,
        }


def assess(probs: np.ndarray, mask: np.ndarray, labels: tuple[int, ...], calibration: Calibration,
           spread: np.ndarray | None = None, mismatch: tuple[float, int] | None = None) -> Assessment:
    """Confidence, flags and warnings of one answer.

    Args:
        probs, mask, labels, spread: as ``label_confidence``.
        mismatch: (score, support size S) from ``mismatch_score``, or None when not measured.
    """
    conf = label_confidence(probs, mask, labels, spread)
    score, threshold = None, None
    if mismatch is not None:
        score, threshold = mismatch[0], calibration.mismatch_threshold(mismatch[1])
    return Assessment(tuple(int(v) for v in labels), conf, [c < calibration.low_confidence for c in conf],
                      score, threshold, calibration.calibrated)


def support_mismatch(net: torch.nn.Module, query: torch.Tensor, support_images: torch.Tensor,
                     calibration: Calibration) -> tuple[float, int]:
    """(mismatch score, S) of prepared images: the query (N, N) or several slices of it (D', N, N), whose
    features are averaged, against the support images (S, N, N)."""
    q = image_features(net, query[None] if query.ndim == 2 else query).mean(0)
    s = image_features(net, support_images)
    return mismatch_score(q, s, calibration.mismatch_scale), int(support_images.shape[0])


def calibration_for(segmenter) -> Calibration:
    """The calibration of the segmenter's weights file (uncalibrated for weights not read from a file)."""
    return load_calibration(getattr(segmenter.net, "weights_info", {}).get("path"))


def _even(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def query_mismatch(segmenter, query: np.ndarray, support, calibration: Calibration, *, volume: bool = False,
                   axis: int = 2, slices: int = 8) -> tuple[float, int]:
    """(mismatch score, S) of a request, every image prepared as the network sees it (``prepare_gray``).

    Args:
        query: a 2D query (H, W[, 3]), or with ``volume`` a volume (H, W, D) sliced along ``axis``: the score
            is the median over up to ``slices`` evenly spaced slices.
        support: a ``PreparedSupport`` (2D items, a prompt) or a ``VolumeSupport`` (up to ``slices`` labelled
            slices of each support volume are the support set of the check).
    """
    size, clip = segmenter.size, segmenter.clip_percentiles
    if hasattr(support, "present"):  # a VolumeSupport: (D_i, H_i, W_i) per volume, slicing axis first
        items = []
        for image, present in zip(support.images, support.present):
            labelled = np.unique(np.concatenate([p for p in present if p.size] or [np.arange(image.shape[0])]))
            items += [prepare_gray(image[j], size, clip) for j in labelled[_even(labelled.size, slices)]]
        support_images = torch.stack(items)
    else:
        support_images = support.images
    if not volume:
        return support_mismatch(segmenter.net, prepare_gray(to_gray(query), size, clip), support_images, calibration)
    moved = np.moveaxis(np.asarray(query), axis, 0)
    scores = [support_mismatch(segmenter.net, prepare_gray(moved[i].astype(np.float32), size, clip), support_images,
                               calibration)[0] for i in _even(moved.shape[0], slices)]
    return float(np.median(scores)), int(support_images.shape[0])
