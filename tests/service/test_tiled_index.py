"""A tiled index is served and evaluated from its metadata alone: no flag on the server or the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from evaluation.datasets import Sample, make_category
from evaluation.runner import score_category
from index_store import store
from index_store.build import BuildOptions, build_index
from model.config import PatchCoreConfig
from service.app import create_app
from tests.service.conftest import make_settings, png_bytes


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 10, (150, 230)).clip(0, 255)
    return np.repeat(base[:, :, None], 3, axis=2).astype(np.uint8)


@pytest.fixture(scope="module")
def tiled_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled")
    paths = []
    for i in range(4):
        paths.append(root / f"good{i}.png")
        Image.fromarray(_picture(i)).save(paths[-1])
    config = PatchCoreConfig(pretrained=False, image_size=64, tile_size=64, tile_overlap=0.25, coreset_ratio=0.1)
    store.save_result(root / "indexes" / "tiled", build_index(paths, config, BuildOptions(progress=False)))
    return root


def test_server_answers_with_the_tiled_detector_from_the_metadata(tiled_index):
    folder = tiled_index / "indexes" / "tiled"
    bundle = store.load(folder)
    assert bundle.metadata.config.tile_size == 64
    picture = _picture(9)
    expected = bundle.detector.predict(picture)
    with TestClient(create_app(make_settings(folder))) as client:
        info = client.get("/indexes").json()[0]
        assert (info["tile_size"], info["tile_overlap"]) == (64, 0.25)
        r = client.post("/predict?heatmap=raw", files={"file": ("p.png", png_bytes(picture), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_score"] == pytest.approx(expected.image_score, rel=1e-5)
    amap = np.asarray(body["anomaly_map"])
    assert amap.shape == (150, 230)
    np.testing.assert_allclose(amap, expected.anomaly_map, atol=1e-4)


def test_evaluator_scores_with_the_tiled_detector(tiled_index, tmp_path):
    bundle = store.load(tiled_index / "indexes" / "tiled")
    test_path = tmp_path / "t.png"
    Image.fromarray(_picture(9)).save(test_path)
    category = make_category("tiled", [tiled_index / "good0.png"], [Sample(test_path, 0, "good", None)], tmp_path)
    run = score_category(category, bundle.detector, eval_size=115, progress=False)
    assert run.scored[0].image_score == pytest.approx(bundle.detector.predict(_picture(9)).image_score, rel=1e-5)
    assert run.maps[0].shape == (75, 115)


def test_tiled_index_runs_in_the_onnx_runtime_like_torch(tiled_index, tmp_path):
    """The tiled detector goes through the extractor contract: extractor.onnx serves a tiled index too."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import shutil

    from index_store import onnx_export

    copy = tmp_path / "tiled"
    shutil.copytree(tiled_index / "indexes" / "tiled", copy)
    assert onnx_export.main([str(copy)]) == 0
    onnx_bundle, torch_bundle = store.load(copy, runtime="onnx"), store.load(copy, runtime="torch")
    assert (onnx_bundle.runtime, torch_bundle.runtime) == ("onnx", "torch")
    picture = _picture(9)
    a, b = onnx_bundle.detector.predict(picture), torch_bundle.detector.predict(picture)
    assert a.anomaly_map.shape == b.anomaly_map.shape == (150, 230)
    assert a.image_score == pytest.approx(b.image_score, rel=1e-3)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-3, atol=1e-3)


def test_tiled_builds_refuse_a_ray_streamer(tiled_index):
    from index_store.build import BuildError

    config = PatchCoreConfig(pretrained=False, image_size=64, tile_size=64, tile_overlap=0.25, coreset_ratio=0.1)
    paths = [tiled_index / f"good{i}.png" for i in range(4)]

    def streamer(*args):
        raise AssertionError("a tiled build must not reach the streamer")

    with pytest.raises(BuildError, match="not on a Ray cluster"):
        build_index(paths, config, BuildOptions(progress=False), streamer=streamer)
