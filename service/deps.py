"""Typed dependencies: the app's settings, index registry, inference runner and metrics; the API-key check."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import AuthError, NotReadyError
from service.indexes import IndexRegistry
from service.metrics import ServiceMetrics
from service.runner import InferenceRunner
from service.settings import Settings

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the server has a key")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_registry(request: Request) -> IndexRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None or not registry.ready:
        raise NotReadyError("the server is not ready: its indexes are still loading (or it is shutting down)")
    return registry


def get_runner(request: Request) -> InferenceRunner:
    runner = getattr(request.app.state, "runner", None)
    if runner is None:
        raise NotReadyError("the server is not ready: inference workers are not running")
    return runner


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    key: Annotated[str | None, Security(_api_key_header)] = None,
) -> None:
    expected = settings.api_key
    if expected is None:
        return
    if key is None:
        raise AuthError("missing API key: send it in the X-API-Key header")
    if not keys_match(key, expected.get_secret_value()):
        raise AuthError("wrong API key (header X-API-Key)")


def keys_match(given: str, expected: str) -> bool:
    """Constant time, length included: both sides are hashed to 32 bytes before hmac.compare_digest."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RegistryDep = Annotated[IndexRegistry, Depends(get_registry)]
RunnerDep = Annotated[InferenceRunner, Depends(get_runner)]
