"""The real server, per runtime: start-up to /readyz, resident memory, and /predict latency with its per-stage
timings_ms, for today's code (a git ref, torch) and this tree (torch, onnx; optionally onnx from a torch-free venv,
what the slim image holds), in one run.

Each variant is a `python -m service.cli` subprocess on the same index (loopback, one at a time). One client posts
bottle 900 x 900 PNGs one after another, heatmap=none then heatmap=png; the rounds alternate over the variants.
"outside" is the client's latency minus the server's own `total` (HTTP on loopback; for trees older than
service/timing.py also the multipart parsing before the handler and the JSON serialisation). RSS is VmRSS of the
server after the requests, VmHWM its peak.

    python bench/bench_serving.py --index runs/idx/bottle --threads 2 [--slim-python /tmp/slim/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serving_common  # bench/, the script's folder

import httpx
import numpy as np

REPO = serving_common.REPO
STAGES = ("parse", "read", "queue", "decode", "preprocess", "backbone", "search", "score", "map", "render", "serialise",
          "other", "total")  # parse, serialise, other: 0 for trees older than service/timing.py


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


def run_variant(variant: dict, args: argparse.Namespace, blobs: list[bytes]) -> dict:
    port = free_port()
    env = dict(os.environ, PATCHCORE_LOG_LEVEL="WARNING", PYTHONPATH=str(variant["src"]), **variant.get("env", {}))
    if variant.get("runtime"):
        env["PATCHCORE_RUNTIME"] = variant["runtime"]
    index = variant.get("index") or args.index
    cmd = [variant["python"], "-m", "service.cli", "--index-dir", str(index.resolve()), "--port", str(port),
           "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=variant["src"], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{variant['name']}: the server exited with code {proc.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        out = {"ready_s": ready_s}
        with httpx.Client(base_url=url, timeout=300) as http:
            for heatmap in ("none", "png"):
                lat, timings = [], []
                for i in range(args.requests + 2):
                    blob = blobs[i % len(blobs)]
                    t = time.perf_counter()
                    r = http.post("/predict", params={"heatmap": heatmap}, files={"file": ("x.png", blob, "image/png")})
                    elapsed = (time.perf_counter() - t) * 1e3
                    r.raise_for_status()
                    if i >= 2:  # two warm-up requests
                        lat.append(elapsed)
                        timings.append(r.json()["timings_ms"])
                med = {s: float(np.median([t.get(s, 0.0) for t in timings])) for s in STAGES}
                p50 = float(np.median(lat))
                out[heatmap] = {"p50_ms": p50, "p95_ms": float(np.percentile(lat, 95)), "stages_ms": med,
                                "outside_ms": float(np.median(np.asarray(lat) - [t["total"] for t in timings]))}
        out["rss_mb"] = proc_kib(proc.pid, "VmRSS") / 1024
        out["peak_rss_mb"] = proc_kib(proc.pid, "VmHWM") / 1024
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def anomalib_forward(args: argparse.Namespace) -> dict:
    image = sorted(args.images.glob("*/000.png"))[0]
    cmd = [os.path.abspath(args.anomalib_python), str(REPO / "bench" / "anomalib_forward.py"), "--image",
           str(image.resolve()), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO / "bench")
    if out.returncode:
        raise SystemExit(f"anomalib forward failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    serving_common.add_arguments(p)
    p.add_argument("--requests", type=int, default=16, help="per heatmap mode and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slim-python", help="python of a torch-free venv (the slim image's packages)")
    p.add_argument("--anomalib-python", help="python of the anomalib side venv (bench/compare_anomalib.py makes "
                   ".venv-anomalib): anomalib's bare model forward, timed in each round (bench/anomalib_forward.py)")
    args = p.parse_args(argv)
    blobs = [q.read_bytes() for q in sorted(args.images.glob("*/000.png"))]
    with tempfile.TemporaryDirectory() as tmp:
        variants = []
        if args.baseline_ref:
            base = serving_common.export_tree(args.baseline_ref, Path(tmp) / "base")
            variants.append({"name": f"{args.baseline_ref} (torch)", "python": sys.executable, "src": base,
                             "index": args.baseline_index})
        variants += [{"name": "torch", "python": sys.executable, "src": REPO, "runtime": "torch"},
                     {"name": "onnx", "python": sys.executable, "src": REPO, "runtime": "onnx"}]
        if args.slim_python:
            variants.append({"name": "onnx, no torch", "python": args.slim_python, "src": REPO, "runtime": "onnx"})
        runs = {v["name"]: [] for v in variants}
        anomalib_runs = []
        for _ in range(args.rounds):
            for v in variants:
                runs[v["name"]].append(run_variant(v, args, blobs))
                print(v["name"], json.dumps(runs[v["name"]][-1]["none"]["p50_ms"]), flush=True)
            if args.anomalib_python:
                anomalib_runs.append(anomalib_forward(args))
                print("anomalib", json.dumps(anomalib_runs[-1]), flush=True)

    def med(rs, *keys):
        vals = []
        for r in rs:
            for k in keys:
                r = r[k]
            vals.append(r)
        return float(np.median(vals))

    rows = {}
    for name, rs in runs.items():
        rows[name] = {"ready_s": med(rs, "ready_s"), "rss_mb": med(rs, "rss_mb"), "peak_rss_mb": med(rs, "peak_rss_mb")}
        for h in ("none", "png"):
            rows[name][f"p50_{h}"] = med(rs, h, "p50_ms")
            rows[name][f"outside_{h}"] = med(rs, h, "outside_ms")
            rows[name][f"stages_{h}"] = {s: med(rs, h, "stages_ms", s) for s in STAGES}
    ref = next(iter(rows))
    print(f"\n{'variant':<18}{'ready s':>9}{'RSS MB':>9}{'p50 none':>10}{'p50 png':>9}{'png/none':>9}"
          f"{'none/' + ref[:8]:>16}")
    for name, r in rows.items():
        print(f"{name:<18}{r['ready_s']:>9.2f}{r['rss_mb']:>9.0f}{r['p50_none']:>10.1f}{r['p50_png']:>9.1f}"
              f"{r['p50_png'] / r['p50_none']:>9.2f}{r['p50_none'] / rows[ref]['p50_none']:>16.2f}")
    anomalib = {k: med(anomalib_runs, k) for k in ("forward_ms", "from_file_ms")} if anomalib_runs else None
    if anomalib:
        print(f"anomalib 2.7 bare model forward (bank {anomalib_runs[0]['bank']}): {anomalib['forward_ms']:.1f} ms on a "
              f"pre-processed tensor, {anomalib['from_file_ms']:.1f} ms from file; /predict p50 (heatmap=none) / that "
              "forward: " + ", ".join(f"{n} {r['p50_none'] / anomalib['forward_ms']:.2f}" for n, r in rows.items()))
    for h in ("none", "png"):
        print(f"\nheatmap={h}: median ms per stage (server timings_ms; outside = client p50 - server total)")
        print(f"{'stage':<12}" + "".join(f"{n[:16]:>18}" for n in rows))
        for s in (*STAGES, "outside", "p50"):
            vals = [r[f"stages_{h}"][s] if s in STAGES else r[f"{s}_{h}"] for r in rows.values()]
            print(f"{s:<12}" + "".join(f"{v:>18.2f}" for v in vals))
    record = {"threads": args.threads, "requests": args.requests, "rounds": args.rounds, "load_average": os.getloadavg(),
              "baseline_ref": args.baseline_ref, "summary": rows, "runs": runs, "anomalib_forward": anomalib,
              "anomalib_runs": anomalib_runs}
    out = REPO / "bench" / "results" / "bench_serving.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
