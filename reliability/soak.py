"""Soak: many requests from several clients against a real server, with mixed picture sizes and bad inputs mixed in.

A fixed set of distinct requests (good pictures from 64 to 1600 pixels as PNG and JPEG, heatmap none or png,
single and batch, two indexes; about 1 in 8 bad: text, truncated, a pixel bomb, a 1x1 picture, an unknown index)
is first sent once each, one at a time: those answers are the reference. Then --requests of them, drawn at random
(seeded), go out from --clients threads at once. Every answer must have its expected status and be byte-identical
to the reference once its timing fields are cut out; the server's RSS is sampled every --sample-every requests.
Stays on 127.0.0.1 and stops by itself (a fixed count; every request has a timeout; the server is stopped).

    python -m reliability.soak                                   # 10,000 requests, 4 clients
    python -m reliability.soak --requests 400 --sample-every 100  # the CI profile (tests/service/test_soak.py)
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from reliability.common import demo_indexes, demo_server, percentile, rss_bytes, save_result, server_errors

TIMINGS = re.compile(rb'"timings_ms":\{[^}]*\}|"total_ms":[-0-9.eE+]+')


@dataclass(frozen=True)
class Ask:
    """One distinct request and the status it must get."""

    name: str
    path: str
    params: dict
    files: list  # httpx multipart files
    status: int
    kind: str  # "good", "batch" or "bad"


def answer_bytes(body: bytes) -> bytes:
    """The answer without its timing fields: what must not change between runs."""
    return TIMINGS.sub(b"", body)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def requests_for(samples: Path) -> list[Ask]:
    """The distinct requests of a soak, from the demo samples' test pictures."""
    pictures = [Image.open(p).convert("RGB") for p in sorted(samples.glob("disc/test/*/*.png"))]
    asks = []
    sizes = [(64, 64), (128, 128), (300, 200), (640, 480), (1024, 768), (1600, 1200)]
    for i, (w, h) in enumerate(sizes):
        for j, fmt in enumerate(("PNG", "JPEG")):
            pic = pictures[(i + j) % len(pictures)].resize((w, h), Image.Resampling.BILINEAR)
            heatmap = "png" if w <= 640 and j == 0 else "none"
            index = "disc" if (i + j) % 3 else "disc-b"
            upload = ("file", (f"p{i}.{fmt.lower()}", _encoded(pic, fmt), f"image/{fmt.lower()}"))
            asks.append(Ask(f"{w}x{h}.{fmt.lower()} {index} heatmap={heatmap}", "/predict",
                            {"index": index, "heatmap": heatmap}, [upload], 200, "good"))
    batch = [("files", (f"b{k}.png", _encoded(pictures[k % len(pictures)], "PNG"), "image/png")) for k in range(3)]
    asks.append(Ask("batch of 3, heatmap=png", "/predict/batch", {"index": "disc", "heatmap": "png"}, batch, 200,
                    "batch"))
    good = _encoded(pictures[0], "PNG")
    bomb = _encoded(Image.new("L", (3000, 3000)), "PNG")  # 9 MP, a few kB: over the 4 MP pixel cap below
    bad = [("text", b"not a picture\n" * 50, 422, {}), ("truncated", good[: len(good) // 2], 422, {}),
           ("pixel bomb", bomb, 413, {}), ("1x1", _encoded(Image.new("RGB", (1, 1)), "PNG"), 422, {}),
           ("unknown index", good, 404, {"index": "nope"})]
    for name, data, status, params in bad:
        asks.append(Ask(name, "/predict", {"index": "disc", **params}, [("file", (f"{name}.png", data, "image/png"))],
                        status, "bad"))
    return asks


def send(http: httpx.Client, ask: Ask) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    r = http.post(ask.path, params=ask.params, files=ask.files)
    return r.status_code, answer_bytes(r.content), (time.perf_counter() - t0) * 1e3


@dataclass
class SoakResult:
    requests: int
    clients: int
    statuses: dict[str, int]
    unexpected: list[str]  # "name: got X, want Y"
    mismatches: list[str]  # names whose answer differed from the sequential one
    latency_ms: dict[str, dict[str, float]]  # kind -> {"p50", "p99"}
    rss_mb: list[tuple[int, float]]  # (requests done, RSS MiB)
    warmup: int
    seconds: float
    server_errors: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        """Last sample over the first sample at or after the warm-up, minus 1."""
        after = [mb for done, mb in self.rss_mb if done >= self.warmup]
        return after[-1] / after[0] - 1 if len(after) >= 2 else float("nan")

    @property
    def rss_peak_growth(self) -> float:
        after = [mb for done, mb in self.rss_mb if done >= self.warmup]
        return max(after) / after[0] - 1 if len(after) >= 2 else float("nan")

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.mismatches and not self.server_errors


def soak(indexes: Path, samples: Path, workdir: Path, n_requests: int, clients: int, sample_every: int,
         warmup: int, seed: int, inference_workers: int = 1) -> SoakResult:
    asks = requests_for(samples)
    schedule = random.Random(seed).choices(range(len(asks)), weights=[1 if a.kind == "bad" else 2 for a in asks],
                                           k=n_requests)
    settings = dict(threads=2, max_pixels=4_000_000, max_upload_bytes=8 * 1024 * 1024, log_level="WARNING",
                    inference_workers=inference_workers)
    lock, done, rss, results = threading.Lock(), [0], [], []
    t0 = time.perf_counter()
    with demo_server(indexes, workdir / "soak-server.log", **settings) as server:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            reference = {i: send(http, a)[:2] for i, a in enumerate(asks)}  # one at a time
            rss.append((0, rss_bytes(server.pid) / 2**20))

            def work(i: int) -> tuple[int, int, bytes, float]:
                status, body, ms = send(http, asks[i])
                with lock:
                    done[0] += 1
                    if done[0] % sample_every == 0:
                        rss.append((done[0], rss_bytes(server.pid) / 2**20))
                return i, status, body, ms

            with ThreadPoolExecutor(max_workers=clients) as pool:
                results = list(pool.map(work, schedule))
    unexpected, mismatches, latency = [], [], {}
    for i, status, body, ms in results:
        ask = asks[i]
        if status != ask.status:
            unexpected.append(f"{ask.name}: got {status}, want {ask.status}")
        elif (status, body) != reference[i]:
            mismatches.append(ask.name)
        latency.setdefault(ask.kind, []).append(ms)
    latency["all"] = [ms for _, _, _, ms in results]
    return SoakResult(
        n_requests, clients, dict(sorted(Counter(str(s) for _, s, _, _ in results).items())), unexpected,
        sorted(set(mismatches)),
        {k: {"p50": round(percentile(v, 50), 1), "p99": round(percentile(v, 99), 1), "n": len(v)}
         for k, v in latency.items()},
        [(d, round(mb, 1)) for d, mb in rss], warmup, round(time.perf_counter() - t0, 1),
        server_errors(workdir / "soak-server.log"),
    )


def print_report(r: SoakResult) -> None:
    print(f"{r.requests:,} requests from {r.clients} clients in {r.seconds:.0f} s; statuses {r.statuses}")
    print(f"unexpected statuses: {len(r.unexpected)}; answers differing from the sequential ones: "
          f"{len(r.mismatches)}; server errors logged: {len(r.server_errors)}")
    print("\n| requests | p50 ms | p99 ms | n |\n|---|---:|---:|---:|")
    for kind, v in r.latency_ms.items():
        print(f"| {kind} | {v['p50']} | {v['p99']} | {v['n']:,} |")
    print("\nRSS (MiB) by requests done: " + ", ".join(f"{d:,}: {mb}" for d, mb in r.rss_mb))
    print(f"RSS growth after the warm-up ({r.warmup:,} requests): last {r.rss_growth:+.2%}, "
          f"peak {r.rss_peak_growth:+.2%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--sample-every", type=int, default=500, help="RSS sample period, in requests")
    p.add_argument("--warmup", type=int, default=1000, help="requests before the RSS baseline")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--inference-workers", type=int, default=1, help="PATCHCORE_INFERENCE_WORKERS of the server")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--save", action="store_true", help="write reliability/results/soak[-wN].json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="patchcore-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        indexes = demo_indexes(workdir)
        result = soak(indexes, workdir / "samples", workdir, args.requests, args.clients, args.sample_every,
                      args.warmup, args.seed, args.inference_workers)
    print_report(result)
    if args.save:
        record = {**result.__dict__, "rss_growth": result.rss_growth, "rss_peak_growth": result.rss_peak_growth,
                  "inference_workers": args.inference_workers}
        name = "soak" if args.inference_workers == 1 else f"soak-w{args.inference_workers}"
        print(f"\nwrote {save_result(name, record)}")
    print(json.dumps({"requests": result.requests, "unexpected": len(result.unexpected),
                      "mismatches": len(result.mismatches), "rss_growth": round(result.rss_growth, 4),
                      "p50_ms": result.latency_ms["all"]["p50"], "p99_ms": result.latency_ms["all"]["p99"],
                      "ok": result.ok}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
