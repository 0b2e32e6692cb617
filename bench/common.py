"""Shared helpers of the benches: cached real bottle patch embeddings, augmented training sets, tables and JSON.

Caches live under /tmp (never in the repo): patch embeddings as .npy, augmented images as 256x256 PNG.
Timings on this kind of machine are noisy (2 shared cores): the benches compare methods as RATIOS measured in the
same process, interleaved where possible, and print the medians.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` from the repo root without an editable install
    sys.path.insert(0, str(REPO))

BOTTLE = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
CACHE = Path(os.environ.get("PATCHCORE_BENCH_CACHE", "/tmp/patchcore_bench"))
RESULTS = REPO / "bench" / "results"
AUGMENT_SIZE = 256  # the default model resizes every image to 256 x 256 anyway


def setup_threads(threads: int | None) -> int:
    """One thread setting for torch, OpenMP and FAISS (index_store.runtime.configure_threads)."""
    from index_store.runtime import configure_threads

    return configure_threads(threads)


def machine() -> dict:
    import faiss
    import torch

    from index_store.runtime import default_threads

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": default_threads(),
        "faiss_simd": faiss.get_compile_options(), "torch": torch.__version__, "faiss": faiss.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }


# ---------------------------------------------------------------- real bottle patch embeddings, cached in /tmp


def _embed_paths(paths: Sequence[Path], config, batch: int = 16) -> np.ndarray:
    """Image files -> (n, h, w, D) float32 patch embeddings with the given config."""
    from imaging.decode import read_image
    from model.features import PatchEmbedder

    embedder = PatchEmbedder(config)
    out = None
    for lo in range(0, len(paths), batch):
        emb = embedder.embed([read_image(p)[0] for p in paths[lo : lo + batch]])
        if out is None:
            out = np.empty((len(paths), *emb.shape[1:]), dtype=np.float32)
        out[lo : lo + emb.shape[0]] = emb
    return out


def config_tag(config=None) -> str:
    """Short hash of a model config: cached embeddings are only reused for the config that made them."""
    import hashlib

    from model.config import PatchCoreConfig

    config = config or PatchCoreConfig()
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def bottle_train_embeddings(root: Path = BOTTLE) -> np.ndarray:
    """All patch embeddings (N, D) of bottle/train/good with the default config (N = 209 x 1024 = 214,016)."""
    from imaging.decode import list_images
    from model.config import PatchCoreConfig

    path = CACHE / f"{root.name}_train_emb_{config_tag()}.npy"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        emb = _embed_paths(list_images(root), PatchCoreConfig())
        np.save(path.with_suffix(".tmp.npy"), emb.reshape(-1, emb.shape[-1]))
        os.replace(path.with_suffix(".tmp.npy"), path)
    return np.load(path)


def bottle_test_set(root: Path = BOTTLE) -> dict:
    """Test embeddings (n, 32, 32, 128), labels (n,), image sizes (n, 2) and mask paths ('' for good images)."""
    from PIL import Image

    from evaluation.datasets import load_mvtec
    from model.config import PatchCoreConfig

    path = CACHE / f"{root.name}_test_emb_{config_tag()}.npz"
    category = load_mvtec(root.parent, root.name)
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        samples = category.test
        emb = _embed_paths([s.image_path for s in samples], PatchCoreConfig())
        sizes = []
        for s in samples:
            with Image.open(s.image_path) as im:
                sizes.append((im.height, im.width))
        np.savez(path.with_suffix(".tmp.npz"), emb=emb, sizes=np.array(sizes))
        os.replace(path.with_suffix(".tmp.npz"), path)
    data = np.load(path)
    return {
        "emb": data["emb"], "sizes": data["sizes"], "labels": np.array([s.label for s in category.test]),
        "masks": [s.mask_path for s in category.test],
    }


# ---------------------------------------------------------------- augmented training sets


def augment(image, rng: np.random.Generator, size: int = AUGMENT_SIZE):
    """One random variant of a PIL image: crop (75-100 %), flip, rotation, colour jitter, then size x size."""
    from PIL import Image, ImageEnhance

    w, h = image.size
    scale = rng.uniform(0.75, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    out = out.rotate(float(rng.uniform(-180, 180)), resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.8, 1.2)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.8, 1.2)))
    return ImageEnhance.Color(out).enhance(float(rng.uniform(0.8, 1.2)))


def augmented_set(n: int, out_dir: Path, root: Path = BOTTLE, seed: int = 0) -> list[Path]:
    """n augmented 256x256 PNG variants of the real good training images under out_dir (made once, reused).

    Image i is variant i // n_real of real image i % n_real, seeded by (seed, i): a set of n is a prefix of any
    larger set, so the build sizes share images.
    """
    from PIL import Image

    from imaging.decode import list_images

    sources = list_images(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"aug_{i:06d}.png" for i in range(n)]
    cached: dict[int, Image.Image] = {}
    for i, path in enumerate(paths):
        if path.exists():
            continue
        src = i % len(sources)
        if src not in cached:
            cached.clear()
            with Image.open(sources[src]) as im:
                cached[src] = im.convert("RGB")
        tmp = path.with_suffix(".tmp.png")
        augment(cached[src], np.random.default_rng([seed, i])).save(tmp, compress_level=1)
        os.replace(tmp, path)
    return paths


def link_subset(paths: Sequence[Path], folder: Path) -> Path:
    """A folder of symlinks to `paths` (the builder takes a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        link = folder / p.name
        if not link.exists():
            link.symlink_to(p)
    return folder


# ---------------------------------------------------------------- timing, tables, JSON


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run each callable `repeats` times, round-robin (A B C A B C ...), so background load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return times


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Rows of dicts -> a Markdown table (columns: the keys of the first row unless given)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [f"### {title}"] if title else []
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def write_json(name: str, record: dict, out: Path | None = None) -> Path:
    """Print the record as one JSON document and write it to bench/results/<name>.json (or `out`)."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, default=_json_default)
    path.write_text(text + "\n")
    print(text)
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def coverage_radius_of(x: np.ndarray, centres: np.ndarray, block: int = 4096) -> float:
    """Exact max_x min_c ||x - c|| for a set of centre VECTORS, much faster than a flat search of every point.

    An IVF search gives each point an upper bound (the distance to SOME centre); the points are then checked
    exactly with a flat index in decreasing order of that bound, until the largest exact distance found is at
    least the next bound: no later point can beat it.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(centres)
    if centres.shape[0] * x.shape[0] < 200_000_000:
        return float(np.sqrt(max(0.0, float(flat.search(x, 1)[0].max()))))
    nlist = max(1, min(int(4 * np.sqrt(centres.shape[0])), centres.shape[0] // 39))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
    ivf.cp.seed = 0
    ivf.train(centres)
    ivf.add(centres)
    ivf.nprobe = min(nlist, 8)
    upper = ivf.search(x, 1)[0][:, 0]  # squared, >= the true nearest distance (3.4e38 if nothing was found)
    order = np.argsort(-upper)
    best = 0.0
    for lo in range(0, x.shape[0], block):
        ids = order[lo : lo + block]
        best = max(best, float(flat.search(x[ids], 1)[0].max()))
        if lo + block >= x.shape[0] or best >= upper[order[lo + block]]:
            break
    return float(np.sqrt(max(best, 0.0)))


def nearest_sq(x: np.ndarray, centres: np.ndarray, block: int = 16384) -> np.ndarray:
    """(n,) squared distance of each row of x to its nearest centre vector: an exact (flat) search, block by block."""
    import faiss

    flat = faiss.IndexFlatL2(centres.shape[1])
    flat.add(np.ascontiguousarray(centres, dtype=np.float32))
    return np.concatenate([flat.search(np.ascontiguousarray(x[lo : lo + block], dtype=np.float32), 1)[0][:, 0]
                           for lo in range(0, x.shape[0], block)])


def augmented_embeddings(n: int) -> np.ndarray:
    """Patch embeddings (n * 1024, D) of the first n augmented images (default config), cached in /tmp."""
    from model.config import PatchCoreConfig

    path = CACHE / f"aug{n}_emb_{config_tag()}.npy"
    if not path.exists():
        paths = augmented_set(n, CACHE / "aug", seed=0)
        emb = _embed_paths(paths, PatchCoreConfig())
        np.save(path.with_suffix(".tmp.npy"), emb.reshape(-1, emb.shape[-1]))
        os.replace(path.with_suffix(".tmp.npy"), path)
    return np.load(path, mmap_mode="r")
