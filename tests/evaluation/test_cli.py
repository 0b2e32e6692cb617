"""patchcore-evaluate end to end on the tiny synthetic disc sample (MVTec, BTAD and VisA layouts), plus its parts."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import cli
from evaluation.datasets import Sample
from evaluation.figures import compose, figure_name, pick_samples
from evaluation.report import TABLE_COLUMNS, markdown_table
from evaluation.runner import eval_shape
from demo.sample import write_sample

from .layouts import to_btad, to_folder, to_visa

HEADER = "| " + " | ".join(TABLE_COLUMNS) + " |"
FAST = ["--image-size", "128", "--coreset-ratio", "0.1", "--threads", "2", "--no-progress"]
N_TEST = 3 + 2 * 2  # 3 good + 2 scratch + 2 spot
METRICS = ("image_auroc", "image_f1_max", "image_f1_at_threshold", "fpr_at_threshold", "recall_at_threshold",
           "oracle_recall_at_target", "pixel_auroc", "pixel_aupro")
IMAGE_METRICS = METRICS[:6]


def evaluate(*args: str | Path) -> tuple[int, str, str]:
    """Run the CLI in-process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    write_sample(root / "disc", n_train=12, n_test_good=3, n_test_defect=2, size=128)
    return root


@pytest.fixture(scope="module")
def first(data, tmp_path_factory) -> tuple[Path, str]:
    """The first run: builds OUT/disc/index. -> (OUT, stdout)"""
    out = tmp_path_factory.mktemp("first")
    code, stdout, stderr = evaluate("--data", data, "--layout", "mvtec", "--out", out, *FAST)
    assert code == 0, stderr
    return out, stdout


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def check_metrics(document: dict, categories: list[str], masks: bool = True) -> None:
    assert list(document["categories"]) == categories
    for entry in [*document["categories"].values(), document["average"]]:
        for key in METRICS if masks else IMAGE_METRICS:
            assert 0.0 <= entry[key] <= 1.0, (key, entry[key])
        if not masks:
            assert entry["pixel_auroc"] is None and entry["pixel_aupro"] is None


# ---------------------------------------------------------------- end to end, MVTec layout

def test_scores_csv_has_one_row_per_test_image(first, data):
    out, _ = first
    rows = read_scores(out / "disc" / "scores.csv")
    assert list(rows[0]) == ["image", "defect_type", "label", "image_score", "normalised_score", "is_anomalous"]
    assert len(rows) == N_TEST
    assert sorted(r["image"] for r in rows) == sorted(
        p.relative_to(data).as_posix() for p in (data / "disc" / "test").glob("*/*.png"))
    assert {(r["defect_type"], r["label"]) for r in rows} == {("good", "0"), ("scratch", "1"), ("spot", "1")}
    assert all(0.0 <= float(r["normalised_score"]) <= 1.0 and r["is_anomalous"] in ("0", "1") for r in rows)


def test_metrics_json_in_range_and_detection_works(first):
    out, _ = first
    document = json.loads((out / "metrics.json").read_text())
    check_metrics(document, ["disc"])
    disc = document["categories"]["disc"]
    assert disc["image_auroc"] >= 0.9  # easy synthetic defects, pretrained MobileNetV2
    assert disc["pixel_auroc"] >= 0.9
    assert (disc["n_test"], disc["n_good"], disc["n_anomalous"]) == (N_TEST, 3, 4)
    assert disc["eval_resolution_hw"] == [[128, 128]]  # never upscaled past the 128 px originals
    assert document["eval_size"] == 256 and "256" in document["eval_resolution"]
    assert disc["config"]["image_size"] == 128 and disc["index"]["reused"] is False
    calibration = disc["index"]["calibration"]
    assert disc["threshold"] == calibration["threshold"] and disc["target_fpr"] == calibration["target_fpr"] == 0.01
    assert calibration["method"] == "leave-one-image-out" and len(calibration["scores"]) == 12
    assert disc["recall_at_threshold"] >= disc["oracle_recall_at_target"] - 0.05 and disc["fpr_at_threshold"] <= 1 / 3
    assert {"index", "score", "maps", "metrics", "figures", "total"} <= set(disc["timings_s"])
    assert document["peak_rss_mb"] > 0


def test_results_table_written_and_printed(first):
    out, stdout = first
    markdown = (out / "results.md").read_text()
    lines = markdown.splitlines()
    start = lines.index(HEADER)
    assert lines[start + 2].startswith("| disc ")
    average = lines[start + 3]
    assert average.startswith("| Average ")
    cells = [c.strip() for c in average.strip("|").split("|")]
    assert len(cells) == 5 and all(len(c.split(".")[1]) == 3 for c in cells[1:])
    assert "256 px" in markdown  # the caption states the evaluation resolution
    assert HEADER in stdout and "| Realised FPR |" in stdout and "Oracle recall at target" in stdout  # decisions


def test_figures_mix_defect_types(first):
    out, _ = first
    written = sorted(p.name for p in (out / "disc" / "figures").glob("*.png"))
    assert written == ["good_000.png", "scratch_000.png", "spot_000.png"]  # round robin: defects first, then good
    with Image.open(out / "disc" / "figures" / "spot_000.png") as figure:
        assert figure.width >= 3 * 128 and figure.height > 128


def test_index_reuse_gives_identical_scores(first, data, tmp_path):
    out, _ = first
    for index in (out, out / "disc" / "index"):  # a parent (earlier --out) and the index folder itself
        again = tmp_path / index.name
        code, _, stderr = evaluate("--data", data, "--layout", "mvtec", "--categories", "disc", "--out", again,
                                   "--index", index, "--figures", "0", "--threads", "2", "--no-progress")
        assert code == 0, stderr
        assert read_scores(again / "disc" / "scores.csv") == read_scores(out / "disc" / "scores.csv")
        assert json.loads((again / "metrics.json").read_text())["categories"]["disc"]["index"]["reused"] is True
        assert not (again / "disc" / "index").exists() and not (again / "disc" / "figures").exists()


def test_eval_size_bounds_the_pixel_grid(first, data, tmp_path):
    out, _ = first
    code, _, stderr = evaluate("--data", data, "--layout", "mvtec", "--out", tmp_path, "--index", out,
                               "--eval-size", "64", "--figures", "1", "--threads", "2", "--no-progress")
    assert code == 0, stderr
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert document["categories"]["disc"]["eval_resolution_hw"] == [[64, 64]]
    check_metrics(document, ["disc"])
    assert [p.name for p in (tmp_path / "disc" / "figures").iterdir()] == ["scratch_000.png"]


def test_reuse_refuses_contradicting_model_options(first, data, tmp_path):
    out, _ = first
    code, _, stderr = evaluate("--data", data, "--layout", "mvtec", "--out", tmp_path, "--index", out,
                               "--image-size", "96", "--no-progress")
    assert code == 1
    assert "image_size: given 96, index 128" in stderr and "drop the model options" in stderr


def test_unknown_category_names_the_available_ones(data, tmp_path):
    code, stdout, stderr = evaluate("--data", data, "--layout", "mvtec", "--categories", "bottle", "--out",
                                    tmp_path, "--no-progress")
    assert code == 1 and stdout == ""
    assert "unknown categories ['bottle']" in stderr and "available categories: ['disc']" in stderr
    assert not any(tmp_path.iterdir())  # failed before any work


# ---------------------------------------------------------------- other layouts

@pytest.mark.parametrize("layout, convert, category", [("btad", to_btad, "01"), ("visa", to_visa, "disc")])
def test_other_layouts_end_to_end(layout, convert, category, data, tmp_path):
    root = convert(data / "disc", tmp_path / layout)
    out = tmp_path / "out"
    code, stdout, stderr = evaluate("--data", root, "--layout", layout, "--out", out, "--figures", "2", *FAST)
    assert code == 0, stderr
    document = json.loads((out / "metrics.json").read_text())
    check_metrics(document, [category])
    assert document["categories"][category]["image_auroc"] >= 0.9
    assert len(read_scores(out / category / "scores.csv")) == N_TEST
    assert (out / category / "index" / "metadata.json").is_file()
    kinds = {"btad": ("ko", "ok"), "visa": ("anomaly", "normal")}[layout]
    assert sorted(p.name.split("_")[0] for p in (out / category / "figures").iterdir()) == sorted(kinds)
    assert HEADER in stdout and f"| {category} " in stdout


def test_mvtec_without_masks_gives_complete_image_metrics_and_dashes(data, tmp_path):
    root = tmp_path / "labels_only"
    shutil.copytree(data / "disc", root / "disc", ignore=shutil.ignore_patterns("ground_truth"))
    out = tmp_path / "out"
    code, stdout, stderr = evaluate("--data", root, "--layout", "mvtec", "--out", out, "--figures", "1", *FAST)
    assert code == 0, stderr
    document = json.loads((out / "metrics.json").read_text())
    check_metrics(document, ["disc"], masks=False)
    assert document["categories"]["disc"]["image_auroc"] >= 0.9 and not document["categories"]["disc"]["has_masks"]
    row = next(line for line in stdout.splitlines() if line.startswith("| disc "))
    assert [c.strip() for c in row.strip("|").split("|")][3:] == ["-", "-"]


@pytest.mark.parametrize("masks", [True, False])
def test_folder_layout_end_to_end(data, tmp_path, masks):
    root = to_folder(data / "disc", tmp_path / "my_product", masks=masks)
    out = tmp_path / "out"
    code, stdout, stderr = evaluate("--data", root, "--layout", "folder", "--out", out, "--test-split-ratio", "0.2",
                                    "--figures", "0", *FAST)
    assert code == 0, stderr
    document = json.loads((out / "metrics.json").read_text())
    check_metrics(document, ["my_product"], masks=masks)
    entry = document["categories"]["my_product"]
    assert (entry["n_good"], entry["n_anomalous"], entry["index"]["n_train_images"]) == (3, 4, 12)  # 20 % of 15
    assert entry["image_auroc"] >= 0.9 and "| my_product " in stdout


def test_folder_layout_errors_say_what_to_do(data, tmp_path):
    root = to_folder(data / "disc", tmp_path / "p")
    (root / "masks" / "spot" / "000.png").unlink()
    code, _, stderr = evaluate("--data", root, "--layout", "folder", "--out", tmp_path / "o", *FAST)
    assert code == 1 and "has no mask" in stderr and "--mask-dir" in stderr
    code, _, stderr = evaluate("--data", root, "--layout", "folder", "--normal-dir", "ok", "--out", tmp_path / "o",
                               *FAST)
    assert code == 1 and "--normal-dir" in stderr and "'good'" in stderr


# ---------------------------------------------------------------- parts

def test_eval_shape_keeps_aspect_and_never_upscales():
    assert eval_shape((900, 900), 256) == (256, 256)
    assert eval_shape((600, 800), 256) == (192, 256)
    assert eval_shape((1000, 500), 256) == (256, 128)
    assert eval_shape((128, 100), 256) == (128, 100)


def test_pick_samples_round_robin_over_types():
    samples = [Sample(Path(f"{kind}/{i}.png"), int(kind != "good"), kind, None)
               for kind in ("good", "crack", "hole") for i in range(3)]
    assert [(s.defect_type, s.image_path.stem) for s in pick_samples(samples, 5)] == [
        ("crack", "0"), ("hole", "0"), ("good", "0"), ("crack", "1"), ("hole", "1")]
    assert pick_samples(samples, 0) == () and len(pick_samples(samples, 50)) == 9
    assert figure_name(samples[3]) == "crack_0.png"


def test_compose_places_three_panels():
    image = np.full((20, 30, 3), 77, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    figure = compose(image, mask, np.zeros((20, 30)), "title")
    assert figure.shape == (20 + 28, 3 * 30 + 8, 3) and figure.dtype == np.uint8
    assert (figure[28:, :30] == 77).all()  # the untouched image, below the two text lines
    assert (figure[28 + 5:28 + 10, 34 + 5:34 + 10] == 255).all() and (figure[28:, 34:34 + 5] == 0).all()
    with pytest.raises(ValueError, match="share one grid"):
        compose(image, mask[:10], np.zeros((20, 30)), "title")


def test_markdown_table_aligns_columns():
    table = markdown_table(("Category", "Score"), [["a", "1.000"], ["Average", "0.500"]])
    assert table.splitlines() == ["| Category | Score |", "|:---------|------:|", "| a        | 1.000 |",
                                  "| Average  | 0.500 |"]
