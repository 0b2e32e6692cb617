"""A synthetic inspection data set the project generates itself: the embedded default for the demo and the tests.

The "part" is a machined disc seen from above: a dark background, a brushed metal face with concentric tool marks
and grain, and a random small shift, rotation of the grain and lighting change per picture. Defects are a dark
scratch or a rust-coloured spot at a known place, with pixel masks, written in the MVTec AD layout:

    ROOT/train/good/NNN.png   ROOT/test/good/NNN.png   ROOT/test/<defect>/NNN.png
    ROOT/ground_truth/<defect>/NNN_mask.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

DEFECTS = ("scratch", "spot")


def good_image(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """(size, size, 3) uint8 picture of a defect-free part."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-2, 2, size=2)
    r = np.hypot(yy - cy, xx - cx) / size
    angle = rng.uniform(0, np.pi)
    grain = gaussian_filter(rng.standard_normal((size, size)), sigma=(0.8, 6.0))  # brushed, anisotropic
    grain = _rotate(grain, angle)
    face = 150 + 12 * np.sin(r * size / 2.5) + 9 * grain / (grain.std() + 1e-6)
    background = 45 + 4 * gaussian_filter(rng.standard_normal((size, size)), 1.5)
    inside = 1.0 / (1.0 + np.exp((r - 0.40) * size / 1.5))  # soft disc edge
    gray = inside * face + (1 - inside) * background
    gray *= rng.uniform(0.93, 1.07)  # lighting
    tint = np.array([1.0, 0.98, 0.94], dtype=np.float32)
    return np.clip(gray[..., None] * tint + rng.normal(0, 2.0, (size, size, 3)), 0, 255).astype(np.uint8)


def _rotate(a: np.ndarray, angle: float) -> np.ndarray:
    img = Image.fromarray(((a - a.min()) / (np.ptp(a) + 1e-9) * 255).astype(np.uint8))
    return np.asarray(img.rotate(np.degrees(angle), resample=Image.Resampling.BILINEAR, expand=False), np.float32)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator, center: tuple[int, int] | None = None):
    """Return (image with the defect, (H, W) bool mask). center is (row, col); default: random on the face."""
    size = image.shape[0]
    if center is None:
        rad, ang = rng.uniform(0.08, 0.3) * size, rng.uniform(0, 2 * np.pi)
        center = (int(size / 2 + rad * np.sin(ang)), int(size / 2 + rad * np.cos(ang)))
    yy, xx = np.mgrid[0:size, 0:size]
    out = image.astype(np.float32)
    if kind == "scratch":
        ang = rng.uniform(0, np.pi)
        length = size * rng.uniform(0.10, 0.18)
        along = (yy - center[0]) * np.sin(ang) + (xx - center[1]) * np.cos(ang)
        across = -(yy - center[0]) * np.cos(ang) + (xx - center[1]) * np.sin(ang)
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= 1.5)
        out[mask] *= 0.35
    elif kind == "spot":
        radius = size * rng.uniform(0.03, 0.05)
        mask = np.hypot(yy - center[0], xx - center[1]) <= radius
        out[mask] = out[mask] * 0.4 + np.array([150, 70, 30], np.float32) * 0.6
    else:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {DEFECTS}")
    return np.clip(out, 0, 255).astype(np.uint8), mask


def write_sample(root: Path, n_train: int = 30, n_test_good: int = 4, n_test_defect: int = 3, seed: int = 0,
                 size: int = 224) -> Path:
    """Write the synthetic data set in the MVTec AD layout under root; returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for sub in ("train/good", "test/good", *(f"test/{d}" for d in DEFECTS), *(f"ground_truth/{d}" for d in DEFECTS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(good_image(rng, size)).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(good_image(rng, size)).save(root / "test" / "good" / f"{i:03d}.png")
    for kind in DEFECTS:
        for i in range(n_test_defect):
            image, mask = add_defect(good_image(rng, size), kind, rng)
            Image.fromarray(image).save(root / "test" / kind / f"{i:03d}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root
