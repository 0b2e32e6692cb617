"""Patch scores -> anomaly map aligned with the original picture, in numpy (no torch: the ONNX runtime serves
without it).

    (h, w) patch scores -> bilinear upsampling to the backbone input (S x S)
    -> Gaussian blur, sigma = 4 input pixels (paper section 3.3; scipy's gaussian_filter as in the official code)
    -> resampled onto the ORIGINAL image's pixel grid, undoing the resize and the centre crop,
       so the map overlays the uploaded picture pixel for pixel.

Both resamplings are separable linear maps, so each is two small matrix products: rows (H x S) @ map @ cols (S x W)^T.
The matrices reproduce torch's ``F.interpolate(mode="bilinear", align_corners=False)`` and
``F.grid_sample(mode="bilinear", padding_mode="border", align_corners=False)``, which this module used before
(tests/model/test_heatmap.py checks them against torch).
Pixels that the centre crop cut away were never seen; they get the lowest score of the map.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from model.config import PatchCoreConfig
from model.preprocess import crop_offset


def _linear_weights(src: np.ndarray, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of linear interpolation at source coordinates src (pixel centres at i),
    clamped to the border."""
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    out = np.zeros((src.size, n_in), dtype=np.float32)
    rows = np.arange(src.size)
    np.add.at(out, (rows, lo), 1.0 - frac)
    np.add.at(out, (rows, hi), frac)
    return out


def resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): bilinear resize along one axis, align_corners=False (torch's F.interpolate, no antialias)."""
    src = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
    return _linear_weights(np.maximum(src, 0.0), n_in)


def input_map(patch_scores: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (S, S) blurred map at the backbone input resolution."""
    s = config.input_size
    scores = np.asarray(patch_scores, dtype=np.float32)
    h, w = scores.shape
    up = resize_matrix(s, h) @ scores @ resize_matrix(s, w).T  # (S, h) @ (h, w) @ (w, S)
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
    rows = _linear_weights(((ys + 1.0) * crop - 1.0) / 2.0, crop)  # (H, S)
    cols = _linear_weights(((xs + 1.0) * crop - 1.0) / 2.0, crop)  # (W, S)
    map_s = np.asarray(map_s, dtype=np.float32)
    out = (rows @ map_s) @ cols.T  # (H, S) @ (S, S) @ (S, W)
    if crop < config.image_size:
        outside = (np.abs(ys) > 1.0)[:, None] | (np.abs(xs) > 1.0)[None, :]
        out[outside] = float(map_s.min())
    return out


def anomaly_map(patch_scores: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (H, W) float32 anomaly map in patch-score units, on the original image."""
    return to_original(input_map(patch_scores, config), image_hw, config)
