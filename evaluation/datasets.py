"""Dataset layouts (MVTec AD, BTAD, VisA, a plain folder) -> one frozen, sorted `Category` of train paths and test
samples.

Loaders only list files and check that every anomalous test image has its mask, when the set has masks at all;
pixels are read later (`load_mask`). Layouts:
- MVTec AD: CAT/train/good/*.png, CAT/test/<defect>/NNN.png, CAT/ground_truth/<defect>/NNN_mask.png. Without a
            ground_truth/ folder the category has image labels only (most factories have no pixel masks).
- BTAD:     NN/train/ok/*, NN/test/{ok,ko}/*, NN/ground_truth/ko/* (mask matched by file stem, any extension)
- VisA:     ROOT/split_csv/1cls.csv with columns object,split,label,image,mask (paths relative to ROOT)
- folder:   evaluation.folder_layout: a folder of good images and a folder per defect kind, masks optional, as
            anomalib's Folder data module takes them.
"""

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


class DatasetError(ValueError):
    """The files on disk do not follow the expected layout; the message names the file or folder to fix."""


@dataclass(frozen=True)
class Sample:
    image_path: Path
    label: int  # 0 good, 1 anomalous
    defect_type: str  # MVTec: the test sub-folder ("good", "broken_large"); BTAD: "ok"/"ko"; VisA: "normal"/"anomaly"
    mask_path: Path | None  # None for good images


@dataclass(frozen=True)
class Category:
    name: str
    train: tuple[Path, ...]  # good images only, sorted
    test: tuple[Sample, ...]  # sorted by image path

    @property
    def has_masks(self) -> bool:
        """True when every anomalous test image has a ground-truth mask (pixel metrics are possible)."""
        anomalous = [s for s in self.test if s.label == 1]
        return bool(anomalous) and all(s.mask_path is not None for s in anomalous)


def load_mvtec(root: Path | str, category: str) -> Category:
    """MVTec AD: `test/good` is label 0 without mask; other test folders need `ground_truth/<type>/<stem>_mask.png`,
    unless the category has no `ground_truth/` folder at all (image labels only: every mask_path is None)."""
    folder = _category_folder(Path(root), category, "mvtec")
    has_masks = (folder / "ground_truth").is_dir()
    test = []
    for defect_folder in subfolders(folder / "test"):
        for image in images_in(defect_folder):
            if defect_folder.name == "good":
                test.append(Sample(image, 0, "good", None))
                continue
            mask = folder / "ground_truth" / defect_folder.name / f"{image.stem}_mask.png"
            test.append(Sample(image, 1, defect_folder.name, _existing_mask(image, mask) if has_masks else None))
    return make_category(category, images_in(folder / "train" / "good"), test, folder)


def load_btad(root: Path | str, category: str) -> Category:
    """BTAD: `ok` is label 0, `ko` is label 1 with a mask in `ground_truth/ko` of the same stem (.png or .bmp)."""
    folder = _category_folder(Path(root), category, "btad")
    masks = by_stem(images_in(folder / "ground_truth" / "ko"))
    test = [Sample(image, 0, "ok", None) for image in images_in(folder / "test" / "ok")]
    for image in images_in(folder / "test" / "ko"):
        expected = folder / "ground_truth" / "ko" / f"{image.stem}.png"
        test.append(Sample(image, 1, "ko", _existing_mask(image, masks.get(image.stem, expected))))
    return make_category(category, images_in(folder / "train" / "ok"), test, folder)


def load_visa(root: Path | str, category: str) -> Category:
    """VisA from `split_csv/1cls.csv`: `object` is the category; anomalies need an existing, non-empty mask path."""
    root = Path(root)
    rows = _visa_rows(root)
    mine = [row for row in rows if row["object"] == category]
    if not mine:
        objects = sorted({row["object"] for row in rows})
        raise DatasetError(f"category {category!r} has no rows in {root / VISA_CSV}; objects there: {objects}.")
    train, test = [], []
    for row in mine:
        if row["split"] == "train" and row["label"] == "anomaly":
            raise DatasetError(f"{root / VISA_CSV}: train row {row['image']!r} is labelled anomaly; "
                               "training images must be normal: use the 1cls split.")
        sample = _visa_sample(root, row)
        if row["split"] == "train":
            train.append(sample.image_path)
        else:
            test.append(sample)
    return make_category(category, train, test, root)


LAYOUTS: Mapping[str, Callable[[Path | str, str], Category]] = MappingProxyType(
    {"mvtec": load_mvtec, "btad": load_btad, "visa": load_visa})


def load_category(root: Path | str, layout: str, category: str) -> Category:
    """Dispatch on the layout name; an unknown one raises with the valid names."""
    return _loader(layout)(root, category)


def list_categories(root: Path | str, layout: str) -> list[str]:
    """mvtec/btad: sub-folders of root that have a train/ folder; visa: the distinct `object` values of the csv."""
    _loader(layout)
    root = Path(root)
    if layout == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder: pass the folder that holds the categories.")
    return sorted(child.name for child in root.iterdir() if (child / "train").is_dir())


def load_mask(path: Path | str, shape: tuple[int, int]) -> np.ndarray:
    """Mask file -> (H, W) bool, True where the mask is non-zero; resized (nearest) to shape = (H, W) if needed."""
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be the image's (height, width), got {shape!r}.")
    try:
        with Image.open(path) as image:
            mask = image.convert("L")
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask {path}: {error}") from error
    height, width = shape
    if mask.size != (width, height):  # PIL sizes are (W, H)
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(mask) > 0  # (H, W) bool


def _loader(layout: str) -> Callable[[Path | str, str], Category]:
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; valid layouts: {sorted(LAYOUTS)}.")
    return LAYOUTS[layout]


def _category_folder(root: Path, category: str, layout: str) -> Path:
    folder = root / category
    if not folder.is_dir():
        existing = list_categories(root, layout) if root.is_dir() else []
        raise DatasetError(f"category folder {folder} does not exist; categories under {root}: {existing or 'none'}.")
    return folder


def make_category(name: str, train: list[Path], test: list[Sample], where: Path) -> Category:
    if not train:
        raise DatasetError(f"category {name!r} has no training images under {where}: "
                           f"expected {sorted(IMAGE_EXTENSIONS)} files in its train split.")
    if not test:
        raise DatasetError(f"category {name!r} has no test images under {where}.")
    return Category(name, tuple(sorted(train)), tuple(sorted(test, key=lambda sample: sample.image_path)))


def subfolders(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if child.is_dir()) if folder.is_dir() else []


def images_in(folder: Path) -> list[Path]:
    """Image files of one folder (hidden files such as macOS `._000.png` skipped), sorted."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file())


def by_stem(paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise DatasetError(f"two masks share the stem {path.stem!r}: {found[path.stem]} and {path}; keep one.")
        found[path.stem] = path
    return found


def _existing_mask(image: Path, mask: Path) -> Path:
    if not mask.is_file():
        raise DatasetError(f"anomalous test image {image} has no mask: expected {mask}. Restore the ground-truth "
                           "file or remove the image from the test set (a set with no ground-truth folder at all is "
                           "evaluated on image labels only).")
    return mask


def _visa_rows(root: Path) -> list[dict[str, str]]:
    table = root / VISA_CSV
    if not table.is_file():
        raise DatasetError(f"VisA split file {table} not found: pass the VisA root that holds split_csv/1cls.csv.")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in VISA_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{table} lacks columns {missing}; expected header {','.join(VISA_COLUMNS)}.")
        return [{key: (row[key] or "").strip() for key in VISA_COLUMNS} for row in reader]


def _visa_sample(root: Path, row: dict[str, str]) -> Sample:
    where = f"{root / VISA_CSV}, row of image {row['image']!r}"
    if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
        raise DatasetError(f"{where}: split must be train|test and label normal|anomaly, "
                           f"got split={row['split']!r} label={row['label']!r}.")
    image = root / row["image"]
    if not image.is_file():
        raise DatasetError(f"{where}: image {image} does not exist; pass the VisA root the csv paths start from.")
    if row["label"] == "normal":
        return Sample(image, 0, "normal", None)
    if not row["mask"]:
        raise DatasetError(f"{where}: anomalous image {image} has an empty mask column; "
                           "fill in its ground-truth path (relative to the VisA root).")
    return Sample(image, 1, "anomaly", _existing_mask(image, root / row["mask"]))
