"""The app factory and its lifespan.

    app = create_app(Settings(index_dir="indexes"))      # nothing is loaded yet
    uvicorn.run(app)                                      # the lifespan loads every index, warms it up, then serves

The lifespan loads each index with its backbone ONCE into app.state.registry (one detector per index), warms each
up with one prediction, starts the inference workers, and only then reports ready. A missing, corrupt or
incompatible index raises out of the lifespan with the store's fix-it message, so uvicorn exits non-zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from index_store import package_version
from index_store.runtime import configure_threads, serial_numpy_blas
from model.errors import PatchCoreError
from service import reload, routes
from service.deps import require_api_key
from service.errors import ServiceError, install_error_handlers
from service.indexes import IndexRegistry
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.middleware import BodyLimitMiddleware, RequestLogMiddleware
from service.openapi import install_docs
from service.page import install_page
from service.runner import InferenceRunner
from service.settings import Settings

log = logging.getLogger("service.app")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers, per request and per file


class StartupError(ServiceError):
    """The server cannot start with these settings; the message says what to change."""


def check_device(device: str, runtime: str) -> None:
    """A CUDA device must exist for torch; the onnx runtime checks its own providers when it loads."""
    if device.startswith("cuda") and runtime != "onnx":
        try:
            import torch
        except ImportError:
            return  # no torch: an "auto" runtime will be onnx, whose CUDA provider is checked at load
        if not torch.cuda.is_available():
            raise StartupError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu "
                               "(PATCHCORE_DEVICE=cpu) or install a CUDA build of torch")
        ordinal = int(device.split(":")[1]) if ":" in device else 0
        if ordinal >= torch.cuda.device_count():
            raise StartupError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)")


def body_limits(settings: Settings):
    """path -> the most request-body bytes it accepts."""
    one = settings.max_upload_bytes + MULTIPART_OVERHEAD
    batch = settings.max_batch_files * (settings.max_upload_bytes + MULTIPART_OVERHEAD) + MULTIPART_OVERHEAD

    def limit_for(path: str) -> int:
        if path == "/predict/batch":
            return batch
        if path == "/predict":
            return one
        return MULTIPART_OVERHEAD

    return limit_for


def _publish(app: FastAPI) -> None:
    m: ServiceMetrics = app.state.metrics
    for name, bundle in app.state.registry:
        meta = bundle.metadata
        m.index_info.set(1, index=name, backbone=meta.config.backbone, schema_version=str(meta.schema_version))
        m.bank_size.set(meta.bank_size, index=name)
        m.threshold.set(meta.calibration.threshold, index=name)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry: IndexRegistry = app.state.registry
    t0 = time.perf_counter()
    log.info("starting", extra={"index_dir": str(settings.index_dir), "device": settings.device,
                                "runtime": settings.runtime,
                                "threads": settings.threads, "inference_workers": settings.inference_workers})
    try:
        threads = configure_threads(settings.threads)
        serial_numpy_blas()  # the anomaly map's products: one thread, no spinning pool (model/heatmap.py)
        check_device(settings.device, settings.runtime)
        registry.load_all(settings.index_dir, settings.device, warmup=settings.warmup, runtime=settings.runtime,
                          threads=threads)
    except PatchCoreError as exc:  # the message says how to fix it
        log.error("startup failed: %s", exc, extra={"index_dir": str(settings.index_dir), "error": type(exc).__name__})
        raise
    except Exception as exc:
        log.exception("startup failed: %s", exc, extra={"index_dir": str(settings.index_dir)})
        raise
    _publish(app)
    app.state.runner = InferenceRunner(settings.inference_workers, settings.max_pending)
    registry.ready = True
    app.state.metrics.ready.set(1)
    log.info("ready", extra={"indexes": registry.names, "threads": threads,
                             "startup_ms": round((time.perf_counter() - t0) * 1e3, 1)})
    try:
        yield
    finally:
        registry.ready = False
        app.state.metrics.ready.set(0)
        app.state.runner.shutdown()
        app.state.runner = None
        log.info("stopped")


def create_app(settings: Settings) -> FastAPI:
    """A new app for these settings; indexes load when its lifespan starts.

    With PATCHCORE_API_KEY set, every route but the probes (/healthz, /readyz) needs header X-API-Key: /metrics
    and the docs too, unless PATCHCORE_PUBLIC_METRICS / PATCHCORE_PUBLIC_DOCS open them. Without a key, no route
    declares the header, so /openapi.json never asks clients for a key the server does not check.
    """
    app = FastAPI(
        title="PatchCore anomaly detection",
        version=package_version(),
        description="Scores pictures of parts against memory-bank indexes built by patchcore-build-index.",
        lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,  # served by install_docs
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.registry = IndexRegistry()
    app.state.runner = None
    install_error_handlers(app)
    keyed = [Depends(require_api_key)] if settings.api_key is not None else []
    app.include_router(routes.probes)
    app.include_router(routes.metrics_router, dependencies=[] if settings.public_metrics else keyed)
    app.include_router(routes.api, dependencies=keyed)
    app.include_router(reload.router, dependencies=keyed)
    install_docs(app, settings, [] if settings.public_docs else keyed)
    install_page(app)  # GET / and /static/*: public, the page asks for the key itself
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limits(settings))
    known = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(RequestLogMiddleware, metrics=app.state.metrics, known_paths=known)  # outermost: sees 413s
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:app_from_env` (and patchcore-serve --workers N): PATCHCORE_* env."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
