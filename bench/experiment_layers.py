"""Layer / resolution / aggregation / coreset experiment on an MVTec-style category (default: bottle).

Prints one row per setting: image AUROC, pixel AUROC (maps and masks at <= 256 px), build and score times.
Used to choose the default configuration; results are recorded in the README.

    python bench/experiment_layers.py --data ../shared/data/mvtec_ad/bottle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from evaluation.metrics import aupro
from imaging.decode import list_images, read_image
from index_store.runtime import configure_threads
from model import heatmap, knn, scoring
from model.config import PatchCoreConfig
from model.coreset import greedy_coreset
from model.features import PatchEmbedder

F6_13 = ("features.6", "features.13")
# Layer / resolution / aggregation choices are compared at a 1% coreset (fast); the best is re-run at 10%.
SETTINGS = {
    "f6+f13 256 nocrop concat 1%": dict(layers=F6_13),
    "f6+f13 256->224 crop concat 1%": dict(layers=F6_13, crop_size=224),
    "f6+f13 224 nocrop concat 1%": dict(layers=F6_13, image_size=224),
    "f6+f13 320 nocrop concat 1%": dict(layers=F6_13, image_size=320),
    "f6+f13 256 nocrop pool128 1%": dict(layers=F6_13, aggregation="pool", embedding_dim=128),
    "f6+f13 256 nocrop pool64 1%": dict(layers=F6_13, aggregation="pool", embedding_dim=64),
    "f6+f10 256 nocrop pool128 1%": dict(layers=("features.6", "features.10"), aggregation="pool", embedding_dim=128),
    "f6+f13 256 nocrop concat 1% reweight": dict(layers=F6_13, reweight=True),
    "f6+f10 256 nocrop concat 1%": dict(layers=("features.6", "features.10")),
    "f5+f12 256 nocrop concat 1%": dict(layers=("features.5", "features.12")),
    "f3+f6+f13 256 nocrop concat 1%": dict(layers=("features.3", "features.6", "features.13")),
    "f6+f13+f16 256 nocrop concat 1%": dict(layers=("features.6", "features.13", "features.16")),
    "f6+f13 256 nocrop concat 10%": dict(layers=F6_13, coreset_ratio=0.1),
    "f6+f13 256 nocrop concat 10% reweight": dict(layers=F6_13, coreset_ratio=0.1, reweight=True),
}


def load_test(root: Path, side: int):
    images, labels, masks = [], [], []
    for p in sorted((root / "test").glob("*/*.png")):
        img, _ = read_image(p)
        images.append(img)
        labels.append(int(p.parent.name != "good"))
        mpath = root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        m = np.zeros(img.shape[:2], bool) if not mpath.exists() else np.asarray(Image.open(mpath).convert("L")) > 0
        masks.append(np.asarray(Image.fromarray(m).resize((side, side), Image.NEAREST)))
    return images, np.array(labels), masks


def run(config: PatchCoreConfig, train, test, labels, masks, side: int) -> dict:
    emb = PatchEmbedder(config)
    t0 = time.perf_counter()
    bank = np.concatenate([emb.embed(train[i : i + 16]).reshape(-1, emb.dim) for i in range(0, len(train), 16)])
    t1 = time.perf_counter()
    k = max(1, int(round(config.coreset_ratio * len(bank))))
    sel = greedy_coreset(bank, k, projection_dim=config.projection_dim, seed=config.seed)
    index = knn.build_index(bank[sel], config.index, config.seed)
    t2 = time.perf_counter()
    from model.detector import Detector

    det = Detector(config, emb, index, scoring.calibrate(np.array([0.0, 1.0])))
    scores, maps = [], []
    for i in range(0, len(test), 16):
        for s in det.score_batch(test[i : i + 16]):
            scores.append(s.image_score)
            maps.append(heatmap.anomaly_map(s.patch_scores, (side, side), config))
    t3 = time.perf_counter()
    pix = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    return {
        "image_auroc": round(float(roc_auc_score(labels, scores)), 4), "pixel_auroc": round(float(pix), 4),
        "pixel_aupro": round(float(aupro(masks, maps)), 4),
        "bank": int(k), "dim": emb.dim, "grid": list(emb.grid), "extract_s": round(t1 - t0, 1),
        "coreset_index_s": round(t2 - t1, 1), "score_s": round(t3 - t2, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad/bottle"))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure_threads(None)
    side = 256
    train = [read_image(p)[0] for p in list_images(args.data)]
    test, labels, masks = load_test(args.data, side)
    results = {}
    for name, changes in SETTINGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        results[name] = run(PatchCoreConfig().replace(**{"aggregation": "concat", "embedding_dim": None, **changes}), train, test, labels, masks, side)
        print(f"{name:40s} {json.dumps(results[name])}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
