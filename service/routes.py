"""Thin HTTP handlers. Uploads are read here; decoding and inference run on the inference workers.

Three routers, so that the app factory decides which ones need the API key (service/app.py):
    probes    /healthz, /readyz                     always open (the orchestrator has no key)
    metrics   /metrics                              behind the key when one is set, unless PATCHCORE_PUBLIC_METRICS
    api       /indexes, /predict, /predict/batch    behind the key when one is set
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from service import inference, timing
from service.deps import MetricsDep, RegistryDep, RunnerDep, SettingsDep
from service.errors import UploadTooLargeError
from service.metrics import CONTENT_TYPE, ServiceMetrics
from service.schemas import BatchPrediction, ErrorBody, Health, IndexInfo, Limits, Prediction, Ready
from service.settings import HeatmapMode

probes = APIRouter(tags=["probes"])
metrics_router = APIRouter(tags=["probes"])
api = APIRouter()
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 503)}
IndexQuery = Annotated[str | None, Query(description="index name (GET /indexes); may be left out when only one")]
HeatmapQuery = Annotated[HeatmapMode | None, Query(description="default: the server's PATCHCORE_DEFAULT_HEATMAP")]
STAGES = ("parse", "decode", "preprocess", "backbone", "search", "map", "serialise")


async def _read(file: UploadFile, limit: int, position: int) -> inference.Upload:
    t0 = time.perf_counter()
    label = repr(file.filename) if file.filename else f"file #{position}"
    if file.size is not None and file.size > limit:
        raise UploadTooLargeError(f"{label} is {file.size} bytes, over the limit of {limit}; send a smaller file")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLargeError(f"{label} is over the limit of {limit} bytes; send a smaller file")
    return inference.Upload(file.filename or None, data, (time.perf_counter() - t0) * 1e3)


def _serialised(fn, received: float, started: float):
    """Run fn on the worker and serialise its answer there too, so big maps never block the event loop; the
    answer's timings get the request's parse, serialise, other and total (service/timing.py)."""

    def work(*args, **kwargs):
        result = fn(*args, **kwargs)
        return result, timing.answer(result, received, started)

    return work


def _observe(metrics: ServiceMetrics, name: str, results: list[Prediction]) -> None:
    for r in results:
        for stage in STAGES:
            metrics.stage.observe(getattr(r.timings_ms, stage) / 1e3, index=name, stage=stage)
        metrics.images.inc(index=name, decision="anomalous" if r.is_anomalous else "normal")


@probes.get("/healthz", response_model=Health, summary="the process is alive")
async def healthz() -> Health:
    return Health(status="alive")


@probes.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody}},
            summary="200 only when every index is loaded and warmed up")
async def readyz(registry: RegistryDep) -> Ready:
    return Ready(status="ready", indexes=registry.names)


@metrics_router.get(
    "/metrics", response_class=Response, summary="Prometheus text format",
    responses={200: {"description": "Prometheus text format 0.0.4",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
               401: {"model": ErrorBody}},  # JSON, like every error: only the 200 is text
)
async def metrics(m: MetricsDep) -> PlainTextResponse:
    return PlainTextResponse(m.render(), media_type=CONTENT_TYPE)


@api.get("/indexes", response_model=list[IndexInfo], responses=ERRORS, tags=["indexes"],
         summary="the loaded indexes and how they were built")
async def indexes(registry: RegistryDep) -> list[IndexInfo]:
    out = []
    for name, bundle in registry:
        meta, cfg = bundle.metadata, bundle.metadata.config
        out.append(IndexInfo(
            name=name, product=meta.name, schema_version=meta.schema_version, backbone=cfg.backbone,
            layers=list(cfg.layers), image_size=cfg.image_size, crop_size=cfg.crop_size,
            embedding_dim=meta.embedding_dim, grid=list(meta.grid), bank_size=meta.bank_size,
            index_kind=cfg.index.kind, runtime=bundle.runtime, threshold=meta.calibration.threshold, score_std=meta.calibration.std,
            target_fpr=meta.calibration.target_fpr,
            n_train_images=meta.provenance.n_train_images, built_at=meta.provenance.built_at,
            package_version=meta.provenance.package_version, version=meta.lineage.version,
            index_sha256=meta.index_sha256, parent_sha256=meta.lineage.parent_sha256,
            loaded_at=registry.loaded_at.get(name, 0.0), tile_size=cfg.tile_size,
            tile_overlap=cfg.tile_overlap if cfg.tile_size is not None else 0.0,
        ))
    return out


@probes.get("/limits", response_model=Limits, tags=["indexes"],
            summary="what the server accepts (no key needed: clients read it before asking for one)")
async def limits(settings: SettingsDep) -> Limits:
    return Limits(max_upload_bytes=settings.max_upload_bytes, max_batch_files=settings.max_batch_files,
                  max_pixels=settings.max_pixels, api_key_required=settings.api_key is not None)


@api.post("/predict", response_model=Prediction, responses=ERRORS, tags=["predict"], summary="score one image")
async def predict(
    request: Request, file: Annotated[UploadFile, File(description="PNG, JPEG, BMP or TIFF")],
    registry: RegistryDep, runner: RunnerDep, settings: SettingsDep, m: MetricsDep,
    index: IndexQuery = None, heatmap: HeatmapQuery = None,
) -> Response:
    started = time.perf_counter()
    name, bundle = registry.get(index)
    request.state.index = name
    upload = await _read(file, settings.max_upload_bytes, 1)
    mode = heatmap or settings.default_heatmap
    work = _serialised(inference.predict_one, timing.received_at(request.scope, started), started)
    result, response = await runner.run(work, name, bundle, upload, mode, settings.max_pixels, started)
    _observe(m, name, [result])
    return response


@api.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS, tags=["predict"],
          summary="score several images in one backbone pass")
async def predict_batch(
    request: Request,
    files: Annotated[list[UploadFile], File(description="PNG, JPEG, BMP or TIFF files", min_length=1)],
    registry: RegistryDep, runner: RunnerDep, settings: SettingsDep, m: MetricsDep,
    index: IndexQuery = None, heatmap: HeatmapQuery = None,
) -> Response:
    started = time.perf_counter()
    name, bundle = registry.get(index)
    request.state.index = name
    if len(files) > settings.max_batch_files:
        raise UploadTooLargeError(f"{len(files)} files in one batch, over the limit of {settings.max_batch_files}; "
                                  "split the batch")
    uploads = [await _read(f, settings.max_upload_bytes, i + 1) for i, f in enumerate(files)]
    mode = heatmap or settings.default_heatmap
    work = _serialised(inference.predict_batch, timing.received_at(request.scope, started), started)
    result, response = await runner.run(work, name, bundle, uploads, mode, settings.max_pixels, started)
    _observe(m, name, result.results)
    return response
