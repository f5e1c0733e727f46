"""POST /segment: a query and a visual prompt in, a mask out, synchronously."""

from __future__ import annotations

import base64
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.deps import AUTH, ModelDep, PromptsDep, SettingsDep, TenantDep
from app.outputs import label_headers, label_summary, selection_headers
from app.pipeline import SegmentForm, build_task, encode, probs_b64, run_model, segment_form
from app.quality import assess_task, quality_headers, task_uncertainty
from app.schemas import MASK_CONTENT, SegmentResult, error_responses

router = APIRouter(tags=["segment"], dependencies=AUTH)


def wants_json(output: str | None, accept: str) -> bool:
    if output is not None and output != "dicom-seg":  # a DICOM SEG comes as JSON too on Accept: application/json
        return output in ("json", "probs")
    return "application/json" in accept.lower()


@router.post(
    "/segment",
    response_model=SegmentResult,
    responses={
        200: {"description": "the mask: PNG (TIFF for a TIFF query) for 2D queries, NIfTI (.nii.gz, same affine and "
              "header) for NIfTI volumes and DICOM series, .seg.nrrd for NRRD, a DICOM SEG with output=dicom-seg; "
              "JSON with `Accept: application/json` or output=json",
              "content": MASK_CONTENT},
        **error_responses(400, 401, 404, 413, 415, 422, 429, 503, 504),
    },
    summary="Segment a query with a support set or a stored prompt",
)
async def segment(
    request: Request,
    form: Annotated[SegmentForm, Depends(segment_form)],
    model: ModelDep,
    prompts: PromptsDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> Response:
    """Every label of the support set is segmented. Volumes up to ICSEG_SYNC_MAX_VOXELS are answered here;
    larger ones need POST /jobs."""
    model.ensure_room()  # a full queue answers 429 before any decoding
    task = await build_task(form, model, prompts, settings, tenant=tenant)
    start = time.perf_counter()
    mask, probs, volume, spread = await run_model(task, model, settings)
    model_ms = task.prepare_ms + (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    payload, media_type, extension = await run_in_threadpool(encode, task, mask)
    probs_files = await run_in_threadpool(probs_b64, task, probs) if form.output == "probs" else None
    assessed = await run_in_threadpool(assess_task, task, model, mask, probs, spread)
    maps = await run_in_threadpool(task_uncertainty, task, probs, spread) if form.uncertainty else None
    timings = {"decode": round(task.decode_ms, 2), "model": round(model_ms, 2),
               "encode": round((time.perf_counter() - start) * 1000, 2)}
    summary = label_summary(mask, task.labels, task.label_names)
    if form.uncertainty or wants_json(form.output, request.headers.get("accept", "")):
        body = SegmentResult(mask=base64.b64encode(payload).decode(), media_type=media_type, **summary,
                             shape=list(mask.shape), timings=timings, probs=probs_files, volume=volume,
                             selection=task.selection, **assessed, uncertainty=maps)
        # mismatch.flagged null (uncalibrated) is an answer, not an absence
        return JSONResponse({**body.model_dump(exclude_none=True), "mismatch": assessed["mismatch"]})
    headers = {
        "Content-Disposition": f'attachment; filename="mask{extension}"',
        **label_headers(summary),
        **quality_headers(assessed),
        **selection_headers(task.selection),
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items()),
    }
    if volume is not None:  # the slices set to background without running the model
        headers["X-Skipped-Slices"] = str(len(volume["skipped"]))
    return Response(payload, media_type=media_type, headers=headers)
