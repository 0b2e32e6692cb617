"""Security: the API key (constant-time, never logged, guarding /metrics and the docs), a contract that declares the
key only when there is one, 422 bodies that are sentences, index names that cannot reach a path, upload limits
without Content-Length."""

from __future__ import annotations

import json
import logging
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient

from reliability.common import demo_server
from service import deps
from service.app import create_app
from tests.service.conftest import MIB, chunked_post, make_settings
from tests.service.test_errors import GOOD
from tests.service.test_server import live_server

KEY = "s3cret-Key-4242"
GUARDED = ("/metrics", "/docs", "/redoc", "/openapi.json")


def test_the_key_is_compared_in_constant_time_whatever_its_length(disc_dir, monkeypatch):
    """hmac.compare_digest always gets two 32-byte digests: no early exit on a length mismatch."""
    seen = []
    real = deps.hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    with TestClient(create_app(make_settings(disc_dir, api_key=KEY, warmup=False))) as c:
        for given, status in (("x", 401), (KEY * 10, 401), (KEY[:-1], 401), (KEY, 200)):
            assert c.get("/indexes", headers={"X-API-Key": given}).status_code == status
    assert seen == [(32, 32)] * 4


@pytest.mark.parametrize("public", [(), ("metrics",), ("docs",), ("metrics", "docs")], ids=str)
def test_metrics_and_docs_need_the_key_unless_made_public(disc_dir, public):
    settings = make_settings(disc_dir, api_key=KEY, warmup=False, public_metrics="metrics" in public,
                             public_docs="docs" in public)
    with TestClient(create_app(settings)) as c:
        for path in GUARDED:
            open_ = ("metrics" in public and path == "/metrics") or ("docs" in public and path != "/metrics")
            r = c.get(path)
            assert r.status_code == (200 if open_ else 401), (path, r.text[:100])
            if not open_:
                assert r.json() == {"detail": "missing API key: send it in the X-API-Key header"}
            assert c.get(path, headers={"X-API-Key": KEY}).status_code == 200, path
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes: always open


def test_the_contract_declares_the_key_only_when_one_is_set(disc_dir):
    with TestClient(create_app(make_settings(disc_dir, warmup=False))) as c:
        spec = c.get("/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert not any("security" in op for ops in spec["paths"].values() for op in ops.values())
    with TestClient(create_app(make_settings(disc_dir, api_key=KEY, warmup=False))) as c:
        spec = c.get("/openapi.json", headers={"X-API-Key": KEY}).json()
        assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        secured = {path for path, ops in spec["paths"].items() if any("security" in op for op in ops.values())}
        assert secured == {"/metrics", "/indexes", "/indexes/{name}/reload", "/predict", "/predict/batch"}


def test_the_contract_follows_the_limits_and_the_indexes(multi_client):
    spec = multi_client.get("/openapi.json").json()
    files = spec["components"]["schemas"]["Body_predict_batch_predict_batch_post"]["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 4)
    index = next(p for p in spec["paths"]["/predict"]["post"]["parameters"] if p["name"] == "index")
    assert index["required"] is True and set(index["examples"]) == {"disc", "disc-b"}  # two indexes: say which
    for code in ("400", "401", "413", "422"):
        body = spec["paths"]["/predict"]["post"]["responses"][code]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith("/ErrorBody")
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"


@pytest.mark.parametrize("kwargs, words", [
    (dict(data={"file": "not a file"}), "form field 'file': Value error, Expected UploadFile, received: str"),
    (dict(files={"other": ("g.png", GOOD)}), "form field 'file': Field required"),
    (dict(params={"heatmap": "jpeg"}, files={"file": ("g.png", GOOD)}), "query parameter 'heatmap'"),
])
def test_validation_errors_are_one_sentence_without_reprs(client, kwargs, words):
    r = client.post("/predict", **kwargs)
    detail = r.json()["detail"]
    assert r.status_code == 422 and isinstance(detail, str) and words in detail, detail
    assert "object at 0x" not in detail and "<class" not in detail and "see /docs" in detail


@pytest.mark.parametrize("name", ["../disc", "..%2Fdisc", "disc/../disc-b", "./disc", "disc/", "/etc/passwd", "..",
                                  ".", "", "%2e%2e", "disc\x00", "~/disc", "DISC"])
def test_index_names_are_names_never_paths(multi_client, indexes_dir, name):
    r = multi_client.post("/predict", params={"index": name}, files={"file": ("g.png", GOOD)})
    assert r.status_code == 404 and "unknown index" in r.json()["detail"], (name, r.text)
    r = multi_client.post("/predict", params={"index": str(indexes_dir / "disc")}, files={"file": ("g.png", GOOD)})
    assert r.status_code == 404


def test_links_leading_outside_the_index_folder_are_not_served(indexes_dir, tmp_path, caplog):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copytree(indexes_dir / "disc", served / "disc")
    (served / "alias").symlink_to(served / "disc")  # inside: served under its own name
    outside = tmp_path / "elsewhere" / "disc-b"
    shutil.copytree(indexes_dir / "disc-b", outside)
    (served / "escape").symlink_to(outside)
    with TestClient(create_app(make_settings(served, warmup=False))) as c:
        assert c.get("/readyz").json()["indexes"] == ["alias", "disc"]
        r = c.post("/predict", params={"index": "escape"}, files={"file": ("g.png", GOOD)})
        assert r.status_code == 404
    assert any("outside" in r.getMessage() and "escape" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path, answer", [("/predict/batch", b"413"), ("/predict", b"413"), ("/healthz", b"405"),
                                           ("/nowhere", b"404")])
def test_upload_limits_hold_for_chunked_bodies(disc_dir, path, answer):
    """No Content-Length: the upload routes answer 413 once their limit has passed; the others answer without
    reading the body at all. Either way the server stops long before 64 MiB (loopback buffers hold a few MiB)."""
    with live_server(create_app(make_settings(disc_dir, warmup=False))) as url:
        reply, sent = chunked_post(url, path, 64 * MIB)
    assert reply.startswith(b"HTTP/1.1 " + answer), reply[:200]
    assert sent < 16 * MIB, sent
    if answer == b"413":
        assert b"over the limit" in reply


@pytest.mark.slow
def test_the_key_is_never_logged(indexes_dir, tmp_path):
    """A real patchcore-serve at DEBUG: neither the server's key nor a client's wrong key reaches its log."""
    wrong = "Wrong-Key-That-Must-Not-Leak-777"
    log = tmp_path / "server.log"
    with demo_server(indexes_dir / "disc", log, api_key=KEY, log_level="DEBUG", threads=1) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for key in (KEY, wrong, None):
                headers = {"X-API-Key": key} if key else {}
                http.post("/predict", files={"file": ("g.png", GOOD)}, headers=headers)
                http.get("/metrics", headers=headers)
                http.get("/openapi.json", headers=headers)
    text = log.read_text()
    assert '"status": 200' in text and '"status": 401' in text  # the requests were logged...
    assert KEY not in text and wrong not in text  # ...but never the keys
    assert all(json.loads(line) for line in text.splitlines())  # and every line is one JSON record
    logging.getLogger(__name__).info("checked %d log lines", len(text.splitlines()))
