"""What /segment and /jobs share: the form, decode -> support -> model -> encode.

Every step that touches pixels runs off the event loop: decoding and support preparation in the thread
pool, the model on the model thread (micro-batched) or a job worker, encoding in the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import File, Form, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.errors import ApiError
from app.inputs import decode_image, decode_mask, read_upload
from app.model_service import ModelService, Progress
from app.prompts import Prompts
from app.settings import Settings
from data.io import ImageData, encode_mask
from data.preprocess import label_values
from model.segmenter import PreparedSupport, merge_labels

Output = Literal["file", "json", "probs"]


@dataclass
class SegmentForm:
    query: UploadFile
    support_images: list[UploadFile]
    support_masks: list[UploadFile]
    prompt_id: str | None
    threshold: float
    ensemble: int
    axis: int
    output: Output | None


async def segment_form(
    query: Annotated[UploadFile, File(description="the image to segment: PNG, JPEG, TIFF, BMP, DICOM or NIfTI")],
    support_images: Annotated[
        list[UploadFile] | None,
        File(description="support images, repeated; paired by order with support_masks (or give prompt_id)"),
    ] = None,
    support_masks: Annotated[
        list[UploadFile] | None,
        File(description="label maps (0 background, 1..K), one per support image; every label is segmented"),
    ] = None,
    prompt_id: Annotated[str | None, Form(description="a stored prompt instead of support files")] = None,
    threshold: Annotated[float, Form(ge=0, le=1, description="probability at which a pixel gets a label")] = 0.5,
    ensemble: Annotated[int, Form(ge=1, le=16, description="average over this many random support subsets")] = 1,
    axis: Annotated[int, Form(ge=0, le=2, description="volumes: slicing axis (2 = axial for RAS NIfTI)")] = 2,
    output: Annotated[
        Output | None,
        Form(description="file: the mask in the query's format; json: JSON with a base64 mask (also chosen by "
             "Accept: application/json); probs: JSON plus per-label probability PNGs (2D only)"),
    ] = None,
) -> SegmentForm:
    return SegmentForm(query, support_images or [], support_masks or [], prompt_id or None, threshold, ensemble,
                       axis, output)


@dataclass
class SegmentTask:
    """A decoded request, ready for the model.

    Attributes:
        query: the decoded query; ``query.kind`` is "image" (H, W[, 3]) or "volume" (X, Y, Z).
        support: a prepared 2D support set (inline or a stored prompt), or None with
        support_volumes / support_masks: 3D pairs for position-matched volume segmentation.
    """

    query: ImageData
    labels: tuple[int, ...]
    threshold: float
    ensemble: int
    axis: int
    support: PreparedSupport | None = None
    support_volumes: list[np.ndarray] | None = None
    support_masks: list[np.ndarray] | None = None
    label_names: dict[str, str] = field(default_factory=dict)
    decode_ms: float = 0.0
    prepare_ms: float = 0.0

    @property
    def is_volume(self) -> bool:
        return self.query.kind == "volume"

    @property
    def voxels(self) -> int:
        return int(np.prod(self.query.shape))

    @property
    def total_steps(self) -> int:
        return int(self.query.array.shape[self.axis]) if self.is_volume else 1


def check_support_counts(n_images: int, n_masks: int, max_support: int) -> None:
    if n_images == 0 or n_masks == 0:
        missing = "support_images" if n_images == 0 else "support_masks"
        raise ApiError(422, f"{missing} is missing: send support images and masks paired by order",
                       code="missing_support", field=missing)
    if n_images != n_masks:
        raise ApiError(422, f"{n_images} support images but {n_masks} support masks; pair them one to one",
                       code="support_count_mismatch", field="support_masks")
    if n_images > max_support:
        raise ApiError(422, f"{n_images} support items exceed the maximum of {max_support}; send fewer",
                       code="too_many_support_items", field="support_images")


def check_labels(masks: list[np.ndarray], max_labels: int) -> tuple[int, ...]:
    """Blocking: the support set's label values, or 422 above ``max_labels``.

    Every label is its own pass of the model and its own (K, H, W) probability map, so a mask of noise
    (a 16-bit image sent as a mask holds thousands of values) would cost minutes and gigabytes.
    """
    labels: set[int] = set()
    for i, mask in enumerate(masks):
        labels.update(label_values(mask))
        if len(labels) > max_labels:
            raise ApiError(422, f"the support masks hold {len(labels):,} or more distinct labels, above the limit of "
                           f"{max_labels} (ICSEG_MAX_LABELS); a mask is a label map (0 background, 1..K structures): "
                           "check that no image was sent as a mask", code="too_many_labels",
                           field=f"support_masks[{i}]")
    return tuple(sorted(labels))


def as_2d(data: ImageData, field: str) -> np.ndarray:
    """A 2D array from an image, or from a volume with a singleton axis (a NIfTI slice)."""
    array = data.array
    if data.kind == "volume":
        if 1 not in array.shape:
            raise ApiError(400, f"{field} is a 3D volume {array.shape} but the support set is 2D here; send 2D "
                           "images, or send a NIfTI query with NIfTI support volumes", code="invalid_input",
                           field=field)
        array = array.squeeze(axis=array.shape.index(1))
    return array


async def build_task(form: SegmentForm, model: ModelService, prompts: Prompts, settings: Settings) -> SegmentTask:
    """Check the form, decode every file and prepare the support set (raises ApiError/InputError)."""
    has_files = bool(form.support_images or form.support_masks)
    if form.prompt_id and has_files:
        raise ApiError(400, "give either prompt_id or support_images/support_masks, not both",
                       code="conflicting_fields", field="prompt_id")
    if not form.prompt_id and not has_files:
        raise ApiError(422, "give support_images and support_masks (paired by order), or a prompt_id",
                       code="missing_support", field="support_images")
    if has_files:
        check_support_counts(len(form.support_images), len(form.support_masks), model.max_support)

    start = time.perf_counter()
    query_bytes = await read_upload(form.query, "query")
    image_bytes = [await read_upload(f, f"support_images[{i}]") for i, f in enumerate(form.support_images)]
    mask_bytes = [await read_upload(f, f"support_masks[{i}]") for i, f in enumerate(form.support_masks)]

    record = support = None
    if form.prompt_id:
        record, support = await run_in_threadpool(prompts.load, form.prompt_id, model.size)

    def decode_all():
        query = decode_image(query_bytes, "query", settings)
        images = [decode_image(b, f"support_images[{i}]", settings) for i, b in enumerate(image_bytes)]
        masks = [decode_mask(b, f"support_masks[{i}]", settings) for i, b in enumerate(mask_bytes)]
        labels = check_labels([m.array for m in masks], settings.max_labels)
        return query, images, masks, labels

    query, images, masks, labels = await run_in_threadpool(decode_all)
    decode_ms = (time.perf_counter() - start) * 1000
    task = SegmentTask(query=query, labels=(), threshold=form.threshold, ensemble=form.ensemble, axis=form.axis,
                       decode_ms=decode_ms)
    if form.output == "probs" and query.kind == "volume":
        raise ApiError(400, "output=probs is for 2D queries; use output=file or json for volumes",
                       code="invalid_input", field="output")
    if record is not None:
        task.support, task.labels, task.label_names = support, support.labels, record.label_names
        return task

    volumes = [im.kind == "volume" and 1 not in im.array.shape for im in images]
    if query.kind == "volume" and all(volumes):
        task.support_volumes = [im.array for im in images]
        task.support_masks = [m.array for m in masks]
        task.labels = labels
        return task
    if query.kind == "volume" and any(volumes):
        raise ApiError(400, "mix of 3D and 2D support items: send only NIfTI volumes or only 2D images",
                       code="invalid_input", field="support_images")
    arrays = [as_2d(im, f"support_images[{i}]") for i, im in enumerate(images)]
    label_maps = [as_2d(m, f"support_masks[{i}]") for i, m in enumerate(masks)]
    start = time.perf_counter()
    task.support = await run_in_threadpool(model.prepare_support, arrays, label_maps)
    task.prepare_ms = (time.perf_counter() - start) * 1000
    task.labels = task.support.labels
    return task


async def run_model(task: SegmentTask, model: ModelService, settings: Settings) -> tuple[np.ndarray, np.ndarray | None]:
    """Synchronous requests: (label map at the query's shape, (K, H, W) probabilities or None for volumes)."""
    timeout = settings.request_timeout_s
    try:
        if not task.is_volume:
            probs = await asyncio.wait_for(model.predict(task.query.array, task.support, task.ensemble), timeout)
            return merge_labels(probs, task.labels, task.threshold), probs
        if task.voxels > settings.sync_max_voxels:
            raise ApiError(413, f"the volume has {task.voxels:,} voxels, more than /segment answers synchronously "
                           f"({settings.sync_max_voxels:,}); POST it to /jobs", code="use_jobs", field="query")
        work = partial(run_blocking, task, model, None)
        return await asyncio.wait_for(model.run_on_model_thread(work), timeout), None
    except TimeoutError as exc:
        raise ApiError(504, f"the model did not answer within {timeout:.0f} s; try /jobs for large inputs",
                       code="timeout") from exc


def run_blocking(task: SegmentTask, model: ModelService, progress: Progress | None) -> np.ndarray:
    """Jobs and synchronous volumes (on a worker thread): the label map at the query's shape."""
    if not task.is_volume:
        probs = model.segmenter.predict_many([task.query.array], task.support, ensemble=task.ensemble,
                                             progress=progress)[0]
        return merge_labels(probs, task.labels, task.threshold)
    return model.segment_volume(
        task.query.array, support=task.support, support_volumes=task.support_volumes,
        support_masks=task.support_masks, axis=task.axis, ensemble=task.ensemble, threshold=task.threshold,
        progress=progress,
    )


def probs_png_b64(probs: np.ndarray) -> list[str]:
    """(K, H, W) in [0, 1] -> one base64 8-bit grayscale PNG per label."""
    out = []
    for p in probs:
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def encode(task: SegmentTask, mask: np.ndarray) -> tuple[bytes, str, str]:
    """Blocking: (bytes, media type, extension) of the mask in the query's format and geometry."""
    return encode_mask(mask, task.query)
