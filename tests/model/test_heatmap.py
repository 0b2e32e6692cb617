import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from model.config import PatchCoreConfig
from model.heatmap import anomaly_map, input_map


def peak(a: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(a), a.shape))


@pytest.mark.parametrize("image_hw", [(64, 64), (90, 150), (300, 120)])
def test_patch_peak_lands_on_the_same_place_of_the_original_picture(image_hw):
    config = PatchCoreConfig(image_size=64, blur_sigma=0.0)
    scores = np.zeros((8, 8), np.float32)
    scores[2, 5] = 1.0  # cell centre at input pixel (20, 44), i.e. 0.3125 / 0.6875 of the height / width
    amap = anomaly_map(scores, image_hw, config)
    assert amap.shape == image_hw
    y, x = peak(amap)
    assert abs(y - 0.3125 * image_hw[0]) <= image_hw[0] / 64 + 1
    assert abs(x - 0.6875 * image_hw[1]) <= image_hw[1] / 64 + 1


def test_crop_is_undone_and_unseen_border_gets_the_lowest_score():
    config = PatchCoreConfig(image_size=64, crop_size=48, blur_sigma=0.0)  # crop offset 8
    scores = np.full((6, 6), 0.5, np.float32)
    scores[1, 4] = 2.0  # crop pixel (12, 36) -> resized (20, 44) -> original (x 200/64)
    amap = anomaly_map(scores, (200, 200), config)
    y, x = peak(amap)
    assert abs(y - 20 * 200 / 64) <= 4 and abs(x - 44 * 200 / 64) <= 4
    border = int(8 * 200 / 64) - 1
    assert amap[:border].max() == pytest.approx(0.5) and amap[:, -border:].max() == pytest.approx(0.5)


def test_blur_is_the_papers_gaussian_sigma_4_at_input_resolution():
    config = PatchCoreConfig(image_size=64)
    scores = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    unblurred = input_map(scores, config.replace(blur_sigma=0.0))
    np.testing.assert_allclose(input_map(scores, config), gaussian_filter(unblurred, 4.0), rtol=1e-6)
