"""Every millisecond of a prediction, per stage, for today's code (a git ref) and this tree's torch and onnx
runtimes, with and without passive OpenMP waiting, in one run.

Each variant runs in its own subprocess (OpenMP reads its wait policy when it loads), alternating rounds so the
machine's load falls on all of them alike. In each, one 900 x 900 bottle PNG at a time goes through the stages the
server runs: decode (imaging.decode.decode_image on the file's bytes), preprocess, backbone (the extractor),
search (FAISS, 1,024 queries), score, map (anomaly map at the picture's size), png (render + encode). "search alone"
is the same FAISS search repeated back to back with nothing before it. Prints a table and ratios, writes
bench/results/bench_predict.json.

    python bench/bench_predict.py --index runs/idx/bottle --threads 2 [--baseline-ref main]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serving_common  # bench/, the script's folder

REPO = serving_common.REPO
STAGES = ("decode", "preprocess", "backbone", "search", "score", "map", "png")


def worker(args: argparse.Namespace) -> None:
    """One variant: prints one JSON line of per-stage medians (ms)."""
    import numpy as np

    from imaging import render
    from imaging.decode import decode_image
    from index_store import store
    from index_store.runtime import configure_threads
    from model import knn
    from model.calibration import normalise

    threads = configure_threads(args.threads)
    try:  # as the server does (service/app.py); a baseline tree older than it has no such function
        from index_store.runtime import serial_numpy_blas
    except ImportError:
        pass
    else:
        serial_numpy_blas()
    kwargs = {} if args.runtime == "base" else {"runtime": args.runtime, "threads": threads}
    bundle = store.load(args.index, **kwargs)
    detector = bundle.detector
    blobs = [p.read_bytes() for p in sorted(args.images.glob("*/00[0-9].png"))[: args.n_images]]
    rows = {s: [] for s in (*STAGES, "total", "search_alone")}
    for rep in range(args.repeats + 1):
        for blob in blobs:
            t0 = time.perf_counter()
            image = decode_image(blob, 40_000_000, name="x")
            t1 = time.perf_counter()
            score = detector.score_batch([image])[0]
            t2 = time.perf_counter()
            amap = detector.anomaly_map(score)
            t3 = time.perf_counter()
            render.png_bytes(render.to_uint8(normalise(amap, bundle.metadata.calibration)))
            t4 = time.perf_counter()
            if rep == 0:
                continue  # warm-up round
            t = score.timings_ms
            for stage, value in (("decode", (t1 - t0) * 1e3), ("preprocess", t["preprocess"]),
                                 ("backbone", t["backbone"]), ("search", t["search"]), ("score", t["score"]),
                                 ("map", (t3 - t2) * 1e3), ("png", (t4 - t3) * 1e3), ("total", (t4 - t0) * 1e3)):
                rows[stage].append(value)
    queries = detector.embedder.embed_pixels(_pixels(image, detector)) if args.runtime != "base" else \
        detector.embedder.embed([image])
    queries = queries.reshape(-1, queries.shape[-1])
    for _ in range(len(rows["total"])):
        t0 = time.perf_counter()
        knn.search(detector.index, queries, k=1)
        rows["search_alone"].append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({k: float(np.median(v)) for k, v in rows.items()} |
                     {"torch_imported": "torch" in sys.modules}))


def _pixels(image, detector):
    from model.preprocess import pixels

    return pixels([image], detector.config)


def run_variant(name: str, variant: dict, args: argparse.Namespace, base_dir: Path | None) -> dict:
    env = dict(os.environ, **variant.get("env", {}))
    cwd, pythonpath = REPO, str(REPO)
    if variant["runtime"] == "base":
        cwd, pythonpath = base_dir, str(base_dir)
    env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, str(REPO / "bench" / "bench_predict.py"), "--worker", "--runtime", variant["runtime"],
           "--index", str((args.baseline_index if variant["runtime"] == "base" and args.baseline_index else
                           args.index).resolve()), "--images", str(args.images), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--n-images", str(args.n_images)]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    serving_common.add_arguments(p)
    p.add_argument("--repeats", type=int, default=3, help="passes over the images per round")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    variants = {"base torch": {"runtime": "base"}, "torch": {"runtime": "torch"},
                "torch passive": {"runtime": "torch", "env": passive}, "onnx": {"runtime": "onnx"},
                "onnx passive": {"runtime": "onnx", "env": passive}}
    base_dir = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline_ref:
            base_dir = serving_common.export_tree(args.baseline_ref, Path(tmp) / "base")
        else:
            variants.pop("base torch")
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                results[name].append(run_variant(name, variant, args, base_dir))
    import numpy as np

    merged = {name: {k: float(np.median([r[k] for r in rs])) for k in (*STAGES, "total", "search_alone")}
              for name, rs in results.items()}
    cols = (*STAGES, "total", "search_alone")
    print(f"{'ms (median)':<14}" + "".join(f"{c:>13}" for c in cols) + f"{'search/alone':>14}")
    for name, m in merged.items():
        print(f"{name:<14}" + "".join(f"{m[c]:>13.2f}" for c in cols) + f"{m['search'] / m['search_alone']:>14.2f}")
    ref = "base torch" if "base torch" in merged else "torch"
    ratios = {name: round(m["total"] / merged[ref]["total"], 3) for name, m in merged.items()}
    print(f"total / {ref}: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    record = {"threads": args.threads, "n_images": args.n_images, "repeats": args.repeats, "rounds": args.rounds,
              "baseline_ref": args.baseline_ref, "load_average": os.getloadavg(), "stages_ms": merged,
              "total_ratio_vs_" + ref.replace(" ", "_"): ratios, "runs": results}
    out = REPO / "bench" / "results" / "bench_predict.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
