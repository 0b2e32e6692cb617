"""Patch scores -> anomaly map aligned with the original picture, in numpy (no torch: the ONNX runtime serves
without it).

    (h, w) patch scores -> bilinear upsampling to the backbone input (S x S)
    -> Gaussian blur, sigma = 4 input pixels (paper section 3.3; scipy's gaussian_filter as in the official code)
    -> resampled onto the ORIGINAL image's pixel grid, undoing the resize and the centre crop,
       so the map overlays the uploaded picture pixel for pixel.

Both resamplings are separable 2-tap linear interpolations: each output row (then column) blends two input rows
(columns), with no matrix product and no BLAS threads (which, busy-waiting after a product, slowed the PNG encode
that follows). They reproduce torch's ``F.interpolate(mode="bilinear", align_corners=False)`` and
``F.grid_sample(mode="bilinear", padding_mode="border", align_corners=False)``, which this module used before
(tests/model/test_heatmap.py checks them against torch).
Pixels that the centre crop cut away were never seen; they get the lowest score of the map.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from model.config import PatchCoreConfig
from model.preprocess import crop_offset


def _taps(src: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation at source coordinates src (pixel centres at i), clamped to the border:
    (lower index, upper index, weight of the upper one) per output sample."""
    src = np.clip(src, 0.0, n_in - 1).astype(np.float32)
    lo = np.floor(src).astype(np.intp)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def _rows(x: np.ndarray, taps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(n_in, W) -> (n_out, W): each output row blends two input rows."""
    lo, hi, frac = taps
    return x[lo] * (1.0 - frac)[:, None] + x[hi] * frac[:, None]


def _cols(x: np.ndarray, taps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, n_in) -> (H, n_out): each output column blends two input columns."""
    lo, hi, frac = taps
    return x[:, lo] * (1.0 - frac) + x[:, hi] * frac


def resize_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resize along one axis, align_corners=False (torch's F.interpolate, no antialias)."""
    src = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
    return _taps(np.maximum(src, 0.0), n_in)


def input_map(patch_scores: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (S, S) blurred map at the backbone input resolution."""
    s = config.input_size
    scores = np.asarray(patch_scores, dtype=np.float32)
    h, w = scores.shape
    up = _cols(_rows(scores, resize_taps(s, h)), resize_taps(s, w))  # (h, w) -> (S, w) -> (S, S)
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    return up


def _original_coords(n: int, config: PatchCoreConfig) -> np.ndarray:
    """Centre of each original pixel along one axis, in grid_sample's [-1, 1] crop coordinates."""
    size, crop, top = config.image_size, config.input_size, crop_offset(config)
    # (i + 0.5) * size / n - top is the pixel centre in crop pixels; -1 and 1 are the crop's outer edges.
    return ((np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(size / n) - top) / crop * 2.0 - 1.0


def to_original(map_s: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(S, S) map in crop coordinates -> (H, W) map on the original image's pixel grid."""
    height, width = image_hw
    crop = config.input_size
    ys, xs = _original_coords(height, config), _original_coords(width, config)
    # grid_sample, align_corners=False: crop pixel coordinate ((x + 1) * S - 1) / 2, border padding = clamping.
    map_s = np.asarray(map_s, dtype=np.float32)
    out = _cols(_rows(map_s, _taps(((ys + 1.0) * crop - 1.0) / 2.0, crop)),  # (S, S) -> (H, S)
                _taps(((xs + 1.0) * crop - 1.0) / 2.0, crop))  # -> (H, W)
    if crop < config.image_size:
        outside = (np.abs(ys) > 1.0)[:, None] | (np.abs(xs) > 1.0)[None, :]
        out[outside] = float(map_s.min())
    return out


def anomaly_map(patch_scores: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (H, W) float32 anomaly map in patch-score units, on the original image."""
    if config.tile_size is not None:
        return tiled_map(patch_scores, image_hw, config)
    return to_original(input_map(patch_scores, config), image_hw, config)


def tiled_map(grid: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """Tiled configs: the stitched (Gh, Gw) grid covers the whole picture at native resolution -> bilinear to (H, W),
    then the blur, sigma in native pixels (the tiles are seen at native resolution, as untiled inputs are at S)."""
    scores = np.asarray(grid, dtype=np.float32)
    (gh, gw), (height, width) = scores.shape, (int(image_hw[0]), int(image_hw[1]))
    up = _cols(_rows(scores, resize_taps(height, gh)), resize_taps(width, gw))  # (Gh, Gw) -> (H, Gw) -> (H, W)
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    return up
