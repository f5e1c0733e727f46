"""DICOM Segmentation objects through highdicom: a label map of a DICOM query (2D, series or multi-frame) ->
a binary SEG that references the source instances, one segment per label of the support set (its name,
a generic coded category and type, the viewer's colour, the algorithm's identification).

highdicom copies the patient and study of the sources and their frame of reference; the sources are the
datasets ``data.io`` kept in ``ImageData.header`` (without pixels), in the order of the mask's slices.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from data.errors import InputError
from data.io.base import ImageData, reason
from data.io.segments import Segment


@dataclass(frozen=True)
class Algorithm:
    """Who made the mask, as the SEG's AlgorithmIdentificationSequence says it."""

    name: str = "icseg"
    version: str = "0"
    weights: str = "unknown"


def _sources_and_frames(mask: np.ndarray, like: ImageData) -> tuple[list, np.ndarray]:
    """The source datasets and the mask as highdicom frames: (H, W) for one image, (D, H, W) otherwise."""
    sources = like.header if isinstance(like.header, list) else []
    if not sources:
        raise InputError("output=dicom-seg needs a DICOM query (its instances are referenced)", field="output")
    if like.kind == "image":
        return sources, mask
    frames = np.moveaxis(mask, -1, 0)  # (H, W, D) -> (D, H, W), the sorted slice order
    order = like.meta.get("frame_order")
    if order is not None:  # a multi-frame source: frame k of the SEG is stored frame k
        stored = np.empty_like(frames)
        stored[np.asarray(order)] = frames
        frames = stored
    return sources, frames


def dicom_seg_bytes(mask: np.ndarray, like: ImageData, segments: list[Segment], algorithm: Algorithm) -> bytes:
    """A DICOM SEG (binary, one segment per ``segments`` item, empty frames kept) of ``mask`` for ``like``.

    Args:
        mask: (H, W) or (H, W, D) label map at the query's shape; values not among ``segments`` are left out.
        like: the DICOM query as read by ``data.io`` (its source datasets in ``header``).
        segments: one per label of the support set (value, name, colour), in segment number order 1..n.
        algorithm: name, version and weights, for the AlgorithmIdentificationSequence.

    Raises:
        InputError: the query is not DICOM, or highdicom refuses its sources (missing geometry, ...).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sources, frames = _sources_and_frames(mask, like)
    if not segments:
        raise InputError("the support set has no label to put in a DICOM SEG", field="support_masks")
    numbered = np.zeros(frames.shape, dtype=np.uint16 if len(segments) > 255 else np.uint8)
    for number, seg in enumerate(segments, start=1):
        numbered[frames == seg.label] = number  # label-map style: pixel value = segment number
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=codes.cid7162.ArtificialIntelligence, version=algorithm.version,
        parameters={"weights": algorithm.weights},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=seg.name[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification,
            tracking_uid=generate_uid(), tracking_id=f"icseg label {seg.label}",
            display_color=hd.color.CIELabColor.from_rgb(*seg.colour),
        )
        for number, seg in enumerate(segments, start=1)
    ]
    if numbered.ndim == 3:
        stacked = np.stack([numbered == n for n in range(1, len(segments) + 1)], axis=-1).astype(np.uint8)
    else:
        stacked = np.stack([numbered == n for n in range(1, len(segments) + 1)], axis=-1)[None].astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=stacked, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=900,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=algorithm.name,
            manufacturer_model_name=algorithm.weights[:64], software_versions=algorithm.version,
            device_serial_number="0", content_label="ICSEG", content_description="icseg in-context segmentation",
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"cannot write a DICOM SEG for this query ({reason(exc)}); ask for output=file",
                         field="output") from exc
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
