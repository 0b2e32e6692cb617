"""patchcore-build-index on 1 and 2 Ray nodes (a real loopback cluster: distributed.loopback) against the local
builder: wall time, per-stage times, peak RSS per node, the bank against the local one (same picks? coverage radius
over every training patch) and image/pixel AUROC (patchcore-evaluate --index).

Every node gets --cpus-per-node CPUs; on this 2-core machine 1 node x 2 CPUs and 2 nodes x 1 CPU use the same cores,
so the figures show the overhead and the per-stage work, and the projection to N machines comes from the measured
worker-seconds (see docs/ray.md).

    python bench/bench_ray_build.py --data ../shared/data/mvtec_ad/bottle --layouts 1x2 2x1 --evaluate
    python bench/bench_ray_build.py --data DIR --max-chunk-patches 50000   # a chunked build (workers filter)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distributed.loopback import LoopbackCluster, tree_rss_mb  # noqa: E402


def build(data: Path, out: Path, extra: list[str], cluster: LoopbackCluster | None) -> dict:
    cmd = [sys.executable, "-m", "index_store.cli", "--data", str(data), "--out", str(out), "--force", "--json",
           "--no-progress", *extra]
    env = None
    if cluster is not None:
        cmd += ["--ray", cluster.address]
        env = cluster.env
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    if cluster is not None:
        cluster.watch("driver", proc.pid)
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "driver_tree_peak_rss_mb": round(peak, 1), **summary}


def bank_of(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from index_store import store

    bundle = store.load(index_dir)
    ids = store.read_bank_image_ids(index_dir, bundle.metadata)
    return bundle.detector.index.reconstruct_n(0, bundle.detector.index.ntotal), ids


def radius(patches: np.ndarray, bank: np.ndarray) -> float:
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    worst = 0.0
    for lo in range(0, patches.shape[0], 65536):
        d, _ = index.search(np.ascontiguousarray(patches[lo : lo + 65536]), 1)
        worst = max(worst, float(d.max()))
    return float(np.sqrt(worst))


def evaluate(data: Path, index_dir: Path, out: Path) -> dict:
    root, category = data.parent, data.name
    cmd = [sys.executable, "-m", "evaluation.cli", "--data", str(root), "--layout", "mvtec", "--categories",
           category, "--out", str(out), "--index", str(index_dir), "--figures", "0", "--no-progress"]
    subprocess.run(cmd, cwd=common.REPO, check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["categories"][category]
    flat = {**row, **row.get("metrics", {})} if isinstance(row.get("metrics"), dict) else row
    return {k: flat[k] for k in ("image_auroc", "pixel_auroc") if k in flat}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=common.BOTTLE, help="an MVTec category root (its train/good)")
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="NODESxCPUS clusters to build on")
    p.add_argument("--max-chunk-patches", type=int, help="the builder's chunk rows (default: the builder's)")
    p.add_argument("--threads", type=int, default=2, help="the local build's threads (and the driver's)")
    p.add_argument("--patches", type=Path, help="cached training patch embeddings (.npy, bench_ray_reduce --cache) "
                   "for the coverage radius")
    p.add_argument("--evaluate", action="store_true", help="image/pixel AUROC of each index (patchcore-evaluate)")
    p.add_argument("--workdir", type=Path, default=common.CACHE / "ray_build")
    p.add_argument("--json-out", type=Path, default=common.RESULTS / "ray_build.json")
    args = p.parse_args(argv)
    extra = ["--threads", str(args.threads)]
    if args.max_chunk_patches:
        extra += ["--max-chunk-patches", str(args.max_chunk_patches)]
    rows = []
    local_dir = args.workdir / "local"
    rows.append({"layout": "local", **build(args.data, local_dir, extra, None)})
    print(json.dumps(rows[-1]))
    for layout in args.layouts:
        nodes, cpus = (int(x) for x in layout.split("x"))
        t = time.perf_counter()
        with LoopbackCluster(nodes=nodes, cpus_per_node=cpus) as cluster:
            start = time.perf_counter() - t
            row = {"layout": layout, "cluster_start_s": round(start, 1),
                   **build(args.data, args.workdir / layout, extra, cluster)}
            row["node_tree_peak_rss_mb"] = cluster.peak_rss_mb()
        rows.append(row)
        print(json.dumps(row))
    ref_bank, ref_ids = bank_of(local_dir)
    patches = np.load(args.patches) if args.patches and args.patches.exists() else None
    for row in rows:
        bank, ids = bank_of(args.workdir / row["layout"])
        row["same_picks_as_local"] = bool(ids.shape == ref_ids.shape and np.array_equal(ids, ref_ids)
                                          and np.allclose(bank, ref_bank, atol=1e-4))
        if patches is not None:
            row["radius"] = radius(patches, bank)
            row["radius_vs_local"] = round(row["radius"] / radius(patches, ref_bank), 5)
        if args.evaluate:
            row.update(evaluate(args.data, args.workdir / row["layout"], args.workdir / f"eval_{row['layout']}"))
        print(json.dumps({k: row.get(k) for k in ("layout", "same_picks_as_local", "radius_vs_local", "image_auroc",
                                                  "pixel_auroc")}))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"machine": common.machine(), "data": str(args.data), "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
