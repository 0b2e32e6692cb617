"""Two pure ASGI middlewares.

RequestLogMiddleware   one structured log line and the request metrics per request; X-Request-ID in and out.
BodyLimitMiddleware    answers 413 before reading the body when Content-Length is over the limit, and stops reading
                       (413) as soon as the bytes received pass it, for chunked uploads without Content-Length.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from service.metrics import ServiceMetrics
from service.timing import RECEIVED

log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestLogMiddleware:
    def __init__(self, app, metrics: ServiceMetrics, known_paths: frozenset[str] = frozenset()) -> None:
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})[RECEIVED] = started  # the request's arrival: timings_ms.parse starts here
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        status = 500  # what the client gets if the app raises before answering
        self.metrics.in_flight.add(1)

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.add(-1)
            elapsed = time.perf_counter() - started
            # The route's template, never an unknown raw path: scanners must not create new metric series.
            # (A request refused before routing, e.g. a 413 from its Content-Length, has no route yet.)
            path = scope.get("path", "")
            name = getattr(scope.get("route"), "path", None) or (path if path in self.known_paths else "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.inc(route=name, method=method, status=str(status))
            self.metrics.latency.observe(elapsed, route=name, method=method, status=str(status))
            client, state = scope.get("client"), scope.get("state", {})
            fields = {
                "method": method, "route": name, "path": path, "status": status,
                "latency_ms": round(elapsed * 1e3, 2), "index": state.get("index"),
                "client": client[0] if client else None, "request_id": request_id,
            }
            if state.get("error"):
                fields["error"] = state["error"]
            log.log(logging.WARNING if status >= 500 else logging.INFO, "request", extra=fields)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def _refuse(self, scope, send, limit: int, what: str) -> None:
        detail = f"request body {what} the limit of {limit} bytes; send a smaller file (or fewer files)"
        scope.setdefault("state", {})["error"] = detail
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await self._refuse(scope, send, limit, f"of {int(length)} bytes is over")
            return
        received, too_large, started = 0, False, False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to the aborted read is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(scope, send, limit, "is over")
