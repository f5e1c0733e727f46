"""What the server runs: model, weights and their licence, limits, formats."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AUTH, ModelDep, SettingsDep
from app.schemas import Info, error_responses

router = APIRouter(tags=["operations"], dependencies=AUTH)


@router.get("/info", response_model=Info, responses=error_responses(401, 503), summary="Model and limits")
async def info(model: ModelDep, settings: SettingsDep) -> dict:
    return {
        **model.info(),
        "limits": {
            "max_support": model.max_support,
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "max_voxels": settings.max_voxels,
            "sync_max_voxels": settings.sync_max_voxels,
        },
        "prompt_store": "redis" if settings.redis_url else "disk",
    }
