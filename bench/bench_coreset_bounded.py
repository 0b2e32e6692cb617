"""Bounded greedy against the exact greedy: time, coverage radius and AUROC on the development suite and on
synthetic high-entropy embeddings.

For each product (cached patch embeddings of its train/good images, default features: pool 128-d, or
`--aggregation concat`) and each ratio, both coresets are computed in this process, one after the other, then each
bank scores the product's test images through the product's own Detector: image AUROC, and pixel AUROC where the
product has masks. The coverage radius (largest distance from a training patch to its nearest bank vector) is exact
for both (common.coverage_radius_of). The synthetic bank is Gaussian noise (no structure for the bounds to use: the
worst case of the exact greedy).

    python bench/bench_coreset_bounded.py                       # suite x {1 %, 10 %} + synthetic: ~15 min on 2 cores
    python bench/bench_coreset_bounded.py --products pill_qc --ratios 0.1 --no-synthetic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import suite  # noqa: E402

from evaluation import metrics  # noqa: E402
from model.coreset import greedy_coreset  # noqa: E402
from model.coreset_bounded import bounded_greedy_coreset  # noqa: E402

METHODS = {
    "exact": lambda rows, k, pd: greedy_coreset(rows, k, projection_dim=pd, seed=0),
    "bounded": lambda rows, k, pd: bounded_greedy_coreset(rows, k, projection_dim=pd, seed=0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--products", nargs="*", default=list(suite.PRODUCTS), help="none: synthetic only")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--aggregation", choices=["pool", "concat"], default="pool")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--synthetic", type=int, nargs="*", default=[100_000],
                   help="rows of the Gaussian 128-d bank (none: skip)")
    p.add_argument("--no-synthetic", dest="synthetic", action="store_const", const=[])
    p.add_argument("--threads", type=int)
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def product_rows(name: str, ratios: list[float], features: suite.Features, methods: list[str]) -> list[dict]:
    cat = suite.load_product(name)
    train, _ = suite.embed(list(cat.train), features)
    test, sizes = suite.embed([s.image_path for s in cat.test], features)
    labels = np.array([s.label for s in cat.test])
    masks = suite.masks_on_eval_grid(cat, sizes)
    config = features.config()
    n, h, w, d = train.shape
    rows_all = train.reshape(-1, d)
    pd = config.projection_dim
    out = []
    for ratio in ratios:
        k = max(16, int(round(ratio * rows_all.shape[0])))
        for method in methods:
            t = time.perf_counter()
            picked = METHODS[method](rows_all, k, pd)
            seconds = time.perf_counter() - t
            bank = suite.Bank(suite.detector_for(rows_all[picked], config), (picked // (h * w)).astype(np.int32),
                              seconds)
            scores, patches = suite.image_scores(bank, test)
            row = {"product": name, "aggregation": features.aggregation, "ratio": ratio, "method": method,
                   "n": int(rows_all.shape[0]), "k": int(picked.size), "time_s": round(seconds, 2),
                   "radius": round(common.coverage_radius_of(rows_all, rows_all[picked]), 4),
                   "image_auroc": round(metrics.image_auroc(labels, scores), 4)}
            if masks is not None:
                maps = suite.maps_on_eval_grid(patches, sizes, features)
                row["pixel_auroc"] = round(metrics.pixel_auroc(masks, maps), 4)
            out.append(row)
            print(row, file=sys.stderr, flush=True)
        _relative(out)
    return out


def synthetic_rows(n: int, ratios: list[float], methods: list[str]) -> list[dict]:
    x = np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32)
    out = []
    for ratio in ratios:
        k = int(round(ratio * n))
        for method in methods:
            t = time.perf_counter()
            picked = METHODS[method](x, k, None)
            out.append({"product": f"gaussian {n // 1000}k x 128", "aggregation": "-", "ratio": ratio,
                        "method": method, "n": n, "k": int(picked.size), "time_s": round(time.perf_counter() - t, 2),
                        "radius": round(common.coverage_radius_of(x, x[picked]), 4)})
            print(out[-1], file=sys.stderr, flush=True)
        _relative(out)
    return out


def _relative(rows: list[dict]) -> None:
    """radius and time of each row against the exact row of the same product and ratio."""
    exact = {(r["product"], r["aggregation"], r["ratio"]): r for r in rows if r["method"] == "exact"}
    for r in rows:
        ref = exact.get((r["product"], r["aggregation"], r["ratio"]))
        if ref is not None:
            r["radius_vs_exact"] = round(r["radius"] / ref["radius"], 3)
            r["speedup_vs_exact"] = round(ref["time_s"] / max(r["time_s"], 1e-3), 1)
            for key in ("image_auroc", "pixel_auroc"):
                if key in r:
                    r[f"{key}_minus_exact"] = round(r[key] - ref[key], 4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup_threads(args.threads)
    features = suite.Features(aggregation=args.aggregation)
    record = {"bench": "coreset_bounded", "machine": common.machine(), "threads": threads,
              "aggregation": args.aggregation, "rows": []}
    for name in args.products:
        record["rows"] += product_rows(name, args.ratios, features, args.methods)
    for n in args.synthetic:
        record["rows"] += synthetic_rows(n, args.ratios, args.methods)
    cols = ["product", "ratio", "method", "n", "k", "time_s", "speedup_vs_exact", "radius", "radius_vs_exact",
            "image_auroc", "image_auroc_minus_exact", "pixel_auroc", "pixel_auroc_minus_exact"]
    print(common.table(record["rows"], cols, "bounded vs exact greedy coreset"))
    common.write_json(f"bench_coreset_bounded_{args.aggregation}", record, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
