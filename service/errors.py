"""Domain errors -> HTTP answers, in this one place. Every error body is JSON: {"detail": "..."}, a sentence.

    ImageTooLargeError (pixel cap, decompression bomb)   413
    UploadTooLargeError (bytes, file count)              413
    ImageDecodeError, InputError (bad image or array)    422
    UnknownIndexError                                    404
    AmbiguousIndexError                                  400
    AuthError                                            401
    RequestValidationError (FastAPI: a missing field,    422, its problems joined into one sentence (never
      a bad query value)                                      pydantic's list, never a Python repr)
    NotReadyError, BusyError                             503
    IndexStoreError, other PatchCoreError                500 (logged: the server or its indexes are broken)
    anything else                                        500 "internal error" (logged with the traceback)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from imaging.decode import ImageTooLargeError
from model.errors import InputError, PatchCoreError, without_reprs

log = logging.getLogger("service.errors")
_PLACES = {"query": "query parameter", "body": "form field", "header": "header", "path": "path parameter",
           "cookie": "cookie"}


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


def validation_detail(errors: list[dict]) -> str:
    """FastAPI's validation problems -> one sentence: where, what, and the value given when it is short text."""
    parts = []
    for error in errors:
        loc = [str(x) for x in error.get("loc", ())]
        place = _PLACES.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        msg = without_reprs(str(error.get("msg", "invalid")))
        part = f"{place} {name!r}: {msg}" if name else f"{place}: {msg}"
        given = error.get("input")
        if isinstance(given, (str, int, float)) and not isinstance(given, bool) and len(str(given)) <= 40:
            part += f" (got {given!r})"
        parts.append(part)
    text = "; ".join(parts) or "the request does not match the API"
    return f"bad request: {text[:1000]}; see /docs for the expected fields"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = validation_detail(list(exc.errors()))
    request.state.error = detail
    return error_response(422, detail)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request.state.error = f"{type(exc).__name__}: {exc}"
    log.exception("unexpected error", extra={"path": request.url.path, "error": type(exc).__name__})
    return error_response(500, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PatchCoreError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
