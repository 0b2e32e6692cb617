"""Score one category's test set, keeping only what the metrics need, at a bounded evaluation resolution.

    test images (decoded on a thread pool, bounded prefetch) -> detector.score_batch -> image scores
    patch scores -> model.heatmap.anomaly_map computed DIRECTLY on the evaluation grid (longer side <= eval_size,
    aspect kept; exact resize/crop geometry, the full-size map is never made)
    masks -> evaluation.datasets.load_mask, nearest neighbour, onto the same grid; good images get all-zero masks

Memory: one batch of decoded images at a time, plus N float32 maps and N bool masks of at most eval_size^2 pixels,
plus the few images kept (at the evaluation grid) for the figures.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from evaluation.datasets import Category, Sample, load_mask
from imaging.decode import DEFAULT_MAX_PIXELS, iter_images
from model.detector import Detector
from model.heatmap import anomaly_map
from model.preprocess import decode_side

MIN_EVAL_SIZE = 8


class EvaluationError(ValueError):
    """The evaluation cannot go on; the message says how to fix it."""


@dataclass(frozen=True)
class ScoredSample:
    sample: Sample
    image_score: float  # raw s*, patch-score units
    normalised_score: float  # 0.5 at the index's calibrated threshold
    is_anomalous: bool  # image_score >= calibrated threshold


@dataclass(frozen=True)
class CategoryRun:
    """Everything the metrics, tables and figures of one category need; index i of each tuple is one test image."""

    scored: tuple[ScoredSample, ...]
    maps: tuple[np.ndarray, ...]  # (h_e, w_e) float32 anomaly maps in patch-score units
    masks: tuple[np.ndarray, ...]  # (h_e, w_e) bool ground truth, all False for good images
    kept: Mapping[Path, np.ndarray]  # (h_e, w_e, 3) uint8 test images asked for by `keep` (figures)
    seconds: Mapping[str, float]  # "score" (decode + backbone + search), "maps" (anomaly maps + masks)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Distinct evaluation grids (h_e, w_e), sorted."""
        return tuple(sorted({tuple(int(n) for n in m.shape) for m in self.maps}))


def eval_shape(image_hw: tuple[int, int], eval_size: int) -> tuple[int, int]:
    """(H, W) -> evaluation grid (h_e, w_e): longer side scaled down to eval_size, aspect kept, never upscaled."""
    height, width = image_hw
    scale = min(1.0, eval_size / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def score_category(category: Category, detector: Detector, eval_size: int, batch_size: int = 16,
                   keep: Collection[Path] = (), progress: bool = True, decode_workers: int = 2,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> CategoryRun:
    """Score every test image of `category`; returns scores, maps and masks on the evaluation grid."""
    from tqdm import tqdm

    if eval_size < MIN_EVAL_SIZE:
        raise EvaluationError(f"--eval-size must be >= {MIN_EVAL_SIZE} pixels, got {eval_size}")
    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {batch_size}")
    samples = {sample.image_path: sample for sample in category.test}
    keep = frozenset(keep)
    scored: list[ScoredSample] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    kept: dict[Path, np.ndarray] = {}
    map_seconds = 0.0
    batch: list[tuple[Sample, np.ndarray]] = []

    def flush() -> None:
        nonlocal map_seconds
        results = detector.score_batch([image for _, image in batch])
        t0 = time.perf_counter()
        for (sample, image), result in zip(batch, results):
            shape = eval_shape(result.image_hw, eval_size)
            maps.append(anomaly_map(result.patch_scores, shape, detector.config))  # (h_e, w_e) float32
            masks.append(_mask(sample, shape))
            scored.append(ScoredSample(sample, result.image_score, result.normalised_score, result.is_anomalous))
            if sample.image_path in keep:
                kept[sample.image_path] = resize_image(image, shape)
        map_seconds += time.perf_counter() - t0
        batch.clear()

    started = time.perf_counter()
    bar = tqdm(total=len(samples), desc=f"test {category.name}", unit="img", disable=not progress, leave=False)
    draft = decode_side(detector.config)  # as the builder and the server decode
    for path, image, _, error in iter_images(list(samples), decode_workers, 2 * batch_size, max_pixels, draft):
        if error is not None:
            raise EvaluationError(f"test image {path} cannot be decoded ({error}); repair or remove it: metrics "
                                  "over a partial test set are not comparable with published numbers")
        batch.append((samples[path], image))
        if len(batch) == batch_size:
            flush()
        bar.update(1)
    if batch:
        flush()
    bar.close()
    total = time.perf_counter() - started
    seconds = {"score": round(total - map_seconds, 3), "maps": round(map_seconds, 3)}
    return CategoryRun(tuple(scored), tuple(maps), tuple(masks), MappingProxyType(kept), MappingProxyType(seconds))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, antialiased bilinear (the picture shown next to its map)."""
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    if sample.mask_path is None:
        return np.zeros(shape, dtype=bool)
    return load_mask(sample.mask_path, shape)  # nearest neighbour onto the evaluation grid
