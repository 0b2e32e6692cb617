"""Server latency and throughput against the in-process floor (image decode + backbone forward).

Starts the real server (patchcore-serve in a subprocess, loopback only) on an index, drives POST /predict with
1, 2, 4 and 8 concurrent clients for heatmap=none and heatmap=png (a bounded number of requests per level), then,
with the server stopped, measures the in-process baseline on the same images: decode_image + embedder.embed([img]),
one image at a time. Prints a table, a JSON record, and the ratio
p50(/predict, heatmap=none, 1 client) / p50(baseline)   (target: <= 1.5).

    python bench/bench_server.py --index-dir /tmp/idx/bottle [--images ../shared/data/mvtec_ad/bottle/test]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index-dir", type=Path, required=True, help="index folder (or folder of index folders)")
    p.add_argument("--index", help="?index= when the folder holds several")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of test images (recursive)")
    p.add_argument("--max-images", type=int, default=24, help="images used (spread over the sorted list)")
    p.add_argument("--requests", type=int, default=32, help="requests per (heatmap, concurrency) level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--heatmaps", nargs="+", default=["none", "png"])
    p.add_argument("--threads", type=int, help="torch threads for the server and the baseline (default: cores)")
    p.add_argument("--inference-workers", type=int, help="PATCHCORE_INFERENCE_WORKERS for the server")
    p.add_argument("--json-out", type=Path, help="also write the JSON record here")
    return p.parse_args(argv)


def load_images(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"no images under {folder}; pass --images")
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int)]
    return [(str(p.relative_to(folder)), p.read_bytes()) for p in dict.fromkeys(picked)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    env = dict(os.environ, PATCHCORE_LOG_LEVEL="WARNING")
    if args.inference_workers:
        env["PATCHCORE_INFERENCE_WORKERS"] = str(args.inference_workers)
    cmd = [sys.executable, "-m", "service.cli", "--index-dir", str(args.index_dir), "--port", str(port)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit("the server was not ready after 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def summary(latencies_s: list[float], wall_s: float | None = None) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    out = {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
           "mean_ms": float(ms.mean())}
    if wall_s is not None:
        out["throughput_rps"] = ms.size / wall_s
    return out


def drive(url: str, images: list[tuple[str, bytes]], heatmap: str, clients: int, n: int, index: str | None):
    """n requests from `clients` threads, each with its own connection; returns the summary."""
    params = {"heatmap": heatmap, **({"index": index} if index else {})}
    counter, lock, latencies, errors = itertools.count(), threading.Lock(), [], []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while (i := next(counter)) < n:
                name, data = images[i % len(images)]
                t0 = time.perf_counter()
                r = http.post("/predict", params=params, files={"file": (name, data, "application/octet-stream")})
                elapsed = time.perf_counter() - t0
                with lock:
                    (latencies if r.status_code == 200 else errors).append(elapsed if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:300]}")
    return summary(latencies, time.perf_counter() - t0)


def load_embedder(args: argparse.Namespace):
    """decode_image + embedder.embed([img]) of the same index, in this process, with the server's thread count."""
    from index_store import store
    from imaging.decode import decode_image
    from index_store.runtime import configure_threads
    from service.indexes import discover

    configure_threads(args.threads)
    found = discover(args.index_dir)
    embed = store.load(found[args.index] if args.index else next(iter(found.values()))).detector.embedder.embed
    return lambda data: embed([decode_image(data)])


def paired(url: str, images, floor, rounds: int, index: str | None) -> tuple[dict, dict]:
    """Alternate one baseline run and one /predict (heatmap=none) per image; returns both summaries."""
    params = {"heatmap": "none", **({"index": index} if index else {})}
    base, served = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for name, data in images[:3]:  # warm-up, both sides
            floor(data)
            http.post("/predict", params=params, files={"file": (name, data)}).raise_for_status()
        for _ in range(rounds):
            for name, data in images:
                t0 = time.perf_counter()
                floor(data)
                t1 = time.perf_counter()
                r = http.post("/predict", params=params, files={"file": (name, data, "application/octet-stream")})
                t2 = time.perf_counter()
                r.raise_for_status()
                base.append(t1 - t0)
                served.append(t2 - t1)
    return summary(base), summary(served)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = load_images(args.images, args.max_images)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"{len(images)} images from {args.images}; server on {url}, index {args.index_dir}", file=sys.stderr)
    floor = load_embedder(args)
    proc = start_server(args, port)
    levels = []
    try:
        base, served = paired(url, images, floor, max(1, args.requests // len(images)), args.index)
        print(f"  paired: baseline p50 {base['p50_ms']:.1f} ms, /predict p50 {served['p50_ms']:.1f} ms", file=sys.stderr)
        for heatmap in args.heatmaps:
            for clients in args.concurrency:
                stats = drive(url, images, heatmap, clients, max(args.requests, clients), args.index)
                levels.append({"heatmap": heatmap, "clients": clients, **stats})
                print(f"  heatmap={heatmap:5s} clients={clients}: p50 {stats['p50_ms']:.1f} ms", file=sys.stderr)
    finally:
        stop_server(proc)
    ratio = served["p50_ms"] / base["p50_ms"]

    print(f"\n{'heatmap':8s} {'clients':>7s} {'n':>4s} {'p50 ms':>8s} {'p95 ms':>8s} {'req/s':>7s}")
    for x in levels:
        print(f"{x['heatmap']:8s} {x['clients']:7d} {x['n']:4d} {x['p50_ms']:8.1f} {x['p95_ms']:8.1f} "
              f"{x['throughput_rps']:7.2f}")
    print(f"\npaired, {base['n']} images each: baseline (decode + backbone, in-process) p50 {base['p50_ms']:.1f} ms "
          f"p95 {base['p95_ms']:.1f} ms; /predict heatmap=none 1 client p50 {served['p50_ms']:.1f} ms "
          f"p95 {served['p95_ms']:.1f} ms")
    print(f"ratio p50(/predict none, 1 client) / p50(baseline) = {ratio:.2f}  "
          f"({'OK' if ratio <= 1.5 else 'OVER'} target 1.5)")
    record = {"index_dir": str(args.index_dir), "images": str(args.images), "n_images": len(images),
              "threads": args.threads, "levels": levels, "baseline": base, "predict_paired": served, "ratio": ratio}
    print(json.dumps(record, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
