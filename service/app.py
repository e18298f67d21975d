"""The app factory: `create_app(settings, engine=None) -> FastAPI`. Imports no torch.

The lifespan builds the engine from the settings (unless a test passes one), starts it, and
shuts it down gracefully (in-flight requests finish within `shutdown_grace_s`). The HTTP layer
only talks to `service.protocol.EngineClient`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__, errors, routes_caption, routes_v1, routes_v2, ui
from service.artifact_watch import ArtifactWatch
from service.auth import DOCS_ASSETS, OPEN_PATHS, OPEN_PREFIXES, ApiKeyMiddleware
from service.building import BuildJob
from service.limits import BodyLimitMiddleware
from service.metrics import PrometheusStatLogger
from service.middleware import RequestContextMiddleware, ShutdownSignal
from service.pool import EnginePool, resolve_workers
from service.progressive import GrowingEngine, ProgressiveEngine
from service.protocol import EngineClient
from service.schemas import apply_limits
from service.settings import Settings
from service.shedding import LoadShedMiddleware, Shedder

log = logging.getLogger("eeserve.app")


def build_engine(settings: Settings, sink: PrometheusStatLogger) -> EngineClient:
    """With `workers` >= 2, engine processes behind this front (service/pool.py); else the
    in-process torch engine (imported here so the HTTP layer stays torch-free)."""
    workers = resolve_workers(settings.workers)
    if workers >= 2:
        return EnginePool(settings, sink, workers)
    mod = importlib.import_module("service.engine")
    cfg = mod.EngineConfig.from_settings(settings)
    return mod.InProcessEngine(cfg, sink)


def create_app(settings: Settings | None = None, engine: EngineClient | None = None,
               sink: PrometheusStatLogger | None = None,
               builds: list[BuildJob] | None = None) -> FastAPI:
    """Build the app. `engine` replaces the in-process engine (tests pass a fake one).
    `builds`: models to build while serving (each served when built; see service/building.py)."""
    settings = settings or Settings()
    sink = sink or PrometheusStatLogger()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.gil_switch_interval_ms is not None:
            sys.setswitchinterval(settings.gil_switch_interval_ms / 1e3)  # process-wide
        eng = engine if engine is not None else build_engine(settings, sink)
        if builds:
            eng = ProgressiveEngine(cast(GrowingEngine, eng), builds, device=settings.device,
                                    on_added=sink.register_models)
        app.state.engine = eng
        await eng.start()
        sink.register_models(eng.models())
        log.info("engine started", extra={"ready": eng.ready(),
                                          "models": [m.name for m in eng.models()]})
        # each served model's directory: still the one it was loaded from? (/readyz says)
        app.state.artifacts = ArtifactWatch(eng.models, settings.artifact_check_s)
        app.state.artifacts.start()
        try:
            yield
        finally:
            await app.state.artifacts.stop()
            await eng.shutdown(settings.shutdown_grace_s)
            log.info("engine stopped")

    # FastAPIOffline: /docs and /redoc load their scripts from the package, not from a CDN
    app = FastAPIOffline(title="eeserve", version=__version__, lifespan=lifespan,
                         static_url=DOCS_ASSETS,
                         description="Inference serving with adaptive per-sample early exit "
                                     "(BEEM, EENet and baselines). REST v1 and Open Inference "
                                     "Protocol v2. A playground page is at `/`.")
    app.state.settings = settings
    app.state.sink = sink
    app.state.engine = engine
    app.state.artifacts = None  # the lifespan's ArtifactWatch
    app.state.shutdown = ShutdownSignal()  # raised by service.serving's server
    errors.install(app)
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_caption.router)
    ui.install(app)
    _middleware(app, settings, sink)
    _openapi_with_limits(app, settings)
    return app


def _middleware(app: FastAPI, settings: Settings, sink: PrometheusStatLogger) -> None:
    """Outermost first: load shedding (the cheapest refusal comes first), request context,
    API key, body limit (added in reverse)."""
    def limit_for(path: str) -> int:
        return settings.max_caption_body_bytes if path == "/v1/caption" else \
            settings.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    open_paths = OPEN_PATHS if settings.open_health_and_metrics else frozenset()
    prefixes = OPEN_PREFIXES if settings.open_health_and_metrics else ()
    app.add_middleware(ApiKeyMiddleware, api_key=key, open_paths=open_paths,
                       open_prefixes=prefixes)
    app.add_middleware(RequestContextMiddleware, sink=sink, shutdown=app.state.shutdown)
    app.state.shedder = Shedder(queue_limit=settings.queue_limit,
                                max_inflight=settings.max_inflight_requests, sink=sink,
                                hold_s=settings.shed_hold_ms / 1e3,
                                max_held=settings.shed_max_held,
                                caption_queue_limit=settings.caption_queue_limit)
    app.add_middleware(LoadShedMiddleware, shedder=app.state.shedder)


def _openapi_with_limits(app: FastAPI, settings: Settings) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = apply_limits(original(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
