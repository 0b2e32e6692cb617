"""Tiling end to end on a synthetic 4096 x 4096 picture with a 12-pixel defect: the untiled default (the whole
picture resized to 256 px, where the defect is under one pixel wide) misses it; the tiled config (256-px tiles at
native resolution) finds it, with the anomaly map's peak inside the defect."""

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


def picture(seed: int, defect: bool = False) -> np.ndarray:
    """A fine woven texture with sensor noise; the defect is a 12 x 12 green fleck."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    base = 128 + 30 * np.sin(x / 7.0 + seed) * np.cos(y / 11.0) + rng.normal(0, 4, (SIDE, SIDE)).astype(np.float32)
    img = np.clip(np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1), 0, 255).astype(np.uint8)
    if defect:
        img[AT[0] : AT[0] + DEFECT, AT[1] : AT[1] + DEFECT] = (30, 200, 30)
    return img


@pytest.fixture(scope="module")
def good_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hires")
    paths = []
    for i in range(2):
        paths.append(folder / f"{i}.png")
        Image.fromarray(picture(i)).save(paths[-1], compress_level=1)
    return paths


def detector_for(paths, config) -> Detector:
    result = build_index(paths, config, BuildOptions(progress=False, batch_size=2))
    return Detector(config, PatchEmbedder(config), result.index, result.metadata.calibration)


def test_tiled_config_finds_a_12_pixel_defect_that_the_untiled_default_misses(good_paths):
    good, bad = picture(10), picture(11, defect=True)
    untiled = detector_for(good_paths, PatchCoreConfig())
    tiled = detector_for(good_paths, PatchCoreConfig(image_size=256, tile_size=256, tile_overlap=0.0,
                                                     coreset_ratio=0.005))
    u_good, u_bad = untiled.predict(good), untiled.predict(bad)
    t_good, t_bad = tiled.predict(good), tiled.predict(bad)

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
