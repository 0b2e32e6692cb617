"""The development suite (../shared/data) for experiments: products, cached patch embeddings, one scored run.

Experiments that compare many settings cannot afford to re-extract every image for each of them: patch embeddings
are cached per (product, feature setting) under $PATCHCORE_BENCH_CACHE (default /tmp/patchcore_bench, never in
the repo), and everything after extraction (coreset, index, scores, calibration, metrics) runs through the
product's own functions (model.coreset, model.knn, model.detector, model.calibration, evaluation.metrics), so an
experiment measures exactly what patchcore-build-index + patchcore-evaluate would.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from common import CACHE, REPO  # bench/ is on sys.path (scripts run as python bench/x.py)
from evaluation.datasets import Category, load_mask, load_mvtec
from evaluation.runner import eval_shape
from imaging.decode import iter_images
from model import knn
from model.config import PatchCoreConfig
from model.coreset_bounded import select_coreset
from model.detector import Detector
from model.features import PatchEmbedder, check_image

DATA = REPO.parent / "shared" / "data"
PRODUCTS = {  # name -> (data-set root, category), all in MVTec AD form
    "bottle": (DATA / "mvtec_ad", "bottle"),
    "screw": (DATA / "mvtec_ad", "screw"),
    "pill_qc": (DATA / "products", "pill_qc"),
    "cookies": (DATA / "products", "cookies"),
}
EVAL_SIZE = 256


def load_product(name: str) -> Category:
    root, category = PRODUCTS[name]
    return load_mvtec(root, category)


@dataclass(frozen=True)
class Features:
    """What extraction depends on; `aspect` "keep" resizes to the same pixel count as image_size^2 at the picture's
    own aspect ratio (sides rounded to multiples of 16) instead of squashing it square."""

    layers: tuple[str, ...] = ("features.6", "features.13")
    image_size: int = 256
    crop_size: int | None = None
    aggregation: str = "concat"
    embedding_dim: int | None = None
    aspect: str = "squash"
    padding: str = "zeros"

    def config(self, **model: object) -> PatchCoreConfig:
        return PatchCoreConfig(layers=self.layers, image_size=self.image_size, crop_size=self.crop_size,
                               aggregation=self.aggregation, embedding_dim=self.embedding_dim,
                               patch_padding=self.padding, **model)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_hw(image_hw: tuple[int, int], f: Features) -> tuple[int, int]:
    if f.aspect == "squash":
        return f.image_size, f.image_size
    h, w = image_hw
    scale = f.image_size / np.sqrt(h * w)
    return max(32, int(round(h * scale / 16)) * 16), max(32, int(round(w * scale / 16)) * 16)


def _preprocess(images: list[np.ndarray], f: Features, config: PatchCoreConfig) -> torch.Tensor:
    from model.features import preprocess

    if f.aspect == "squash":
        return preprocess(images, config)
    from PIL import Image

    from model.backbone import IMAGENET_MEAN, IMAGENET_STD

    hw = input_hw(images[0].shape[:2], f)
    batch = np.stack([np.asarray(Image.fromarray(check_image(im)).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
                      for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return x.sub_(mean).div_(std)


def embed(paths: list[Path], f: Features, batch: int = 16) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Image files -> ((n, h, w, D) float32 patch embeddings, original (H, W) of each), cached on disk."""
    key = hashlib.sha256(("\n".join(map(str, paths)) + f.key()).encode()).hexdigest()[:20]
    cache = CACHE / "suite" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["emb"], [tuple(x) for x in z["hw"]]
    config = f.config()
    embedder = PatchEmbedder(config)
    out, sizes, pending = [], [], []

    def flush() -> None:
        out.append(embedder.embed_tensor(_preprocess(pending, f, config)))
        pending.clear()

    for path, image, _, error in iter_images(list(paths), 2, 2 * batch):
        if error is not None:
            raise error
        if pending and (len(pending) == batch or image.shape[:2] != pending[0].shape[:2]):
            flush()
        pending.append(image)
        sizes.append(image.shape[:2])
    flush()
    emb = np.concatenate(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=emb, hw=np.array(sizes))
    return emb, sizes


@dataclass
class Bank:
    detector: Detector
    image_ids: np.ndarray  # (M,) source image of each bank vector
    seconds: float


def build_bank(train: np.ndarray, config: PatchCoreConfig, ratio: float) -> Bank:
    """Coreset over every training patch (single pass, as the builder does up to 2 M patches) -> flat index."""
    t = time.perf_counter()
    n, h, w, d = train.shape
    rows = train.reshape(-1, d)
    k = max(16, int(round(ratio * rows.shape[0])))
    picked = select_coreset(rows, k, mode=config.coreset_mode, projection_dim=config.projection_dim, seed=config.seed)
    return Bank(detector_for(rows[picked], config), (picked // (h * w)).astype(np.int32), time.perf_counter() - t)


def detector_for(bank: np.ndarray, config: PatchCoreConfig) -> Detector:
    """A Detector over this memory bank, for scoring cached embeddings (no extractor, no calibration)."""
    index = knn.build_index(bank, config.index, config.seed)
    return Detector(config, SimpleNamespace(dim=bank.shape[1]), index, None)


def image_scores(bank: Bank, emb: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w, D) embeddings of unseen images -> (image scores (n,), patch scores (n, h, w))."""
    scores, patches = [], []
    for lo in range(0, emb.shape[0], batch):
        e = emb[lo: lo + batch]
        p, ids = bank.detector.patch_scores(e)
        scores.append(bank.detector.image_scores(e, p, ids))
        patches.append(p)
    return np.concatenate(scores), np.concatenate(patches)


def maps_on_eval_grid(patches: np.ndarray, sizes: list[tuple[int, int]], f: Features,
                      sigma: float = 4.0) -> list[np.ndarray]:
    """(n, h, w) patch scores -> anomaly maps on each picture's evaluation grid (longer side <= EVAL_SIZE)."""
    from model.heatmap import anomaly_map

    out = []
    for p, hw in zip(patches, sizes):
        shape = eval_shape(hw, EVAL_SIZE)
        if f.aspect == "squash":
            out.append(anomaly_map(p, shape, f.config(blur_sigma=sigma)))
            continue
        ih, iw = input_hw(hw, f)
        x = torch.from_numpy(np.ascontiguousarray(p, np.float32))[None, None]
        up = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False)[0, 0].numpy()
        up = gaussian_filter(up, sigma=sigma, mode="reflect", truncate=4.0)
        out.append(F.interpolate(torch.from_numpy(up)[None, None], size=shape, mode="bilinear",
                                 align_corners=False)[0, 0].numpy())
    return out


def masks_on_eval_grid(category: Category, sizes: list[tuple[int, int]]) -> list[np.ndarray] | None:
    if not category.has_masks:
        return None
    return [load_mask(s.mask_path, eval_shape(hw, EVAL_SIZE)) if s.mask_path else
            np.zeros(eval_shape(hw, EVAL_SIZE), bool) for s, hw in zip(category.test, sizes)]
