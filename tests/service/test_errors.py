"""Bad input gets a clear 4xx with a JSON detail, never a 5xx: every case of the matrix, plus auth and readiness."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.conftest import MIB, make_settings, png_bytes


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bomb(side: int) -> bytes:
    """A real, valid PNG of side x side black pixels: a few KB that decode to side^2 * 3 bytes."""
    return png_bytes(Image.new("L", (side, side)), optimize=True)


GOOD = png_bytes(np.full((64, 64, 3), 120, np.uint8))

# (name, request kwargs, expected status, words the detail must contain)
CASES = [
    ("not an image", dict(files={"file": ("a.txt", b"hello, I am text" * 10, "text/plain")}), 422, "not a supported image"),
    ("zero bytes", dict(files={"file": ("empty.png", b"", "image/png")}), 422, "empty"),
    ("truncated", dict(files={"file": ("t.png", GOOD[: len(GOOD) // 2], "image/png")}), 422, "truncated"),
    ("tiny image", dict(files={"file": ("t.png", png_bytes(np.zeros((4, 4, 3), np.uint8)))}), 422, "too small"),
    ("pixel cap", dict(files={"file": ("b.png", _bomb(2100))}), 413, "over the limit"),
    ("PIL bomb limit", dict(files={"file": ("b.png", _png_header_only(20000, 20000))}), 413, "too many pixels"),
    ("over upload size", dict(files={"file": ("big.png", b"\0" * (MIB + 1))}), 413, "limit"),
    ("no file field", dict(data={"other": "x"}), 422, "file"),
    ("unknown heatmap", dict(params={"heatmap": "jpeg"}, files={"file": ("g.png", GOOD)}), 422, "heatmap"),
    ("unknown index", dict(params={"index": "nope"}, files={"file": ("g.png", GOOD)}), 404, "unknown index 'nope'"),
]


@pytest.mark.parametrize("name,kwargs,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(client, name, kwargs, status, words):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in str(detail), detail


def test_the_server_survives_the_matrix(client):
    statuses = [client.post("/predict", **kw).status_code for _, kw, _, _ in CASES]
    assert 500 not in statuses and all(400 <= s < 500 for s in statuses), statuses
    assert client.post("/predict", files={"file": ("g.png", GOOD)}).status_code == 200


def test_oversized_body_is_refused_from_content_length_before_reading(client):
    body_read = []

    def body():
        body_read.append(True)
        yield b"x" * 100

    headers = {"content-type": "multipart/form-data; boundary=zzz", "content-length": str(50 * MIB)}
    r = client.post("/predict", content=body(), headers=headers)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert not body_read  # the answer came from the header alone
    assert 'patchcore_requests_total{route="/predict",method="POST",status="413"}' in client.get("/metrics").text


def test_chunked_upload_over_the_limit_is_refused(client):
    def body():  # no Content-Length: chunked transfer of a 3 MiB multipart body (see also test_server.py)
        yield b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(48):
            yield b"\0" * (64 * 1024)
        yield b"\r\n--zzz--\r\n"

    r = client.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 413 and "is over the limit" in r.json()["detail"], r.text


def test_batch_limits(client):
    files = [("files", (f"{i}.png", GOOD)) for i in range(5)]  # max_batch_files is 4
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 413 and "5 files" in r.json()["detail"]
    files = [("files", ("ok.png", GOOD)), ("files", ("big.png", b"\0" * (MIB + 10)))]  # body fits, one file doesn't
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 413 and "'big.png'" in r.json()["detail"]
    files = [("files", ("ok.png", GOOD)), ("files", ("bad.png", b"not an image"))]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 422 and "'bad.png'" in r.json()["detail"]


def test_ambiguous_and_selected_index(multi_client):
    r = multi_client.post("/predict", files={"file": ("g.png", GOOD)})
    assert r.status_code == 400 and "disc, disc-b" in r.json()["detail"]
    r = multi_client.post("/predict?index=disc-c", files={"file": ("g.png", GOOD)})
    assert r.status_code == 404 and "disc, disc-b" in r.json()["detail"]


def test_api_key(disc_dir):
    with TestClient(create_app(make_settings(disc_dir, api_key="s3cret", warmup=False))) as c:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            r = c.post("/predict", files={"file": ("g.png", GOOD)}, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"], (headers, r.text)
            assert c.get("/indexes", headers=headers).status_code == 401
        ok = {"X-API-Key": "s3cret"}
        assert c.post("/predict", files={"file": ("g.png", GOOD)}, headers=ok).status_code == 200
        assert c.get("/indexes", headers=ok).json()[0]["name"] == "disc"
        # Probes stay open for the orchestrator; /metrics needs the key (see test_security.py for the settings).
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers=ok).status_code == 200


def test_not_ready_before_the_lifespan_has_loaded(disc_dir):
    app = create_app(make_settings(disc_dir))
    c = TestClient(app)  # no `with`: the lifespan does not run, nothing is loaded
    assert c.get("/healthz").json() == {"status": "alive"}
    for r in (c.get("/readyz"), c.post("/predict", files={"file": ("g.png", GOOD)}), c.get("/indexes")):
        assert r.status_code == 503 and "not ready" in r.json()["detail"]
        assert r.headers["retry-after"]
    with c:  # now the lifespan runs
        assert c.get("/readyz").json() == {"status": "ready", "indexes": ["disc"]}
    assert c.get("/readyz").status_code == 503  # after shutdown


def test_busy_server_answers_503(disc_dir):
    with TestClient(create_app(make_settings(disc_dir, warmup=False))) as c:
        c.app.state.runner.max_pending = 0
        r = c.post("/predict", files={"file": ("g.png", GOOD)})
        assert r.status_code == 503 and "retry" in r.json()["detail"]


def test_unexpected_errors_are_json_500s_and_logged(disc_dir, caplog, monkeypatch):
    from service import inference

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(inference, "predict_batch", boom)
    with TestClient(create_app(make_settings(disc_dir, warmup=False)), raise_server_exceptions=False) as c:
        r = c.post("/predict", files={"file": ("g.png", GOOD)})
    assert r.status_code == 500 and r.json() == {"detail": "internal error; see the server log"}
    assert any("a bug" in (rec.exc_text or "") or (rec.exc_info and "a bug" in str(rec.exc_info[1]))
               for rec in caplog.records)
