"""Nearest-neighbour search: latency per image and recall@1 for every index kind and bank size, and AUROC on bottle.

Banks of 1k, 10k, 100k and 1M vectors are drawn from the real MVTec bottle patch embeddings (default config, 214,016
x 128); the 1M bank repeats them with small Gaussian noise (sigma = 0.05 x the median nearest-neighbour distance of
the bank). Queries: one test image's patches (1024 x 128) per search call, a different bottle test image each time;
the kinds are timed round-robin (flat, ivf_flat, hnsw, ivf_pq, flat, ...) so background load hits them alike.

Parameters (model.config.IndexConfig; the defaults of the product unless said):
  flat      IndexFlatL2, exact
  ivf_flat  nlist = min(1024, bank / 39) k-means cells; nprobe 8 (default) and 32
  hnsw      IndexHNSWFlat, M 32, efConstruction 200; efSearch 32, 64 (default) and 128
  ivf_pq    nlist as ivf_flat, 16 sub-quantisers x 8 bits (16 bytes a vector), nprobe 8 (default) and 32
recall@1 = share of queries whose returned neighbour is as near (float64, 1e-6 relative) as flat's neighbour;
score error = mean relative error of the patch score the index reports against the exact float64 nearest distance
(flat's own error is float32 rounding of its |q|^2 + |b|^2 - 2 q.b; ivf_pq reports distances to PQ codes).

AUROC: a memory bank is built from all bottle training embeddings at the coreset ratio(s) given (the default, 1 %,
and 10 %), every index kind holds it, and the 83 test images are scored (image AUROC of s*, pixel AUROC of the
anomaly maps at <= 256 px).

    python bench/bench_search.py            # about 6 minutes on 2 cores (the 1M HNSW build is half of it)
    python bench/bench_search.py --quick    # banks 1k and 10k, AUROC at 1 %
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from model import knn  # noqa: E402
from model.config import IndexConfig, PatchCoreConfig  # noqa: E402

# (label, kind, build parameters, search parameters) - one built index serves several search settings.
SETTINGS = [
    ("flat", "flat", {}, {}),
    ("ivf_flat nprobe=8", "ivf_flat", {}, {"nprobe": 8}),
    ("ivf_flat nprobe=32", "ivf_flat", {}, {"nprobe": 32}),
    ("hnsw efSearch=32", "hnsw", {}, {"ef_search": 32}),
    ("hnsw efSearch=64", "hnsw", {}, {"ef_search": 64}),
    ("hnsw efSearch=128", "hnsw", {}, {"ef_search": 128}),
    ("ivf_pq nprobe=8", "ivf_pq", {}, {"nprobe": 8}),
    ("ivf_pq nprobe=32", "ivf_pq", {}, {"nprobe": 32}),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="banks 1k and 10k; AUROC at 1 %% only")
    p.add_argument("--banks", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=5, help="timed searches per setting (one image each)")
    p.add_argument("--auroc-ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--eval-size", type=int, default=256, help="longer side of the pixel-AUROC grid")
    p.add_argument("--threads", type=int, help="torch/OpenMP/FAISS threads (default: all cores)")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def make_bank(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if size <= x.shape[0]:
        return np.ascontiguousarray(x[rng.choice(x.shape[0], size, replace=False)])
    sample = x[rng.choice(x.shape[0], 20_000, replace=False)]
    nn = knn.build_index(sample, IndexConfig(), 0)
    d, _ = knn.search(nn, sample, k=2)
    sigma = 0.05 * float(np.median(np.sqrt(np.maximum(d[:, 1], 0)))) / np.sqrt(x.shape[1])  # per coordinate
    reps = -(-size // x.shape[0])
    out = np.empty((size, x.shape[1]), np.float32)
    for r in range(reps):
        lo, hi = r * x.shape[0], min(size, (r + 1) * x.shape[0])
        out[lo:hi] = x[: hi - lo] + (rng.standard_normal((hi - lo, x.shape[1]), dtype=np.float32) * sigma if r else 0)
    return out


def build_all(bank: np.ndarray) -> dict[str, tuple[object, float]]:
    """kind -> (index, build seconds)."""
    built = {}
    for kind in dict.fromkeys(s[1] for s in SETTINGS):
        if kind == "ivf_pq" and bank.shape[0] < knn.MIN_POINTS_PER_CELL * 256:
            continue  # FAISS needs 39 x 256 vectors to train 8-bit codebooks
        t = time.perf_counter()
        built[kind] = (knn.build_index(bank, IndexConfig(kind=kind), 0), time.perf_counter() - t)
    return built


def searcher(index, kind: str, params: dict):
    config = IndexConfig(kind=kind, **params)

    def run(queries: np.ndarray):
        knn.configure_search(index, config)
        return knn.search(index, queries, k=1)

    return run


def latency_rows(bank: np.ndarray, queries: list[np.ndarray], repeats: int) -> list[dict]:
    built = build_all(bank)
    runs = {label: searcher(built[kind][0], kind, params) for label, kind, _, params in SETTINGS if kind in built}
    times: dict[str, list[float]] = {label: [] for label in runs}
    results: dict[str, list] = {label: [] for label in runs}
    queries_used = []
    for r in range(repeats):  # round-robin: one image, every setting, then the next image
        q = queries[r % len(queries)]
        queries_used.append(q)
        for label, run in runs.items():
            t = time.perf_counter()
            out = run(q)
            times[label].append(time.perf_counter() - t)
            results[label].append(out)
    rows = []
    flat_ms = float(np.median(times["flat"])) * 1e3
    for label, kind, _, params in SETTINGS:
        if label not in runs:
            continue
        hits, errs = [], []
        for q, (_, ids_ref), (d, ids) in zip(queries_used, results["flat"], results[label]):
            exact_ref = _exact(q, bank, ids_ref[:, 0])  # float64 distance to flat's neighbour
            hits.append(_exact(q, bank, ids[:, 0]) <= exact_ref * (1 + 1e-6) + 1e-9)
            errs.append(np.abs(np.sqrt(np.maximum(d[:, 0], 0)) - exact_ref) / np.maximum(exact_ref, 1e-12))
        ms = float(np.median(times[label])) * 1e3
        rows.append({"bank": bank.shape[0], "index": label, "build_s": round(built[kind][1], 2),
                     "ms_per_image": round(ms, 2), "speedup_vs_flat": round(flat_ms / ms, 1),
                     "recall@1": round(float(np.concatenate(hits).mean()), 4),
                     "score_rel_err": round(float(np.concatenate(errs).mean()), 5)})
    return rows


def _exact(queries: np.ndarray, bank: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 L2 distance of each query to bank[id] (id -1: inf)."""
    diff = queries.astype(np.float64) - bank[np.maximum(ids, 0)].astype(np.float64)
    return np.where(ids >= 0, np.sqrt((diff * diff).sum(axis=1)), np.inf)


def auroc_rows(x: np.ndarray, test: dict, ratios: list[float], eval_size: int) -> list[dict]:
    from evaluation.datasets import load_mask
    from evaluation.metrics import image_auroc, pixel_auroc
    from evaluation.runner import eval_shape
    from model.coreset import greedy_coreset
    from model.heatmap import anomaly_map

    config = PatchCoreConfig()
    emb = test["emb"]  # (n, h, w, D)
    shapes = [eval_shape(tuple(int(v) for v in hw), eval_size) for hw in test["sizes"]]
    masks = [load_mask(m, s) if m is not None else np.zeros(s, bool) for m, s in zip(test["masks"], shapes)]
    queries = emb.reshape(-1, emb.shape[-1])
    rows = []
    for ratio in ratios:
        k = int(round(ratio * x.shape[0]))
        bank = x[greedy_coreset(x, k, projection_dim=None, seed=config.seed)]
        flat_image = None
        for label, kind, _, params in SETTINGS:
            config_i = IndexConfig(kind=kind, **params)
            if kind == "ivf_pq" and k < knn.MIN_POINTS_PER_CELL * 256:  # too few vectors for 8-bit codebooks
                nbits = int(np.log2(k / knn.MIN_POINTS_PER_CELL))
                config_i, label = IndexConfig(kind=kind, pq_nbits=nbits, **params), f"{label} pq_nbits={nbits}"
            index = knn.build_index(bank, config_i, config.seed)
            d, _ = knn.search(index, queries, k=1)
            scores = np.sqrt(np.maximum(d[:, 0], 0)).reshape(emb.shape[:3])  # (n, h, w) patch scores
            maps = [anomaly_map(s, shape, config) for s, shape in zip(scores, shapes)]
            image = scores.reshape(len(scores), -1).max(axis=1)  # s*
            flat_image = image if kind == "flat" else flat_image
            rows.append({"coreset": ratio, "bank": k, "index": label,
                         "image_auroc": round(image_auroc(test["labels"], image), 4),
                         "pixel_auroc": round(pixel_auroc(masks, maps), 4),
                         "image_score_rel_err": round(float(np.mean(np.abs(image - flat_image) / flat_image)), 5)})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup_threads(args.threads)
    if args.quick:
        args.banks, args.auroc_ratios, args.repeats = [1_000, 10_000], [0.01], 3
    x = common.bottle_train_embeddings()
    test = common.bottle_test_set()
    queries = [np.ascontiguousarray(e.reshape(-1, e.shape[-1])) for e in test["emb"][:: max(1, len(test["emb"]) // 8)]]
    rng = np.random.default_rng(0)
    record = {"bench": "search", "machine": common.machine(), "threads": threads,
              "data": "MVTec bottle patch embeddings (default config); 1M bank = 214k real + noisy repeats",
              "queries_per_image": int(queries[0].shape[0]), "settings": [s[0] for s in SETTINGS], "latency": []}
    for size in args.banks:
        bank = make_bank(x, size, rng)
        rows = latency_rows(bank, queries, args.repeats)
        record["latency"] += rows
        print(common.table(rows, title=f"bank {size:,}"), file=sys.stderr, flush=True)
        del bank
    record["auroc"] = auroc_rows(x, test, args.auroc_ratios, args.eval_size)
    print(common.table(record["latency"], title="search latency per image (1024 queries) and recall@1 vs flat"))
    print()
    print(common.table(record["auroc"], title="bottle AUROC per index kind (bank = greedy coreset of all training "
                                               "embeddings)"))
    common.write_json("bench_search" + ("_quick" if args.quick else ""), record, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
