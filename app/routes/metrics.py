"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import AUTH, MetricsDep
from app.schemas import error_responses

router = APIRouter(tags=["operations"], dependencies=AUTH)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}},
                                                             **error_responses(401)},
            summary="Prometheus metrics: requests, latency, model time, batch sizes, queue depth, jobs")
async def metrics(request: Request, metrics: MetricsDep) -> Response:
    model = request.app.state.model
    metrics.queue_depth.set(model.batcher.depth if model is not None else 0)
    metrics.model_ready.set(1 if model is not None else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
