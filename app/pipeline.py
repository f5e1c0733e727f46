"""What /segment, /jobs and /prompts share: the form, then bytes -> task -> model -> encoded mask.

The path from uploaded bytes to a prepared support set is ``model.inputs`` (``read_support``, then
``SupportFiles.prepare``): the same one the command line takes. Every step that touches pixels runs off the
event loop: decoding and support preparation in the thread pool, the model on the model thread
(micro-batched) or a job worker, encoding in the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app import budget
from app.errors import ApiError
from app.labels import parse_label_names
from app.model_service import ModelService, Progress
from app.outputs import check_output, encode_result
from app.positions import check_support_positions, parse_support_positions
from app.prompts import Prompts
from app.settings import Settings
from data.io import ImageData, encode_probs, read_series, to_png_bytes
from model.inputs import SupportFiles, read_support
from model.retrieval import LARGE_DEFAULT, Select, resolve
from model.support import PreparedSupport, label_set, merge_labels
from model.volume import VolumeSupport
from model.volume_plan import DEFAULT_SKIP_MARGIN, VolumeOptions
from model.volume_run import VolumeResult

Output = Literal["file", "json", "probs", "dicom-seg"]


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
    support_slices: int | None = None
    skip_margin: float = DEFAULT_SKIP_MARGIN
    cascade: bool = False
    support_positions: str | None = field(default=None, kw_only=True)  # a JSON array, one per 2D support pair
    query_parts: list[UploadFile] = field(default_factory=list)  # the other files of a DICOM series
    label_names: str | None = None
    select: Select | None = None
    support_size: int | None = None
    uncertainty: bool = False


# form fields that take one value; `query` may repeat (a DICOM series sent file by file)
SINGLE_FIELDS = ("prompt_id", "threshold", "ensemble", "axis", "output", "support_slices", "skip_margin", "cascade",
                 "support_positions",
                 "label_names", "select", "support_size", "uncertainty")


async def reject_repeated(request: Request, names: tuple[str, ...]) -> None:
    """422 for a single-valued field given twice (two thresholds): FastAPI would keep one silently. The form
    is the one FastAPI already parsed (cached on the request)."""
    form = await request.form()
    for name in names:
        if len(form.getlist(name)) > 1:
            raise ApiError(f"{name} is given {len(form.getlist(name))} times; send it once", field=name,
                           code="invalid_request")


async def segment_form(
    request: Request,
    query: Annotated[list[UploadFile], File(
        description="the image to segment: PNG, JPEG, TIFF, BMP, DICOM, NIfTI or NRRD; a DICOM series as "
        "repeated query parts (one per slice, any order), a zip of the series or a multi-frame instance")],
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
             "Accept: application/json); probs: JSON plus per-label probabilities (PNGs for 2D, one float "
             "NIfTI (H, W, D, K) for volumes); dicom-seg: a DICOM Segmentation of a DICOM query, one segment per "
             "label, referencing the query's instances"),
    ] = None,
    support_slices: Annotated[int | None, Form(
        ge=1, le=64, description="volumes with 3D support: support slices per query slice and label, in all, "
        "spread over the support volumes by position (default 8, capped by ICSEG_MAX_SUPPORT); cost grows with "
        "it")] = None,
    skip_margin: Annotated[float, Form(
        ge=0, le=1, description="volumes with 3D support: query slices farther than this relative depth outside "
        "every support volume's labelled range of a label are skipped (background); 1 never skips")
    ] = DEFAULT_SKIP_MARGIN,
    cascade: Annotated[bool, Form(
        description="volumes with 3D support: confident predictions of neighbouring slices join the support of "
        "the next ones, outward from the labelled range (in-context cascade)")] = False,
    support_positions: Annotated[str | None, Form(
        description="volumes with a 2D support set: each pair's relative depth along the axis (0 the first slice, "
        "1 the last) as a JSON array, e.g. [0.42, 0.5, 0.61], one per pair in their order; query slices farther "
        "than skip_margin from the pairs holding a label are skipped for it (background), which also saves their "
        "cost")] = None,
    label_names: Annotated[str | None, Form(
        description='JSON object label -> name for inline support, e.g. {"1": "liver"} (as /prompts takes)')] = None,
    select: Annotated[Select | None, Form(
        description="2D support sets: which items the query uses. all: every one (the default while the set fits "
        "the model, ICSEG_MAX_SUPPORT); similar: the support_size items whose images are nearest to the query; "
        f"random: support_size items drawn at random, seeded. Unset on a larger set: {LARGE_DEFAULT}")] = None,
    support_size: Annotated[int | None, Form(
        ge=1, description="2D support sets: how many items the query uses (with select=similar or random); at "
        "most the set's size and ICSEG_MAX_SUPPORT (unset: all of them; 16 from a set larger than ICSEG_MAX_SUPPORT)")
    ] = None,
    uncertainty: Annotated[bool, Form(
        description="also return per-pixel uncertainty maps (the answer is then JSON): 2 x the std of the ensemble "
        "members' probabilities, or the binary entropy when ensemble=1; one 8-bit PNG per label (2D, 255 = 1.0) or "
        "one float NIfTI (H, W, D, K) for volumes")] = False,
) -> SegmentForm:
    await reject_repeated(request, SINGLE_FIELDS)
    return SegmentForm(query[0], support_images or [], support_masks or [], prompt_id or None, threshold, ensemble,
                       axis, output, support_slices, skip_margin, cascade, query[1:], label_names or None, select,
                       support_size, uncertainty,
                       support_positions=support_positions)


@dataclass
class SegmentTask:
    """A decoded request, ready for the model.

    Attributes:
        query: the decoded query; ``query.kind`` is "image" (H, W[, 3]) or "volume" (H, W, D).
        support: a prepared 2D support set (inline or a stored prompt), or 3D support volumes prepared for
            position matching (a volume query only).
    """

    query: ImageData
    support: PreparedSupport | VolumeSupport
    threshold: float
    ensemble: int
    axis: int
    label_names: dict[str, str] = field(default_factory=dict)
    decode_ms: float = 0.0
    prepare_ms: float = 0.0
    options: VolumeOptions = field(default_factory=VolumeOptions)
    want_probs: bool = False
    output: str | None = None
    model_info: dict = field(default_factory=dict)  # the weights, for a DICOM SEG's algorithm identification
    selection: dict | None = None  # 2D support: {"select", "support_size", "pool"}, what the query used

    @property
    def labels(self) -> tuple[int, ...]:
        return self.support.labels

    @property
    def is_volume(self) -> bool:
        return self.query.kind == "volume"

    @property
    def voxels(self) -> int:
        return int(np.prod(self.query.shape))

    @property
    def total_steps(self) -> int:
        return int(self.query.array.shape[self.axis]) if self.is_volume else 1


async def read_uploads(files: list[UploadFile]) -> list[bytes]:
    return [await f.read() for f in files]


def decode_support(images: list[bytes], masks: list[bytes], settings: Settings, *, volumes: bool) -> SupportFiles:
    """Blocking: the support uploads decoded once, with the service's size limits (``model.inputs``)."""
    return read_support(images, masks, volumes=volumes, max_pixels=settings.max_pixels,
                        max_voxels=settings.max_voxels)


async def build_task(form: SegmentForm, model: ModelService, prompts: Prompts, settings: Settings,
                     *, is_job: bool = False, tenant: str | None = None) -> SegmentTask:
    """Check the form, price it (``app.budget``, from the headers), decode every file and prepare the
    support set (raises coded errors). ``is_job``: the job budget instead of the synchronous one."""
    has_files = bool(form.support_images or form.support_masks)
    if form.prompt_id and has_files:
        raise ApiError("give either prompt_id or support_images/support_masks, not both", field="prompt_id",
                       code="conflicting_fields")
    if not form.prompt_id and not has_files:
        raise ApiError("give support_images and support_masks (paired by order), or a prompt_id",
                       field="support_images", code="missing_support")

    start = time.perf_counter()
    query_bytes = await form.query.read()
    more_query = await read_uploads(form.query_parts)  # a DICOM series sent file by file
    image_bytes, mask_bytes = await read_uploads(form.support_images), await read_uploads(form.support_masks)
    record = support = None
    if form.prompt_id:
        record, support = await run_in_threadpool(prompts.load, form.prompt_id, model.size, tenant)

    def decode_all() -> tuple[ImageData, SupportFiles | None]:
        cost = budget.estimate(query_bytes, image_bytes, mask_bytes, ensemble=form.ensemble, axis=form.axis,
                               support_slices=form.support_slices, max_support=model.max_support,
                               settings=settings, is_job=is_job, network_side=model.size)
        if record is not None:
            cost.support_size, cost.labels = record.support_size, len(record.labels)
        if not cost.three_d:  # the items one query uses: a bad select or support_size is a 4xx before decoding
            cost.support_size = resolve(form.select, form.support_size, cost.support_size, model.max_support,
                                        LARGE_DEFAULT)[1]
        budget.check(cost, settings, is_job=is_job)  # from the headers: nothing decoded yet
        query = read_series([query_bytes, *more_query], max_pixels=settings.max_pixels,
                            max_voxels=settings.max_voxels, field="query")
        check_output(form.output, query)
        if record is not None:
            return query, None
        files = decode_support(image_bytes, mask_bytes, settings, volumes=query.kind == "volume")
        cost.labels = len(label_set(files.masks, settings.max_labels))
        budget.check(cost, settings, is_job=is_job)  # the real label count, before any model work
        return query, files

    query, files = await run_in_threadpool(decode_all)
    decode_ms = (time.perf_counter() - start) * 1000
    options = VolumeOptions(support_slices=form.support_slices, ensemble=form.ensemble, axis=form.axis,
                            skip_margin=None if form.skip_margin >= 1 else form.skip_margin, cascade=form.cascade,
                            threshold=form.threshold,
                            support_positions=parse_support_positions(form.support_positions))
    options.check(model.max_support)  # a bad value is a 4xx before any work, and before a job's 202
    prepare_ms = 0.0
    start = time.perf_counter()
    if files is not None:
        support = await run_in_threadpool(model.prepare_support, files, form.axis)
    selection = None
    if isinstance(support, VolumeSupport):
        if form.select not in (None, "all") or form.support_size is not None:
            field_name = "select" if form.select not in (None, "all") else "support_size"
            raise ApiError("select and support_size choose among 2D support items; 3D support volumes are matched by "
                           "position: use support_slices", field=field_name, code="invalid_request")
    else:
        support, selection = await run_in_threadpool(model.select_support, query.array, support, form.select,
                                                     form.support_size, form.axis if query.kind == "volume" else None)
    check_support_positions(options.support_positions, query.kind == "volume", isinstance(support, VolumeSupport),
                            support.size)
    prepare_ms = (time.perf_counter() - start) * 1000
    names = {**(record.label_names if record is not None else {}),
             **parse_label_names(form.label_names, tuple(support.labels))}
    return SegmentTask(query=query, support=support, threshold=form.threshold, ensemble=form.ensemble,
                       axis=form.axis, label_names=names, output=form.output, model_info=model.info(),
                       decode_ms=decode_ms, prepare_ms=prepare_ms, options=options,
                       want_probs=form.output == "probs", selection=selection)


async def run_model(task: SegmentTask, model: ModelService,
                    settings: Settings) -> tuple[np.ndarray, np.ndarray, dict | None, np.ndarray | None]:
    """Synchronous requests: (label map at the query's shape, probabilities (K, H, W) for 2D or (K, H, W, D)
    for volumes, the volume's metadata or None, the ensemble members' std (ensemble > 1, the probabilities'
    shape) or None)."""
    timeout = settings.request_timeout_s
    try:
        if not task.is_volume:
            probs, spread = await asyncio.wait_for(model.predict(task.query.array, task.support, task.ensemble),
                                                   timeout)
            return merge_labels(probs, task.labels, task.threshold), probs, None, spread
        if task.voxels > settings.sync_max_voxels:
            raise ApiError(f"the volume has {task.voxels:,} voxels, more than /segment answers synchronously "
                           f"({settings.sync_max_voxels:,}); POST it to /jobs", field="query", code="use_jobs")
        work = partial(run_volume, task, model, None)
        result = await asyncio.wait_for(model.run_on_model_thread(work), timeout)
        return result.mask, result.probs, volume_details(task, result), result.spread
    except TimeoutError as exc:
        raise ApiError(f"the model did not answer within {timeout:.0f} s; try /jobs for large inputs",
                       code="timeout") from exc


def run_blocking(task: SegmentTask, model: ModelService,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A 2D job (on a worker thread): (label map at the query's shape, probabilities, members' std or None)."""
    probs, spread = model.predict_blocking(task.query.array, task.support, task.ensemble, progress)
    return merge_labels(probs, task.labels, task.threshold), probs, spread


def run_volume(task: SegmentTask, model: ModelService, progress: Progress | None) -> VolumeResult:
    """Blocking: a volume query with the task's options (``Segmenter.predict_volume_result``): the
    probabilities and, with an ensemble, the members' std, as a 2D query (the confidence's and the
    uncertainty maps' input; nothing more is kept for ensemble 1)."""
    return model.segment_volume_result(task.query.array, support=task.support, options=task.options,
                                       probs=True, spread=True, progress=progress)


def volume_details(task: SegmentTask, result: VolumeResult) -> dict:
    """What a volume cost and what was skipped: the ``volume`` object of the JSON answer and of a job."""
    return {"slices": result.slices, "skipped": result.skipped, "tasks": result.tasks, **result.options,
            "label_names": task.label_names}


def probs_png_b64(probs: np.ndarray) -> list[str]:
    """(K, H, W) in [0, 1] -> one base64 8-bit grayscale PNG per label."""
    return [base64.b64encode(to_png_bytes(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8))).decode() for p in probs]


def encode(task: SegmentTask, mask: np.ndarray) -> tuple[bytes, str, str]:
    """Blocking: (bytes, media type, extension) of the mask in the query's format and geometry, or a DICOM SEG."""
    return encode_result(mask, task.query, task.output, task.labels, task.label_names, task.model_info)


def probs_b64(task: SegmentTask, probs: np.ndarray) -> list[str]:
    """Blocking: the probabilities of the JSON answer: one PNG per label (2D), one float NIfTI (volumes)."""
    if task.is_volume:
        return [base64.b64encode(encode_probs(probs, task.query)).decode()]
    return probs_png_b64(probs)
