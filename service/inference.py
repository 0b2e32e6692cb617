"""The work of one request, run on an inference worker thread: bytes -> decoded image -> scores -> optional map.

No HTTP here. With heatmap=none the anomaly map is never computed (detector.score_batch only).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imaging import render
from imaging.decode import decode_sized
from index_store.store import IndexBundle
from model.detector import ImageScore
from model.errors import InputError
from model.preprocess import check_image, decode_side
from model.calibration import normalise
from service.schemas import BatchPrediction, Prediction, Timings
from service.settings import HeatmapMode


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes
    read_ms: float  # reading it from the request


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1e3, 3)


def heatmap_fields(bundle: IndexBundle, score: ImageScore, image: np.ndarray, mode: HeatmapMode) -> tuple[dict, float, float]:
    """The response fields of the heatmap mode, and the (map, render) milliseconds."""
    if mode is HeatmapMode.none:
        return {}, 0.0, 0.0
    t0 = time.perf_counter()
    amap = bundle.detector.anomaly_map(score)  # (H, W) float32, image-score units
    t1 = time.perf_counter()
    if mode is HeatmapMode.raw:
        fields = {"anomaly_map": np.round(amap.astype(np.float64), 6).tolist()}
    else:
        norm = normalise(amap, bundle.metadata.calibration)  # 0.5 at the threshold
        if mode is HeatmapMode.png:
            fields = {"anomaly_map_png": base64.b64encode(render.png_bytes(render.to_uint8(norm))).decode("ascii")}
        else:
            fields = {"overlay_png": base64.b64encode(render.png_bytes(render.overlay(image, norm))).decode("ascii")}
    return fields, _ms(t0, t1), _ms(t1, time.perf_counter())


def _prediction(name: str, bundle: IndexBundle, upload: Upload, image: np.ndarray, score: ImageScore,
                mode: HeatmapMode, decode_ms: float, queue_ms: float, started: float) -> Prediction:
    fields, map_ms, render_ms = heatmap_fields(bundle, score, image, mode)
    t = score.timings_ms
    # parse, serialise, other and total are the request's: service.timing.answer fills them in.
    timings = Timings(
        parse=0.0, serialise=0.0, other=0.0, read=round(upload.read_ms, 3), queue=queue_ms, decode=decode_ms,
        preprocess=round(t["preprocess"], 3),
        backbone=round(t["backbone"], 3), search=round(t["search"], 3), score=round(t["score"], 3), map=map_ms,
        render=render_ms, total=_ms(started, time.perf_counter()),
    )
    height, width = score.image_hw
    # model_construct: every value is built here with the right type; skip re-validating big maps.
    return Prediction.model_construct(
        index=name, filename=upload.filename, image_score=score.image_score,
        normalised_score=score.normalised_score, is_anomalous=score.is_anomalous, threshold=score.threshold,
        image_width=width, image_height=height, heatmap=mode, anomaly_map_png=fields.get("anomaly_map_png"),
        overlay_png=fields.get("overlay_png"), anomaly_map=fields.get("anomaly_map"), timings_ms=timings,
    )


def predict_batch(name: str, bundle: IndexBundle, uploads: Sequence[Upload], mode: HeatmapMode, max_pixels: int,
                  started: float, submitted: float) -> BatchPrediction:
    """Decode every upload, score them all in ONE backbone pass, then build each answer.

    started: perf_counter() when the handler began; submitted: when the work was queued for a worker.
    """
    queue_ms = round(_ms(submitted, time.perf_counter()) / len(uploads), 3)  # each image's share of the wait
    # A big JPEG is decoded at a reduced scale, as the builder decoded its training pictures (decode_side); the
    # overlay needs the picture itself at full size. image_hw, hence the answer's size and maps, stay the full size.
    draft = decode_side(bundle.detector.config) if mode is not HeatmapMode.overlay else None
    images, sizes, decode_ms = [], [], []
    for i, upload in enumerate(uploads):
        t0 = time.perf_counter()
        label = repr(upload.filename) if upload.filename else f"file #{i + 1}"
        image, size = decode_sized(upload.data, max_pixels, name=label, draft=draft)
        try:
            images.append(check_image(image))
        except InputError as exc:  # name the file: in a batch, "image of 1x1 pixels" alone does not say which
            raise InputError(f"{label}: {exc}") from exc
        sizes.append(size)
        decode_ms.append(_ms(t0, time.perf_counter()))
    scores = bundle.detector.score_batch(images, sizes)
    results = [
        _prediction(name, bundle, upload, image, score, mode, d_ms, queue_ms, started)
        for upload, image, score, d_ms in zip(uploads, images, scores, decode_ms)
    ]
    return BatchPrediction.model_construct(
        index=name, count=len(results), results=results, total_ms=_ms(started, time.perf_counter())
    )


def predict_one(name: str, bundle: IndexBundle, upload: Upload, mode: HeatmapMode, max_pixels: int, started: float,
                submitted: float) -> Prediction:
    return predict_batch(name, bundle, [upload], mode, max_pixels, started, submitted).results[0]
