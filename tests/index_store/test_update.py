"""Incremental update (patchcore-build-index --update): the parent's bank is kept and extended by the greedy
continuation over the new images' patches, the threshold recalibrated, the lineage recorded, written atomically."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from index_store import store
from index_store.build import BuildError, BuildOptions
from index_store.cli import main
from index_store.update import update_index
from imaging.decode import list_images
from model.coreset import greedy_coreset_reference, nearest_sq_distances
from model.features import PatchEmbedder

FAST = ["--image-size", "64", "--coreset-ratio", "0.1", "--no-progress"]


@pytest.fixture()
def halves(sample_dir, tmp_path):
    """The sample's 16 good images in two folders of 8: A and B."""
    paths = list_images(sample_dir)
    for name, part in (("A", paths[:8]), ("B", paths[8:])):
        (tmp_path / name).mkdir()
        for p in part:
            shutil.copy(p, tmp_path / name / p.name)
    return tmp_path / "A", tmp_path / "B"


def test_update_extends_the_bank_by_the_greedy_continuation_and_records_the_lineage(halves, tmp_path, capsys):
    a, b = halves
    parent_dir, child_dir = tmp_path / "idx", tmp_path / "idx-v2"
    assert main(["--data", str(a), "--out", str(parent_dir), *FAST]) == 0
    assert main(["--update", str(parent_dir), "--data", str(b), "--out", str(child_dir), "--json",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    parent, p_index = store.load_index(parent_dir)
    child, c_index = store.load_index(child_dir)
    assert summary["version"] == child.lineage.version == 2 and parent.lineage.version == 1
    assert child.lineage.parent_sha256 == parent.index_sha256
    assert child.lineage.parent_dataset_fingerprint == parent.provenance.dataset_fingerprint
    assert child.lineage.images_added == tuple(p.name for p in list_images(b))
    assert child.provenance.dataset_fingerprint != parent.provenance.dataset_fingerprint
    assert child.provenance.n_train_images == 16 and child.config == parent.config
    if store.EXTRACTOR_FILE in parent.sidecars:  # the build wrote extractor.onnx (onnx installed): carried over
        assert child.sidecars[store.EXTRACTOR_FILE] == parent.sidecars[store.EXTRACTOR_FILE]

    # The parent's bank is kept as it is; the new vectors are the greedy continuation over B's patches, seeded with
    # their distances to the parent's bank (checked against the slow reference greedy).
    old_bank, new_bank = p_index.reconstruct_n(0, p_index.ntotal), c_index.reconstruct_n(0, c_index.ntotal)
    np.testing.assert_array_equal(new_bank[: len(old_bank)], old_bank)
    cfg = parent.config
    rows = PatchEmbedder(cfg).embed([store_image(p) for p in list_images(b)]).reshape(-1, parent.embedding_dim)
    k = round(cfg.coreset_ratio * rows.shape[0])
    initial = nearest_sq_distances(rows, old_bank, projection_dim=cfg.projection_dim, seed=cfg.seed)
    expected = greedy_coreset_reference(rows, k, projection_dim=cfg.projection_dim, seed=cfg.seed, initial=initial)
    np.testing.assert_allclose(new_bank[len(old_bank):], rows[expected], atol=1e-5)
    assert child.bank_size == parent.bank_size + k

    # Every bank vector keeps its source image; images.tsv lists the parent's images, then B's.
    ids = store.read_bank_image_ids(child_dir, child)
    np.testing.assert_array_equal(ids[: parent.bank_size], store.read_bank_image_ids(parent_dir, parent))
    assert set(ids[parent.bank_size:].tolist()) <= set(range(8, 16))
    images = store.read_images(child_dir, child)
    assert images[:8] == store.read_images(parent_dir, parent) and len(images) == 16

    # Recalibrated: the parent's stored scores, then B's leave-one-image-out scores.
    cal = child.calibration
    assert cal.scores[:8] == parent.calibration.scores and len(cal.scores) == 16
    assert cal.method == "leave-one-image-out+update" and cal.rule == parent.calibration.rule
    assert 0 < min(cal.scores[8:]) and cal.threshold > 0
    assert store.load(child_dir).detector.score(store_image(list_images(b)[0])).image_score >= 0


def store_image(path):
    from imaging.decode import read_image

    return read_image(path)[0]


def test_update_in_place_makes_the_next_version_and_skips_known_images(halves, tmp_path, capsys):
    a, b = halves
    idx = tmp_path / "idx"
    assert main(["--data", str(a), "--out", str(idx), *FAST]) == 0
    first = store.read_metadata(idx)
    # B plus two of A's images again: those two are recognised by their bytes and skipped.
    for p in list_images(a)[:2]:
        shutil.copy(p, b / f"again-{p.name}")
    assert main(["--update", str(idx), "--data", str(b), "--no-progress"]) == 0
    second = store.read_metadata(idx)
    assert second.lineage.version == 2 and second.lineage.parent_sha256 == first.index_sha256
    assert len(second.lineage.images_added) == 8 and not any("again" in p for p in second.lineage.images_added)
    # Nothing new: refused, and the index is untouched.
    capsys.readouterr()
    assert main(["--update", str(idx), "--data", str(a), "--no-progress"]) == 1
    assert "none of the 8 images could be added (8 already in the index" in capsys.readouterr().err
    assert store.read_metadata(idx).index_sha256 == second.index_sha256


def test_update_refuses_model_options_and_a_non_flat_index_keeps_its_raw_bank(halves, tmp_path, capsys):
    a, b = halves
    idx = tmp_path / "idx"
    with pytest.raises(SystemExit):  # the model comes from the parent: options that would change it are refused
        main(["--update", str(idx), "--data", str(b), "--coreset-ratio", "0.5"])
    assert main(["--data", str(a), "--out", str(idx), "--index-type", "hnsw", *FAST]) == 0
    meta = store.read_metadata(idx)
    assert store.BANK_VECTORS_FILE in meta.sidecars  # hnsw: the exact vectors are kept for updates
    assert main(["--update", str(idx), "--data", str(b), "--no-progress"]) == 0
    child, index = store.load_index(idx)
    bank = store.read_bank_vectors(idx, child, index)
    assert bank.shape == (child.bank_size, child.embedding_dim) and child.config.index.kind == "hnsw"
    (idx / store.BANK_VECTORS_FILE).write_bytes(b"broken")
    with pytest.raises(store.IndexStoreError, match="bank_vectors.npy is missing or corrupt"):
        update_index(idx, list_images(b), BuildOptions(progress=False))


def test_update_refuses_more_than_one_chunk(halves, tmp_path):
    a, b = halves
    idx = tmp_path / "idx"
    assert main(["--data", str(a), "--out", str(idx), *FAST]) == 0
    with pytest.raises(BuildError, match="several updates"):
        update_index(idx, list_images(b), BuildOptions(progress=False, max_chunk_patches=64, batch_size=1))


def test_update_runs_on_the_index_onnx_extractor_without_torch_and_matches_the_torch_runtime(halves, tmp_path):
    """With extractor.onnx in the parent, the update embeds the new images in onnxruntime: it runs in a process where
    torch and tqdm cannot be imported (the slim serving image has neither) and gives the torch runtime's bank and
    threshold."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    a, b = halves
    parent_dir = tmp_path / "idx"
    assert main(["--data", str(a), "--out", str(parent_dir), *FAST]) == 0
    assert store.EXTRACTOR_FILE in store.read_metadata(parent_dir).sidecars
    blocked = ("import sys\n"
               "class NoTorch:\n"  # every `import torch...` fails, as where torch is not installed
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'torchvision', 'tqdm'): raise ImportError(name)\n"
               "sys.meta_path.insert(0, NoTorch())\n"
               "from index_store.cli import main\n"
               "raise SystemExit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", blocked, "--update", str(parent_dir), "--data", str(b), "--out",
                           str(tmp_path / "onnx"), "--json", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["runtime"] == "onnx"
    assert main(["--update", str(parent_dir), "--data", str(b), "--out", str(tmp_path / "torch"), "--runtime",
                 "torch", "--no-progress"]) == 0
    (m_onnx, i_onnx), (m_torch, i_torch) = (store.load_index(tmp_path / n) for n in ("onnx", "torch"))
    assert m_onnx.bank_size == m_torch.bank_size
    np.testing.assert_allclose(i_onnx.reconstruct_n(0, i_onnx.ntotal), i_torch.reconstruct_n(0, i_torch.ntotal),
                               atol=1e-4)
    np.testing.assert_allclose(m_onnx.calibration.scores, m_torch.calibration.scores, rtol=1e-4)
    assert m_onnx.calibration.threshold == pytest.approx(m_torch.calibration.threshold, rel=1e-4)
    assert m_onnx.provenance.torch_version == m_torch.provenance.torch_version.split("+")[0]
