"""GET /indexes, index selection, /metrics, request logs and the OpenAPI schema."""

from __future__ import annotations

import logging
import re

import pytest

from index_store.metadata import SCHEMA_VERSION
from index_store import store
from tests.service.conftest import png_bytes


def _good(test_images) -> bytes:
    return test_images["good/000.png"]


def test_indexes_lists_every_product_with_its_metadata(multi_client, indexes_dir):
    r = multi_client.get("/indexes")
    assert r.status_code == 200
    listed = {x["name"]: x for x in r.json()}
    assert sorted(listed) == ["disc", "disc-b"]
    for name, info in listed.items():
        meta = store.read_metadata(indexes_dir / name)
        assert info["product"] == f"{name}-product"
        assert info["bank_size"] == meta.bank_size and info["threshold"] == pytest.approx(meta.calibration.threshold)
        assert info["layers"] == list(meta.config.layers) and info["image_size"] == meta.config.image_size
        assert info["built_at"] == meta.provenance.built_at and info["schema_version"] == meta.schema_version
        assert info["backbone"] == "mobilenet_v2" and info["grid"] == list(meta.grid)
    assert (listed["disc"]["image_size"], listed["disc-b"]["image_size"]) == (128, 96)


def test_each_index_scores_with_its_own_detector(multi_client, client, test_images):
    data = _good(test_images)
    a = multi_client.post("/predict?index=disc", files={"file": ("g.png", data)}).json()
    b = multi_client.post("/predict?index=disc-b", files={"file": ("g.png", data)}).json()
    single = client.post("/predict", files={"file": ("g.png", data)}).json()
    assert (a["index"], b["index"]) == ("disc", "disc-b")
    assert a["image_score"] == pytest.approx(single["image_score"], rel=1e-5)  # same index, same answer
    assert a["threshold"] != b["threshold"] and a["image_score"] != pytest.approx(b["image_score"], rel=1e-3)


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if match.group(1) == name and got == {k: str(v) for k, v in labels.items()}:
            return float(match.group(3))
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_metrics_count_requests_and_stages(multi_client, test_images, indexes_dir):
    before = multi_client.get("/metrics").text
    n0 = _metric(before, "patchcore_requests_total", route="/predict", method="POST", status="200") \
        if 'route="/predict",method="POST",status="200"' in before else 0
    for _ in range(3):
        assert multi_client.post("/predict?index=disc-b", files={"file": ("g.png", _good(test_images))}).status_code == 200
    multi_client.post("/predict?index=nope", files={"file": ("g.png", _good(test_images))})
    multi_client.get("/no/such/path")
    r = multi_client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert _metric(text, "patchcore_requests_total", route="/predict", method="POST", status="200") == n0 + 3
    assert _metric(text, "patchcore_requests_total", route="/predict", method="POST", status="404") >= 1
    assert _metric(text, "patchcore_requests_total", route="unmatched", method="GET", status="404") >= 1
    count = _metric(text, "patchcore_request_duration_seconds_count", route="/predict", method="POST", status="200")
    inf = _metric(text, "patchcore_request_duration_seconds_bucket", route="/predict", method="POST", status="200",
                  le="+Inf")
    assert count == inf == n0 + 3
    for stage in ("decode", "preprocess", "backbone", "search", "map"):
        assert _metric(text, "patchcore_inference_stage_seconds_count", index="disc-b", stage=stage) >= 3
    meta = store.read_metadata(indexes_dir / "disc-b")
    assert _metric(text, "patchcore_index_bank_size", index="disc-b") == meta.bank_size
    assert _metric(text, "patchcore_index_threshold", index="disc-b") == pytest.approx(meta.calibration.threshold)
    assert _metric(text, "patchcore_index_info", index="disc", backbone="mobilenet_v2", schema_version=str(SCHEMA_VERSION)) == 1
    assert _metric(text, "patchcore_ready") == 1


def test_one_structured_log_line_per_request(client, test_images, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        r = client.post("/predict", files={"file": ("g.png", _good(test_images))}, headers={"X-Request-ID": "abc-1"})
        client.post("/predict?index=zzz", files={"file": ("g.png", _good(test_images))})
    assert r.headers["x-request-id"] == "abc-1"
    lines = [rec for rec in caplog.records if rec.name == "service.access"]
    assert len(lines) == 2
    ok, missing = lines
    assert (ok.route, ok.status, ok.index, ok.request_id, ok.method) == ("/predict", 200, "disc", "abc-1", "POST")
    assert ok.latency_ms > 0
    assert (missing.status, missing.index) == (404, None) and "unknown index" in missing.error


def test_log_formatters():
    from service.logs import JsonFormatter, KeyValueFormatter

    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "request", None, None)
    record.route, record.status, record.note = "/predict", 200, 'a "quoted" value'
    import json

    data = json.loads(JsonFormatter().format(record))
    assert (data["msg"], data["route"], data["status"], data["level"]) == ("request", "/predict", 200, "INFO")
    line = KeyValueFormatter().format(record)
    assert "route=/predict status=200" in line and 'note="a \\"quoted\\" value"' in line


def test_openapi_documents_the_responses(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"Prediction", "BatchPrediction", "IndexInfo", "Timings"} <= set(schemas)
    props = schemas["Prediction"]["properties"]
    assert {"image_score", "normalised_score", "is_anomalous", "anomaly_map_png", "overlay_png", "anomaly_map"} <= set(props)
    predict = spec["paths"]["/predict"]["post"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    assert {"413", "422", "503"} <= set(predict["responses"])
    assert "/predict/batch" in spec["paths"] and "/metrics" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_unsupported_method_and_path_are_4xx(client):
    assert client.get("/predict").status_code == 405
    assert client.get("/nothing-here").status_code == 404
    assert client.post("/healthz", content=png_bytes(__import__("numpy").zeros((9, 9, 3), "uint8"))).status_code == 405
