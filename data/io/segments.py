"""What a label is called and how it is drawn: one ``Segment`` per label value, for every output that can
carry names and colours (JSON, the NIfTI sidecar, DICOM SEG, ``.seg.nrrd``, the viewer's legend).

The colours are the viewer's (app/static/viewer.js ``labelColour``): Okabe-Ito (colour-blind safe) for labels
1-7, then hues spaced by the golden angle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

_PALETTE = [None, (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
            (204, 121, 167)]


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB (0..255) the viewer draws ``label`` (>= 1) in."""
    if label < len(_PALETTE) and _PALETTE[label] is not None:
        return _PALETTE[label]
    h = ((label * 137.508) % 360) / 60
    x = 1 - abs((h % 2) - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
    return tuple(round(60 + 180 * v) for v in rgb)  # type: ignore[return-value]


@dataclass(frozen=True)
class Segment:
    """One label of a mask. Attributes: label (1..K value in the mask), name, colour (RGB 0..255)."""

    label: int
    name: str
    colour: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "colour": "#{:02x}{:02x}{:02x}".format(*self.colour)}


def segments_for(labels: Iterable[int], names: Mapping[str, str] | None = None) -> list[Segment]:
    """A segment per label value, named from ``names`` (label value as a string -> name) or "label <v>"."""
    names = names or {}
    return [Segment(int(v), str(names.get(str(int(v))) or f"label {int(v)}"), label_colour(int(v)))
            for v in labels if int(v) > 0]


def labels_present(mask: np.ndarray) -> list[int]:
    """The label values (> 0) a mask holds, ascending."""
    return [int(v) for v in np.unique(mask) if v > 0]


def sidecar_bytes(labels: Iterable[int], present: Iterable[int], names: Mapping[str, str] | None) -> bytes:
    """The JSON sidecar of a NIfTI mask: every label of the support set, its name and colour, and which the
    mask holds (``{"labels": [{"label", "name", "colour"}], "labels_present": [...]}``)."""
    body = {"labels": [s.to_dict() for s in segments_for(labels, names)], "labels_present": [int(v) for v in present]}
    return json.dumps(body, indent=1).encode()
