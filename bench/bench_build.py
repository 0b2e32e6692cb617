"""Build-time stages and peak memory of patchcore-build-index for growing training sets.

Training sets of n = 200, 1000, 5000 and 20000 images are AUGMENTED variants of the 209 real MVTec bottle good
images (random 75-100 % crop, horizontal/vertical flips, rotation, brightness/contrast/colour jitter), written once
to /tmp as 256 x 256 PNG (the default model resizes every image to 256 x 256 anyway). Each n is built in its own
subprocess (`python -m index_store.cli ... --json`), so the peak RSS it reports (ru_maxrss) is that build's alone.
Every build uses the same fixed calibration folder (--calibration-data, 32 other augmented images): the default
10 % holdout would score 2,000 images against the 205k-vector bank at n = 20000, about 16 more minutes on 2 cores,
that measure search rather than the build.

Decode is measured separately (single thread, same PNGs, times n): inside the builder it runs on a thread pool
that overlaps the extraction, whose time it is part of.

    python bench/bench_build.py                 # n = 200, 1000, 5000, 20000: about 30 minutes (20000: 21)
    python bench/bench_build.py --quick         # n = 100, 400 with a small chunk buffer (both coreset paths)
    python bench/bench_build.py --sizes 200 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PATCHES_PER_IMAGE = 1024  # 32 x 32 grid of the default config
DIM = 128
DEFAULT_CHUNK = 2_000_000  # patchcore-build-index --max-chunk-patches default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000, 20000])
    p.add_argument("--quick", action="store_true", help="n = 100, 400 and --max-chunk-patches 200000")
    p.add_argument("--threads", type=int, help="torch/OpenMP/FAISS threads of each build (default: all cores)")
    p.add_argument("--workdir", type=Path, default=common.CACHE, help="augmented images and indexes go here")
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--max-chunk-patches", type=int, help="builder's chunk buffer rows (default: the builder's)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more patchcore-build-index arguments")
    p.add_argument("--timeout", type=float, help="seconds allowed per build")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def decode_seconds_per_image(paths: list[Path], sample: int = 100) -> float:
    from imaging.decode import read_image

    picked = paths[:: max(1, len(paths) // sample)][:sample]
    t = time.perf_counter()
    for p in picked:
        read_image(p)
    return (time.perf_counter() - t) / len(picked)


def run_build(n: int, images: list[Path], calib: Path, args: argparse.Namespace) -> dict:
    data = common.link_subset(images[:n], args.workdir / "sets" / f"n{n}")
    out = args.workdir / "indexes" / f"n{n}"
    cmd = [sys.executable, "-m", "index_store.cli", "--data", str(data), "--out", str(out), "--force", "--json",
           "--no-progress", "--calibration-data", str(calib)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_chunk_patches:
        cmd += ["--max-chunk-patches", str(args.max_chunk_patches)]
    cmd += args.extra
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"n": n, "status": f"timeout after {args.timeout:.0f} s"}
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"n": n, "status": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = summary["stage_seconds"]
    patches = summary["patches_seen"]
    return {
        "n": n, "status": "ok", "patches": patches, "bank": summary["bank_size"], "coreset_method": summary["coreset"],
        "extract_s": stages.get("extract"), "coreset_s": stages.get("coreset"), "index_s": stages.get("index"),
        "calibration_s": stages.get("calibration"), "load_model_s": stages.get("load_model"),
        "build_s": summary["build_seconds"], "wall_s": round(wall, 1), "peak_rss_mb": summary["peak_rss_mb"],
        "all_patches_mb": _mb(patches), "buffer_mb": _mb(_buffer_rows(patches, summary["bank_size"], args)),
        "bank_mb": _mb(summary["bank_size"]),
    }


def _buffer_rows(patches: int, bank: int, args: argparse.Namespace) -> int:
    """Rows of the builder's one embedding buffer: every patch, or one chunk plus the bank (sequential coreset)."""
    chunk = args.max_chunk_patches or DEFAULT_CHUNK
    return patches if patches <= chunk else chunk + bank


def _mb(rows: int) -> float:
    return round(rows * DIM * 4 / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.sizes, args.max_chunk_patches = [100, 400], args.max_chunk_patches or 200_000
    images = common.augmented_set(max(args.sizes), args.workdir / "aug", seed=0)
    calib = args.workdir / "aug_calib"
    common.augmented_set(args.calibration_images, calib, seed=1)
    per_image = decode_seconds_per_image(images)
    record = {"bench": "build", "machine": common.machine(), "threads": args.threads,
              "data": "augmented MVTec bottle train/good (209 real images), 256x256 PNG",
              "calibration_images": args.calibration_images, "max_chunk_patches": args.max_chunk_patches,
              "decode_ms_per_image_1thread": round(per_image * 1e3, 2), "rows": []}
    for n in args.sizes:
        row = run_build(n, images, calib, args)
        row["decode_s_est"] = round(per_image * n, 1)
        record["rows"].append(row)
        print(f"n={n}: {json.dumps(row)}", file=sys.stderr, flush=True)
        _save(record, args)
    cols = ["n", "status", "patches", "bank", "decode_s_est", "extract_s", "coreset_s", "index_s", "calibration_s",
            "build_s", "peak_rss_mb", "all_patches_mb", "buffer_mb", "bank_mb", "coreset_method"]
    print(common.table(record["rows"], cols, "patchcore-build-index stages (seconds) and peak RSS (MiB)"))
    common.write_json("bench_build" + ("_quick" if args.quick else ""), record, args.json_out)
    return 0


def _save(record: dict, args: argparse.Namespace) -> None:
    """Partial results after every build (a long run that is stopped keeps what it measured)."""
    path = args.workdir / ("bench_build_quick.partial.json" if args.quick else "bench_build.partial.json")
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
