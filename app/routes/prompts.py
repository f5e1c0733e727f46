"""Stored prompts: a support set prepared once, then referenced by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app import budget
from app.deps import AUTH, MetricsDep, ModelDep, PromptsDep, SettingsDep, TenantDep
from app.labels import check_name as _check_name
from app.labels import parse_label_names as _label_names
from app.pipeline import decode_support, read_uploads, reject_repeated
from app.prompt_store import PromptRecord
from app.schemas import PromptInfo, PromptList, error_responses
from model.support import label_set

router = APIRouter(prefix="/prompts", tags=["prompts"], dependencies=AUTH)


def _info(record: PromptRecord) -> dict:
    return PromptInfo.model_validate(record, from_attributes=True).model_dump()


@router.post("", status_code=201, response_model=PromptInfo,
             responses=error_responses(400, 401, 413, 415, 422, 503), summary="Store a support set")
async def create_prompt(
    request: Request,
    support_images: Annotated[list[UploadFile], File(
        description="2D support images, repeated: up to ICSEG_MAX_PROMPT_SUPPORT (512); a query uses at most "
        "ICSEG_MAX_SUPPORT of them (select, support_size)")],
    support_masks: Annotated[list[UploadFile], File(description="label maps paired by order with the images")],
    model: ModelDep,
    prompts: PromptsDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    tenant: TenantDep,
    name: Annotated[str | None, Form(description="a display name (letters, digits, spaces, . , : ( ) + - _)")] = None,
    label_names: Annotated[str | None, Form(description='JSON object label -> name, e.g. {"1": "liver"}')] = None,
) -> JSONResponse:
    """The support set is normalised and resized once, here; /segment with the returned id skips that work."""
    await reject_repeated(request, ("name", "label_names"))
    if name:
        name = _check_name(name, "name")
    image_bytes, mask_bytes = await read_uploads(support_images), await read_uploads(support_masks)

    def prepare():
        # priced from the headers first (the synchronous budget; a prompt has no query: its support only)
        cost = budget.estimate(b"", image_bytes, mask_bytes, ensemble=1, axis=2, support_slices=None,
                               max_support=model.max_support, settings=settings, is_job=False,
                               network_side=model.size)
        cost.support_size = 1  # no model work: a prompt is prepared, not run; its items are priced as memory
        budget.check(cost, settings, is_job=False, prompt=True)
        files = decode_support(image_bytes, mask_bytes, settings, volumes=False)
        cost.labels = len(label_set(files.masks, settings.max_labels))
        budget.check(cost, settings, is_job=False, prompt=True)  # the prepared arrays with the real label count
        return model.prepare_support(files)

    support = await run_in_threadpool(prepare)
    names = _label_names(label_names, support.labels)
    record = await run_in_threadpool(prompts.create, support, model.size, name or None, names, tenant)
    metrics.prompts_created.inc()
    return JSONResponse(_info(record), status_code=201, headers={"Location": f"/prompts/{record.id}"})


@router.get("", response_model=PromptList, responses=error_responses(401, 503), summary="List stored prompts")
async def list_prompts(prompts: PromptsDep, tenant: TenantDep) -> dict:
    records = await run_in_threadpool(prompts.list, tenant)
    return {"prompts": [_info(r) for r in records]}


@router.get("/{prompt_id}", response_model=PromptInfo, responses=error_responses(401, 404, 503),
            summary="A prompt's metadata (never its pixels)")
async def get_prompt(prompt_id: str, prompts: PromptsDep, tenant: TenantDep) -> dict:
    record = await run_in_threadpool(prompts.get, prompt_id, "prompt_id", tenant)
    return _info(record)


@router.delete("/{prompt_id}", status_code=204, responses=error_responses(401, 404, 503),
               summary="Delete a prompt")
async def delete_prompt(prompt_id: str, prompts: PromptsDep, tenant: TenantDep) -> Response:
    await run_in_threadpool(prompts.delete, prompt_id, tenant)
    return Response(status_code=204)

