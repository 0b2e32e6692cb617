"""Dataset loaders on tiny synthetic trees that follow each published layout, their errors, and real MVTec data."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.datasets import (LAYOUTS, Category, DatasetError, Sample, list_categories, load_btad, load_category,
                                 load_mask, load_mvtec, load_visa)

from .dataset_builders import SIZE, build_btad, build_mvtec, build_visa, write_image, write_mask, write_visa_csv

REAL_MVTEC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mvtec_ad"

QUARTER = np.zeros((SIZE, SIZE), dtype=bool)
QUARTER[: SIZE // 2, : SIZE // 2] = True


# ---------------------------------------------------------------- MVTec AD

def test_mvtec_layout(tmp_path):
    root = build_mvtec(tmp_path)
    category = load_mvtec(root, "bottle")
    assert category.name == "bottle"
    assert [p.name for p in category.train] == ["000.png", "001.png", "002.png"]
    assert [(s.defect_type, s.image_path.name, s.label) for s in category.test] == [
        ("broken_large", "000.png", 1), ("broken_large", "001.png", 1), ("contamination", "000.png", 1),
        ("good", "000.png", 0), ("good", "001.png", 0)]
    for sample in category.test:
        if sample.label:
            assert sample.mask_path == root / "bottle" / "ground_truth" / sample.defect_type / (
                sample.image_path.stem + "_mask.png")
        else:
            assert sample.mask_path is None
    assert list(category.test) == sorted(category.test, key=lambda s: s.image_path)


def test_results_are_frozen(tmp_path):
    category = load_mvtec(build_mvtec(tmp_path), "bottle")
    assert isinstance(category.train, tuple) and isinstance(category.test, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        category.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        category.test[0].label = 0


def test_mvtec_mask_for_good_image_is_ignored(tmp_path):
    root = build_mvtec(tmp_path)
    write_mask(root / "bottle" / "ground_truth" / "good" / "000_mask.png")
    good = [s for s in load_mvtec(root, "bottle").test if s.defect_type == "good"]
    assert [s.mask_path for s in good] == [None, None]


def test_mvtec_missing_mask_names_image_and_expected_mask(tmp_path):
    root = build_mvtec(tmp_path)
    missing = root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    missing.unlink()
    with pytest.raises(DatasetError) as error:
        load_mvtec(root, "bottle")
    assert str(root / "bottle" / "test" / "contamination" / "000.png") in str(error.value)
    assert str(missing) in str(error.value)


def test_missing_category_lists_existing_ones(tmp_path):
    root = build_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="bottel") as error:
        load_mvtec(root, "bottel")
    assert "['bottle', 'cable']" in str(error.value)


def test_empty_train_set_is_an_error(tmp_path):
    root = build_mvtec(tmp_path)
    for image in (root / "bottle" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="no training images"):
        load_mvtec(root, "bottle")


def test_list_categories_and_layout_dispatch(tmp_path):
    root = build_mvtec(tmp_path)
    assert list_categories(root, "mvtec") == ["bottle", "cable"]
    assert set(LAYOUTS) == {"mvtec", "btad", "visa"}
    assert load_category(root, "mvtec", "bottle") == load_mvtec(root, "bottle")


def test_unknown_layout_lists_valid_ones(tmp_path):
    with pytest.raises(DatasetError, match=r"'mvtecad'.*\['btad', 'mvtec', 'visa'\]"):
        list_categories(tmp_path, "mvtecad")
    with pytest.raises(DatasetError, match="valid layouts"):
        load_category(tmp_path, "MVTec", "bottle")


# ---------------------------------------------------------------- BTAD

def test_btad_layout_matches_masks_by_stem(tmp_path):
    root = build_btad(tmp_path)
    category = load_btad(root, "01")
    assert [p.name for p in category.train] == ["0000.bmp", "0001.bmp"]
    assert [(s.defect_type, s.image_path.name, s.label, s.mask_path and s.mask_path.name) for s in category.test] == [
        ("ko", "0000.bmp", 1, "0000.png"), ("ko", "0001.png", 1, "0001.bmp"), ("ok", "0000.bmp", 0, None)]
    assert list_categories(root, "btad") == ["01", "02"]


def test_btad_missing_and_ambiguous_masks(tmp_path):
    root = build_btad(tmp_path)
    (root / "01" / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(DatasetError, match=r"0001\.png has no mask"):
        load_btad(root, "01")
    write_mask(root / "01" / "ground_truth" / "ko" / "0001.bmp")
    write_mask(root / "01" / "ground_truth" / "ko" / "0000.bmp")  # now 0000.png and 0000.bmp
    with pytest.raises(DatasetError, match="share the stem '0000'"):
        load_btad(root, "01")


# ---------------------------------------------------------------- VisA

def test_visa_layout(tmp_path):
    root = build_visa(tmp_path)
    category = load_visa(root, "candle")
    assert [p.relative_to(root).as_posix() for p in category.train] == [
        "candle/Data/Images/Normal/000.JPG", "candle/Data/Images/Normal/001.JPG"]
    assert [(s.image_path.relative_to(root).as_posix(), s.label, s.defect_type) for s in category.test] == [
        ("candle/Data/Images/Anomaly/000.JPG", 1, "anomaly"), ("candle/Data/Images/Anomaly/001.JPG", 1, "anomaly"),
        ("candle/Data/Images/Normal/002.JPG", 0, "normal")]
    assert category.test[2].mask_path is None
    assert list_categories(root, "visa") == ["candle", "capsules"]


def test_visa_masks_are_non_zero_not_255(tmp_path):
    category = load_visa(build_visa(tmp_path), "candle")
    for sample in category.test[:2]:  # mask values 1 and 17
        np.testing.assert_array_equal(load_mask(sample.mask_path, (SIZE, SIZE)), QUARTER)


@pytest.mark.parametrize("row, message", [
    ("candle,test,anomaly,candle/Data/Images/Normal/000.JPG,", "empty mask column"),
    ("candle,test,anomaly,candle/Data/Images/Normal/000.JPG,candle/nothing.png", "candle/nothing.png"),
    ("candle,train,anomaly,candle/Data/Images/Normal/000.JPG,", "labelled anomaly"),
    ("candle,test,bad,candle/Data/Images/Normal/000.JPG,", "label normal\\|anomaly"),
    ("candle,test,normal,candle/missing.JPG,", "missing.JPG does not exist"),
])
def test_visa_bad_rows(tmp_path, row, message):
    write_image(tmp_path / "candle" / "Data" / "Images" / "Normal" / "000.JPG")
    write_visa_csv(tmp_path, [row, "candle,train,normal,candle/Data/Images/Normal/000.JPG,"])
    with pytest.raises(DatasetError, match=message):
        load_visa(tmp_path, "candle")


def test_visa_missing_csv_unknown_object_and_bad_header(tmp_path):
    with pytest.raises(DatasetError, match="split_csv/1cls.csv"):
        load_visa(tmp_path, "candle")
    root = build_visa(tmp_path)
    with pytest.raises(DatasetError, match=r"\['candle', 'capsules'\]"):
        load_visa(root, "pcb1")
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DatasetError, match=r"lacks columns \['label', 'mask'\]"):
        load_visa(root, "candle")


# ---------------------------------------------------------------- masks

def test_load_mask_thresholds_and_resizes_nearest(tmp_path):
    path = write_mask(tmp_path / "m.png", value=3, size=4)  # 4x4, top-left 2x2 set
    np.testing.assert_array_equal(load_mask(path, (4, 4)), QUARTER[::2, ::2])
    resized = load_mask(path, (SIZE, SIZE * 2))  # (H, W) = (8, 16): nearest keeps the quarter exactly
    assert resized.dtype == bool and resized.shape == (SIZE, SIZE * 2)
    assert resized.sum() == SIZE * SIZE // 2 and resized[: SIZE // 2, :SIZE].all()
    binary = tmp_path / "b.png"
    Image.fromarray(QUARTER).save(binary)  # mode "1"
    np.testing.assert_array_equal(load_mask(binary, (SIZE, SIZE)), QUARTER)


def test_load_mask_errors(tmp_path):
    with pytest.raises(DatasetError, match="cannot read mask"):
        load_mask(tmp_path / "absent.png", (4, 4))
    with pytest.raises(ValueError, match="height, width"):
        load_mask(write_mask(tmp_path / "m.png"), (4, 4, 3))


# ---------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_mvtec_bottle():
    if not (REAL_MVTEC / "bottle").is_dir():
        pytest.skip(f"real MVTec AD data not found at {REAL_MVTEC.resolve()}/bottle (read-only ../shared/data)")
    category = load_mvtec(REAL_MVTEC, "bottle")
    assert (len(category.train), len(category.test)) == (209, 83)
    masked = [s for s in category.test if s.mask_path is not None]
    assert len(masked) == 63 and all(s.label == 1 for s in masked)
    assert sum(s.label == 0 for s in category.test) == 20
    mask = load_mask(masked[0].mask_path, (900, 900))
    assert mask.shape == (900, 900) and 0 < mask.sum() < mask.size
    assert isinstance(category, Category) and isinstance(category.test[0], Sample)
