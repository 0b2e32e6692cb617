"""Copy the synthetic MVTec-layout sample (demo.sample) into the BTAD and VisA layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

from .dataset_builders import write_visa_csv


def _copy(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target.as_posix()


def _defects(category: Path) -> list[tuple[str, Path]]:
    """(defect type, image) of every anomalous test image."""
    return [(folder.name, image) for folder in sorted((category / "test").iterdir()) if folder.name != "good"
            for image in sorted(folder.glob("*.png"))]


def to_btad(category: Path, root: Path, product: str = "01") -> Path:
    """CAT/{train,test}/good -> NN/{train,test}/ok; defects -> NN/test/ko/<type>_<stem>.png, masks of the same name."""
    out = root / product
    for split in ("train", "test"):
        for image in sorted((category / split / "good").glob("*.png")):
            _copy(image, out / split / "ok" / image.name)
    for defect, image in _defects(category):
        _copy(image, out / "test" / "ko" / f"{defect}_{image.name}")
        _copy(category / "ground_truth" / defect / f"{image.stem}_mask.png", out / "ground_truth" / "ko" /
              f"{defect}_{image.name}")
    return root


def to_visa(category: Path, root: Path, name: str = "disc") -> Path:
    """VisA: NAME/Data/Images/{Normal,Anomaly}/*, NAME/Data/Masks/Anomaly/*, split_csv/1cls.csv (relative paths)."""
    rows = []
    data = Path(name) / "Data"
    for split in ("train", "test"):
        for image in sorted((category / split / "good").glob("*.png")):
            target = data / "Images" / "Normal" / f"{split}_{image.name}"
            _copy(image, root / target)
            rows.append(f"{name},{split},normal,{target.as_posix()},")
    for defect, image in _defects(category):
        target = data / "Images" / "Anomaly" / f"{defect}_{image.name}"
        mask = data / "Masks" / "Anomaly" / f"{defect}_{image.name}"
        _copy(image, root / target)
        _copy(category / "ground_truth" / defect / f"{image.stem}_mask.png", root / mask)
        rows.append(f"{name},test,anomaly,{target.as_posix()},{mask.as_posix()}")
    write_visa_csv(root, rows)
    return root


def to_folder(category: Path, root: Path, masks: bool = True) -> Path:
    """CAT -> a user's own folder: good/ (train and test good, renamed), crack-like defect folders named after the
    defect types, and masks/<type>/<stem>.png (no `_mask` suffix) when masks is set."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for image in sorted((category / split / "good").glob("*.png")):
            _copy(image, root / "good" / f"{split}_{image.name}")
    for defect, image in _defects(category):
        _copy(image, root / defect / image.name)
        if masks:
            _copy(category / "ground_truth" / defect / f"{image.stem}_mask.png", root / "masks" / defect / image.name)
    return root
