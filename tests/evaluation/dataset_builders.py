"""Tiny on-disk datasets that follow the published MVTec AD, BTAD and VisA layouts exactly."""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8  # images are SIZE x SIZE


def write_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), (value, value, value)).save(path)
    return path


def write_mask(path: Path, value: int = 255, size: int = SIZE) -> Path:
    """Grey-level mask whose top-left quarter is `value`, the rest 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[: size // 2, : size // 2] = value
    Image.fromarray(pixels).save(path)  # (H, W) uint8 -> mode L
    return path


def build_mvtec(root: Path) -> Path:
    """bottle: 3 train, test good (2) + broken_large (2) + contamination (1) with masks; cable: a second category."""
    bottle = root / "bottle"
    for name in ("000.png", "001.png", "002.png"):
        write_image(bottle / "train" / "good" / name)
    for name in ("000.png", "001.png"):
        write_image(bottle / "test" / "good" / name)
    for defect, count in (("broken_large", 2), ("contamination", 1)):
        for i in range(count):
            write_image(bottle / "test" / defect / f"{i:03d}.png", value=200)
            write_mask(bottle / "ground_truth" / defect / f"{i:03d}_mask.png")
    write_image(root / "cable" / "train" / "good" / "000.png")
    write_image(root / "cable" / "test" / "good" / "000.png")
    (root / "not_a_category").mkdir()  # no train/ folder
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    return root


def build_btad(root: Path) -> Path:
    """01: bmp images, mask 0000.png for image 0000.bmp (extension mismatch), 0001.bmp for 0001.png; 02: second."""
    product = root / "01"
    for name in ("0000.bmp", "0001.bmp"):
        write_image(product / "train" / "ok" / name)
    write_image(product / "test" / "ok" / "0000.bmp")
    write_image(product / "test" / "ko" / "0000.bmp", value=200)
    write_image(product / "test" / "ko" / "0001.png", value=200)
    write_mask(product / "ground_truth" / "ko" / "0000.png")
    write_mask(product / "ground_truth" / "ko" / "0001.bmp")
    write_image(root / "02" / "train" / "ok" / "0000.png")
    return root


VISA_HEADER = "object,split,label,image,mask\n"


def build_visa(root: Path) -> Path:
    """candle (2 train, 1 normal + 2 anomalous test, masks of value 1 and 17) and capsules, as in 1cls.csv."""
    rows = []
    for name in ("000", "001"):
        write_image(root / "candle" / "Data" / "Images" / "Normal" / f"{name}.JPG")
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{name}.JPG,")
    write_image(root / "candle" / "Data" / "Images" / "Normal" / "002.JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/002.JPG,")
    for name, value in (("000", 1), ("001", 17)):
        write_image(root / "candle" / "Data" / "Images" / "Anomaly" / f"{name}.JPG", value=200)
        write_mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{name}.png", value=value)
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{name}.JPG,"
                    f"candle/Data/Masks/Anomaly/{name}.png")
    write_image(root / "capsules" / "Data" / "Images" / "Normal" / "000.JPG")
    rows.append("capsules,train,normal,capsules/Data/Images/Normal/000.JPG,")
    write_visa_csv(root, rows)
    return root


def write_visa_csv(root: Path, rows: list[str]) -> Path:
    table = root / "split_csv" / "1cls.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(VISA_HEADER + "\n".join(rows) + "\n")
    return table
