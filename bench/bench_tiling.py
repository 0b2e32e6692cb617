"""Tiled against untiled on bottle at native resolution (900 x 900): image/pixel AUROC and time per test image.

Untiled: the default config (the whole picture resized to 256 px). Tiled: `--tile 256` (256-px tiles at native
resolution; overlap as given, 4 x 4 = 16 tiles at overlap 0, 5 x 5 = 25 at 0.25). Both are built from the same
training subset (every `--every`-th training image: the tiled bank sees 16-25x the patches per picture, and this
machine has 2 cores) and score all 83 test images through patchcore-evaluate's own scoring (evaluation.runner).

    nice -n 10 python bench/bench_tiling.py [--every 5] [--overlap 0.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BOTTLE, RESULTS, machine, setup_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BOTTLE)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json-out", type=Path, default=RESULTS / "bench_tiling.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    from evaluation.datasets import load_mvtec
    from evaluation.metrics import image_auroc, pixel_auroc
    from evaluation.runner import score_category
    from imaging.decode import list_images
    from index_store.build import BuildOptions, build_index
    from model.config import PatchCoreConfig
    from model.detector import Detector
    from model.features import PatchEmbedder

    train = list_images(args.data)[:: args.every]
    category = load_mvtec(args.data.parent, args.data.name)
    configs = {"untiled": PatchCoreConfig(),
               "tiled": PatchCoreConfig(image_size=args.tile, tile_size=args.tile, tile_overlap=args.overlap)}
    rows = {}
    for name, config in configs.items():
        t = time.perf_counter()
        result = build_index(train, config, BuildOptions(progress=False, batch_size=4), root=args.data)
        build_s = time.perf_counter() - t
        detector = Detector(config, PatchEmbedder(config), result.index, result.metadata.calibration)
        t = time.perf_counter()
        run = score_category(category, detector, eval_size=256, batch_size=4, progress=False)
        score_s = time.perf_counter() - t
        labels = [s.sample.label for s in run.scored]
        rows[name] = {"image_auroc": round(image_auroc(labels, [s.image_score for s in run.scored]), 4),
                      "pixel_auroc": round(pixel_auroc(run.masks, run.maps), 4),
                      "ms_per_test_image": round(1e3 * score_s / len(run.scored), 1),
                      "build_s": round(build_s, 1), "bank_size": result.metadata.bank_size,
                      "patches_seen": result.metadata.n_patches_seen, "coreset": result.metadata.coreset_method,
                      "calibration": result.metadata.calibration.method}
        print(name, rows[name], flush=True)
    ratio = round(rows["tiled"]["ms_per_test_image"] / rows["untiled"]["ms_per_test_image"], 2)
    record = {"bench": "tiling", "data": str(args.data), "train_images": len(train), "tile": args.tile,
              "overlap": args.overlap, "rows": rows, "tiled_over_untiled_time": ratio, "machine": machine()}
    print(json.dumps(record))
    args.json_out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
