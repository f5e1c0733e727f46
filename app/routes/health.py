"""Liveness and readiness: no API key needed, nothing about the data."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.deps import PromptsDep, model_not_ready
from app.errors import ApiError, coded_response
from app.schemas import Health, error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses=error_responses(503),
            summary="The model is loaded and the prompt store answers")
async def readyz(request: Request, prompts: PromptsDep) -> dict | JSONResponse:
    try:
        if request.app.state.model is None:
            raise model_not_ready(request)
        await run_in_threadpool(prompts.store.ping)
    except ApiError as exc:
        return coded_response(exc)
    return {"status": "ready"}
