"""Server settings: environment variables with the PATCHCORE_ prefix, overridable by keyword (the CLI's arguments).

Nothing is read at import time: ``Settings()`` reads the environment when it is called.

    PATCHCORE_INDEX_DIR=indexes PATCHCORE_API_KEY=s3cret patchcore-serve --port 8000
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index_store.runtime import default_threads

MIB = 1024 * 1024


class HeatmapMode(str, Enum):
    """What /predict returns besides the scores."""

    none = "none"  # scores only (fastest: the anomaly map is not computed)
    png = "png"  # 8-bit grey PNG of the normalised anomaly map (128 = threshold), base64
    overlay = "overlay"  # coloured map blended over the uploaded picture, PNG, base64
    raw = "raw"  # the anomaly map in patch-score units, as a list of rows of floats


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PATCHCORE_", extra="forbid", frozen=True)

    index_dir: Path = Field(description="one index folder (with metadata.json) or a folder of index folders")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="the extractor's runtime: onnx (onnxruntime on the index's extractor.onnx), torch, or auto "
        "(onnx when the index has extractor.onnx and onnxruntime is installed, else torch)")
    threads: int = Field(default_factory=default_threads, ge=1, description="torch, OpenMP, FAISS and BLAS threads")
    inference_workers: int = Field(1, ge=1, le=64, description="requests scored at the same time")
    max_pending: int = Field(64, ge=1, description="requests queued for inference before answering 503")
    max_upload_bytes: int = Field(20 * MIB, ge=1, description="per uploaded file")
    max_pixels: int = Field(40_000_000, ge=64, description="per decoded image (decompression-bomb guard)")
    max_batch_files: int = Field(16, ge=1, description="files per /predict/batch request")
    default_heatmap: HeatmapMode = HeatmapMode.none
    api_key: SecretStr | None = Field(None, description="when set, every route but /healthz and /readyz needs header "
                                      "X-API-Key (compared in constant time, never logged)")
    public_metrics: bool = Field(False, description="with an API key set, leave /metrics open (a trusted scraper)")
    public_docs: bool = Field(False, description="with an API key set, leave /docs, /redoc and /openapi.json open")
    warmup: bool = Field(True, description="one dummy prediction per index before reporting ready")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Used by patchcore-serve only (uvicorn's socket and processes).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return level

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # PATCHCORE_API_KEY="" means no key, not "the empty key"
        return value

    def to_env(self) -> dict[str, str]:
        """These settings as PATCHCORE_* variables (for uvicorn's worker processes in factory mode)."""
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Enum):
                value = value.value
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[f"PATCHCORE_{name.upper()}"] = str(value)
        return out
