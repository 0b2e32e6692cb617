"""build_index: good images -> memory bank index + calibrated metadata, in bounded memory.

    decode (thread pool, bounded prefetch) -> patch embeddings written into a PREALLOCATED float32 chunk buffer
    -> greedy k-center coreset -> FAISS index -> good images scored as unseen ones -> threshold.

Calibration (index_store.calibrate): every good image goes into the memory bank, and each bank vector remembers its
source image. Up to `calibration_images` of them (seeded sample) are then scored leave-one-image-out against the
finished bank (model.leave_out), and the threshold rule (model.calibration) turns those scores into the threshold.
Only when the build streams in chunks (beyond `max_chunk_patches`, thousands of images) are the patches of the
other images gone by then: those builds hold the calibration sample out of the bank instead, which costs nothing
measurable at that size. `--calibration-data` scores a separate folder of good images against the whole bank.

Memory never grows with the number of images. Patch embeddings stream into one preallocated buffer. When every
patch fits (``max_chunk_patches`` rows), the coreset is the exact single-pass greedy. Otherwise the builder runs the
greedy in sequence over chunks: the buffer keeps the memory bank built so far at its head and the newest chunk of
patches behind it; when it is full, the greedy extends the bank by ``coreset_ratio`` x the chunk's patches, starting
from each new patch's distance to the bank (so it only adds centres where the new patches are not yet covered),
and the rest of the chunk is dropped. Chunks are 2 M patches, so their greedy is the bounded one (coreset_mode auto):
it learns those distances lazily (model.coreset_bounded.bounded_greedy_coreset(bank=...): each bank vector lowers
its nearest groups' running distances, and a patch is searched again only when it becomes a candidate), where a
search of every patch against the bank took 5-8 x the greedy itself at 20,000 images. The exact greedy (small
chunks, --update) takes every patch's distance up front: exact up to 4,096 bank vectors, then an IVF-Flat search.
Peak memory is one chunk plus the bank. This is the streaming/composable use of greedy k-center (Gonzalez 1985;
composable k-center coresets: Indyk, Mahabadi, Mahdian & Mirrokni, PODS 2014; Ceccarello, Pietracaprina & Pucci,
VLDB 2019), with one change measured to matter: each chunk's greedy is seeded
with the bank so far instead of running alone and being merged by a last greedy pass. On 1 M bottle patches in
2 chunks it stays within 8 % of the single-pass coverage radius, where per-chunk coresets merged by a final
greedy lost 16 % (bench/bench_coreset.py prints both).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from imaging.decode import DEFAULT_MAX_PIXELS, iter_images
from index_store import calibrate
from index_store.metadata import SCHEMA_VERSION, IndexMetadata, Provenance
from index_store.runtime import heap_temporaries, peak_rss_mb
from model import knn
from model.calibration import DEFAULT_RULE
from model.calibration import calibrate as threshold_from
from model.config import PatchCoreConfig
from model.coreset_bounded import select_coreset
from model.errors import PatchCoreError
from model.extractor import Extractor, embed_pictures
from model.preprocess import decode_side

log = logging.getLogger(__name__)
MIN_BANK = 16
MIN_CALIBRATION = 2


class BuildError(PatchCoreError):
    """The build cannot go on; the message says how to fix it."""


@dataclass(frozen=True)
class BuildOptions:
    name: str = "index"
    device: str = "cpu"
    batch_size: int = 16
    decode_workers: int = 2
    calibration_images: int = 200  # good images scored for the threshold (a seeded sample when there are more)
    calibration_paths: tuple[Path, ...] = ()  # if given, these are scored against the whole bank instead
    target_fpr: float = 0.01  # expected false-positive rate on good parts at the threshold
    threshold_rule: str = DEFAULT_RULE  # one of model.calibration.RULES
    strict: bool = False  # fail on the first unreadable file instead of skipping it
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_chunk_patches: int = 2_000_000  # patches held at once (x D x 4 bytes); more are reduced chunk by chunk
    progress: bool = True
    # glibc: the stages after extraction keep their temporaries in the heap (index_store.runtime.heap_temporaries).
    # For processes set by return_freed_memory (the builder CLI), which this then leaves as it found.
    heap_after_extract: bool = False


@dataclass(frozen=True)
class BuildResult:
    index: faiss.Index
    metadata: IndexMetadata
    bank_image_ids: np.ndarray  # (M,) int32: the source image of each memory-bank vector, a row of `images`
    images: tuple[tuple[str, str], ...]  # (path relative to the data root, sha256) of each bank image, by id
    stage_seconds: dict[str, float] = field(default_factory=dict)
    bank_vectors: np.ndarray | None = None  # (M, D) float32, kept (as a sidecar) where the index cannot give it back
    extract_runtime: str = "torch"  # the extractor's runtime that embedded the images (onnx: an update, see update.py)


@dataclass
class Streamed:
    """What streaming the training images leaves: the memory bank with the source image of each vector, the images
    used (their id is their position here), and in a single-pass build every patch (image j's are rows
    j * per_image ... (j + 1) * per_image - 1)."""

    bank: np.ndarray  # (M, D) float32
    bank_image_ids: np.ndarray  # (M,) int32
    used: list[tuple[Path, str]]  # (path, sha256) per image id
    rows: np.ndarray | None  # (n_used * per_image, D) float32, single pass only
    grid: tuple[int, int]
    n_seen: int
    method: str
    cluster: dict = field(default_factory=dict)  # where it ran, for builds on a cluster (distributed.ray_build)


class _Stages:
    """Wall time and peak RSS after each stage, logged as they finish."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)

    def done(self, name: str) -> None:
        log.info("stage %-12s %8.2f s   peak RSS %7.0f MiB", name, self.seconds.get(name, 0.0), peak_rss_mb())


def sample_ids(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded sample of min(n, k) of range(n), sorted."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 2]).permutation(n)[:k])


def split_held_out(paths: list[Path], calibration_images: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Chunked builds: a seeded sample of min(calibration_images, 10 %) images kept out of the bank to calibrate
    -> (bank images, held-out images)."""
    held = set(sample_ids(len(paths), max(MIN_CALIBRATION, min(calibration_images, len(paths) // 10)), seed).tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def embed_stream(paths, embedder: Extractor, options: BuildOptions, on_skip: Callable, desc: str):
    """Yield (B, h, w, D) embeddings batch by batch, plus (path, sha256) of each image used."""
    batch, names = [], []
    bar = _progress_bar(len(paths), desc, options.progress)
    for path, image, digest, error in iter_images(paths, options.decode_workers, options.batch_size,
                                                  options.max_pixels, decode_side(embedder.config)):
        bar.update(1)
        if error is not None:
            on_skip(error)
            continue
        batch.append(image)
        names.append((path, digest))
        if len(batch) == options.batch_size:
            yield embed_pictures(embedder, batch), names
            batch, names = [], []
    if batch:
        yield embed_pictures(embedder, batch), names
    bar.close()



class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar, or a silent stand-in where progress is off or tqdm is not installed (the slim serving image has
    none, and `--update` runs there)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def skip_recorder(options: BuildOptions, skipped: list[str]) -> Callable[[Exception], None]:
    """What to do with an unreadable image: fail under --strict, else log it and append it to `skipped`."""

    def on_skip(error: Exception) -> None:
        if options.strict:
            raise BuildError(f"{error} (run without --strict to skip unreadable files)")
        skipped.append(str(error))
        log.warning("skipping: %s", error)

    return on_skip

def build_index(
    paths: Sequence[Path], config: PatchCoreConfig, options: BuildOptions = BuildOptions(), root: Path | None = None,
    streamer: Callable[..., Streamed] | None = None,
) -> BuildResult:
    """Build the memory bank of `paths` (good images) and calibrate it; nothing is written to disk here.

    streamer: what turns the training images into a Streamed bank, with _stream_coreset's arguments but the grid;
    this process by default, a Ray cluster with distributed.ray_build (untiled configs only: a tiled build with a
    streamer is refused)."""
    started, stages = time.perf_counter(), _Stages()
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise BuildError("no images to build from; pass a folder with PNG/JPEG/BMP/TIFF good images")
    if options.calibration_images < MIN_CALIBRATION:
        raise BuildError(f"--calibration-images must be >= {MIN_CALIBRATION}, got {options.calibration_images}")
    t = time.perf_counter()
    from model.features import PatchEmbedder  # torch: imported by the builds that embed with it, not by updates

    embedder = PatchEmbedder(config, options.device)
    stages.add("load_model", time.perf_counter() - t)
    stages.done("load_model")
    grid = picture_grid(paths, embedder)
    per_image = grid[0] * grid[1]
    chunked = len(paths) * per_image > _chunk_rows(per_image, options)
    held_out: list[Path] = []
    if chunked and not options.calibration_paths:  # see the module docstring
        paths, held_out = split_held_out(paths, options.calibration_images, config.seed)
    k_max = int(round(config.coreset_ratio * len(paths) * per_image))
    if k_max < MIN_BANK:
        raise BuildError(
            f"{len(paths)} images x {per_image} patches at coreset ratio {config.coreset_ratio} keeps only "
            f"{k_max} patch embeddings (< {MIN_BANK}); add images or raise --coreset-ratio"
        )

    skipped: list[str] = []
    on_skip = skip_recorder(options, skipped)

    if streamer is None:
        streamed = _stream_coreset(paths, embedder, grid, config, options, on_skip, stages, k_max)
    elif config.tile_size is not None:
        raise BuildError("tiled builds (--tile) run in this process only, not on a Ray cluster; build without --ray, "
                         "or without --tile")
    else:
        streamed = streamer(paths, embedder, config, options, on_skip, stages, k_max)
    t = time.perf_counter()
    index = knn.build_index(streamed.bank, config.index, config.seed)
    stages.add("index", time.perf_counter() - t)
    stages.done("index")

    t = time.perf_counter()
    unseen = list(options.calibration_paths) or held_out
    if unseen:
        scores, scored = calibrate.score_unseen(unseen, embedder, index, config, options, on_skip)
        method = "calibration-data" if options.calibration_paths else "held-out"
        cal_images = [_relative(p, root) for p, _ in scored]
    else:
        ids = sample_ids(len(streamed.used), options.calibration_images, config.seed)
        with _post_extract_heap(options):
            scores = calibrate.score_left_out(index, streamed, ids, config)
        method, scored = "leave-one-image-out", []
        cal_images = [_relative(streamed.used[i][0], root) for i in ids]
    if len(scores) < MIN_CALIBRATION:
        raise BuildError(f"calibration needs >= {MIN_CALIBRATION} readable good images, got {len(scores)}; add "
                         "images")
    calibration = threshold_from(np.asarray(scores), options.target_fpr, options.threshold_rule, method=method,
                                 images=tuple(cal_images))
    stages.add("calibration", time.perf_counter() - t)
    stages.done("calibration")

    images = tuple((_relative(p, root), d) for p, d in streamed.used)
    read = [*images, *((_relative(p, root), d) for p, d in scored)]
    provenance = _provenance(read, len(paths) + len(unseen), skipped, len(images), len(scores), method, started,
                             stages, streamed.cluster)
    metadata = IndexMetadata(
        schema_version=SCHEMA_VERSION, name=options.name, config=config, embedding_dim=embedder.dim,
        grid=embedder.grid, bank_size=int(index.ntotal), n_patches_seen=streamed.n_seen,
        coreset_method=streamed.method, index_sha256="", calibration=calibration, provenance=provenance,
    )
    return BuildResult(index=index, metadata=metadata, bank_image_ids=streamed.bank_image_ids, images=images,
                       stage_seconds=dict(stages.seconds),
                       bank_vectors=None if config.index.kind == "flat" else streamed.bank)


def _post_extract_heap(options: BuildOptions):
    """heap_temporaries around a numpy stage that runs after the extraction (single-pass coreset, leave-one-out
    calibration), where options.heap_after_extract says so; else nothing."""
    return heap_temporaries() if options.heap_after_extract else contextlib.nullcontext()


def _chunk_rows(per_image: int, options: BuildOptions) -> int:
    return max(per_image * options.batch_size, options.max_chunk_patches)


def buffer_rows(total: int, chunk: int, k_max: int) -> int:
    """Sequential builds: room for the bank (k_max plus one row of rounding per chunk) and one chunk of new
    patches. When a batch no longer fits behind the bank, the bank is extended by the patches held so far."""
    return chunk + k_max + math.ceil(total / chunk)


def chunk_picks(n_new: int, config: PatchCoreConfig) -> int:
    """How many bank vectors a chunk of n_new patches adds."""
    return max(1, int(round(config.coreset_ratio * n_new)))


def greedy_continuation(new: np.ndarray, bank: np.ndarray, k: int, config: PatchCoreConfig) -> np.ndarray:
    """Rows of `new` (N, D) that the seeded greedy adds to `bank` (M, D): it starts from each new row's distance
    to the bank, so it only adds centres where the new rows are not yet covered -> (min(k, N),) row indices."""
    return select_coreset(new, min(k, new.shape[0]), mode=config.coreset_mode, projection_dim=config.projection_dim,
                          seed=config.seed, bank=bank)


def picture_grid(paths: Sequence[Path], embedder: Extractor) -> tuple[int, int]:
    """Rows x columns of patch embeddings per training picture: the embedder's grid, or with tiling (model.tiling)
    n_tiles x h rows of w, n_tiles from the first picture's size (tiled builds need pictures of one size)."""
    cfg = embedder.config
    if cfg.tile_size is None:
        return embedder.grid
    from imaging.decode import read_image
    from model import tiling

    for path in paths:
        try:
            hw = read_image(path)[0].shape[:2]
        except PatchCoreError:
            continue
        return tiling.n_tiles(hw, cfg.tile_size, cfg.tile_overlap) * embedder.grid[0], embedder.grid[1]
    raise BuildError("none of the training images could be read; check the files")


def _stream_coreset(train_paths, embedder, grid, config, options, on_skip, stages, k_max) -> Streamed:
    """Stream embeddings into the buffer, extend the bank chunk by chunk if needed, and return the bank with the
    source image of each of its vectors."""
    per_image = grid[0] * grid[1]
    total = len(train_paths) * per_image
    chunk = _chunk_rows(per_image, options)
    sequential = total > chunk
    capacity = buffer_rows(total, chunk, k_max) if sequential else total
    buffer = np.empty((capacity, embedder.dim), dtype=np.float32)  # preallocated, never grown
    owner = np.empty(capacity, dtype=np.int32)  # source image id of each buffer row
    fill = banked = n_seen = n_chunks = 0
    used: list[tuple[Path, str]] = []
    t_extract = time.perf_counter()

    def extend_bank() -> None:
        """Greedy over the new rows buffer[banked:fill], seeded with their distances to the bank buffer[:banked];
        the picks join the bank (with their owners), the rest goes."""
        nonlocal fill, banked, n_chunks
        t = time.perf_counter()
        new = buffer[banked:fill]
        picked = greedy_continuation(new, buffer[:banked], chunk_picks(new.shape[0], config), config)
        buffer[banked : banked + picked.size] = new[picked]  # fancy indexing copies first: overlap is safe
        owner[banked : banked + picked.size] = owner[banked:fill][picked]
        banked = fill = banked + picked.size
        n_chunks += 1
        stages.add("coreset", time.perf_counter() - t)

    for emb, names in embed_stream(train_paths, embedder, options, on_skip, "embed"):
        rows = emb.reshape(-1, embedder.dim)  # (B, h, w, D) -> (B*h*w, D)
        if rows.shape[0] != len(names) * per_image:  # tiled: a picture of another size
            raise BuildError(f"tiled builds need pictures of one size; {names[0][0]} and its batch give "
                             f"{rows.shape[0] // len(names)} patches per picture, the first gave {per_image}")
        if sequential and fill + rows.shape[0] > capacity:
            extend_bank()
        buffer[fill : fill + rows.shape[0]] = rows
        owner[fill : fill + rows.shape[0]] = np.repeat(np.arange(len(used), len(used) + len(names)), per_image)
        fill, n_seen = fill + rows.shape[0], n_seen + rows.shape[0]
        used.extend(names)
    if not used:
        raise BuildError("none of the training images could be read; check the files (see the warnings above)")
    stages.add("extract", time.perf_counter() - t_extract - stages.seconds.get("coreset", 0.0))
    stages.done("extract")

    if sequential:
        if fill > banked:
            extend_bank()  # times itself
        stages.done("coreset")
        return Streamed(buffer[:banked].copy(), owner[:banked].copy(), used, None, grid, n_seen,
                        f"sequential(chunks={n_chunks})")
    t = time.perf_counter()
    k = min(fill, max(MIN_BANK, int(round(config.coreset_ratio * n_seen))))
    with _post_extract_heap(options):
        picked = select_coreset(buffer[:fill], k, mode=config.coreset_mode, projection_dim=config.projection_dim,
                                seed=config.seed)
    stages.add("coreset", time.perf_counter() - t)
    stages.done("coreset")
    return Streamed(buffer[picked], owner[picked], used, buffer[:fill], grid, n_seen, "single-pass")


def _provenance(read, n_images, skipped, n_used, n_calib, method, started, stages, cluster) -> Provenance:
    from index_store import package_version

    lines = sorted(f"{path}\t{digest}" for path, digest in read)
    return Provenance(
        package_version=package_version(), torch_version=_version("torch"),
        torchvision_version=_version("torchvision"), faiss_version=faiss.__version__,
        numpy_version=np.__version__,
        dataset_fingerprint=hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        n_images=n_images, n_skipped=len(skipped), n_train_images=n_used, n_calibration_images=n_calib,
        calibration_source=method,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 3), peak_rss_mb=round(peak_rss_mb(), 1),
        stage_seconds=dict(stages.seconds), cluster=dict(cluster),
    )


def _version(package: str) -> str:
    """A package's version without importing it (an update on the onnx runtime runs without torch): the imported
    module's __version__ where it is loaded, else the installed distribution's, else "none"."""
    import importlib.metadata
    import sys

    module = sys.modules.get(package)
    if module is not None:
        return str(module.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _relative(path: Path, root: Path | None) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve())) if root else Path(path).name
    except ValueError:
        return str(path)
