"""Anomaly maps as pictures: 8-bit heatmaps, coloured overlays and PNG bytes (used by the demo, server, evaluation).

Maps are rendered from their NORMALISED values (model.calibration.normalise), so grey level 128 / the middle of the
colour scale is the calibrated threshold in every picture, whatever the product.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered blue -> cyan -> yellow -> red scale.
_ANCHORS = np.array([[0, 0, 96], [0, 64, 255], [0, 224, 255], [255, 255, 0], [255, 96, 0], [200, 0, 0]], np.float32)


def to_uint8(normalised_map: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W) uint8."""
    return np.clip(np.asarray(normalised_map, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colorize(normalised_map: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    x = np.clip(np.asarray(normalised_map, np.float32), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_ANCHORS) - 2)
    frac = (x - lo)[..., None]
    return (_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, normalised_map: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the coloured map over the (H, W, 3) uint8 picture; below-threshold areas stay mostly visible."""
    colour = colorize(normalised_map).astype(np.float32)
    weight = alpha * np.clip(np.asarray(normalised_map, np.float32) * 1.5, 0.25, 1.0)[..., None]
    return (image.astype(np.float32) * (1 - weight) + colour * weight).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
