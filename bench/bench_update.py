"""Incremental update against a full rebuild, on bottle split into A and B (sorted file names; default halves, first
105 and last 104 training images; `--added-share 0.1`: the last 21 as B): build(A) + update(B) against build(A u B).
A is built as the CLI builds it, with extractor.onnx, so the update embeds B with onnxruntime (runtime auto).

Prints and records the bank size, the coverage radius over every training patch of A u B (the k-center objective:
max over patches of the distance to the nearest bank vector), image/pixel AUROC on the 83 test images, the
threshold, and the time of the update against the full rebuild (both in this process, interleaved, `--repeats`
times; medians). Targets: AUROC within 0.005 of the rebuild, update time <= 0.5 x rebuild time.

    nice -n 10 python bench/bench_update.py [--data ../shared/data/mvtec_ad/bottle] [--repeats 2] [--added-share 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BOTTLE, RESULTS, machine, setup_threads  # noqa: E402


def coverage(bank: np.ndarray, patches: np.ndarray) -> float:
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, np.float32))
    worst = 0.0
    for lo in range(0, patches.shape[0], 65536):
        sq, _ = index.search(np.ascontiguousarray(patches[lo: lo + 65536], np.float32), 1)
        worst = max(worst, float(sq.max()))
    return float(np.sqrt(worst))


def evaluate(folder: Path, category) -> dict:
    from evaluation.metrics import image_auroc, pixel_auroc
    from evaluation.runner import score_category
    from index_store import store

    bundle = store.load(folder)
    run = score_category(category, bundle.detector, eval_size=256, progress=False)
    labels = [s.sample.label for s in run.scored]
    return {"image_auroc": round(image_auroc(labels, [s.image_score for s in run.scored]), 4),
            "pixel_auroc": round(pixel_auroc(run.masks, run.maps), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BOTTLE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--added-share", type=float, default=0.5,
                        help="share of the training images in B, the update (0.5: halves; 0.1: a 10 %% addition)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--update-runtime", choices=("auto", "onnx", "torch"), default="auto",
                        help="the update's extractor (auto: A's extractor.onnx in onnxruntime)")
    parser.add_argument("--json-out", type=Path, default=RESULTS / "bench_update.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    from evaluation.datasets import load_mvtec
    from imaging.decode import list_images
    from index_store import onnx_export, store
    from index_store.build import BuildOptions, build_index
    from index_store.update import update_index
    from model.config import PatchCoreConfig
    from model.features import PatchEmbedder

    paths = list_images(args.data)
    n_a = len(paths) - round(args.added_share * len(paths))
    a, b = paths[:n_a], paths[n_a:]
    config, options = PatchCoreConfig(), BuildOptions(progress=False)
    category = load_mvtec(args.data.parent, args.data.name)
    times = {"full": [], "build_a": [], "update_b": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):  # interleaved: full, A, update
            t = time.perf_counter()
            store.save_result(tmp / "full", build_index(paths, config, options, root=args.data), force=True)
            times["full"].append(time.perf_counter() - t)
            t = time.perf_counter()
            store.save_result(tmp / "a", build_index(a, config, options, root=args.data), force=True,
                              extra_files=onnx_export.sidecar(config))  # as the CLI writes it
            times["build_a"].append(time.perf_counter() - t)
            t = time.perf_counter()
            result = update_index(tmp / "a", b, options, root=args.data, runtime=args.update_runtime)
            store.save_result(tmp / "updated", result, force=True)
            times["update_b"].append(time.perf_counter() - t)
            print(f"repeat {r}: full {times['full'][-1]:.1f} s, build(A) {times['build_a'][-1]:.1f} s, "
                  f"update(B) {times['update_b'][-1]:.1f} s, stages {result.stage_seconds}", flush=True)

        embedder = PatchEmbedder(config)
        from imaging.decode import read_image

        patches = np.concatenate([embedder.embed([read_image(p)[0] for p in paths[lo: lo + 16]]).reshape(-1, embedder.dim)
                                  for lo in range(0, len(paths), 16)])
        rows = {}
        for name in ("full", "a", "updated"):
            meta, index = store.load_index(tmp / name)
            bank = index.reconstruct_n(0, index.ntotal)
            rows[name] = {"bank_size": meta.bank_size, "coverage_radius_all_patches": round(coverage(bank, patches), 4),
                          "threshold": round(meta.calibration.threshold, 4), "version": meta.lineage.version,
                          **evaluate(tmp / name, category)}
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    ratio = round(med["update_b"] / med["full"], 3)
    print(f"{'':10} {'bank':>6} {'radius':>8} {'img AUROC':>10} {'px AUROC':>9} {'threshold':>10}")
    for name, label in (("full", "build(AuB)"), ("a", "build(A)"), ("updated", "+update(B)")):
        r = rows[name]
        print(f"{label:10} {r['bank_size']:>6} {r['coverage_radius_all_patches']:>8.3f} {r['image_auroc']:>10.4f} "
              f"{r['pixel_auroc']:>9.4f} {r['threshold']:>10.4f}")
    print(f"B = {len(b)} of {len(paths)} images, embedded with the {result.extract_runtime} runtime")
    print(f"time (median of {args.repeats}): full rebuild {med['full']} s, update(B) {med['update_b']} s -> "
          f"ratio {ratio} (target <= 0.5)")
    record = {"bench": "update", "data": str(args.data), "split": [len(a), len(b)], "rows": rows,
              "update_runtime": result.extract_runtime,
              "seconds": times, "median_seconds": med, "update_over_rebuild": ratio,
              "d_image_auroc": round(rows["updated"]["image_auroc"] - rows["full"]["image_auroc"], 4),
              "d_pixel_auroc": round(rows["updated"]["pixel_auroc"] - rows["full"]["pixel_auroc"], 4),
              "machine": machine()}
    print(json.dumps(record))
    args.json_out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
