"""Patch scores -> anomaly map aligned with the original picture.

    (h, w) patch scores -> bilinear upsampling to the backbone input (S x S)
    -> Gaussian blur, sigma = 4 input pixels (paper section 3.3; scipy's gaussian_filter as in the official code)
    -> resampled onto the ORIGINAL image's pixel grid, undoing the resize and the centre crop,
       so the map overlays the uploaded picture pixel for pixel.

Pixels that the centre crop cut away were never seen; they get the lowest score of the map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from model.config import PatchCoreConfig
from model.features import crop_offset


def input_map(patch_scores: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (S, S) blurred map at the backbone input resolution."""
    s = config.input_size
    x = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[None, None]  # (1, 1, h, w)
    up = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)[0, 0].numpy()
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    return up


def to_original(map_s: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(S, S) map in crop coordinates -> (H, W) map on the original image's pixel grid."""
    height, width = image_hw
    size, crop, top = config.image_size, config.input_size, crop_offset(config)
    # Centre of original pixel i, in crop pixel coordinates: (i + 0.5) * size / H - top; then grid_sample's
    # [-1, 1] range (align_corners=False: -1 and 1 are the outer edges of the crop).
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * (size / height) - top) / crop * 2.0 - 1.0
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * (size / width) - top) / crop * 2.0 - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, H, W, 2) as (x, y)
    src = torch.from_numpy(np.ascontiguousarray(map_s, dtype=np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    if crop < size:
        outside = (ys.abs() > 1.0)[:, None] | (xs.abs() > 1.0)[None, :]
        out[outside] = float(map_s.min())
    return out.numpy()


def anomaly_map(patch_scores: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """(h, w) patch scores -> (H, W) float32 anomaly map in patch-score units, on the original image."""
    if config.tile_size is not None:
        return tiled_map(patch_scores, image_hw, config)
    return to_original(input_map(patch_scores, config), image_hw, config)


def tiled_map(grid: np.ndarray, image_hw: tuple[int, int], config: PatchCoreConfig) -> np.ndarray:
    """Tiled configs: the stitched (Gh, Gw) grid covers the whole picture at native resolution -> bilinear to (H, W),
    then the blur, sigma in native pixels (the tiles are seen at native resolution, as untiled inputs are at S)."""
    x = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    up = F.interpolate(x, size=tuple(int(v) for v in image_hw), mode="bilinear", align_corners=False)[0, 0].numpy()
    if config.blur_sigma > 0:
        up = gaussian_filter(up, sigma=config.blur_sigma, mode="reflect", truncate=4.0)
    return up
