"""Sample figures: test image | ground-truth mask | anomaly-map overlay, side by side, on the evaluation grid.

The overlay is rendered from the NORMALISED map (imaging.render), so the middle of the colour scale is the
index's calibrated threshold in every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from evaluation.datasets import Sample
from evaluation.runner import CategoryRun
from imaging import render
from model.calibration import Calibration, normalise

GAP = 4  # white pixels between panels
STRIP = 14  # height of a text line above the panels
PANEL_LABELS = ("image", "ground truth", "anomaly map")


def pick_samples(samples: Sequence[Sample], n: int) -> tuple[Sample, ...]:
    """n test samples mixing the types: round robin over defect types (anomalous types first, then good)."""
    if n <= 0:
        return ()
    by_type: dict[tuple[int, str], list[Sample]] = {}
    for sample in samples:
        by_type.setdefault((-sample.label, sample.defect_type), []).append(sample)
    queues = [by_type[key] for key in sorted(by_type)]  # anomalous (label 1 -> -1) before good, then by name
    picked: list[Sample] = []
    for rank in range(max(len(q) for q in queues)):
        picked.extend(q[rank] for q in queues if rank < len(q))
    return tuple(picked[:n])


def figure_name(sample: Sample) -> str:
    """<type>_<image stem>.png"""
    return f"{sample.defect_type}_{sample.image_path.stem}.png"


def compose(image: np.ndarray, mask: np.ndarray, normalised_map: np.ndarray, title: str,
            mask_label: str = PANEL_LABELS[1]) -> np.ndarray:
    """(h, w, 3) uint8 image, (h, w) bool mask, (h, w) map in [0, 1] -> (2*STRIP + h, 3*w + 2*GAP, 3) uint8."""
    h, w = mask.shape
    if image.shape[:2] != (h, w) or normalised_map.shape != (h, w):
        raise ValueError(f"image {image.shape[:2]}, mask {(h, w)} and map {normalised_map.shape} must share one grid")
    mask_rgb = np.repeat((np.asarray(mask, bool) * np.uint8(255))[..., None], 3, axis=2)  # (h, w) -> (h, w, 3)
    panels = (image, mask_rgb, render.overlay(image, normalised_map))
    canvas = Image.new("RGB", (3 * w + 2 * GAP, 2 * STRIP + h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(0, 0, 0))
    for i, (panel, label) in enumerate(zip(panels, (PANEL_LABELS[0], mask_label, PANEL_LABELS[2]))):
        left = i * (w + GAP)
        canvas.paste(Image.fromarray(panel), (left, 2 * STRIP))
        draw.text((left + 2, STRIP + 1), label, fill=(64, 64, 64))
    return np.asarray(canvas)


def write_figures(run: CategoryRun, calibration: Calibration, out_dir: Path) -> list[Path]:
    """One PNG per image kept in `run` (see score_category's keep), named by figure_name, under out_dir."""
    written: list[Path] = []
    if run.kept:
        out_dir.mkdir(parents=True, exist_ok=True)
    for i, scored in enumerate(run.scored):
        image = run.kept.get(scored.sample.image_path)
        if image is None:
            continue
        verdict = "ANOMALOUS" if scored.is_anomalous else "normal"
        title = (f"{scored.sample.defect_type}/{scored.sample.image_path.name}  score {scored.image_score:.3f}  "
                 f"normalised {scored.normalised_score:.2f}  {verdict}")
        has_mask = scored.sample.mask_path is not None or scored.sample.label == 0
        figure = compose(image, run.masks[i], normalise(run.maps[i], calibration), title,
                         PANEL_LABELS[1] if has_mask else "no mask (image label only)")
        path = out_dir / figure_name(scored.sample)
        path.write_bytes(render.png_bytes(figure))
        written.append(path)
    return written
