"""How much the Ray workers' filter saves, and whether the bank stays the local builder's (distributed.bank).

Embeds the training images once in this process (cached in --cache), then runs the driver's side
(distributed.bank.ChunkedBank) over the local builder's chunks with every patch sent (= the local builder's bank,
pick for pick) and with the workers' BankFilter at several margins, the workers seeing the bank `lag` versions old.
Prints patches sent, exact chunks, radius and picks against sending everything, driver coreset seconds and the
filter's seconds, and writes bench/results/ray_filter.json. No Ray needed.

    python bench/bench_ray_reduce.py --data ../shared/data/mvtec_ad/bottle --max-chunk-patches 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distributed.bank import BankFilter, ChunkedBank  # noqa: E402
from imaging.decode import iter_images, list_images  # noqa: E402
from index_store.build import BuildOptions, _chunk_rows  # noqa: E402
from index_store.runtime import configure_threads  # noqa: E402
from model.config import PatchCoreConfig  # noqa: E402
from model.features import PatchEmbedder  # noqa: E402


def radius(patches: np.ndarray, bank: np.ndarray) -> float:
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank))
    worst = 0.0
    for start in range(0, patches.shape[0], 65536):
        d, _ = index.search(np.ascontiguousarray(patches[start : start + 65536]), 1)
        worst = max(worst, float(d.max()))
    return float(np.sqrt(worst))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--max-chunk-patches", type=int, default=50_000)
    p.add_argument("--margins", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--lags", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cache", type=Path, help="embeddings .npy (written if absent)")
    p.add_argument("--coreset-ratio", type=float, default=PatchCoreConfig().coreset_ratio)
    p.add_argument("--threads", type=int)
    p.add_argument("--json-out", type=Path, default=Path(__file__).parent / "results" / "ray_filter.json")
    args = p.parse_args(argv)
    configure_threads(args.threads)
    config = PatchCoreConfig(coreset_ratio=args.coreset_ratio)
    embedder = PatchEmbedder(config)
    paths = list_images(args.data)
    per_image, dim = embedder.grid[0] * embedder.grid[1], embedder.dim
    t = time.perf_counter()
    if args.cache and args.cache.exists():
        patches = np.load(args.cache)
        n = patches.shape[0] // per_image
    else:
        patches = np.empty((len(paths) * per_image, dim), np.float32)
        t = time.perf_counter()
        n = 0
        batch: list[np.ndarray] = []
        for _, image, _, error in iter_images(paths):
            if error is None:
                batch.append(image)
            if len(batch) == 16 or (batch and n + len(batch) == len(paths)):
                patches[n * per_image : (n + len(batch)) * per_image] = embedder.embed(batch).reshape(-1, dim)
                n, batch = n + len(batch), []
        if batch:
            patches[n * per_image : (n + len(batch)) * per_image] = embedder.embed(batch).reshape(-1, dim)
            n += len(batch)
        patches = patches[: n * per_image]
        if args.cache:
            np.save(args.cache, patches)
    print(f"{n} images embedded in {time.perf_counter() - t:.1f} s: {patches.shape[0]} patches")
    options = BuildOptions(max_chunk_patches=args.max_chunk_patches)
    k_max = int(round(config.coreset_ratio * patches.shape[0]))
    rows = []
    reference = None
    for margin, lag in [(0.0, 0)] + [(m, g) for m in args.margins for g in args.lags]:
        bank = ChunkedBank(config, patches.shape[0], per_image, dim, _chunk_rows(per_image, options), k_max,
                           options.batch_size, margin)
        published = [bank.current()]
        filters: dict[int, BankFilter] = {}
        t_filter = 0.0
        for img in patches.reshape(-1, per_image, dim):
            t = time.perf_counter()
            version, tau_sq, vectors = published[max(0, len(published) - 1 - lag)]
            if version not in filters:
                filters = {version: BankFilter(vectors.copy(), tau_sq, config.seed)}
            worker = filters[version]
            kept = img[worker.keep(img)]
            t_filter += time.perf_counter() - t
            bank.add(kept, worker.tau_sq if worker.index is not None else 0.0)
            if bank.version != published[-1][0]:
                published.append(bank.current())
        vectors, owners, _, method = bank.finish()
        if reference is None:
            reference = (vectors, owners)
        same = vectors.shape == reference[0].shape and bool(np.array_equal(owners, reference[1]))
        rows.append({"margin": margin, "lag": lag, "patches_sent": bank.n_received, "patches": int(patches.shape[0]),
                     "sent_share": round(bank.n_received / patches.shape[0], 4), "bank": int(vectors.shape[0]),
                     "method": method, "exact_chunks": bank.exact_chunks, "chunks": bank.n_chunks,
                     "same_picks": same, "radius": radius(patches, vectors),
                     "driver_coreset_s": round(bank.coreset_seconds, 2), "worker_filter_s": round(t_filter, 2)})
        rows[-1]["radius_vs_all"] = rows[-1]["radius"] / rows[0]["radius"]
        print(json.dumps(rows[-1]))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"data": str(args.data), "images": n, "per_image": per_image,
                                         "max_chunk_patches": args.max_chunk_patches, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
