"""The extractor contract: what the detector needs from a backbone runtime, whichever runs it.

    extractor.embed_pixels(pixels)   (B, S, S, 3) uint8 (or float32 in 0..255) -> (B, h, w, D) float32

Everything before the nearest-neighbour search is inside: ImageNet normalisation, the backbone, the local
neighbourhood aggregation (paper eq. 2) and the pooling to D dimensions. Two runtimes satisfy it:
- ``model.features.PatchEmbedder``: torch + torchvision (the builder's, and the reference);
- ``model.onnx_runtime.OnnxExtractor``: onnxruntime on the exported graph (index_store/onnx_export.py), no torch.
The detector (model/detector.py) does not know which one it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from model.config import PatchCoreConfig
from model.errors import InputError

RUNTIMES = ("torch", "onnx")


@runtime_checkable
class Extractor(Protocol):
    config: PatchCoreConfig
    grid: tuple[int, int]  # (h, w) patch grid per image
    dim: int  # D, the patch-embedding dimension
    runtime: str  # one of RUNTIMES

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 or float32 0..255 RGB pixels -> (B, h, w, D) float32 patch embeddings."""
        ...


def check_pixels(pixels: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """Refuse a batch an extractor cannot take; returns it as float32 (B, S, S, 3), C-contiguous."""
    s = config.input_size
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
        raise InputError(f"expected a (B, {s}, {s}, 3) pixel batch, got {getattr(pixels, 'shape', type(pixels))}; "
                         "make it with model.preprocess.pixels")
    if pixels.dtype not in (np.uint8, np.float32):
        raise InputError(f"pixels must be uint8 or float32 (0..255), got {pixels.dtype}")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def embed_pictures(extractor: Extractor, images: Sequence[np.ndarray], tile_batch: int = 8) -> np.ndarray:
    """What the builder stores per picture, with either runtime: (H_i, W_i, 3) uint8 pictures -> (B, h, w, D)
    embeddings; with config.tile_size, each picture's tiles (model.tiling, tile_batch per extractor call) stacked
    along the rows -> (B, n_tiles * h, w, D). Tiled, every picture must have the size of the first."""
    from model import tiling
    from model.preprocess import check_image, pixels

    cfg = extractor.config
    if cfg.tile_size is None:
        return extractor.embed_pixels(pixels(images, cfg))
    shape = images[0].shape[:2]
    out = []
    for image in images:
        if image.shape[:2] != shape:
            raise InputError(f"tiled builds need pictures of one size: got {image.shape[1]}x{image.shape[0]} after "
                             f"{shape[1]}x{shape[0]}; build one index per picture size")
        tiles = [extractor.embed_pixels(pixels(list(t), cfg))
                 for t in tiling.iter_tiles(check_image(image), cfg.tile_size, cfg.tile_overlap, tile_batch)]
        emb = np.concatenate(tiles)  # (n_tiles, h, w, D)
        out.append(emb.reshape(-1, *emb.shape[2:]))  # (n_tiles * h, w, D)
    return np.stack(out)
