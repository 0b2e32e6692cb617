"""build_index on a Ray cluster: Ray Data reads and decodes the images, actors embed them (one backbone each) and
drop the patches the bank already covers, the driver extends the memory bank by the local builder's greedy
continuation.

    read + decode (Ray Data tasks, files read where the task runs: --data must be at the same path on every node)
    -> embed + filter (actors, one PatchEmbedder each, CPU or GPU by resources; distributed.bank.BankFilter against
       the latest bank the driver published on a small board actor)
    -> driver: distributed.bank.ChunkedBank (same chunks, same seeded greedy continuation as index_store.build)
    -> index, calibration and metadata exactly as index_store.build.build_index (it is called with this streamer).

Memory: a worker holds one batch of images and its embeddings; Ray Data's streaming executor bounds the blocks in
flight; the driver holds the bank plus one chunk of patches, as the local builder does. Rows arrive in image
order (preserve_order), so ids, chunks and picks do not depend on which worker ran what.

Needs the ray extra (pip install '.[ray]'); importing this module without it raises ImportError.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distributed.bank import BankFilter, ChunkedBank
from distributed.decode_task import decode_row
from distributed.options import RayOptions
from index_store.build import BuildError, BuildOptions, BuildResult, Streamed, _chunk_rows, build_index
from model.config import PatchCoreConfig
from model.preprocess import decode_side
from model.features import PatchEmbedder

log = logging.getLogger(__name__)
DECODE_CPUS = 0.1  # reading + decoding is light next to the backbone; the actors keep the rest of each CPU


def build_index_ray(paths: list[Path], config: PatchCoreConfig, options: BuildOptions, ray_options: RayOptions,
                    root: Path | None = None) -> BuildResult:
    """index_store.build.build_index with the training images streamed through a Ray cluster."""
    if config.tile_size is not None:  # before connecting: the actors embed whole pictures, one grid each
        raise BuildError("tiled builds (--tile) run in this process only, not on a Ray cluster; build without --ray, "
                         "or without --tile")
    started_here = not ray.is_initialized()
    t = time.perf_counter()
    if started_here:
        _connect(ray_options)
    connect_seconds = time.perf_counter() - t
    try:
        def streamer(train_paths, embedder, config_, options_, on_skip, stages, k_max) -> Streamed:
            stages.add("ray_connect", connect_seconds)
            return _stream_on_ray(train_paths, embedder, config_, options_, ray_options, on_skip, stages, k_max)

        return build_index(paths, config, options, root=root, streamer=streamer)
    finally:
        if started_here:
            ray.shutdown()


def _connect(ray_options: RayOptions) -> None:
    try:
        if ray_options.address == "local":
            ray.init(address="local", num_cpus=ray_options.local_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_options.address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BuildError(f"cannot reach the Ray cluster at {ray_options.address!r} ({exc}); start one with "
                         "`ray start --head` (and `ray start --address HEAD:6379` on the others), or pass "
                         "--ray local") from exc


class _Board:
    """A tiny actor holding the latest bank the driver published (version, tau squared, [bank ObjectRef])."""

    def __init__(self) -> None:
        self.latest: tuple[int, float, list] = (0, 0.0, [])

    def publish(self, version: int, tau_sq: float, bank: list) -> None:
        self.latest = (version, tau_sq, bank)

    def get(self) -> tuple[int, float, list]:
        return self.latest


class _EmbedActor:
    """One backbone per actor: a batch of decoded images -> each image's patches the bank does not cover yet."""

    def __init__(self, config: dict[str, Any], device: str, threads: int, board) -> None:
        from index_store.runtime import configure_threads

        configure_threads(threads)  # once, at the start of this worker process
        self.config = PatchCoreConfig.from_dict(config)
        self.embedder = PatchEmbedder(self.config, device)
        self.board, self.version, self.filter = board, 0, BankFilter(np.empty((0, 1), np.float32), 0.0, 0)
        self.node = ray.get_runtime_context().get_node_id()

    def _refresh(self) -> None:
        version, tau_sq, bank = ray.get(self.board.get.remote())
        if version != self.version:
            self.filter = BankFilter(ray.get(bank[0]), tau_sq, self.config.seed)
            self.version = version

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from index_store.runtime import peak_rss_mb

        n = len(batch["image_id"])
        ok = np.flatnonzero(batch["error"] == "")
        dim, per_image = self.embedder.dim, self.embedder.grid[0] * self.embedder.grid[1]
        out = [np.zeros((0, dim), np.float32) for _ in range(n)]
        embed_s = reduce_s = 0.0
        if ok.size:
            t = time.perf_counter()
            emb = self.embedder.embed([batch["image"][i] for i in ok]).reshape(ok.size, per_image, dim)
            embed_s = time.perf_counter() - t
            t = time.perf_counter()
            self._refresh()
            keep = self.filter.keep(emb.reshape(-1, dim)).reshape(ok.size, per_image)
            for j, i in enumerate(ok):  # (P, D) -> (kept, D)
                out[i] = np.ascontiguousarray(emb[j][keep[j]])
            reduce_s = time.perf_counter() - t
        share = np.full(n, 1.0 / n)
        rows = np.empty(n, dtype=object)
        rows[:] = out
        return {
            "image_id": batch["image_id"], "sha256": batch["sha256"], "error": batch["error"], "rows": rows,
            "tau_sq": np.full(n, self.filter.tau_sq if self.filter.index is not None else 0.0),
            "decode_s": batch["decode_s"], "embed_s": share * embed_s, "reduce_s": share * reduce_s,
            "node": np.full(n, self.node), "worker": np.full(n, f"{socket.gethostname()}:{os.getpid()}"),
            "worker_rss_mb": np.full(n, peak_rss_mb()),
        }


def _layout(options: BuildOptions, ray_options: RayOptions) -> dict[str, Any]:
    """Nodes, resources, and how many actors of what size."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes]
    gpus = sum(float(n["Resources"].get("GPU", 0)) for n in nodes)
    per_actor = ray_options.cpus_per_actor or max(1, int(min(c for c in cpus if c > 0)))
    if options.device.startswith("cuda"):
        if gpus < 1:
            raise BuildError("--device cuda on a Ray cluster without GPUs; start the nodes with GPUs, or use --device cpu")
        actors, num_gpus = ray_options.actors or int(gpus), 1.0
    else:
        actors, num_gpus = ray_options.actors or max(1, int(sum(cpus) // per_actor)), 0.0
    return {"nodes": len(nodes), "cpus": sum(cpus), "gpus": gpus, "actors": actors, "cpus_per_actor": per_actor,
            "actor_num_cpus": max(0.1, per_actor - DECODE_CPUS), "actor_num_gpus": num_gpus,
            "ray_version": ray.__version__}


def _stream_on_ray(train_paths: list[Path], embedder: PatchEmbedder, config: PatchCoreConfig, options: BuildOptions,
                   ray_options: RayOptions, on_skip: Callable, stages, k_max: int) -> Streamed:
    """_stream_coreset's contract, with the decoding and the backbone on the cluster."""
    from ray.data import DataContext

    per_image = embedder.grid[0] * embedder.grid[1]
    total, chunk = len(train_paths) * per_image, _chunk_rows(per_image, options)
    bank = ChunkedBank(config, total, per_image, embedder.dim, chunk, k_max, options.batch_size, ray_options.margin)
    layout = _layout(options, ray_options)
    log.info("ray: %d nodes, %g CPUs, %g GPUs: %d backbone actors", layout["nodes"], layout["cpus"], layout["gpus"],
             layout["actors"])
    board = ray.remote(num_cpus=0)(_Board).remote()

    DataContext.get_current().execution_options.preserve_order = True  # image order: same chunks, same picks
    DataContext.get_current().enable_progress_bars = options.progress
    items = [{"image_id": i, "path": str(Path(p).resolve())} for i, p in enumerate(train_paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * layout["actors"])))
    ds = ds.map(decode_row, fn_kwargs={"max_pixels": options.max_pixels, "draft": decode_side(config)},
                num_cpus=DECODE_CPUS)
    ds = ds.map_batches(
        _EmbedActor, batch_size=options.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=layout["actors"]),
        num_cpus=layout["actor_num_cpus"], num_gpus=layout["actor_num_gpus"],
        fn_constructor_kwargs={"config": config.to_dict(), "device": options.device,
                               "threads": layout["cpus_per_actor"], "board": board},
    )

    t_stream = time.perf_counter()
    used: list[tuple[Path, str]] = []
    worker_seconds = {"decode": 0.0, "embed": 0.0, "reduce": 0.0}
    worker_rss: dict[str, float] = {}
    worker_node: dict[str, str] = {}
    expected = published = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for i in range(len(batch["image_id"])):
            image_id = int(batch["image_id"][i])
            if image_id != expected:
                raise BuildError(f"Ray Data returned image {image_id} where {expected} was due; this is a bug: "
                                 "rerun without --ray and report it")
            expected += 1
            worker = str(batch["worker"][i])
            worker_rss[worker] = max(worker_rss.get(worker, 0.0), float(batch["worker_rss_mb"][i]))
            worker_node[worker] = str(batch["node"][i])
            for stage in worker_seconds:
                worker_seconds[stage] += float(batch[f"{stage}_s"][i])
            if batch["error"][i]:
                on_skip(BuildError(str(batch["error"][i])))
                continue
            bank.add(np.asarray(batch["rows"][i], dtype=np.float32).reshape(-1, embedder.dim),
                     float(batch["tau_sq"][i]))
            used.append((train_paths[image_id], str(batch["sha256"][i])))
            if bank.version != published:  # the bank grew: workers filter against it from their next batch on
                version, tau_sq, vectors = bank.current()
                board.publish.remote(version, tau_sq, [ray.put(vectors.copy())])
                published = version
    if not used:
        raise BuildError("none of the training images could be read; check the files (see the warnings above)")
    stages.add("extract", time.perf_counter() - t_stream - bank.coreset_seconds)  # the chunks' greedy ran meanwhile
    stages.done("extract")
    vectors, owners, n_seen, method = bank.finish()
    stages.add("coreset", bank.coreset_seconds)
    stages.done("coreset")
    rows = None if bank.sequential else bank.all_rows()
    per_node: dict[str, float] = {}
    for worker, rss in worker_rss.items():
        per_node[worker_node[worker]] = per_node.get(worker_node[worker], 0.0) + rss
    cluster = {
        "backend": "ray", "address": ray_options.address, **layout, "margin": ray_options.margin,
        "patches_sent": bank.n_received, "patches_seen": n_seen, "chunks": bank.n_chunks,
        "exact_chunks": bank.exact_chunks if bank.sequential else None,
        "worker_seconds": {k: round(v, 3) for k, v in worker_seconds.items()},
        "workers": len(worker_rss), "peak_rss_mb_per_node": {k: round(v, 1) for k, v in per_node.items()},
    }
    return Streamed(vectors, owners, used, rows, embedder.grid, n_seen, method, cluster)
