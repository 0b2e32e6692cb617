"""Tiling geometry for high-resolution pictures: cut overlapping tiles at native resolution, stitch their patch scores
back into one grid over the whole picture. Pure: arrays in, arrays out.

    starts = tile_starts(length, tile, overlap)          # along one axis: 0, step, 2 step, ..., length - tile
    for chunk in iter_tiles(image, tile, overlap, n):    # (k, tile, tile, 3) uint8, k <= n: bounded memory
        ...embed, search -> (k, h, w) patch scores...
    grid = stitch(tile_scores, image_hw, tile, overlap)  # (Gh, Gw): one cell per `tile / h` pixels of the picture

A picture of H x W pixels at tile size T and overlap f gets ceil((H - T) / step) + 1 tiles down (step = round(T *
(1 - f)), the last one flush with the border) and as many across; a side shorter than T is padded (edge pixels) to
T. A tile's (h, w) patch scores cover its T x T pixels, one cell per s = T / h pixels. The stitched grid has
round(H / s) x round(W / s) cells; a tile's cells go to offset round(start / s) (the last tile's start is not always a
multiple of s: its cells move by at most s / 2 pixels), and where tiles overlap the grid keeps the maximum. The image
score is the max of the grid, so a defect seen by any tile counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from model.errors import ConfigError


def tile_starts(length: int, tile: int, overlap: float) -> np.ndarray:
    """Start offsets (n,) of the tiles along one axis of `length` pixels; the last tile ends at the border."""
    if tile < 1 or not 0.0 <= overlap < 1.0:
        raise ConfigError(f"tile size must be >= 1 and overlap in [0, 1), got {tile} and {overlap}")
    if length <= tile:
        return np.zeros(1, np.int64)
    step = max(1, int(round(tile * (1.0 - overlap))))
    n = math.ceil((length - tile) / step) + 1
    starts = np.minimum(np.arange(n, dtype=np.int64) * step, length - tile)
    return np.unique(starts)


def tile_boxes(image_hw: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    """(n, 2) (top, left) of every tile, row by row."""
    ys = tile_starts(image_hw[0], tile, overlap)
    xs = tile_starts(image_hw[1], tile, overlap)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def n_tiles(image_hw: tuple[int, int], tile: int, overlap: float) -> int:
    return len(tile_starts(image_hw[0], tile, overlap)) * len(tile_starts(image_hw[1], tile, overlap))


def cut(image: np.ndarray, box: np.ndarray, tile: int) -> np.ndarray:
    """The (tile, tile, C) tile at box (top, left); sides shorter than tile are padded with their edge pixels."""
    top, left = int(box[0]), int(box[1])
    piece = image[top : top + tile, left : left + tile]
    if piece.shape[0] < tile or piece.shape[1] < tile:
        pad = ((0, tile - piece.shape[0]), (0, tile - piece.shape[1])) + ((0, 0),) * (image.ndim - 2)
        piece = np.pad(piece, pad, mode="edge")
    return piece


def iter_tiles(image: np.ndarray, tile: int, overlap: float, batch: int) -> Iterator[np.ndarray]:
    """(k, tile, tile, C) stacks of at most `batch` tiles, in tile_boxes order: memory bounded by `batch` tiles."""
    boxes = tile_boxes(image.shape[:2], tile, overlap)
    for lo in range(0, len(boxes), batch):
        yield np.stack([cut(image, b, tile) for b in boxes[lo : lo + batch]])


def stitch(tile_scores: np.ndarray, image_hw: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    """(n, h, w) patch scores of the tiles (tile_boxes order) -> (Gh, Gw) float32 grid over the picture, max where
    tiles overlap (module docstring)."""
    n, h, w = tile_scores.shape
    boxes = tile_boxes(image_hw, tile, overlap)
    if n != len(boxes):
        raise ConfigError(f"{n} tiles of scores for a {image_hw[1]}x{image_hw[0]} picture cut into {len(boxes)}")
    sy, sx = tile / h, tile / w  # pixels per cell
    gh = max(1, int(round(image_hw[0] / sy)))
    gw = max(1, int(round(image_hw[1] / sx)))
    grid = np.full((max(gh, h), max(gw, w)), -np.inf, np.float32)
    for (top, left), scores in zip(boxes, tile_scores):
        oy, ox = int(round(top / sy)), int(round(left / sx))
        oy, ox = min(oy, grid.shape[0] - h), min(ox, grid.shape[1] - w)  # rounding never pushes a tile outside
        np.maximum(grid[oy : oy + h, ox : ox + w], scores, out=grid[oy : oy + h, ox : ox + w])
    return grid[:gh, :gw]
