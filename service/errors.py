"""Domain errors -> HTTP answers, in this one place. Every error body is JSON: {"detail": "..."}.

    ImageTooLargeError (pixel cap, decompression bomb)   413
    UploadTooLargeError (bytes, file count)              413
    ImageDecodeError, InputError (bad image or array)    422
    UnknownIndexError                                    404
    AmbiguousIndexError                                  400
    AuthError                                            401
    NotReadyError, BusyError                             503
    IndexStoreError, other PatchCoreError                500 (logged: the server or its indexes are broken)
    anything else                                        500 "internal error" (logged with the traceback)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from imaging.decode import ImageTooLargeError
from model.errors import InputError, PatchCoreError

log = logging.getLogger("service.errors")


class ServiceError(PatchCoreError):
    """An error of the HTTP adapter itself; ``status`` is its HTTP status code."""

    status = 500
    headers: dict[str, str] | None = None


class UploadTooLargeError(ServiceError):
    status = 413


class UnknownIndexError(ServiceError):
    status = 404


class AmbiguousIndexError(ServiceError):
    status = 400


class AuthError(ServiceError):
    status = 401
    headers = {"WWW-Authenticate": "APIKey"}


class NotReadyError(ServiceError):
    status = 503
    headers = {"Retry-After": "5"}


class BusyError(ServiceError):
    status = 503
    headers = {"Retry-After": "1"}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, InputError):
        return 422
    return 500


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    request.state.error = str(exc)  # for the request's log line
    if status >= 500 and not isinstance(exc, (NotReadyError, BusyError)):
        log.error("request failed: %s", exc, extra={"path": request.url.path, "error": type(exc).__name__})
    return error_response(status, str(exc), getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request.state.error = f"{type(exc).__name__}: {exc}"
    log.exception("unexpected error", extra={"path": request.url.path, "error": type(exc).__name__})
    return error_response(500, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PatchCoreError, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)
