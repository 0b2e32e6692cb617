"""Greedy coreset: time and coverage radius against the numpy reference, random sampling, projection and chunking.

Bank: every patch embedding of the 209 real MVTec bottle good images with the default config (214,016 x 128;
cached under /tmp). Coverage radius = max over the bank of the distance to the nearest selected vector, always in
the ORIGINAL embedding space.

- fast vs reference at 1 %, 10 %, 25 %: `greedy_coreset` against `greedy_coreset_reference`. The reference makes
  one full float64 pass per centre, so its time per step is constant; it is timed over its first --ref-steps steps
  and EXTRAPOLATED to k steps (labelled "extrapolated"). Its selection is checked: the fast one must equal its first
  --ref-steps picks, and both are run to the end on a 10 % subsample (every 10th embedding) and must be equal.
- random: a seeded random subset of the same size.
- projection: the random projection's dimension (32, 64, none) -> time and radius, at 10 %.
- chunked: what the builder does when the patches do not fit its buffer (index_store/build.py: chunks in image
  order, each chunk's greedy seeded with the bank so far as fixed centres, adding ratio x the chunk), mirrored
  here, against the textbook composable scheme (a coreset per chunk at 2 x the ratio, merged by a final greedy)
  and against one greedy over everything -> radius / single pass. On the bottle bank (chunks of 50k and 100k
  rows, 1 % and 10 %) and on 1 M patches of 1,000 augmented bottle images (chunks of 250k and 500k rows, 1 %).

    python bench/bench_coreset.py            # about 6 minutes on 2 cores
    python bench/bench_coreset.py --quick    # a 50k subset, fewer settings: about a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from model.config import PatchCoreConfig  # noqa: E402
from model.coreset import greedy_coreset, greedy_coreset_reference, nearest_sq_distances  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="50k-point subset, fewer ratios and settings")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1, 0.25])
    p.add_argument("--ref-steps", type=int, default=300, help="reference steps timed (then extrapolated)")
    p.add_argument("--projections", type=int, nargs="+", default=[32, 64, 0], help="0: no projection")
    p.add_argument("--chunks", type=int, nargs="+", default=[50_000, 100_000], help="chunk sizes (rows), bottle")
    p.add_argument("--big-chunks", type=int, nargs="+", default=[250_000, 500_000],
                   help="chunk sizes (rows) on the 1M augmented bank; 0: skip that bank")
    p.add_argument("--chunk-ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--threads", type=int, help="torch/OpenMP/FAISS threads (default: all cores)")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def sequential(x: np.ndarray, ratio: float, chunk: int, projection_dim, seed: int) -> np.ndarray:
    """The builder's chunked coreset (index_store/build.py, _stream_coreset) on rows in image order: each chunk's
    greedy starts from the bank so far (fixed centres) and adds ratio x the chunk's rows to it."""
    bank = np.empty((0, x.shape[1]), np.float32)
    for lo in range(0, x.shape[0], chunk):
        new = np.ascontiguousarray(x[lo : lo + chunk])
        k = max(1, int(round(ratio * new.shape[0])))
        initial = nearest_sq_distances(new, bank, projection_dim=projection_dim, seed=seed) if len(bank) else None
        picked = greedy_coreset(new, k, projection_dim=projection_dim, seed=seed, initial=initial)
        bank = np.concatenate([bank, new[picked]])
    return bank


def merged(x: np.ndarray, ratio: float, chunk: int, projection_dim, seed: int, oversample: float = 2.0):
    """The textbook composable scheme: a greedy coreset per chunk at oversample x ratio, then a final greedy."""
    pool = []
    for lo in range(0, x.shape[0], chunk):
        part = x[lo : lo + chunk]
        k = max(1, int(round(min(1.0, ratio * oversample) * part.shape[0])))
        pool.append(part[greedy_coreset(part, k, projection_dim=projection_dim, seed=seed)])
    pool = np.concatenate(pool)
    k = min(pool.shape[0], max(16, int(round(ratio * x.shape[0]))))
    return pool[greedy_coreset(pool, k, projection_dim=projection_dim, seed=seed)]


def chunked_rows(x: np.ndarray, name: str, ratios, chunks, proj) -> list[dict]:
    rows = []
    for ratio in ratios:
        k = int(round(ratio * x.shape[0]))
        t_s, sel = common.timed(greedy_coreset, x, k, projection_dim=proj, seed=0)
        single = coverage_radius(x, sel)
        rows.append({"bank": name, "ratio": ratio, "method": "single pass", "chunk_rows": x.shape[0],
                     "time_s": round(t_s, 2), "radius": round(single, 4), "radius_vs_single": 1.0})
        for chunk in chunks:
            for method, fn in (("sequential (builder)", sequential), ("merged (per-chunk + final)", merged)):
                t_c, bank = common.timed(fn, x, ratio, chunk, proj, 0)
                radius = common.coverage_radius_of(x, bank)
                rows.append({"bank": name, "ratio": ratio, "method": method, "chunk_rows": chunk,
                             "time_s": round(t_c, 2), "radius": round(radius, 4),
                             "radius_vs_single": round(radius / single, 3)})
                print(f"chunked: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def coverage_radius(x: np.ndarray, selected: np.ndarray) -> float:
    """model.coreset.coverage_radius, computed faster (same exact value; see common.coverage_radius_of)."""
    return common.coverage_radius_of(x, x[selected])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup_threads(args.threads)
    config = PatchCoreConfig()
    x = common.bottle_train_embeddings()
    if args.quick:
        x = x[:50_176]  # the first 49 images
        args.ratios, args.ref_steps, args.chunks, args.big_chunks = [0.01, 0.1], 50, [12_544], []
        args.projections, args.chunk_ratios = [32, 0], [0.1]
    n, dim = x.shape
    proj = config.projection_dim if config.projection_dim and config.projection_dim < dim else None
    record = {"bench": "coreset", "machine": common.machine(), "threads": threads, "bank": [n, dim],
              "data": "MVTec bottle train/good, default config patch embeddings", "config_projection_dim": proj,
              "seed": config.seed}

    # The reference: per-step time over its first ref_steps steps (constant per step: one full pass each).
    t_ref, ref_prefix = common.timed(greedy_coreset_reference, x, args.ref_steps, projection_dim=proj, seed=0)
    ref_step = t_ref / args.ref_steps
    rows = []
    for ratio in args.ratios:
        k = int(round(ratio * n))
        t_fast, sel = common.timed(greedy_coreset, x, k, projection_dim=proj, seed=0)
        radius = coverage_radius(x, sel)
        rand = [coverage_radius(x, np.random.default_rng(s).choice(n, k, replace=False)) for s in range(3)]
        rows.append({
            "ratio": ratio, "k": k, "fast_s": round(t_fast, 2), "fast_ms_per_step": round(t_fast / k * 1e3, 3),
            "reference_ms_per_step": round(ref_step * 1e3, 1), "reference_s_extrapolated": round(ref_step * k, 0),
            "speedup_vs_reference": round(ref_step * k / t_fast, 1),
            "same_first_picks_as_reference": bool(np.array_equal(sel[: args.ref_steps], ref_prefix)),
            "radius_fast": round(radius, 4), "radius_reference": round(radius, 4) if np.array_equal(
                sel[: args.ref_steps], ref_prefix) else None,
            "radius_random_median": round(float(np.median(rand)), 4),
            "random_over_greedy": round(float(np.median(rand)) / radius, 2),
        })
        print(f"ratio {ratio}: {rows[-1]}", file=sys.stderr, flush=True)
    record["fast_vs_reference"] = rows

    # Full reference run on a subsample: the selections must be identical, hence the same radius.
    sub = x[::10]
    k_sub = int(round(0.1 * sub.shape[0]))
    t_r, r_sel = common.timed(greedy_coreset_reference, sub, k_sub, projection_dim=proj, seed=0)
    t_f, f_sel = common.timed(greedy_coreset, sub, k_sub, projection_dim=proj, seed=0)
    record["full_reference_on_subsample"] = {
        "n": sub.shape[0], "k": k_sub, "reference_s": round(t_r, 2), "fast_s": round(t_f, 3),
        "speedup": round(t_r / t_f, 1), "identical_selection": bool(np.array_equal(r_sel, f_sel)),
        "radius_reference": round(coverage_radius(sub, r_sel), 4), "radius_fast": round(coverage_radius(sub, f_sel), 4),
    }

    proj_rows = []
    k10 = int(round(0.1 * n))
    for pdim in args.projections:
        pd = pdim if pdim and pdim < dim else None
        t_p, sel = common.timed(greedy_coreset, x, k10, projection_dim=pd, seed=0)
        proj_rows.append({"projection_dim": pd or f"none ({dim})", "ratio": 0.1, "k": k10, "fast_s": round(t_p, 2),
                          "radius": round(coverage_radius(x, sel), 4)})
    none = [r["radius"] for r in proj_rows if str(r["projection_dim"]).startswith("none")]
    base = none[0] if none else proj_rows[-1]["radius"]
    for r in proj_rows:
        r["radius_vs_none"] = round(r["radius"] / base, 3)
    record["projection"] = proj_rows

    chunk_rows = chunked_rows(x, f"bottle {n // 1000}k", args.chunk_ratios, args.chunks, proj)
    if any(c > 0 for c in args.big_chunks):
        big = np.ascontiguousarray(common.augmented_embeddings(1000))
        chunk_rows += chunked_rows(big, f"augmented {big.shape[0] // 1000}k", [0.01], [c for c in args.big_chunks if c > 0], proj)
    record["chunked"] = chunk_rows

    print(common.table(rows, ["ratio", "k", "fast_s", "fast_ms_per_step", "reference_ms_per_step",
                              "reference_s_extrapolated", "speedup_vs_reference", "same_first_picks_as_reference",
                              "radius_fast", "radius_random_median", "random_over_greedy"],
                       f"greedy coreset vs numpy reference (reference time extrapolated from {args.ref_steps} steps)"))
    print()
    print(common.table([record["full_reference_on_subsample"]], title="full reference run on every 10th embedding"))
    print()
    print(common.table(proj_rows, title="projection dimension at 10 % (radius in the original 128-d space)"))
    print()
    print(common.table(chunk_rows, title="chunked coreset (the builder's, and per-chunk + final merge) vs single pass"))
    common.write_json("bench_coreset" + ("_quick" if args.quick else ""), record, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
