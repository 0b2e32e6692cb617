import dataclasses
import json
import shutil

import numpy as np
import pytest

from index_store import store
from imaging.decode import read_image
from index_store.metadata import SCHEMA_VERSION


def test_save_load_gives_identical_scores(bundle, sample_dir, index_dir, tmp_path):
    images = [read_image(p)[0] for p in sorted((sample_dir / "test").glob("*/*.png"))]
    first = bundle.detector.score_batch(images)
    copy = tmp_path / "copy"
    metadata, index = store.load_index(index_dir)
    store.save(copy, index, metadata)
    again = store.load(copy).detector.score_batch(images)
    assert [s.image_score for s in again] == [s.image_score for s in first]
    np.testing.assert_array_equal(again[0].patch_scores, first[0].patch_scores)


def test_metadata_holds_config_provenance_and_checksum(bundle, index_dir):
    m = bundle.metadata
    assert m.schema_version == SCHEMA_VERSION and m.name == "disc"
    assert m.config.image_size == 128 and m.embedding_dim == 128 and m.grid == (16, 16)
    assert m.bank_size == bundle.detector.index.ntotal
    assert m.index_sha256 == store.sha256_file(index_dir / "index.faiss")
    p = m.provenance
    assert p.n_train_images == p.n_calibration_images == p.n_images == 16 and p.n_skipped == 0  # all in the bank
    assert len(p.dataset_fingerprint) == 64 and p.torch_version and p.faiss_version
    assert set(p.stage_seconds) >= {"extract", "coreset", "index", "calibration"}
    assert m.calibration.threshold > m.calibration.mean
    json.loads((index_dir / "metadata.json").read_text())  # plain JSON, no pickle


def copy_index(index_dir, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(index_dir, out)
    return out


def test_corrupted_index_is_refused(index_dir, tmp_path):
    out = copy_index(index_dir, tmp_path)
    data = bytearray((out / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(store.IndexStoreError, match="corrupt.*rebuild"):
        store.load_index(out)


def test_truncated_index_is_refused(index_dir, tmp_path):
    out = copy_index(index_dir, tmp_path)
    data = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(data[: len(data) // 3])
    with pytest.raises(store.IndexStoreError, match="sha256"):
        store.load_index(out)


def rewrite_metadata(out, **changes):
    data = json.loads((out / "metadata.json").read_text())
    data.update(changes)
    (out / "metadata.json").write_text(json.dumps(data))


@pytest.mark.parametrize("changes, message", [
    ({"schema_version": 0}, "schema_version 0, this software reads"),
    ({"embedding_dim": 64}, "holds 128-d vectors, metadata says 64"),
    ({"bank_size": 7}, "vectors, metadata says 7"),
])
def test_mismatched_metadata_is_refused(index_dir, tmp_path, changes, message):
    out = copy_index(index_dir, tmp_path)
    rewrite_metadata(out, **changes)
    with pytest.raises(store.IndexStoreError, match=message):
        store.load_index(out)


def test_missing_pieces_say_how_to_fix(index_dir, tmp_path):
    with pytest.raises(store.IndexStoreError, match="does not exist.*patchcore-build-index"):
        store.load_index(tmp_path / "nowhere")
    out = copy_index(index_dir, tmp_path)
    (out / "index.faiss").unlink()
    with pytest.raises(store.IndexStoreError, match="index.faiss is missing"):
        store.load_index(out)
    (out / "metadata.json").write_text("{not json")
    with pytest.raises(store.IndexStoreError, match="not valid JSON"):
        store.load_index(out)


def test_save_is_atomic_and_keeps_the_old_index_when_it_fails(index_dir, tmp_path, monkeypatch):
    out = copy_index(index_dir, tmp_path)
    before = (out / "index.faiss").read_bytes()
    metadata, index = store.load_index(out)
    with pytest.raises(store.IndexStoreError, match="--force"):
        store.save(out, index, metadata)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store.faiss, "write_index", crash)
    with pytest.raises(store.IndexStoreError, match=r"cannot write .*idx \(disk full\).*unchanged"):
        store.save(out, index, metadata, force=True)
    assert (out / "index.faiss").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]  # no temp folder left behind
    monkeypatch.undo()
    written = store.save(out, index, dataclasses.replace(metadata, name="renamed"), force=True)
    assert store.read_metadata(out).name == "renamed" == written.name


@pytest.mark.parametrize("index_config", [
    {"kind": "ivf_flat", "nlist": 16, "nprobe": 4},
    {"kind": "hnsw", "hnsw_m": 16, "ef_search": 24},
    {"kind": "ivf_pq", "nlist": 16, "nprobe": 4, "pq_m": 16, "pq_nbits": 4},
])
def test_approximate_indexes_are_trained_saved_and_reloaded_exactly(sample_dir, tmp_path, index_config):
    from index_store.build import BuildOptions, build_index
    from imaging.decode import list_images
    from model.config import IndexConfig, PatchCoreConfig

    config = PatchCoreConfig(image_size=128, coreset_ratio=0.5, index=IndexConfig(**index_config))
    result = build_index(list_images(sample_dir), config, BuildOptions(progress=False))
    store.save_result(tmp_path / "a", result)
    loaded = store.load(tmp_path / "a")
    assert loaded.metadata.config.index == config.index
    assert type(loaded.detector.index).__name__ == type(result.index).__name__
    images = [read_image(p)[0] for p in sorted((sample_dir / "test").glob("*/*.png"))[:3]]
    from model.detector import Detector

    fresh = Detector(config, loaded.detector.embedder, result.index, result.metadata.calibration)
    for a, b in zip(loaded.detector.score_batch(images), fresh.score_batch(images)):
        np.testing.assert_array_equal(a.patch_scores, b.patch_scores)


def test_version_1_metadata_still_loads_with_its_old_meaning(index_dir, tmp_path):
    import json
    import shutil

    from index_store.metadata import IndexMetadata

    data = json.loads((index_dir / store.METADATA_FILE).read_text())
    data["schema_version"] = 1
    for key in ("rule", "achievable_fpr", "method", "scores", "images"):
        data["calibration"].pop(key)
    data["config"].pop("patch_padding")
    data.pop("sidecars")
    old = IndexMetadata.from_json(json.dumps(data))
    assert old.schema_version == 2 and old.config.patch_padding == "exclude"  # what version 1 computed
    assert old.calibration.rule == "student_t" and old.calibration.method == "holdout" and old.calibration.scores == ()
    copy = tmp_path / "v1"
    shutil.copytree(index_dir, copy)
    (copy / store.METADATA_FILE).write_text(json.dumps(data))
    assert store.load(copy).metadata.calibration.threshold == old.calibration.threshold


def test_metadata_without_coreset_mode_reads_as_the_exact_greedy(index_dir):
    """Indexes built before coreset_mode existed came from the exact greedy; new ones record their mode."""
    import json

    from index_store.metadata import IndexMetadata

    data = json.loads((index_dir / store.METADATA_FILE).read_text())
    assert data["config"]["coreset_mode"] == "auto"  # the default
    data["config"].pop("coreset_mode")
    assert IndexMetadata.from_json(json.dumps(data)).config.coreset_mode == "exact"


def test_a_corrupt_sidecar_is_refused(index_dir, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(index_dir, copy)
    ids = store.read_bank_image_ids(copy, store.read_metadata(copy))
    assert ids.dtype == np.int32
    (copy / store.BANK_IDS_FILE).write_bytes((copy / store.BANK_IDS_FILE).read_bytes()[:-4])
    with pytest.raises(store.IndexStoreError, match="bank_image_ids.npy is missing or corrupt"):
        store.load(copy)
