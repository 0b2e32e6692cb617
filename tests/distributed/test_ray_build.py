"""The builder on a Ray cluster started in this process (ray.init, 2 CPUs): the same bank as the local builder on
the same chunks, an index that loads and serves, and the CLI's --ray. Skipped when ray is not installed; the dev
extra installs it, so CI runs these."""

import json

import numpy as np
import pytest

from distributed.options import RayOptions
from index_store import store
from index_store.build import BuildOptions, build_index
from index_store.cli import main
from imaging.decode import list_images, read_image
from model.config import PatchCoreConfig

ray = pytest.importorskip("ray", reason="ray is not installed: pip install '.[ray]' (the dev extra installs it)")
from distributed.ray_build import build_index_ray  # noqa: E402

CONFIG = PatchCoreConfig(image_size=64, coreset_ratio=0.1)  # 8 x 8 patches per image


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running one
    yield
    ray.shutdown()


def assert_same_bank(local, on_ray):
    assert on_ray.metadata.coreset_method == local.metadata.coreset_method
    np.testing.assert_array_equal(on_ray.bank_image_ids, local.bank_image_ids)  # same picks, in the same order
    np.testing.assert_allclose(on_ray.index.reconstruct_n(0, on_ray.index.ntotal),
                               local.index.reconstruct_n(0, local.index.ntotal), rtol=1e-4, atol=1e-5)
    assert on_ray.images == local.images
    assert on_ray.metadata.provenance.dataset_fingerprint == local.metadata.provenance.dataset_fingerprint
    assert on_ray.metadata.calibration.threshold == pytest.approx(local.metadata.calibration.threshold, rel=1e-4)


@pytest.mark.parametrize("chunk,margin", [(2_000_000, 0.5), (5 * 64, 0.5)], ids=["single-pass", "chunked"])
def test_ray_build_gives_the_local_builders_bank(cluster, sample_dir, chunk, margin):
    """Same chunks, same picks: single pass (every patch sent), and chunked with the workers dropping the patches
    within half the last chunk's radius of the bank they last saw (tests/distributed/test_bank.py drives that filter
    with a known lag; here Ray decides how far the workers run ahead)."""
    paths = list_images(sample_dir)
    options = BuildOptions(progress=False, max_chunk_patches=chunk, batch_size=3)
    local = build_index(paths, CONFIG, options, root=sample_dir)
    on_ray = build_index_ray(paths, CONFIG, options, RayOptions("local", margin=margin), root=sample_dir)
    info = on_ray.metadata.provenance.cluster
    assert info["exact_chunks"] == info["chunks"] if chunk < 10**6 else info["exact_chunks"] is None
    assert_same_bank(local, on_ray)
    assert info["backend"] == "ray" and info["nodes"] == 1 and info["actors"] == 1
    assert info["patches_seen"] == on_ray.metadata.n_patches_seen >= info["patches_sent"] > 0
    assert info["worker_seconds"]["embed"] > 0 and len(info["peak_rss_mb_per_node"]) == 1
    assert local.metadata.provenance.cluster == {}


def test_cli_builds_on_ray_and_the_index_serves(cluster, sample_dir, tmp_path, capsys):
    """patchcore-build-index --ray writes an index that loads and scores test pictures as the local build's does."""
    fast = ["--image-size", "64", "--coreset-ratio", "0.1", "--no-progress", "--json"]
    assert main(["--data", str(sample_dir), "--out", str(tmp_path / "ray"), *fast, "--ray", "local"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["--data", str(sample_dir), "--out", str(tmp_path / "local"), *fast]) == 0
    on_ray, local = store.load(tmp_path / "ray"), store.load(tmp_path / "local")
    assert on_ray.metadata.bank_size == summary["bank_size"] == round(0.1 * 16 * 8 * 8)
    assert on_ray.metadata.provenance.cluster["backend"] == "ray"
    assert {"extract", "coreset", "index", "calibration"} <= set(on_ray.metadata.provenance.stage_seconds)
    images = [read_image(p)[0] for p in list_images(sample_dir / "test")]
    scores = [[s.image_score for s in b.detector.score_batch(images)] for b in (on_ray, local)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4)
    assert on_ray.metadata.calibration.threshold == pytest.approx(local.metadata.calibration.threshold, rel=1e-4)
