"""The app factory: ``create_app(settings)`` builds a FastAPI app; the model loads in its lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app.errors import install_error_handlers
from app.jobs import JobManager
from app.metrics import Metrics
from app.middleware import RequestContext
from app.model_service import ModelService
from app.prompt_store import make_store
from app.prompts import Prompts
from app.routes import docs, health, info, jobs, preview, prompts, segment, viewer
from app.routes import metrics as metrics_route
from app.settings import Settings
from app.stopping import Stopping

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DESCRIPTION = """In-context segmentation: send a query image and a visual prompt (a few example images with
their masks, or the id of a stored prompt) and get the mask back in the query's format.
With `ICSEG_API_KEYS` set, every route but /healthz and /readyz needs `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "field"}}`."""


async def _sweep_forever(app: FastAPI, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(app.state.prompts.store.sweep)
            app.state.jobs.sweep()
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
            log.warning("sweep of expired prompts/jobs failed", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Settings default to the ``ICSEG_*`` environment."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model, app.state.model_error = None, None
        app.state.stopping.loop = asyncio.get_running_loop()
        try:
            model = await run_in_threadpool(ModelService.load, settings, metrics)
        except Exception as exc:  # noqa: BLE001 - the server stays up, unready, and says why on /readyz
            app.state.model_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.error("model not loaded; /readyz answers 503 until ICSEG_WEIGHTS points at weights: %s",
                      app.state.model_error)
        else:
            model.start()
            app.state.model = model
            metrics.model_ready.set(1)
        app.state.prompts = Prompts(make_store(settings), settings.prompt_ttl_s)
        app.state.jobs = JobManager(settings.data_dir, settings.job_workers, settings.job_queue_size,
                                    settings.job_result_ttl_s, metrics)
        sweeper = asyncio.create_task(_sweep_forever(app, settings.sweep_interval_s))
        try:
            yield
        finally:
            app.state.stopping.begin()
            sweeper.cancel()
            app.state.jobs.shutdown()
            if app.state.model is not None:
                await app.state.model.stop()
            app.state.prompts.store.close()

    app = FastAPI(
        title="icseg",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # app.routes.docs: Swagger UI from the pinned local bundle, not a CDN
        openapi_url="/openapi.json" if settings.docs else None,
        redoc_url=None,
        # enough for a full support set and the query; more files fail at parsing, not in memory
        form_limits={"max_files": 2 * max(settings.max_support, settings.max_prompt_support) + 8, "max_fields": 64},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.model, app.state.model_error = None, "the server is starting"
    app.state.stopping = Stopping(settings.shutdown_grace_s)
    install_error_handlers(app)
    for module in (health, info, metrics_route, segment, prompts, jobs, preview, viewer):
        app.include_router(module.router)
    if settings.docs:
        app.include_router(docs.router)
    app.add_middleware(RequestContext, settings=settings, metrics=metrics)
    if settings.cors_origins:  # outermost, so that preflights and 401s carry the CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Location", "X-Labels", "Server-Timing"],
        )
    return app
