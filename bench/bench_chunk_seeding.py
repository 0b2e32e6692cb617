"""Chunked builds: how each chunk's bounded greedy learns the bank so far, searched up front or lazily.

index_store.build cuts a training set of more than --max-chunk-patches patches into chunks in image order; each
chunk's greedy starts from the bank built so far and adds ratio x the chunk's rows. Two ways to start it:

- searched: every row's distance to the bank, searched up front (model.coreset.nearest_sq_distances: flat up to
  4,096 bank vectors, IVF-Flat beyond), then the bounded greedy with those initial distances (the builder before
  this change). At 20,000 images that search was 2 M rows against a bank growing to 205 k vectors per chunk.
- lazy: bounded_greedy_coreset(bank=...), the builder now: each bank vector lowers its nearest groups' running
  distances, and a row is searched again only when it becomes a candidate.

On the augmented bottle embeddings (bench/common.augmented_embeddings, 1,024 rows per image) it mirrors the
builder's chunks both ways and prints each chunk's time, the bank sizes, and the coverage radius of both final
banks over a sample of the rows (largest, 99th percentile and mean distance to the nearest bank vector).
--bank-only adds one chunk against a bank of other images' rows (not greedy picks: it times the seeding at a bank
size the chunked run does not reach here).

    python bench/bench_chunk_seeding.py                                  # 2,200 images, 5 chunks of 500 k rows, 1 %
    python bench/bench_chunk_seeding.py --images 2200 --chunk-rows 2000000 --bank-only 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from model.coreset import nearest_sq_distances  # noqa: E402
from model.coreset_bounded import bounded_greedy_coreset  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2200, help="augmented images (1,024 rows each)")
    p.add_argument("--chunk-rows", type=int, default=500_000)
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--sample-every", type=int, default=20, help="rows in the radius sample: every n-th")
    p.add_argument("--bank-only", type=int, help="also: the first chunk against this many other rows as the bank")
    p.add_argument("--threads", type=int, help="OpenMP/FAISS/BLAS threads (default: all cores)")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def continue_bank(new: np.ndarray, bank: np.ndarray, k: int, how: str) -> np.ndarray:
    if how == "searched":
        initial = nearest_sq_distances(new, bank, projection_dim=None, seed=0) if bank.shape[0] else None
        return bounded_greedy_coreset(new, k, projection_dim=None, seed=0, initial=initial)
    return bounded_greedy_coreset(new, k, projection_dim=None, seed=0, bank=bank if bank.shape[0] else None)


def chunked(x: np.ndarray, ratio: float, chunk: int, how: str) -> tuple[np.ndarray, list[float]]:
    bank, seconds = np.empty((0, x.shape[1]), np.float32), []
    for lo in range(0, x.shape[0], chunk):
        new = np.ascontiguousarray(x[lo : lo + chunk])
        t = time.perf_counter()
        picked = continue_bank(new, bank, max(1, int(round(ratio * new.shape[0]))), how)
        seconds.append(time.perf_counter() - t)
        bank = np.concatenate([bank, new[picked]])
    return bank, seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = common.setup_threads(args.threads)
    x = common.augmented_embeddings(args.images)
    rows = []
    banks = {}
    for how in ("searched", "lazy"):
        bank, seconds = chunked(x, args.ratio, args.chunk_rows, how)
        banks[how] = bank
        rows.append({"seeding": how, "chunks": len(seconds), "bank": bank.shape[0], "seconds": sum(seconds),
                     "per_chunk_s": [round(s, 2) for s in seconds]})
        print(f"{how}: {len(seconds)} chunks, {sum(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)}), "
              f"bank {bank.shape[0]}", flush=True)
    sample = np.ascontiguousarray(x[:: args.sample_every])
    for row in rows:
        nn = np.sqrt(np.maximum(common.nearest_sq(sample, banks[row["seeding"]]), 0.0))
        row["radius_sample"], row["p99_sample"], row["mean_sample"] = nn.max(), np.quantile(nn, 0.99), nn.mean()
    for key in ("radius", "p99", "mean"):
        for row in rows:
            row[f"{key}_vs_searched"] = row[f"{key}_sample"] / rows[0][f"{key}_sample"] - 1.0
    record = {"bench": "chunk_seeding", "machine": common.machine(), "threads": threads, "images": args.images,
              "rows": x.shape[0], "chunk_rows": args.chunk_rows, "ratio": args.ratio,
              "radius_sample_every": args.sample_every, "chunked": rows}
    print(common.table(rows, ["seeding", "chunks", "bank", "seconds", "radius_sample", "radius_vs_searched",
                              "p99_vs_searched", "mean_vs_searched"],
                       title=f"{x.shape[0]:,} rows, chunks of {args.chunk_rows:,}, ratio {args.ratio}"))
    if args.bank_only:
        new = np.ascontiguousarray(x[: args.chunk_rows])
        bank = np.ascontiguousarray(x[x.shape[0] - args.bank_only :])
        k = max(1, int(round(args.ratio * new.shape[0])))
        single = []
        for how in ("searched", "lazy"):
            t = time.perf_counter()
            picked = continue_bank(new, bank, k, how)
            single.append({"seeding": how, "rows": new.shape[0], "bank": bank.shape[0], "picks": picked.size,
                           "seconds": time.perf_counter() - t})
        record["one_chunk"] = single
        print(common.table(single, title="one chunk against a bank of other images' rows"))
    common.write_json("bench_chunk_seeding", record, args.json_out)


if __name__ == "__main__":
    main()
