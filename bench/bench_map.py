"""The anomaly map stage: today's operator form (model/heatmap.py) against the three-step construction it replaced,
and two rejected shortcuts, on real bottle test pictures. Prints a table, writes bench/results/bench_map.json.

    python bench/bench_map.py --index /tmp/ev/bottle/index [--threads 2] [--repeats 50]

Per picture (900 x 900 bottle test PNGs, real patch scores from the index): max |map - three-step map| divided by
the three-step map's range (max - min). Timing: one 900 x 900 map, the variants interleaved, the process set up as
the server is (configure_threads, then numpy's BLAS on one thread: index_store.runtime.serial_numpy_blas).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from common import BOTTLE, RESULTS, machine

from model import heatmap
from model.config import PatchCoreConfig
from model.preprocess import crop_offset


# ------------------------------------------------ the previous implementation (three steps), verbatim in substance
def _coords(n: int, c: PatchCoreConfig) -> np.ndarray:
    return ((np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(c.image_size / n) - crop_offset(c)) \
        / c.input_size * 2.0 - 1.0


def three_step(scores: np.ndarray, hw: tuple[int, int], c: PatchCoreConfig) -> np.ndarray:
    s, (h, w) = c.input_size, scores.shape
    up = heatmap._cols(heatmap._rows(scores, heatmap.resize_taps(s, h)), heatmap.resize_taps(s, w))  # (S, S)
    if c.blur_sigma > 0:
        up = gaussian_filter(up, sigma=c.blur_sigma, mode="reflect", truncate=4.0)
    ys, xs = _coords(hw[0], c), _coords(hw[1], c)
    out = heatmap._cols(heatmap._rows(up, heatmap._taps(((ys + 1.0) * s - 1.0) / 2.0, s)),
                        heatmap._taps(((xs + 1.0) * s - 1.0) / 2.0, s))
    if s < c.image_size:
        out[(np.abs(ys) > 1.0)[:, None] | (np.abs(xs) > 1.0)[None, :]] = float(up.min())
    return out


# ------------------------------------------------ rejected shortcut: blur the grid (sigma * h / S), resize once
def grid_blur(scores: np.ndarray, hw: tuple[int, int], c: PatchCoreConfig, upsample: int = 1) -> np.ndarray:
    h, w = scores.shape
    x = scores
    if upsample > 1:
        x = heatmap._cols(heatmap._rows(x, heatmap.resize_taps(upsample * h, h)), heatmap.resize_taps(upsample * w, w))
    if c.blur_sigma > 0:
        x = gaussian_filter(x, sigma=c.blur_sigma * upsample * h / c.input_size, mode="reflect", truncate=4.0)

    def taps(n: int, g: int):  # original pixel -> crop pixel -> grid coordinate (bilinear, align_corners=False)
        crop_px = ((_coords(n, c) + 1.0) * c.input_size - 1.0) / 2.0
        return heatmap._taps((crop_px + 0.5) * (g / c.input_size) - 0.5, g)

    return heatmap._cols(heatmap._rows(x, taps(hw[0], x.shape[0])), taps(hw[1], x.shape[1]))


VARIANTS = {
    "operator (model/heatmap.py)": heatmap.anomaly_map,
    "grid blur, one resize": grid_blur,
    "grid 4x, blur, one resize": lambda s, hw, c: grid_blur(s, hw, c, upsample=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="a bottle index folder (patchcore-build-index)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_map.json")
    args = parser.parse_args()

    from imaging.decode import read_image
    from index_store import store
    from index_store.runtime import configure_threads, serial_numpy_blas

    configure_threads(args.threads)
    serial_numpy_blas()
    bundle = store.load(args.index, runtime="torch")
    config = bundle.detector.config
    paths = sorted((BOTTLE / "test").glob("*/*.png"))
    errors = {name: [] for name in VARIANTS}
    spike = np.zeros(bundle.metadata.grid, np.float32)
    spike[spike.shape[0] // 2, spike.shape[1] // 3] = 1.0
    first = None
    for lo in range(0, len(paths), 16):
        images = [read_image(p)[0] for p in paths[lo:lo + 16]]
        for score in bundle.detector.score_batch(images):
            first = first if first is not None else score
            ref = three_step(score.patch_scores, score.image_hw, config)
            for name, fn in VARIANTS.items():
                diff = np.abs(fn(score.patch_scores, score.image_hw, config) - ref).max()
                errors[name].append(float(diff / (ref.max() - ref.min())))
    ref = three_step(spike, (900, 900), config)
    single = {name: float(np.abs(fn(spike, (900, 900), config) - ref).max() / (ref.max() - ref.min()))
              for name, fn in VARIANTS.items()}

    timed = {"three steps (before)": three_step, **VARIANTS}
    times = {name: [] for name in timed}
    for rep in range(args.repeats + 2):
        for name, fn in timed.items():
            t0 = time.perf_counter()
            fn(first.patch_scores, first.image_hw, config)
            if rep >= 2:  # two warm-up rounds (the operator cache fills in the first)
                times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {name: float(np.median(v)) for name, v in times.items()}
    base = ms["three steps (before)"]
    print(f"{len(paths)} bottle test pictures {first.image_hw}, grid {bundle.metadata.grid}, S={config.input_size}, "
          f"sigma={config.blur_sigma}; {args.threads} threads, numpy BLAS 1 thread; median of {args.repeats}")
    print(f"| variant | max diff / range, bottle test (worst picture) | single-patch peak | map ms | x before |")
    print("|:--|--:|--:|--:|--:|")
    print(f"| three steps (before) | 0 | 0 | {base:.2f} | 1.00 |")
    for name in VARIANTS:
        print(f"| {name} | {max(errors[name]):.2e} | {single[name]:.2e} | {ms[name]:.2f} | {ms[name] / base:.2f} |")
    args.out.write_text(json.dumps({
        "machine": machine(), "threads": args.threads, "pictures": len(paths), "image_hw": list(first.image_hw),
        "grid": list(bundle.metadata.grid), "input_size": config.input_size, "blur_sigma": config.blur_sigma,
        "max_diff_over_range_bottle": {k: max(v) for k, v in errors.items()},
        "median_diff_over_range_bottle": {k: float(np.median(v)) for k, v in errors.items()},
        "max_diff_over_range_single_patch": single, "map_ms_median": ms, "repeats": args.repeats,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
