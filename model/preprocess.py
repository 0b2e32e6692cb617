"""Pictures -> the backbone's input pixels, with numpy and Pillow only (no torch: the ONNX runtime serves without it).

    (H_i, W_i, 3) uint8 RGB -> antialiased bilinear resize to image_size -> centre crop to input_size
    -> (B, S, S, 3) uint8 pixels, S = input_size

ImageNet normalisation is not done here: it is the first step of every extractor (model/extractor.py), inside the
ONNX graph too, so a runtime receives raw pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from model.config import PatchCoreConfig
from model.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_offset(config: PatchCoreConfig) -> int:
    """Top/left offset of the centre crop inside the resized image (torchvision's rounding)."""
    return int(round((config.image_size - config.input_size) / 2.0))


def decode_side(config: PatchCoreConfig) -> int | None:
    """The fewest pixels per side a picture needs for this config: 2 x image_size (the antialiased resize to
    image_size loses nothing from twice that size), so that a JPEG may be decoded at a reduced scale
    (imaging.decode draft). None for tiled configs, which see the picture at native resolution.
    The builder, the evaluator and the server all decode with it: the model sees the same pixels everywhere."""
    return None if config.tile_size is not None else 2 * config.image_size


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise InputError(f"expected an (H, W, 3) uint8 RGB array, got {got}; decode images with imaging.decode")
    if min(image.shape[:2]) < 8:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small (min 8x8)")
    return image


def resize_crop(image: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8: antialiased bilinear resize to image_size, then the centre crop."""
    size, crop, top = config.image_size, config.input_size, crop_offset(config)
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return image[top : top + crop, top : top + crop]


def pixels(images: Sequence[np.ndarray], config: PatchCoreConfig) -> np.ndarray:
    """(H_i, W_i, 3) uint8 arrays -> (B, S, S, 3) uint8 pixels, what every extractor takes."""
    return np.stack([resize_crop(check_image(image), config) for image in images])
