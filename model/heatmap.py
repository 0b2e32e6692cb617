"""Patch scores -> anomaly map aligned with the original picture, in numpy (no torch: the ONNX runtime serves
without it).

The map is defined by three linear steps, each separable into a row and a column pass:

    (h, w) patch scores -> bilinear upsampling to the backbone input (S x S)
    -> Gaussian blur, sigma = 4 input pixels (paper section 3.3; scipy's gaussian_filter, mode reflect, as in the
       official code)
    -> resampled onto the ORIGINAL image's pixel grid, undoing the resize and the centre crop (bilinear, border
       clamped), so the map overlays the uploaded picture pixel for pixel.

They are not run one after the other. Along each axis their product is ONE (n_out x n_grid) matrix,
``axis_operator``: the Gaussian is smoothed on the patch grid (it is the blur of the grid's bilinear basis, i.e. a
Gaussian of sigma = blur_sigma * h / S grid cells seen through the upsampling) and the resize to the picture is done
once. The map is then two small products straight from the grid:

    map = A_y @ scores @ A_x.T        A_y: (H, h), A_x: (W, w), cached per (size, grid, geometry, sigma)

It equals the three-step map up to float32 rounding: <= 1e-6 of the map's range (max - min) on the 83 bottle test
pictures and for a single hot patch (bench/bench_map.py: 4.5e-7 and 2.4e-7); tests/model/test_heatmap.py holds it
to 1e-5 of the range, and to 2e-5 of the largest value against torch's F.interpolate + gaussian_filter +
F.grid_sample. The evaluator's pixel metrics do not move (bottle pixel AUROC and AUPRO equal to 8 decimals).
The S x S intermediate map is never made: a 900 x 900 map costs 0.11 x the three-step one (0.73 against 6.4 ms,
bench/bench_map.py, one BLAS thread). Two shortcuts were measured and rejected: a Gaussian of sigma * h / S on the
bare grid, then one bilinear resize, is off by up to 19 % of the range on bottle and 65 % for a single hot patch
(0.5 grid cells is too narrow for a sampled Gaussian, and blur-then-upsample is not upsample-then-blur); upsampling
the grid 4x first brings that to 1.0 % / 3.5 %, at 0.64 x the old cost.

The products go through numpy's BLAS: the server runs it on one thread (index_store.runtime.serial_numpy_blas:
OpenBLAS's threads spin after a product and would take the cores from the next request).
Pixels that the centre crop cut away were never seen; they get the lowest score of the (S x S) map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

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


def _original_coords(n: int, image_size: int, crop: int, top: int) -> np.ndarray:
    """Centre of each original pixel along one axis, in grid_sample's [-1, 1] crop coordinates."""
    # (i + 0.5) * size / n - top is the pixel centre in crop pixels; -1 and 1 are the crop's outer edges.
    return ((np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(image_size / n) - top) / crop * 2.0 - 1.0


@lru_cache(maxsize=64)
def _operator(n_out: int | None, n_grid: int, image_size: int, crop: int, top: int, sigma: float) -> np.ndarray:
    """See axis_operator; n_out None: the (S, n_grid) operator onto the backbone input itself."""
    basis = _rows(np.eye(n_grid, dtype=np.float32), resize_taps(crop, n_grid))  # (n_grid,) -> (S,): bilinear
    if sigma > 0:  # the blur of each basis column: the same filter gaussian_filter runs along this axis
        basis = gaussian_filter1d(basis, sigma, axis=0, mode="reflect", truncate=4.0)
    if n_out is not None:  # (S,) -> (n_out,): grid_sample, align_corners=False, border padding = clamping
        coords = _original_coords(n_out, image_size, crop, top)
        basis = _rows(basis, _taps(((coords + 1.0) * crop - 1.0) / 2.0, crop))
    basis = np.ascontiguousarray(basis, dtype=np.float32)
    basis.setflags(write=False)  # shared by every caller through the cache
    return basis


def axis_operator(n_out: int, n_grid: int, config: PatchCoreConfig) -> np.ndarray:
    """(n_out, n_grid) float32, read-only: along one axis, grid values -> bilinear to S -> Gaussian blur
    (config.blur_sigma input pixels) -> bilinear onto n_out original pixels (resize and centre crop undone)."""
    return _operator(int(n_out), int(n_grid), config.image_size, config.input_size, crop_offset(config),
                     float(config.blur_sigma))


def input_map(patch_scores: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (S, S) blurred map at the backbone input resolution (the crop)."""
    scores = np.asarray(patch_scores, dtype=np.float32)
    args = (config.image_size, config.input_size, crop_offset(config), float(config.blur_sigma))
    rows, cols = (_operator(None, n, *args) for n in scores.shape)
    return (rows @ scores) @ cols.T  # (S, h) @ (h, w) @ (w, S)


def anomaly_map(patch_scores: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (H, W) float32 anomaly map in patch-score units, on the original image."""
    if config.tile_size is not None:
        return tiled_map(patch_scores, image_hw, config)
    scores = np.asarray(patch_scores, dtype=np.float32)
    (h, w), (height, width) = scores.shape, (int(image_hw[0]), int(image_hw[1]))
    out = (axis_operator(height, h, config) @ scores) @ axis_operator(width, w, config).T  # (H, h)(h, w)(w, W)
    crop, size, top = config.input_size, config.image_size, crop_offset(config)
    if crop < size:  # the border the crop cut away: the lowest value of the (S, S) map
        ys, xs = (np.abs(_original_coords(n, size, crop, top)) > 1.0 for n in (height, width))
        out[ys[:, None] | xs[None, :]] = float(input_map(scores, config).min())
    return out


def tiled_map(grid: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """Tiled configs: the stitched (Gh, Gw) grid covers the whole picture at native resolution -> bilinear to (H, W),
    then the blur, sigma in native pixels (the tiles are seen at native resolution, as untiled inputs are at S)."""
    scores = np.asarray(grid, dtype=np.float32)
    (gh, gw), (height, width) = scores.shape, (int(image_hw[0]), int(image_hw[1]))
    up = _cols(_rows(scores, resize_taps(height, gh)), resize_taps(width, gw))  # (Gh, Gw) -> (H, Gw) -> (H, W)
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    return up
