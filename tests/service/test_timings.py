"""timings_ms covers the whole request (parse ... serialise), total is the sum of its stages, and the
Server-Timing header carries the same figures."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fastapi.testclient import TestClient

from service import timing
from service.app import create_app
from tests.service.conftest import make_settings

FIELDS = (*timing.STAGES, "total")


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for item in header.split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_-]+);dur=([0-9.]+)\s*", item)
        assert m, f"not a Server-Timing entry: {item!r}"
        out[m.group(1)] = float(m.group(2))
    return out


@pytest.mark.parametrize("heatmap", ["none", "png", "raw"])
def test_every_stage_is_present_and_total_is_their_sum(client, test_images, heatmap):
    r = client.post(f"/predict?heatmap={heatmap}", files={"file": ("a.png", test_images["spot/000.png"], "image/png")})
    assert r.status_code == 200, r.text
    t = r.json()["timings_ms"]
    assert tuple(t) == FIELDS  # request order
    assert all(v >= 0 for v in t.values()), t
    assert t["parse"] > 0 and t["serialise"] > 0 and t["decode"] > 0 and t["backbone"] > 0
    assert t["total"] == pytest.approx(sum(t[s] for s in timing.STAGES), abs=2e-3)
    assert t["other"] < 0.5 * t["total"]  # the stages explain the request
    header = server_timing(r.headers["server-timing"])
    assert tuple(header) == FIELDS
    assert header == pytest.approx(t, abs=1e-3)
    if heatmap == "raw":  # serialising 128 x 128 floats is measured, not left in "other"
        assert t["serialise"] > t["other"]


def test_batch_results_share_the_request_and_add_up_to_total_ms(multi_client, test_images):
    names = ["good/000.png", "spot/000.png", "scratch/000.png"]
    files = [("files", (n, test_images[n], "image/png")) for n in names]
    r = multi_client.post("/predict/batch?index=disc&heatmap=png", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    ts = [res["timings_ms"] for res in body["results"]]
    for t in ts:
        assert tuple(t) == FIELDS and all(v >= 0 for v in t.values())
        assert t["total"] == pytest.approx(sum(t[s] for s in timing.STAGES), abs=2e-3)
        assert t["map"] > 0 and t["render"] > 0  # each image's own
    for shared in ("parse", "queue", "serialise", "other", "backbone"):
        assert len({t[shared] for t in ts}) == 1, shared  # equal shares of what the images did together
    assert sum(t["total"] for t in ts) == pytest.approx(body["total_ms"], abs=0.01)
    header = server_timing(r.headers["server-timing"])
    for stage in timing.STAGES:
        assert header[stage] == pytest.approx(sum(t[stage] for t in ts), abs=0.01)
    assert header["total"] == pytest.approx(body["total_ms"], abs=0.01)


class SlowBody:
    """Outermost ASGI wrapper: the request body arrives 0.2 s after the headers, as from a slow client."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def slow_receive():
            message = await receive()
            if message["type"] == "http.request":
                await asyncio.sleep(0.2)
            return message

        await self.app(scope, slow_receive, send)


def test_parse_starts_when_the_request_arrives(disc_dir, test_images):
    app = create_app(make_settings(disc_dir))
    app.add_middleware(SlowBody)  # outside RequestLogMiddleware: the wait is after the arrival, before the handler
    with TestClient(app) as c:
        r = c.post("/predict", files={"file": ("a.png", test_images["good/000.png"], "image/png")})
    assert r.status_code == 200, r.text
    t = r.json()["timings_ms"]
    assert t["parse"] >= 200.0 and t["total"] >= t["parse"] + t["backbone"]
    assert server_timing(r.headers["server-timing"])["parse"] == t["parse"]


def test_placeholders_are_replaced_wherever_they_are():
    body = b'{"a":-4503599627370496.0,"b":[-4503599627370498.0],"c":-4503599627370497.0,"d":-45035996.0}'
    values = {b"-4503599627370496.0": 1.5, b"-4503599627370497.0": 0.0, b"-4503599627370498.0": 12.25}
    assert json.loads(timing._substitute(body, values)) == {"a": 1.5, "b": [12.25], "c": 0.0, "d": -45035996.0}
