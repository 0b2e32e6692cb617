"""Request-level timings: the stages around the inference work, and the answer's Server-Timing header.

    parse      the ASGI app receiving the request (RequestLogMiddleware notes the moment in scope["state"]) to the
               handler starting: the body's arrival and FastAPI's multipart parsing, dependencies, routing
    serialise  the JSON encoding of the answer, on the inference worker
    other      what lies between the stages (handing work to the worker, building the answer)
    total      the request, from its arrival to its JSON body: the sum of every stage, other included

The body carries its own serialisation time: it is encoded with placeholder values in serialise, other and total,
timed, and the placeholders are then replaced by the measured values in one scan of the bytes (nothing is
re-encoded). That scan is the only work after total: about 3 ms for a heatmap=raw 900 x 900 answer (7 MB of JSON,
45 ms to encode), microseconds for the others.
Every stage also goes into a ``Server-Timing`` header (the request's sums in a batch), which browsers' developer
tools show.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from fastapi.responses import Response

from service.schemas import BatchPrediction, Prediction, Timings

RECEIVED = "patchcore_received"  # scope["state"] key: perf_counter() when the app received the request
# Timings fields in request order; total is their sum.
STAGES = ("parse", "read", "queue", "decode", "preprocess", "backbone", "search", "score", "map", "render",
          "serialise", "other")
_BASE = -float(2**52)  # placeholders: -(2^52 + k), exact floats that no timing (>= 0) or map value can be


def received_at(scope: dict, default: float) -> float:
    """When the app received this request (RequestLogMiddleware); default when no middleware noted it."""
    return float(scope.get("state", {}).get(RECEIVED, default))


def _placeholder(k: int) -> float:
    return _BASE - k


def _token(value: float) -> bytes:
    return repr(value).encode()  # how pydantic writes a float: -4503599627370496.0


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def server_timing(timings: Sequence[Timings]) -> str:
    """Server-Timing header value: each stage summed over the results, and total, in ms."""
    return ", ".join(f"{stage};dur={sum(getattr(t, stage) for t in timings):.3f}" for stage in (*STAGES, "total"))


def answer(result: Prediction | BatchPrediction, received: float, started: float) -> Response:
    """The JSON response for a built answer, with parse, serialise, other and total filled in (in the body, in the
    result's Timings objects for the metrics, and in the Server-Timing header).

    In a batch each result carries its share of the request-wide stages (parse, serialise, other), so the results'
    totals add up to the batch's total_ms."""
    batch = isinstance(result, BatchPrediction)
    results = list(result.results) if batch else [result]
    n = len(results)
    parse = _ms(started - received) / n
    for i, r in enumerate(results):
        r.timings_ms.parse = round(parse, 3)
        r.timings_ms.serialise, r.timings_ms.other = _placeholder(0), _placeholder(1)
        r.timings_ms.total = _placeholder(2 + i)
    if batch:
        result.total_ms = _placeholder(2 + n)
    t0 = time.perf_counter()
    body = result.__pydantic_serializer__.to_json(result)  # what model_dump_json() does, as bytes
    t1 = time.perf_counter()
    total = _ms(t1 - received)
    serialise = round(_ms(t1 - t0) / n, 3)
    known = sum(getattr(r.timings_ms, s) for r in results for s in STAGES[:-2]) + serialise * n
    other = round(max(0.0, total - known) / n, 3)
    values = {_token(_placeholder(0)): serialise, _token(_placeholder(1)): other}
    for i, r in enumerate(results):
        t = r.timings_ms
        t.serialise, t.other = serialise, other
        t.total = round(sum(getattr(t, s) for s in STAGES), 3)
        values[_token(_placeholder(2 + i))] = t.total
    if batch:
        result.total_ms = total
        values[_token(_placeholder(2 + n))] = total
    return Response(_substitute(body, values), media_type="application/json",
                    headers={"Server-Timing": server_timing([r.timings_ms for r in results])})


_TOKEN = re.compile(rb"-45035996\d{8}\.0")  # every placeholder: -(2^52 + k) for k < 10^8 - 2^52 % 10^8


def _substitute(body: bytes, values: dict[bytes, float]) -> bytes:
    """Replace every placeholder token by its value: one scan of the body, one copy."""
    return _TOKEN.sub(lambda m: f"{values[m.group()]:.3f}".encode(), body)
