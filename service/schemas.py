"""Response models (they make the OpenAPI schema at /docs). Changes in meaning bump SCHEMA_VERSION."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.settings import HeatmapMode

# 2: timings_ms.total runs from the request's arrival to the serialised answer (was: handler start to the answer
# built), with parse, serialise and other added
SCHEMA_VERSION = 2


class Timings(BaseModel):
    """Milliseconds spent on this image, stage by stage in request order; total is their sum (also sent in the
    Server-Timing header). In a batch each result holds its own read, decode, map and render and an equal share of
    the rest, so the results' totals add up to the batch's total_ms."""

    parse: float = Field(description="the request's arrival to the handler: receiving the body, multipart parsing")
    read: float = Field(description="reading the upload from the request")
    queue: float = Field(description="waiting for an inference worker")
    decode: float
    preprocess: float
    backbone: float
    search: float
    score: float
    map: float = Field(description="anomaly map at the image size; 0 when heatmap=none")
    render: float = Field(description="PNG / overlay / list encoding; 0 when heatmap=none")
    serialise: float = Field(description="encoding the JSON answer")
    other: float = Field(description="between the stages: handing work to the worker, building the answer")
    total: float = Field(description="the request's arrival to its JSON answer: the sum of the stages above")


class Prediction(BaseModel):
    schema_version: int = SCHEMA_VERSION
    index: str = Field(description="the index that scored the image")
    filename: str | None = None
    image_score: float = Field(description="raw image score: L2 distance of the most anomalous patch to the bank")
    normalised_score: float = Field(description="0.5 at the threshold, towards 1 for anomalies")
    is_anomalous: bool
    threshold: float = Field(description="the calibrated threshold on image_score")
    image_width: int = Field(description="after EXIF orientation; every map has this size")
    image_height: int
    heatmap: HeatmapMode
    anomaly_map_png: str | None = Field(
        None, description="heatmap=png: base64 8-bit grey PNG of the normalised anomaly map (128 = threshold)"
    )
    overlay_png: str | None = Field(None, description="heatmap=overlay: base64 RGB PNG, coloured map over the image")
    anomaly_map: list[list[float]] | None = Field(
        None, description="heatmap=raw: anomaly map in image-score units, image_height rows of image_width values"
    )
    timings_ms: Timings


class BatchPrediction(BaseModel):
    schema_version: int = SCHEMA_VERSION
    index: str
    count: int
    results: list[Prediction] = Field(description="one per uploaded file, in upload order")
    total_ms: float = Field(description="the whole request, from its arrival to its JSON answer: the sum of the "
                            "results' totals")


class IndexInfo(BaseModel):
    name: str = Field(description="the value of ?index=")
    product: str = Field(description="the name given at build time (patchcore-build-index --name)")
    schema_version: int = Field(description="index metadata schema version")
    backbone: str
    layers: list[str]
    image_size: int
    crop_size: int | None
    embedding_dim: int
    grid: list[int] = Field(description="patch grid (h, w) per image")
    bank_size: int = Field(description="memory-bank vectors")
    index_kind: str = Field(description="FAISS index type")
    runtime: str = Field("torch", description="the extractor's runtime: onnx or torch (PATCHCORE_RUNTIME)")
    threshold: float
    score_std: float = Field(
        description="spread of the good calibration scores: normalised_score = sigmoid((image_score - threshold) / "
        "score_std); lets a client re-normalise scores against another threshold"
    )
    target_fpr: float
    n_train_images: int
    built_at: str
    package_version: str = Field(description="version of the software that built the index")
    version: int = Field(1, description="the index's version: 1 when built, +1 for each patchcore-build-index --update")
    index_sha256: str = Field("", description="sha256 of the served index.faiss: changes with every new version")
    parent_sha256: str | None = Field(None, description="index_sha256 of the version this one extends, if any")
    loaded_at: float = Field(0.0, description="Unix time this version was loaded (start-up or POST .../reload)")
    tile_size: int | None = Field(None, description="tiled index: pictures are cut into tiles of this many pixels "
                                  "at native resolution (image_size equals it); null: whole picture resized")
    tile_overlap: float = Field(0.0, description="tiled index: share of a tile overlapping its neighbour")


class ReloadResult(BaseModel):
    name: str
    reloaded: bool = Field(description="false when the folder still held the version already served")
    old_version: int
    version: int
    old_index_sha256: str
    index_sha256: str
    bank_size: int
    threshold: float
    seconds: float = Field(description="loading, warming up and swapping the new version")


class Limits(BaseModel):
    """What the server accepts; public, so that a client can check files (and ask for a key) before sending."""

    max_upload_bytes: int = Field(description="per uploaded file")
    max_batch_files: int = Field(description="files per /predict/batch request")
    max_pixels: int = Field(description="per decoded image")
    api_key_required: bool = Field(description="/predict*, /indexes need header X-API-Key")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    indexes: list[str]


class ErrorBody(BaseModel):
    detail: str
