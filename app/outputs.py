"""What a result says about its labels, and the result file in the format asked for.

Every answer carries ``labels`` (the support set's: what the mask could hold), ``labels_present`` (what it
holds) and ``segments`` (each support label's name and colour). The mask is the query's format
(``data.io.encode_mask``), or a DICOM SEG with ``output=dicom-seg`` for a DICOM query.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import PurePath

import numpy as np

from app.errors import ApiError
from data.io import ImageData, encode_mask
from data.io.dicom_seg import Algorithm, dicom_seg_bytes
from data.io.segments import labels_present, segments_for

DICOM_SEG = "dicom-seg"


def icseg_version() -> str:
    try:
        return version("icseg")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def algorithm(model_info: dict) -> Algorithm:
    """The AlgorithmIdentification of a DICOM SEG: icseg, its version and the weights' file name."""
    weights = (model_info.get("weights") or {}).get("file") or "unknown"
    return Algorithm("icseg", icseg_version(), PurePath(str(weights)).name)


def check_output(output: str | None, query: ImageData) -> None:
    """``output=dicom-seg`` needs a DICOM query (raises a 400 naming ``output``)."""
    if output == DICOM_SEG and query.format != "dicom":
        raise ApiError(f"output=dicom-seg needs a DICOM query (this one is {query.format}); use output=file",
                       field="output", code="invalid_input")


def encode_result(mask: np.ndarray, query: ImageData, output: str | None, labels: tuple[int, ...],
                  label_names: dict[str, str], model_info: dict) -> tuple[bytes, str, str]:
    """Blocking: (bytes, media type, extension) of the mask: a DICOM SEG (one segment per support label) for
    ``output=dicom-seg``, else the query's format and geometry."""
    if output == DICOM_SEG:
        payload = dicom_seg_bytes(mask, query, segments_for(labels, label_names), algorithm(model_info))
        return payload, "application/dicom", ".dcm"
    return encode_mask(mask, query, label_names)


def label_summary(mask: np.ndarray, labels: tuple[int, ...], label_names: dict[str, str]) -> dict:
    """``labels``, ``labels_present``, ``label_names`` (every support label, named or "label <v>") and
    ``segments`` (label, name, colour '#rrggbb') for a JSON answer or a job."""
    segments = segments_for(labels, label_names)
    return {"labels": [int(v) for v in labels], "labels_present": labels_present(mask),
            "label_names": {str(s.label): s.name for s in segments}, "segments": [s.to_dict() for s in segments]}


def selection_headers(selection: dict | None) -> dict[str, str]:
    """Which 2D support items the query used, for a binary answer: X-Select and X-Support-Size (none for 3D
    support, ``selection`` None)."""
    if selection is None:
        return {}
    return {"X-Select": selection["select"], "X-Support-Size": str(selection["support_size"])}


def label_headers(summary: dict) -> dict[str, str]:
    """The same for a binary answer: X-Labels, X-Labels-Present and X-Label-Names (JSON, ASCII-escaped)."""
    return {"X-Labels": ",".join(map(str, summary["labels"])),
            "X-Labels-Present": ",".join(map(str, summary["labels_present"])),
            "X-Label-Names": json.dumps(summary["label_names"], ensure_ascii=True)}
