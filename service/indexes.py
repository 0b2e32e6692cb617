"""The indexes this server holds: found on disk, loaded once (one detector each), warmed up, looked up by name.

PATCHCORE_INDEX_DIR is either one index folder (it holds metadata.json) or a folder of index folders, one per
product. An index is named after its folder. Folders starting with "." (the store's temporary folders) are skipped,
and so are symbolic links that lead outside the index folder: every index served lives under PATCHCORE_INDEX_DIR.
Requests name an index only by a key of this table (?index=NAME), never by a path, so no request can reach a file.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ContextManager

import numpy as np

from index_store import store
from index_store.store import IndexBundle, IndexStoreError
from service.errors import AmbiguousIndexError, NotReadyError, UnknownIndexError

log = logging.getLogger("service.indexes")


def discover(index_dir: Path) -> dict[str, Path]:
    """{name: folder} of the index folders under index_dir (or index_dir itself); raises IndexStoreError if none."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise IndexStoreError(
            f"index folder {index_dir} does not exist; build one with patchcore-build-index --out {index_dir}/NAME "
            "or point PATCHCORE_INDEX_DIR / --index-dir at an existing one"
        )
    if (index_dir / store.METADATA_FILE).exists() or (index_dir / store.INDEX_FILE).exists():
        return {index_dir.resolve().name: index_dir}
    found = {}
    root = index_dir.resolve()
    for sub in sorted(p for p in index_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not sub.resolve().is_relative_to(root):
            log.warning("skipping %s: a link to %s, outside %s; move the index inside the folder (or point "
                        "--index-dir at it)", sub, sub.resolve(), index_dir)
        elif (sub / store.METADATA_FILE).exists() or (sub / store.INDEX_FILE).exists():
            found[sub.name] = sub
        else:
            log.warning("skipping %s: not an index folder (no %s)", sub, store.METADATA_FILE)
    if not found:
        raise IndexStoreError(
            f"no index found in {index_dir}: it holds neither {store.METADATA_FILE} nor index sub-folders; build one "
            f"with patchcore-build-index --out {index_dir}/NAME"
        )
    return found


def check(index_dir: Path) -> dict[str, Path]:
    """Validate every index found (metadata, checksum, FAISS file) without building a backbone."""
    found = discover(index_dir)
    for path in found.values():
        store.load_index(path)
    return found


def warm_up(bundle: IndexBundle) -> None:
    """One prediction on a mid-grey picture: first-call allocations and lazy initialisation happen now."""
    size = bundle.metadata.config.image_size
    bundle.detector.predict(np.full((size, size, 3), 128, dtype=np.uint8))


class IndexRegistry:
    """Holds one IndexBundle per name; the lifespan sets ``ready`` once all are loaded, warmed up and served.

    Hot reload (``reload``): the new version is loaded and warmed up beside the old one, then the name is pointed
    at it in one step (a new dict replaces the old: readers never see a half-updated table). A request takes its
    bundle once, at its start (``get``), so requests in flight finish on the old version, which is freed when the
    last of them lets go. A version that fails to load is refused and the old one keeps serving.
    """

    def __init__(self) -> None:
        self._bundles: dict[str, IndexBundle] = {}
        self._paths: dict[str, Path] = {}
        self._runtimes: dict[str, tuple[str, int | None]] = {}  # name -> (runtime choice, onnx threads) it loads with
        self._reload_lock = threading.Lock()  # one reload at a time: two would load twice for nothing
        self.loaded_at: dict[str, float] = {}  # name -> time.time() of its current version's swap-in
        self.ready = False

    def load_all(self, index_dir: Path, device: str, warmup: bool = True, runtime: str = "auto",
                 threads: int | None = None) -> None:
        for name, path in discover(index_dir).items():
            self._bundles = {**self._bundles, name: _load(name, path, device, warmup, runtime, threads)}
            self._paths[name] = path
            self._runtimes[name] = (runtime, threads)
            self.loaded_at[name] = time.time()

    def reload(self, name: str, device: str, warmup: bool = True,
               exclusive: Callable[[], ContextManager] = contextlib.nullcontext) -> tuple[IndexBundle, IndexBundle]:
        """Load name's folder again (its new version), warm it up, swap it in -> (old, new) bundles.

        The new version runs in the runtime choice the server was started with (auto, onnx or torch: with auto, a
        new version that brings an extractor.onnx moves to onnxruntime). A torch extractor is reused from the running
        version when that one is torch too and the model config and device are the same; otherwise the new one is
        built inside exclusive() (the runner's model lock: no forward pass runs while torch.fx traces). An onnx
        extractor is always a new session on the new version's extractor.onnx (no tracing, no lock needed).
        Raises UnknownIndexError, or IndexStoreError (and friends) with the old version still serving."""
        path = self._paths.get(name)
        if path is None:
            raise UnknownIndexError(f"unknown index {name!r}; this server holds: {', '.join(self.names)}")
        runtime, threads = self._runtimes.get(name, ("auto", None))
        with self._reload_lock:
            old = self._bundles[name]

            def make_embedder(config, dev):  # the torch runtime only: torch is installed when this runs
                import torch

                from model.features import PatchEmbedder

                running = old.detector.embedder
                if (getattr(running, "runtime", None) == "torch" and config == running.config
                        and torch.device(dev) == running.device):
                    return running
                with exclusive():
                    return PatchEmbedder(config, dev)

            new = _load(name, path, device, warmup, runtime, threads, make_embedder)  # the old one serves meanwhile
            self._bundles = {**self._bundles, name: new}  # the atomic swap
            self.loaded_at[name] = time.time()
        log.info("index reloaded", extra={"index": name, "old_sha256": old.metadata.index_sha256[:12],
                                          "new_sha256": new.metadata.index_sha256[:12],
                                          "version": new.metadata.lineage.version, "runtime": new.runtime})
        return old, new

    def path_of(self, name: str) -> Path:
        return self._paths[name]

    def __iter__(self) -> Iterator[tuple[str, IndexBundle]]:
        return iter(self._bundles.items())

    def __len__(self) -> int:
        return len(self._bundles)

    @property
    def names(self) -> list[str]:
        return list(self._bundles)

    def get(self, name: str | None) -> tuple[str, IndexBundle]:
        """The index called name; None means the only one. Raises NotReady / Unknown / Ambiguous errors."""
        if not self.ready:
            raise NotReadyError("the server is still loading its indexes; retry in a few seconds")
        if name is None:
            if len(self._bundles) == 1:
                return next(iter(self._bundles.items()))
            raise AmbiguousIndexError(
                f"this server holds {len(self._bundles)} indexes ({', '.join(self.names)}); choose one with ?index=NAME"
            )
        bundle = self._bundles.get(name)
        if bundle is None:
            raise UnknownIndexError(f"unknown index {name!r}; this server holds: {', '.join(self.names)}")
        return name, bundle


def _load(name: str, path: Path, device: str, warmup: bool, runtime: str = "auto", threads: int | None = None,
          make_embedder=None) -> IndexBundle:
    t0 = time.perf_counter()
    bundle = store.load(path, device=device, runtime=runtime, threads=threads, make_embedder=make_embedder)
    t1 = time.perf_counter()
    if warmup:
        warm_up(bundle)
    meta = bundle.metadata
    log.info(
        "index loaded",
        extra={"index": name, "path": str(path), "backbone": meta.config.backbone, "runtime": bundle.runtime,
               "bank_size": meta.bank_size,
               "threshold": meta.calibration.threshold, "version": meta.lineage.version,
               "load_ms": round((t1 - t0) * 1e3, 1), "warmup_ms": round((time.perf_counter() - t1) * 1e3, 1)},
    )
    return bundle
