"""The detector: patch embedder + memory-bank index + calibration -> scores, decisions and anomaly maps.

    detector.score_batch(images)   -> [ImageScore]   image score, normalised score, decision, patch scores
    detector.anomaly_map(score)    -> (H, W) map on the original picture
    detector.predict(image)        -> Prediction     both of the above
It holds no per-request state, so one instance serves concurrent callers. Loading from disk is index_store's job.
The extractor is any runtime of model/extractor.py's contract (torch or ONNX); nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from model import heatmap, knn, scoring, tiling
from model.calibration import Calibration, is_anomalous, normalise
from model.config import PatchCoreConfig
from model.errors import InputError
from model.extractor import Extractor
from model.preprocess import check_image, pixels


TILE_BATCH = 8  # tiles per backbone pass in tiled configs: bounds the memory for any picture size


@dataclass(frozen=True)
class ImageScore:
    image_score: float  # raw: L2 distance of the most anomalous patch to the memory bank (re-weighted if set)
    normalised_score: float  # 0.5 at the threshold
    is_anomalous: bool
    threshold: float
    patch_scores: np.ndarray  # (h, w) float32, L2 distances (tiled configs: the stitched grid over the picture)
    image_hw: tuple[int, int]  # (H, W) of the picture that was scored
    timings_ms: dict[str, float] = field(default_factory=dict)  # this image's share of the batch's stages


@dataclass(frozen=True)
class Prediction(ImageScore):
    anomaly_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (H, W) float32


class Detector:
    def __init__(
        self,
        config: PatchCoreConfig,
        embedder: Extractor,
        index: faiss.Index,
        calibration: Calibration,
    ) -> None:
        if index.d != embedder.dim:
            raise InputError(f"index dimension {index.d} != embedding dimension {embedder.dim} of {config.backbone}")
        self.config = config
        self.embedder = embedder
        self.index = index
        self.calibration = calibration
        # flat banks: the k = 1 search on numpy's BLAS (knn.FlatNearest), the others through FAISS
        self._nearest = knn.FlatNearest(index) if isinstance(index, faiss.IndexFlatL2) else None

    def patch_scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w, D) -> (patch scores (B, h, w), nearest bank ids (B, h*w))."""
        b, h, w, d = embeddings.shape
        queries = embeddings.reshape(-1, d)
        sq, ids = (self._nearest.search(queries) if self._nearest is not None  # (B*h*w, 1) squared L2
                   else knn.search(self.index, queries, k=1))
        return scoring.patch_scores(sq[:, 0], b, (h, w)), ids[:, 0].reshape(b, h * w)

    def image_scores(self, embeddings: np.ndarray, scores: np.ndarray, nn_ids: np.ndarray) -> np.ndarray:
        """s* per image, or the paper's re-weighted score (eq. 7) when config.reweight is set."""
        s_star = scoring.image_scores(scores)
        if not self.config.reweight:
            return s_star
        b = embeddings.shape[0]
        flat = embeddings.reshape(b, -1, embeddings.shape[-1])  # (B, h*w, D)
        worst = scores.reshape(b, -1).argmax(axis=1)  # index of m_test* in each image
        m_star = knn.reconstruct(self.index, nn_ids[np.arange(b), worst])  # (B, D) nearest bank vectors m*
        k = min(self.config.num_neighbors, self.index.ntotal)
        _, support = knn.search(self.index, m_star, k=k)  # N_b(m*), (B, k)
        out = np.empty(b, dtype=np.float32)
        for i in range(b):
            neighbours = knn.reconstruct(self.index, support[i])  # (k, D)
            dists = np.linalg.norm(neighbours - flat[i, worst[i]], axis=1)
            out[i] = scoring.reweight(float(s_star[i]), dists)
        return out

    def score_batch(self, images: Sequence[np.ndarray],
                    sizes: Sequence[tuple[int, int]] | None = None) -> list[ImageScore]:
        """Score (H_i, W_i, 3) uint8 RGB images in one backbone pass (tiled configs: tile by tile, see
        _score_tiled). sizes: each picture's full (H, W) when it was decoded at a reduced scale
        (imaging.decode draft): image_hw, hence the map, are then the full picture's."""
        if not images:
            return []
        if sizes is not None and len(sizes) != len(images):
            raise InputError(f"{len(sizes)} sizes for {len(images)} images")
        if self.config.tile_size is not None:
            if sizes is not None and any(tuple(hw) != im.shape[:2] for hw, im in zip(sizes, images)):
                raise InputError("tiled configs see pictures at native resolution; decode them at full size")
            return [self._score_tiled(check_image(image)) for image in images]
        t0 = time.perf_counter()
        batch = pixels(images, self.config)  # (B, S, S, 3) uint8
        t1 = time.perf_counter()
        embeddings = self.embedder.embed_pixels(batch)  # (B, h, w, D) float32
        t2 = time.perf_counter()
        scores, nn_ids = self.patch_scores(embeddings)
        t3 = time.perf_counter()
        raw = self.image_scores(embeddings, scores, nn_ids)
        normalised = normalise(raw, self.calibration)
        t4 = time.perf_counter()
        n = len(images)
        timings = {
            "preprocess": (t1 - t0) * 1e3 / n,
            "backbone": (t2 - t1) * 1e3 / n,
            "search": (t3 - t2) * 1e3 / n,
            "score": (t4 - t3) * 1e3 / n,
        }
        return [
            ImageScore(
                image_score=float(raw[i]),
                normalised_score=float(normalised[i]),
                is_anomalous=is_anomalous(float(raw[i]), self.calibration),
                threshold=self.calibration.threshold,
                patch_scores=scores[i],
                image_hw=tuple(int(v) for v in (sizes[i] if sizes is not None else images[i].shape[:2])),
                timings_ms=dict(timings),
            )
            for i in range(n)
        ]

    def _score_tiled(self, image: np.ndarray) -> ImageScore:
        """One picture cut into native-resolution tiles (model.tiling), TILE_BATCH tiles per backbone pass, so the
        memory stays bounded whatever the picture's size; patch scores stitched over the picture, image score =
        their max (s*, paper eq. 6, over the whole picture)."""
        cfg = self.config
        timings = dict.fromkeys(("preprocess", "backbone", "search", "score"), 0.0)
        parts = []
        for tiles in tiling.iter_tiles(image, cfg.tile_size, cfg.tile_overlap, TILE_BATCH):
            t0 = time.perf_counter()
            batch = pixels(list(tiles), cfg)  # (k, S, S, 3) uint8; tile_size == image_size: no resize
            t1 = time.perf_counter()
            embeddings = self.embedder.embed_pixels(batch)  # (k, h, w, D), whichever runtime (torch or onnx)
            t2 = time.perf_counter()
            parts.append(self.patch_scores(embeddings)[0])  # (k, h, w)
            t3 = time.perf_counter()
            for name, dt in (("preprocess", t1 - t0), ("backbone", t2 - t1), ("search", t3 - t2)):
                timings[name] += dt * 1e3
        t0 = time.perf_counter()
        grid = tiling.stitch(np.concatenate(parts), image.shape[:2], cfg.tile_size, cfg.tile_overlap)
        raw = float(grid.max())
        timings["score"] = (time.perf_counter() - t0) * 1e3
        return ImageScore(image_score=raw, normalised_score=float(normalise(raw, self.calibration)),
                          is_anomalous=is_anomalous(raw, self.calibration), threshold=self.calibration.threshold,
                          patch_scores=grid, image_hw=(int(image.shape[0]), int(image.shape[1])), timings_ms=timings)

    def score(self, image: np.ndarray) -> ImageScore:
        return self.score_batch([check_image(image)])[0]

    def anomaly_map(self, score: ImageScore) -> np.ndarray:
        """(H, W) float32 anomaly map of a scored image, in patch-score units, on its original pixel grid."""
        return heatmap.anomaly_map(score.patch_scores, score.image_hw, self.config)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        out = []
        for s in self.score_batch(images):
            t0 = time.perf_counter()
            amap = self.anomaly_map(s)
            timings = {**s.timings_ms, "map": (time.perf_counter() - t0) * 1e3}
            out.append(Prediction(**{**s.__dict__, "timings_ms": timings}, anomaly_map=amap))
        return out

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([check_image(image)])[0]
