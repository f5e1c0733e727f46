"""Dependencies: routes receive the settings, the model, the prompt store and the jobs through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.errors import ModelNotReady
from app.jobs import JobManager
from app.metrics import Metrics
from app.model_service import ModelService
from app.prompts import Prompts
from app.settings import Settings

# documents the bearer scheme in OpenAPI (the Authorize button of /docs); the check itself happens in
# app.middleware before the body is read
bearer_scheme = HTTPBearer(auto_error=False, description="one of ICSEG_API_KEYS, when keys are configured")
MODEL_RETRY_AFTER_S = 5  # what a 503 model_not_ready asks clients to wait before asking again


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def model_not_ready(request: Request) -> ModelNotReady:
    """503 while no model is loaded; Retry-After, as for an unavailable prompt store, paces clients that poll."""
    return ModelNotReady(f"the model is not loaded: {request.app.state.model_error}", field="weights",
                         retry_after=MODEL_RETRY_AFTER_S)


def get_model(request: Request) -> ModelService:
    model = request.app.state.model
    if model is None:
        raise model_not_ready(request)
    return model


def get_prompts(request: Request) -> Prompts:
    return request.app.state.prompts


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_tenant(request: Request) -> str | None:
    """The tenant of the request's key (``app.middleware``); None without keys. Prompts and jobs are the
    tenant's own; the admin key's tenant sees all."""
    return request.scope.get("icseg.tenant")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[ModelService, Depends(get_model)]
PromptsDep = Annotated[Prompts, Depends(get_prompts)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TenantDep = Annotated[str | None, Depends(get_tenant)]
AUTH = [Depends(bearer_scheme)]
