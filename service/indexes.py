"""The indexes this server holds: found on disk, loaded once (one detector each), warmed up, looked up by name.

PATCHCORE_INDEX_DIR is either one index folder (it holds metadata.json) or a folder of index folders, one per
product. An index is named after its folder. Folders starting with "." (the store's temporary folders) are skipped,
and so are symbolic links that lead outside the index folder: every index served lives under PATCHCORE_INDEX_DIR.
Requests name an index only by a key of this table (?index=NAME), never by a path, so no request can reach a file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

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
    """Holds one IndexBundle per name; the lifespan sets ``ready`` once all are loaded, warmed up and served."""

    def __init__(self) -> None:
        self._bundles: dict[str, IndexBundle] = {}
        self.ready = False

    def load_all(self, index_dir: Path, device: str, warmup: bool = True, runtime: str = "auto",
                 threads: int | None = None) -> None:
        for name, path in discover(index_dir).items():
            t0 = time.perf_counter()
            bundle = store.load(path, device=device, runtime=runtime, threads=threads)
            t1 = time.perf_counter()
            if warmup:
                warm_up(bundle)
            self._bundles[name] = bundle
            meta = bundle.metadata
            log.info(
                "index loaded",
                extra={"index": name, "path": str(path), "backbone": meta.config.backbone, "runtime": bundle.runtime,
                       "bank_size": meta.bank_size, "threshold": meta.calibration.threshold,
                       "load_ms": round((t1 - t0) * 1e3, 1), "warmup_ms": round((time.perf_counter() - t1) * 1e3, 1)},
            )

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
