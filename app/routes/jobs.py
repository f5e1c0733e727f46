"""Volume jobs: 202 + id, progress, the NIfTI result, DELETE cancels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from app.deps import AUTH, JobsDep, ModelDep, PromptsDep, SettingsDep, TenantDep
from app.errors import ApiError, JobNotFound
from app.outputs import label_headers, label_summary, selection_headers
from app.pipeline import SegmentForm, build_task, encode, run_blocking, run_volume, segment_form, volume_details
from app.quality import assess_task, quality_headers
from app.schemas import BINARY, MASK_CONTENT, JobInfo, error_responses
from data.io import encode_probs
from model.confidence import uncertainty_map

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=AUTH)


@router.post("", status_code=202, response_model=JobInfo,
             responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503),
             summary="Segment in the background (large volumes)")
async def create_job(
    form: Annotated[SegmentForm, Depends(segment_form)],
    model: ModelDep,
    prompts: PromptsDep,
    jobs: JobsDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> JSONResponse:
    """Same fields as /segment. The inputs are checked before the 202, so a job fails later only on the
    server's side. Poll GET /jobs/{id}; fetch GET /jobs/{id}/result when its status is done."""
    jobs.ensure_room()
    task = await build_task(form, model, prompts, settings, is_job=True, tenant=tenant)
    if form.output == "probs" and not task.is_volume:
        raise ApiError("a 2D job returns the mask file; output=probs is for /segment or volume jobs",
                       field="output", code="invalid_input")
    if form.uncertainty and not task.is_volume:
        raise ApiError("a 2D job returns the mask file; uncertainty=true is for /segment or volume jobs",
                       field="uncertainty", code="invalid_input")

    def work(progress):
        if not task.is_volume:
            mask, probs, spread = run_blocking(task, model, progress)
            labels = {**label_summary(mask, task.labels, task.label_names),
                      **assess_task(task, model, mask, probs, spread)}
            return (*encode(task, mask), {"labels": labels})
        result = run_volume(task, model, progress)
        probs = encode_probs(result.probs, task.query) if task.want_probs else None
        maps = encode_probs(uncertainty_map(result.probs, result.spread), task.query) if form.uncertainty else None
        labels = {**label_summary(result.mask, task.labels, task.label_names),
                  **assess_task(task, model, result.mask, result.probs, result.spread)}
        return (*encode(task, result.mask), {"volume": volume_details(task, result), "probs": probs,
                                             "uncertainty": maps, "labels": labels})

    job = jobs.submit(work, total=task.total_steps, labels=task.labels, owner=tenant, selection=task.selection)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/{job_id}", response_model=JobInfo, responses=error_responses(401, 404), summary="Status and progress")
async def get_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> dict:
    return jobs.get(job_id, tenant).to_dict()


@router.get("/{job_id}/result", response_class=Response,
            responses={200: {"description": "the mask in the query's format; header X-Labels: its label values, "
                             "e.g. 1,2; X-Select, X-Support-Size for 2D support (as /segment)",
                             "content": MASK_CONTENT},
                       409: {"description": "the job is not done (or failed, or was cancelled)"},
                       **error_responses(401, 404)},
            summary="The mask of a finished job")
async def job_result(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    job = jobs.get(job_id, tenant)
    if job.status != "done":
        detail = f": {job.error['message']}" if job.error else ""
        raise ApiError(f"job {job_id} is {job.status}{detail}", code=f"job_{job.status}",
                       retry_after=None if job.finished else 1)
    try:
        payload = job.result_path.read_bytes()
    except FileNotFoundError as exc:  # expired between get and read
        raise JobNotFound(f"the result of job {job_id} has expired") from exc
    headers = {"Content-Disposition": f'attachment; filename="mask{job.extension}"'}
    if job.labels is not None:  # as /segment's binary answer: the label values the mask can hold
        headers["X-Labels"] = ",".join(map(str, job.labels))
    if job.label_info is not None:  # and those it holds, with names, and how sure it is
        headers.update(label_headers({"labels": job.labels or [], **job.label_info}))
        if job.label_info.get("confidence") is not None:
            headers.update(quality_headers(job.label_info))
    headers.update(selection_headers(job.selection))
    return Response(payload, media_type=job.media_type, headers=headers)


@router.get("/{job_id}/probs", response_class=Response,
            responses={200: {"description": "a volume job with output=probs: gzipped float32 NIfTI (H, W, D, K), "
                             "the query's geometry; header X-Labels: the label of each of the K maps",
                             "content": {"application/gzip": BINARY}},
                       409: {"description": "the job is not done, or was not asked for probabilities"},
                       **error_responses(400, 401, 404)},
            summary="The per-label probabilities of a finished volume job")
async def job_probs(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    job = jobs.get(job_id, tenant)
    return _volume_maps(job, job.probs_path, "probabilities", "output=probs", "probs.nii.gz")


@router.get("/{job_id}/uncertainty", response_class=Response,
            responses={200: {"description": "a volume job with uncertainty=true: gzipped float32 NIfTI (H, W, D, K) "
                             "in [0, 1], the query's geometry; header X-Labels: the label of each of the K maps",
                             "content": {"application/gzip": BINARY}},
                       409: {"description": "the job is not done"},
                       **error_responses(400, 401, 404)},
            summary="The per-label uncertainty maps of a finished volume job")
async def job_uncertainty(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    job = jobs.get(job_id, tenant)
    return _volume_maps(job, job.uncertainty_path, "uncertainty maps", "uncertainty=true", "uncertainty.nii.gz")


def _volume_maps(job, path, what: str, asked_with: str, filename: str) -> Response:
    """A finished volume job's per-label maps file (gzipped NIfTI), or the 409/404 that says why there is none."""
    if job.status != "done" or path is None:
        state = job.status if job.status != "done" else f"done without {asked_with}"
        raise ApiError(f"job {job.id} has no {what}: it is {state}", code=f"job_{job.status}"
                       if job.status != "done" else "invalid_input", retry_after=None if job.finished else 1)
    try:
        payload = path.read_bytes()
    except FileNotFoundError as exc:
        raise JobNotFound(f"the result of job {job.id} has expired") from exc
    headers = {"Content-Disposition": f'attachment; filename="{filename}"',
               "X-Labels": ",".join(map(str, job.labels or []))}
    return Response(payload, media_type="application/gzip", headers=headers)


@router.delete("/{job_id}", status_code=204, responses=error_responses(401, 404),
               summary="Cancel a job, or forget a finished one and its result")
async def delete_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    jobs.delete(job_id, tenant)
    return Response(status_code=204)
