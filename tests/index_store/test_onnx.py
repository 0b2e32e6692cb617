"""The ONNX extractor: export, load validation, runtime choice, and equal answers to the torch runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from index_store import onnx_export, store
from index_store.store import EXTRACTOR_FILE, IndexStoreError
from index_store.weights import sha256_file
from imaging.decode import list_images, read_image
from model.errors import InputError
from model.features import PatchEmbedder
from model.onnx_runtime import OnnxExtractor
from model.preprocess import pixels

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def exported(index_dir, tmp_path_factory):
    """A copy of the session index with extractor.onnx added by patchcore-export (the session index stays as is)."""
    copy = tmp_path_factory.mktemp("onnx") / "disc"
    shutil.copytree(index_dir, copy)
    assert onnx_export.main([str(copy)]) == 0
    return copy


@pytest.fixture(scope="module")
def images(sample_dir):
    return [read_image(p)[0] for p in list_images(sample_dir / "test")]


def test_export_writes_the_graph_and_lists_its_sha256(exported, index_dir):
    meta = store.read_metadata(exported)
    assert meta.sidecars[EXTRACTOR_FILE] == sha256_file(exported / EXTRACTOR_FILE)
    before = store.read_metadata(index_dir)
    assert {k: v for k, v in meta.sidecars.items() if k != EXTRACTOR_FILE} == before.sidecars
    assert meta.index_sha256 == before.index_sha256 and meta.calibration == before.calibration
    import onnx

    model = onnx.load(str(exported / EXTRACTOR_FILE))
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["embeddings"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert (exported / EXTRACTOR_FILE).stat().st_size < 5e6  # the backbone only: the bank stays in FAISS


def test_runtime_choice(exported, index_dir, monkeypatch):
    assert store.load(exported, runtime="onnx").runtime == "onnx"
    assert store.load(exported, runtime="torch").runtime == "torch"
    assert store.load(exported).runtime == "onnx"  # auto: the file is there and onnxruntime is installed
    assert store.load(index_dir).runtime == "torch"  # auto: no file
    with pytest.raises(IndexStoreError, match="patchcore-export"):
        store.load(index_dir, runtime="onnx")
    with pytest.raises(IndexStoreError, match="unknown runtime 'tensorrt'; choose one of auto, torch, onnx"):
        store.load(exported, runtime="tensorrt")
    real = store._installed
    monkeypatch.setattr(store, "_installed", lambda m: m != "onnxruntime" and real(m))
    assert store.load(exported).runtime == "torch"  # auto without onnxruntime
    with pytest.raises(IndexStoreError, match=r"pip install 'patchcore-service\[onnx\]'"):
        store.load(exported, runtime="onnx")
    monkeypatch.setattr(store, "_installed", lambda m: m != "torch" and real(m))
    with pytest.raises(IndexStoreError, match="PATCHCORE_RUNTIME=onnx"):
        store.load(exported, runtime="torch")
    with pytest.raises(IndexStoreError, match="patchcore-export"):
        store.load(index_dir)  # auto on a torch-free install: no extractor.onnx


def test_onnx_scores_equal_torch_scores(exported, images):
    torch_det = store.load(exported, runtime="torch").detector
    onnx_det = store.load(exported, runtime="onnx").detector
    for a, b in zip(torch_det.score_batch(images), onnx_det.score_batch(images)):
        # Through FAISS, whose float32 |x|^2 + |y|^2 - 2 x.y alone moves the smallest distances by ~1e-4 of the
        # largest: the runtimes' own difference is checked without it in test_dynamic_batch_and_pixel_types and
        # tests/test_realdata.py.
        scale = float(a.patch_scores.max())
        np.testing.assert_allclose(b.patch_scores, a.patch_scores, rtol=1e-4, atol=5e-4 * scale)
        assert b.image_score == pytest.approx(a.image_score, rel=1e-4)
        assert b.is_anomalous == a.is_anomalous
    maps = [d.predict(images[0]).anomaly_map for d in (torch_det, onnx_det)]
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-4, atol=1e-4 * float(maps[0].max()))


def test_dynamic_batch_and_pixel_types(exported, images):
    config = store.read_metadata(exported).config
    extractor = OnnxExtractor((exported / EXTRACTOR_FILE).read_bytes(), config)
    batch = pixels(images[:3], config)  # (3, S, S, 3) uint8
    three = extractor.embed_pixels(batch)
    assert three.shape == (3, *extractor.grid, extractor.dim) and three.dtype == np.float32
    np.testing.assert_allclose(extractor.embed_pixels(batch[1:2])[0], three[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(extractor.embed_pixels(batch.astype(np.float32)), three)
    reference = PatchEmbedder(config).embed_pixels(batch)
    np.testing.assert_allclose(three, reference, rtol=1e-4, atol=1e-4 * float(np.abs(reference).max()))
    with pytest.raises(InputError, match="pixel batch"):
        extractor.embed_pixels(batch[:, :-1])
    with pytest.raises(InputError, match="uint8 or float32"):
        extractor.embed_pixels(batch.astype(np.int16))


def test_corrupt_or_foreign_extractor_is_refused(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    data = bytearray((bad / EXTRACTOR_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / EXTRACTOR_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match=f"corrupt.*re-export it with patchcore-export {bad}"):
        store.load(bad, runtime="onnx")
    # A valid graph, listed with its right sha256, but exported for another config.
    other = store.read_metadata(exported).config.replace(patch_padding="exclude")
    store.add_sidecar(bad, EXTRACTOR_FILE, onnx_export.export_bytes(other))
    with pytest.raises(IndexStoreError, match="another model config"):
        store.load(bad, runtime="onnx")
    assert store.load(bad, runtime="torch").runtime == "torch"  # the torch runtime does not read it


def test_export_of_a_missing_index_fails_with_exit_1(tmp_path, capsys):
    assert onnx_export.main([str(tmp_path / "nope")]) == 1
    assert "patchcore-build-index" in capsys.readouterr().err
