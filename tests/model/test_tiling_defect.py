"""Tiling end to end on a synthetic 4096 x 4096 picture with a 12-pixel defect: the untiled default (the whole
picture resized to 256 px, where the defect is under one pixel wide) misses it; the tiled config (256-px tiles at
native resolution) finds it, with the anomaly map's peak inside the defect.

The product is a stationary woven texture, so the tiled bank is built from two 1024 x 1024 good pictures of it (the
same texture at the same native scale: 32 tiles instead of 512, which keeps the test to CPU seconds); the untiled
bank from two 4096 x 4096 good pictures, the size it will inspect (it resizes them anyway)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from index_store.build import BuildOptions, build_index
from model.config import PatchCoreConfig
from model.detector import Detector
from model.features import PatchEmbedder

pytestmark = pytest.mark.slow
SIDE, DEFECT, AT = 4096, 12, (2000, 3000)


def picture(seed: int, defect: bool = False, side: int = SIDE) -> np.ndarray:
    """A fine woven texture with sensor noise; the defect is a 12 x 12 green fleck."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    base = 128 + 30 * np.sin(x / 7.0 + seed) * np.cos(y / 11.0) + rng.normal(0, 4, (side, side)).astype(np.float32)
    img = np.clip(np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1), 0, 255).astype(np.uint8)
    if defect:
        img[AT[0] : AT[0] + DEFECT, AT[1] : AT[1] + DEFECT] = (30, 200, 30)
    return img


def good_paths(folder, side: int):
    paths = []
    for i in range(2):
        paths.append(folder / f"{side}-{i}.png")
        Image.fromarray(picture(i, side=side)).save(paths[-1], compress_level=1)
    return paths


def detector_for(paths, config) -> Detector:
    result = build_index(paths, config, BuildOptions(progress=False, batch_size=2))
    return Detector(config, PatchEmbedder(config), result.index, result.metadata.calibration)


def test_tiled_config_finds_a_12_pixel_defect_that_the_untiled_default_misses(tmp_path):
    good, bad = picture(10), picture(11, defect=True)
    untiled = detector_for(good_paths(tmp_path, SIDE), PatchCoreConfig())
    tiled = detector_for(good_paths(tmp_path, 1024), PatchCoreConfig(image_size=256, tile_size=256, tile_overlap=0.0))
    u_good, u_bad = untiled.predict(good), untiled.predict(bad)
    t_good, t_bad = tiled.predict(good), tiled.predict(bad)

    print(f"untiled good {u_good.image_score:.3f} defect {u_bad.image_score:.3f} threshold {u_bad.threshold:.3f}; "
          f"tiled good {t_good.image_score:.3f} defect {t_bad.image_score:.3f} threshold {t_bad.threshold:.3f}")
    # Untiled: the defect is under a pixel after the resize; the defective picture does not even outscore a good one.
    assert u_bad.image_score < u_good.image_score * 1.05 and not u_bad.is_anomalous
    # Tiled: anomalous, well above the good picture, and the map peaks inside the defect (the map is on the
    # 4096 x 4096 picture itself).
    assert t_bad.is_anomalous and not t_good.is_anomalous
    assert t_bad.image_score > 1.5 * t_good.image_score
    assert t_bad.anomaly_map.shape == (SIDE, SIDE)
    peak = np.unravel_index(int(np.argmax(t_bad.anomaly_map)), t_bad.anomaly_map.shape)
    assert AT[0] <= peak[0] < AT[0] + DEFECT and AT[1] <= peak[1] < AT[1] + DEFECT, peak
    u_peak = np.unravel_index(int(np.argmax(u_bad.anomaly_map)), u_bad.anomaly_map.shape)
    assert not (AT[0] - 64 <= u_peak[0] < AT[0] + DEFECT + 64 and AT[1] - 64 <= u_peak[1] < AT[1] + DEFECT + 64)
