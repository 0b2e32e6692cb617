import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from model.config import PatchCoreConfig
from model.heatmap import anomaly_map, axis_operator, input_map


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


def _torch_anomaly_map(patch_scores, image_hw, config):
    """The torch implementation this module replaced (F.interpolate + gaussian_filter + F.grid_sample): the
    reference the numpy matrices must reproduce."""
    import torch
    import torch.nn.functional as F

    from model.preprocess import crop_offset

    s = config.input_size
    x = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[None, None]
    up = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)[0, 0].numpy()
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    height, width = image_hw
    size, crop, top = config.image_size, config.input_size, crop_offset(config)
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * (size / height) - top) / crop * 2.0 - 1.0
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * (size / width) - top) / crop * 2.0 - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    src = torch.from_numpy(np.ascontiguousarray(up, dtype=np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    if crop < size:
        outside = (ys.abs() > 1.0)[:, None] | (xs.abs() > 1.0)[None, :]
        out[outside] = float(up.min())
    return out.numpy()


@pytest.mark.parametrize("config, grid, image_hw", [
    (PatchCoreConfig(), (32, 32), (900, 900)),
    (PatchCoreConfig(image_size=64, crop_size=48), (6, 6), (200, 130)),
    (PatchCoreConfig(image_size=128, blur_sigma=0.0), (16, 16), (37, 301)),
    (PatchCoreConfig(image_size=256, crop_size=224), (28, 28), (1024, 700)),
])
def test_numpy_map_equals_the_torch_reference(config, grid, image_hw):
    scores = np.random.default_rng(1).gamma(2.0, 1.0, grid).astype(np.float32)
    ours = anomaly_map(scores, image_hw, config)
    ref = _torch_anomaly_map(scores, image_hw, config)
    assert ours.shape == ref.shape == image_hw and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("config, image_hw", [
    (PatchCoreConfig(), (900, 900)),
    (PatchCoreConfig(), (333, 1210)),
    (PatchCoreConfig(image_size=256, crop_size=224), (700, 1024)),
    (PatchCoreConfig(image_size=320, blur_sigma=2.5), (64, 480)),
])
def test_map_folded_into_one_operator_per_axis_equals_the_three_steps_for_a_single_patch(config, image_hw):
    """The worst case for any shortcut (blurring the bare grid with sigma * h / S, then one resize, is off by 64 % of
    the range here): one hot patch, with its peak, its tails and the borders, within 1e-5 of the range."""
    grid = (config.input_size // 8, config.input_size // 8)
    for cell in ((grid[0] // 2, grid[1] // 3), (0, grid[1] - 1)):  # inside, and in a corner (reflect, clamping)
        scores = np.zeros(grid, np.float32)
        scores[cell] = 1.0
        ref = _torch_anomaly_map(scores, image_hw, config)
        ours = anomaly_map(scores, image_hw, config)
        assert ours.shape == image_hw and ours.flags.writeable
        assert np.abs(ours - ref).max() <= 1e-5 * float(ref.max() - ref.min())


def test_operators_are_cached_read_only_and_maps_are_fresh_arrays():
    config = PatchCoreConfig(image_size=64, crop_size=48)
    a, b = axis_operator(200, 6, config), axis_operator(200, 6, config)
    assert a is b and not a.flags.writeable and a.shape == (200, 6)
    np.testing.assert_allclose(a.sum(axis=1)[a.sum(axis=1) > 0], 1.0, atol=1e-5)  # weights of a blend: sum 1
    scores = np.random.default_rng(2).random((6, 6)).astype(np.float32)
    first = anomaly_map(scores, (200, 200), config)
    first[:] = -1.0  # a caller writing into its map changes nothing for the next one
    np.testing.assert_array_equal(anomaly_map(scores, (200, 200), config), anomaly_map(scores, (200, 200), config))
    assert anomaly_map(scores, (200, 200), config).min() >= 0.0
