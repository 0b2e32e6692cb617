"""PATCHCORE_RUNTIME: the server serves an index with onnxruntime or torch, with the same answers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from index_store import onnx_export
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import make_settings, png_bytes

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def onnx_indexes(indexes_dir, tmp_path_factory):
    """A copy of the product "disc" with extractor.onnx, next to "disc-b" without one."""
    root = tmp_path_factory.mktemp("runtime")
    shutil.copytree(indexes_dir / "disc", root / "disc")
    shutil.copytree(indexes_dir / "disc-b", root / "disc-b")
    assert onnx_export.main([str(root / "disc")]) == 0
    return root


def test_runtime_setting_reads_the_environment(monkeypatch, tmp_path):
    assert Settings(index_dir=tmp_path).runtime == "auto"
    monkeypatch.setenv("PATCHCORE_RUNTIME", "torch")
    assert Settings(index_dir=tmp_path).runtime == "torch"
    monkeypatch.setenv("PATCHCORE_RUNTIME", "tensorrt")
    with pytest.raises(ValidationError, match="auto"):
        Settings(index_dir=tmp_path)


def _serve(index_dir, runtime, picture):
    with TestClient(create_app(make_settings(index_dir, runtime=runtime))) as client:
        runtimes = {i["name"]: i["runtime"] for i in client.get("/indexes").json()}
        answer = client.post("/predict?index=disc&heatmap=raw", files={"file": ("p.png", picture, "image/png")})
        assert answer.status_code == 200, answer.text
        return runtimes, answer.json()


def test_auto_serves_onnx_where_exported_and_answers_like_torch(onnx_indexes):
    picture = png_bytes(np.random.default_rng(0).integers(0, 256, (150, 120, 3), dtype=np.uint8))
    auto, a = _serve(onnx_indexes, "auto", picture)
    assert auto == {"disc": "onnx", "disc-b": "torch"}
    forced, t = _serve(onnx_indexes, "torch", picture)
    assert forced == {"disc": "torch", "disc-b": "torch"}
    assert a["image_score"] == pytest.approx(t["image_score"], rel=1e-4)
    assert a["is_anomalous"] == t["is_anomalous"]
    amap, tmap = np.asarray(a["anomaly_map"]), np.asarray(t["anomaly_map"])
    assert amap.shape == (150, 120)
    np.testing.assert_allclose(amap, tmap, rtol=1e-4, atol=1e-4 * float(tmap.max()))


def test_runtime_onnx_refuses_to_start_without_an_extractor(onnx_indexes):
    with pytest.raises(Exception, match="has no extractor.onnx; add it with patchcore-export"):
        with TestClient(create_app(make_settings(onnx_indexes, runtime="onnx"))):
            pass
