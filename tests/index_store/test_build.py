import json
import shutil

import numpy as np
import pytest

from index_store import store
from index_store.build import BuildError, BuildOptions, build_index, sample_ids, split_held_out
from index_store.cli import main
from imaging.decode import list_images
from model.config import PatchCoreConfig
from model.coreset import coverage_radius

FAST = ["--image-size", "64", "--coreset-ratio", "0.1", "--no-progress"]


def test_cli_builds_an_index_end_to_end(sample_dir, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["--data", str(sample_dir), "--out", str(out), "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 16 and summary["calibration_images"] == 16  # every image in the bank, all scored
    bundle = store.load(out)
    assert bundle.metadata.bank_size == summary["bank_size"] == round(0.1 * 16 * 8 * 8)
    assert bundle.metadata.config.image_size == 64 and bundle.metadata.name == "idx"
    assert bundle.metadata.provenance.calibration_source == "leave-one-image-out"
    cal = bundle.metadata.calibration
    assert len(cal.scores) == len(cal.images) == 16 and cal.rule == "student_t"
    ids = store.read_bank_image_ids(out, bundle.metadata)
    assert ids.shape == (bundle.metadata.bank_size,) and set(ids.tolist()) <= set(range(16))
    lines = (out / store.IMAGES_FILE).read_text().splitlines()
    assert len(lines) == 16 and lines[0].split("\t")[0] == "train/good/000.png" and len(lines[0].split("\t")[1]) == 64
    # The ONNX extractor is written with it (the dev extra installs onnx), listed with its sha256, and served.
    assert bundle.metadata.sidecars[store.EXTRACTOR_FILE] == store.sha256_file(out / store.EXTRACTOR_FILE)
    assert bundle.runtime == "onnx"


def test_cli_no_onnx_writes_no_extractor(sample_dir, tmp_path):
    out = tmp_path / "idx"
    assert main(["--data", str(sample_dir), "--out", str(out), "--no-onnx", *FAST]) == 0
    assert not (out / store.EXTRACTOR_FILE).exists() and store.EXTRACTOR_FILE not in store.read_metadata(out).sidecars
    assert store.load(out).runtime == "torch"


def test_cli_refuses_an_existing_output_without_force(sample_dir, tmp_path, capsys):
    out = tmp_path / "idx"
    out.mkdir()
    assert main(["--data", str(sample_dir), "--out", str(out), *FAST]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["--data", str(sample_dir), "--out", str(out), "--force", *FAST]) == 0


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vgg16"], "valid backbones"),
    (["--layers", "features.6", "head"], "valid layers"),
    (["--coreset-ratio", "2"], "coreset_ratio must be in"),
])
def test_cli_bad_options_fail_fast_with_the_valid_choices(sample_dir, tmp_path, capsys, args, message):
    assert main(["--data", str(sample_dir), "--out", str(tmp_path / "x"), *FAST, *args]) == 1
    assert message in capsys.readouterr().err


def test_cli_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x"), *FAST]) == 1
    assert "no PNG/JPEG/BMP/TIFF images found" in capsys.readouterr().err


def test_unreadable_files_are_skipped_and_counted_or_fail_under_strict(sample_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_dir / "train" / "good", data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["--data", str(data), "--out", str(tmp_path / "a"), *FAST]) == 0
    assert store.read_metadata(tmp_path / "a").provenance.n_skipped == 1
    assert main(["--data", str(data), "--out", str(tmp_path / "b"), "--strict", *FAST]) == 1
    assert "broken.png" in capsys.readouterr().err


def test_too_few_images_for_the_coreset(sample_dir):
    paths = list_images(sample_dir)[:3]
    with pytest.raises(BuildError, match="raise --coreset-ratio"):
        build_index(paths, PatchCoreConfig(image_size=64, coreset_ratio=0.005), BuildOptions(progress=False))
    with pytest.raises(BuildError, match="calibration-images must be >= 2"):
        build_index(paths, PatchCoreConfig(image_size=64), BuildOptions(progress=False, calibration_images=1))


def test_calibration_sample_and_chunked_holdout_are_seeded_and_disjoint(sample_dir):
    assert sample_ids(10, 20, seed=0).tolist() == list(range(10))
    picked = sample_ids(100, 30, seed=0)
    assert picked.tolist() == sample_ids(100, 30, seed=0).tolist() and len(set(picked.tolist())) == 30
    assert picked.tolist() != sample_ids(100, 30, seed=1).tolist() and picked.tolist() == sorted(picked.tolist())
    paths = list_images(sample_dir)
    train, hold = split_held_out(paths, 200, seed=0)
    assert (train, hold) == split_held_out(paths, 200, seed=0) and len(hold) == 2  # at least 2, else 10 %
    assert not set(train) & set(hold) and len(train) + len(hold) == len(paths)


def test_calibration_data_replaces_the_holdout(sample_dir, tmp_path):
    calib = tuple(sorted((sample_dir / "test" / "good").glob("*.png")))
    options = BuildOptions(calibration_paths=calib, progress=False)
    result = build_index(list_images(sample_dir), PatchCoreConfig(image_size=64, coreset_ratio=0.1), options)
    p = result.metadata.provenance
    assert (p.n_train_images, p.n_calibration_images, p.calibration_source) == (16, 3, "calibration-data")


def test_training_images_score_below_the_threshold(bundle, sample_dir):
    from imaging.decode import read_image

    train = list_images(sample_dir)  # every one of them is in the bank
    scores = [s.image_score for s in bundle.detector.score_batch([read_image(p)[0] for p in train[:8]])]
    assert max(scores) < bundle.metadata.calibration.threshold
    assert np.mean(scores) < bundle.metadata.calibration.mean  # seen images sit closer to the bank than unseen


def test_sequential_coreset_equals_its_reference_and_stays_close_to_single_pass(sample_dir):
    """Chunks of 5 images: each extends the bank so far. The bank is what the numpy reference greedy gives for the
    same chunks, and it covers the training patches almost as well as one greedy over all of them."""
    from imaging.decode import read_image
    from model.coreset import greedy_coreset_reference
    from model.features import PatchEmbedder

    paths = list_images(sample_dir)
    config = PatchCoreConfig(image_size=64, coreset_ratio=0.1, coreset_mode="exact")
    train, held = split_held_out(paths, 200, seed=config.seed)  # chunked builds calibrate on held-out images
    single = build_index(train, config, BuildOptions(progress=False))  # the same bank images, in one pass
    chunked = build_index(paths, config, BuildOptions(progress=False, max_chunk_patches=5 * 64, batch_size=5))
    assert single.metadata.coreset_method == "single-pass"
    assert chunked.metadata.coreset_method == "sequential(chunks=3)"
    assert abs(chunked.index.ntotal - single.index.ntotal) <= 4

    emb = PatchEmbedder(config)
    assert chunked.metadata.provenance.calibration_source == "held-out"
    assert chunked.metadata.provenance.n_calibration_images == len(held) == 2
    batches = [emb.embed([read_image(p)[0] for p in train[i : i + 5]]).reshape(-1, emb.dim)
               for i in range(0, len(train), 5)]
    feats = np.concatenate(batches)
    # The reference: the same chunks (the buffer holds 320 new rows behind the bank), the plain numpy greedy.
    bank_ref, pending = np.empty((0, emb.dim), np.float32), []
    capacity = 320 + int(round(0.1 * len(feats))) + -(-len(feats) // 320)

    def extend(bank, pending):  # a small bank: its distances are exact, as with the rows stacked as fixed centres
        rows = np.concatenate([bank, *pending])
        k = max(1, int(round(0.1 * (len(rows) - len(bank)))))
        picked = greedy_coreset_reference(rows, k, projection_dim=config.projection_dim, seed=config.seed,
                                          fixed=np.arange(len(bank)))
        return np.concatenate([bank, rows[picked]])

    for b in batches:
        if len(bank_ref) + sum(map(len, pending)) + len(b) > capacity:
            bank_ref, pending = extend(bank_ref, pending), []
        pending.append(b)
    bank_ref = extend(bank_ref, pending)
    bank = lambda r: np.stack([r.index.reconstruct(i) for i in range(r.index.ntotal)])  # noqa: E731
    np.testing.assert_allclose(bank(chunked), bank_ref, rtol=1e-5, atol=1e-5)

    both = lambda b: np.concatenate([b, feats])  # noqa: E731
    r_single = coverage_radius(both(bank(single)), np.arange(single.index.ntotal))
    r_chunked = coverage_radius(both(bank(chunked)), np.arange(chunked.index.ntotal))
    assert r_chunked <= 1.10 * r_single


def test_patchcore_calibrate_rechooses_the_threshold_without_a_rebuild(index_dir, tmp_path, capsys):
    from index_store import calibrate as calibrate_cli
    from model.calibration import recalibrate

    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    before = store.read_metadata(copy)
    assert calibrate_cli.main([str(copy)]) == 0  # show only
    assert "most atypical good images" in capsys.readouterr().out
    assert store.read_metadata(copy) == before
    assert calibrate_cli.main([str(copy), "--target-fpr", "0.2"]) == 0
    after = store.read_metadata(copy)
    assert after.calibration == recalibrate(before.calibration, 0.2)
    assert after.calibration.threshold < before.calibration.threshold
    assert store.load(copy).detector.calibration.threshold == after.calibration.threshold  # still a valid index
    assert calibrate_cli.main([str(copy), "--threshold-rule", "conformal"]) == 0
    assert store.read_metadata(copy).calibration.rule == "conformal"
    assert calibrate_cli.main([str(tmp_path / "nothing")]) == 1


@pytest.mark.parametrize("config, draft", [(PatchCoreConfig(image_size=64), 128),
                                           (PatchCoreConfig(image_size=64, tile_size=64), None)])
def test_the_builder_decodes_as_the_server(monkeypatch, sample_dir, config, draft):
    """Big JPEGs at a reduced scale (model.preprocess.decode_side) in the builder too: train and serve pixels match."""
    import index_store.build as build_module
    from model.features import PatchEmbedder

    seen, real = [], build_module.iter_images

    def spy(paths, workers, prefetch, max_pixels, draft=None):
        seen.append(draft)
        return real(paths, workers, prefetch, max_pixels, draft)

    monkeypatch.setattr(build_module, "iter_images", spy)
    paths = list_images(sample_dir)[:2]
    out = list(build_module.embed_stream(paths, PatchEmbedder(config), BuildOptions(progress=False), print, "x"))
    assert seen == [draft] and sum(len(names) for _, names in out) == 2
