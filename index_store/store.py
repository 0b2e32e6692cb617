"""Save and load a memory bank: DIR/index.faiss (faiss.write_index) + DIR/metadata.json, and the sidecars
DIR/bank_image_ids.npy (int32, the source image of each bank vector; np.save, no pickle), DIR/images.tsv (one
"relative path<TAB>sha256" line per bank image, its line number being its id), for index kinds that do not keep
the exact vectors readable (anything but flat) DIR/bank_vectors.npy (float32 (M, D): what an update extends), and
DIR/extractor.onnx when exported (index_store/onnx_export.py). No pickle anywhere.

Saving is atomic: everything is written into a temporary sibling folder (.DIR.tmp-*), which is then swapped with
DIR in one step (renameat2 RENAME_EXCHANGE), so a build killed at any point never leaves a half-written index, and an
old index stays whole until the new one replaces it. One writer per folder (an fcntl lock, .DIR.lock); the next
writer removes what a killed one left behind. The server never writes here and skips dot folders.
Loading checks the schema version, the sha256 of index.faiss, its dimension and vector count, and says how to fix
each problem. The extractor runs in torch or, from extractor.onnx, in onnxruntime (``runtime``: auto, onnx, torch);
torch is imported only by the torch runtime, so an onnx-only install serves without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from index_store.atomic import WriterLock, exchange, fsync_dir, fsync_file
from index_store.metadata import IndexMetadata, MetadataError
from index_store.weights import sha256_file  # weights.py stays standalone: the Docker build runs it alone
from model import knn
from model.config import PatchCoreConfig
from model.detector import Detector
from model.errors import PatchCoreError
from model.extractor import RUNTIMES, Extractor

if TYPE_CHECKING:
    from index_store.build import BuildResult

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"
BANK_IDS_FILE = "bank_image_ids.npy"
IMAGES_FILE = "images.tsv"
BANK_VECTORS_FILE = "bank_vectors.npy"
EXTRACTOR_FILE = "extractor.onnx"
RUNTIME_CHOICES = ("auto", *RUNTIMES)
RESERVED_FILES = (INDEX_FILE, METADATA_FILE, BANK_IDS_FILE, IMAGES_FILE, BANK_VECTORS_FILE)  # not extra files
TMP, OLD = "tmp", "old"  # sibling folders .NAME.tmp-* (being written) and .NAME.old-* (fallback swap)
log = logging.getLogger(__name__)


class IndexStoreError(PatchCoreError):
    """An index folder cannot be written or read; the message says how to fix it."""


@dataclass(frozen=True)
class IndexBundle:
    """A loaded index: the detector that predicts with it and the metadata it was built with."""

    path: Path
    metadata: IndexMetadata
    detector: Detector

    @property
    def runtime(self) -> str:
        """Which runtime runs the extractor: "torch" or "onnx"."""
        return self.detector.embedder.runtime


def save(out_dir: Path, index: faiss.Index, metadata: IndexMetadata, force: bool = False,
         lock: WriterLock | None = None, *, bank_image_ids: np.ndarray | None = None,
         images: Sequence[tuple[str, str]] | None = None,
         bank_vectors: np.ndarray | None = None,
         extra_files: Mapping[str, bytes] | None = None) -> IndexMetadata:
    """Write the index, its sidecars (when given; ``extra_files``: more sidecars by file name, e.g. extractor.onnx)
    and its metadata atomically; returns the metadata as written (with the sha256 of the index and of every sidecar).

    Holds the writer lock of out_dir (or the caller's ``lock``, taken before a long build), removes what killed
    writers left behind, writes a temporary sibling and swaps it in. Killed at any instant, it leaves out_dir
    either the whole old index or the whole new one.
    """
    out_dir = Path(out_dir)
    if index.ntotal != metadata.bank_size or index.d != metadata.embedding_dim:
        raise IndexStoreError(f"index ({index.ntotal} x {index.d}) does not match its metadata; this is a bug")
    if bank_image_ids is not None and len(bank_image_ids) != index.ntotal:
        raise IndexStoreError(f"{len(bank_image_ids)} bank image ids for {index.ntotal} vectors; this is a bug")
    if bank_vectors is not None and bank_vectors.shape != (index.ntotal, index.d):
        raise IndexStoreError(f"bank vectors {bank_vectors.shape} for a {index.ntotal} x {index.d} index; this is a bug")
    if lock is not None and (not lock.held or lock.out_dir != out_dir.parent.resolve() / out_dir.name):
        raise IndexStoreError(f"the writer lock given is not held for {out_dir}; this is a bug")
    try:
        with contextlib.nullcontext(lock) if lock is not None else WriterLock(out_dir):
            clean_stale(out_dir)
            if out_dir.exists() and not force:
                raise IndexStoreError(f"{out_dir} already exists; pass --force to replace it, or choose another --out")
            return _write_and_swap(out_dir, index, metadata, bank_image_ids, images, bank_vectors, extra_files or {})
    except OSError as exc:
        raise IndexStoreError(
            f"cannot write {out_dir} ({exc.strerror or exc}); free some space, fix the folder's permissions or "
            "choose another --out (an existing index there is unchanged)"
        ) from exc


def _write_and_swap(out_dir: Path, index: faiss.Index, metadata: IndexMetadata, bank_image_ids: np.ndarray | None,
                    images: Sequence[tuple[str, str]] | None, bank_vectors: np.ndarray | None,
                    extra_files: Mapping[str, bytes]) -> IndexMetadata:
    tmp = out_dir.parent / f"{_prefix(out_dir, TMP)}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # mode from the umask (tempfile.mkdtemp's 0700 would hide the index from a server's other user)
    try:
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
        except RuntimeError as exc:  # FAISS reports a failed write (ENOSPC, EIO) as RuntimeError
            reason = re.search(r"\(([^()]+)\)\s*$", str(exc))  # its message ends with "(No space left on device)"
            raise OSError(f"{reason.group(1) if reason else str(exc).splitlines()[-1]}, "
                          f"writing {tmp / INDEX_FILE}") from exc
        fsync_file(tmp / INDEX_FILE)
        sidecars = {}
        if bank_image_ids is not None:
            np.save(tmp / BANK_IDS_FILE, np.ascontiguousarray(bank_image_ids, dtype=np.int32), allow_pickle=False)
            sidecars[BANK_IDS_FILE] = sha256_file(tmp / BANK_IDS_FILE)
        if images is not None:
            (tmp / IMAGES_FILE).write_text("".join(f"{path}\t{digest}\n" for path, digest in images))
            sidecars[IMAGES_FILE] = sha256_file(tmp / IMAGES_FILE)
        if bank_vectors is not None:
            np.save(tmp / BANK_VECTORS_FILE, np.ascontiguousarray(bank_vectors, dtype=np.float32), allow_pickle=False)
            sidecars[BANK_VECTORS_FILE] = sha256_file(tmp / BANK_VECTORS_FILE)
        for name, data in extra_files.items():
            if name in RESERVED_FILES or Path(name).name != name:
                raise IndexStoreError(f"cannot store an extra file named {name!r}; this is a bug")
            (tmp / name).write_bytes(data)
            sidecars[name] = sha256_file(tmp / name)
        for name in sidecars:
            fsync_file(tmp / name)
        metadata = dataclasses.replace(metadata, index_sha256=sha256_file(tmp / INDEX_FILE), sidecars=sidecars)
        (tmp / METADATA_FILE).write_text(metadata.to_json() + "\n")
        fsync_file(tmp / METADATA_FILE)
        fsync_dir(tmp)
        _publish(tmp, out_dir)
    finally:
        remove_tree(tmp)  # the new index's leftovers on failure, or the old index after a swap
    fsync_dir(out_dir.parent)
    return metadata


def _publish(tmp: Path, out_dir: Path) -> None:
    """Make tmp the index at out_dir; afterwards tmp holds the old index (or nothing)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
    elif not exchange(tmp, out_dir):  # no atomic swap here: two renames, recovered by clean_stale if cut between
        backup = out_dir.parent / f"{_prefix(out_dir, OLD)}{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out_dir, backup)
        os.replace(tmp, out_dir)
        os.replace(backup, tmp)


def _prefix(out_dir: Path, kind: str) -> str:
    return f".{out_dir.name}.{kind}-"


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temporary folders of writers that died (call with the writer lock held); returns them.

    If the two-rename fallback was cut between its renames, out_dir is missing and its old index waits in a
    ``.NAME.old-*`` folder: that one is moved back first, never deleted.
    """
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    stale = sorted(p for p in parent.iterdir()
                   if p.name.startswith((_prefix(out_dir, TMP), _prefix(out_dir, OLD))))
    for path in stale:
        if not out_dir.exists() and path.name.startswith(_prefix(out_dir, OLD)) and (path / METADATA_FILE).is_file():
            os.replace(path, out_dir)
            log.warning("restored %s from %s, left by an interrupted save", out_dir, path.name)
        else:
            remove_tree(path)
            log.warning("removed %s, left by an interrupted save", path)
    return stale


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def save_result(out_dir: Path, result: BuildResult, force: bool = False,
                lock: WriterLock | None = None, extra_files: Mapping[str, bytes] | None = None) -> IndexMetadata:
    """Save what build_index returned: index, metadata and both sidecars (plus ``extra_files``, see save)."""
    return save(out_dir, result.index, result.metadata, force, lock, bank_image_ids=result.bank_image_ids,
                images=result.images, bank_vectors=result.bank_vectors, extra_files=extra_files)


def add_sidecar(index_dir: Path, name: str, data: bytes) -> IndexMetadata:
    """Add (or replace) one sidecar file of an existing index, e.g. extractor.onnx, and list its sha256 in
    metadata.json; the file first, then the metadata, each replaced atomically under the writer lock. Killed
    between the two, the index loads as before (an unlisted file is never used). Returns the new metadata."""
    index_dir = Path(index_dir)
    if name in RESERVED_FILES or Path(name).name != name:
        raise IndexStoreError(f"cannot add a sidecar named {name!r}; this is a bug")
    try:
        with WriterLock(index_dir):
            metadata = read_metadata(index_dir)
            tmp = index_dir / f".{name}.tmp-{os.getpid()}"
            tmp.write_bytes(data)
            fsync_file(tmp)
            os.replace(tmp, index_dir / name)
            metadata = dataclasses.replace(metadata, sidecars={**metadata.sidecars, name: sha256_file(index_dir / name)})
            _replace_metadata(index_dir, metadata)
            return metadata
    except OSError as exc:
        raise IndexStoreError(f"cannot write {index_dir / name} ({exc.strerror or exc}); free some space or fix the "
                              "folder's permissions (the index is unchanged)") from exc


def write_metadata(index_dir: Path, metadata: IndexMetadata) -> None:
    """Replace metadata.json of an existing index folder atomically (e.g. a new threshold); the rest is unchanged."""
    index_dir = Path(index_dir)
    with WriterLock(index_dir):
        _replace_metadata(index_dir, metadata)


def _replace_metadata(index_dir: Path, metadata: IndexMetadata) -> None:
    tmp = index_dir / f".{METADATA_FILE}.tmp-{os.getpid()}"
    tmp.write_text(metadata.to_json() + "\n")
    fsync_file(tmp)
    os.replace(tmp, index_dir / METADATA_FILE)
    fsync_dir(index_dir)


def read_bank_image_ids(index_dir: Path, metadata: IndexMetadata) -> np.ndarray:
    """(M,) int32 source image of each bank vector, checked against its sha256 and the bank size."""
    path = Path(index_dir) / BANK_IDS_FILE
    expected = metadata.sidecars.get(BANK_IDS_FILE)
    if expected is None or not path.is_file():
        raise IndexStoreError(f"{index_dir} has no {BANK_IDS_FILE} (built before schema 2); rebuild it with "
                              "patchcore-build-index --force")
    if sha256_file(path) != expected:
        raise IndexStoreError(f"{path} is corrupt or does not belong to this index; rebuild it with "
                              "patchcore-build-index --force")
    ids = np.load(path, allow_pickle=False)
    if ids.dtype != np.int32 or ids.shape != (metadata.bank_size,):
        raise IndexStoreError(f"{path} holds {ids.dtype} {ids.shape}, expected int32 ({metadata.bank_size},); "
                              "rebuild it with patchcore-build-index --force")
    return ids


def read_images(index_dir: Path, metadata: IndexMetadata) -> list[tuple[str, str]]:
    """(relative path, sha256) of each bank image, by image id, checked against its sha256."""
    path = Path(index_dir) / IMAGES_FILE
    expected = metadata.sidecars.get(IMAGES_FILE)
    if expected is None or not path.is_file() or sha256_file(path) != expected:
        raise IndexStoreError(f"{path} is missing or corrupt (or the index predates schema 2); rebuild it with "
                              "patchcore-build-index --force")
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    if any(len(r) != 2 for r in rows):
        raise IndexStoreError(f"{path} has lines that are not 'path<TAB>sha256'; rebuild it with "
                              "patchcore-build-index --force")
    return [(r[0], r[1]) for r in rows]


def read_bank_vectors(index_dir: Path, metadata: IndexMetadata, index: faiss.Index) -> np.ndarray:
    """(M, D) float32 memory bank: read back from a flat index, else from the bank_vectors.npy sidecar."""
    if metadata.config.index.kind == "flat":
        return index.reconstruct_n(0, index.ntotal)
    path = Path(index_dir) / BANK_VECTORS_FILE
    expected = metadata.sidecars.get(BANK_VECTORS_FILE)
    if expected is None or not path.is_file() or sha256_file(path) != expected:
        raise IndexStoreError(f"{path} is missing or corrupt: a {metadata.config.index.kind} index needs it to be "
                              "updated; rebuild it with patchcore-build-index --force")
    bank = np.load(path, allow_pickle=False)
    if bank.dtype != np.float32 or bank.shape != (metadata.bank_size, metadata.embedding_dim):
        raise IndexStoreError(f"{path} holds {bank.dtype} {bank.shape}, expected float32 ({metadata.bank_size}, "
                              f"{metadata.embedding_dim}); rebuild it with patchcore-build-index --force")
    return bank


def read_metadata(index_dir: Path) -> IndexMetadata:
    index_dir = Path(index_dir)
    path = index_dir / METADATA_FILE
    if not index_dir.is_dir():
        left = sorted(index_dir.parent.glob(f"{_prefix(index_dir, OLD)}*/{METADATA_FILE}"))
        if left:  # the two-rename fallback of save() was cut between its renames
            raise IndexStoreError(f"index folder {index_dir} is missing, but an interrupted save left the previous "
                                  f"index in {left[0].parent}; run patchcore-build-index again (it restores it first)")
        raise IndexStoreError(f"index folder {index_dir} does not exist; build one with patchcore-build-index --out")
    if not path.is_file():
        raise IndexStoreError(f"{path} is missing; {index_dir} is not an index folder (rebuild with patchcore-build-index)")
    try:
        return IndexMetadata.from_json(path.read_text(), source=str(path))
    except MetadataError as exc:
        raise IndexStoreError(str(exc)) from exc


def load_index(index_dir: Path) -> tuple[IndexMetadata, faiss.Index]:
    """Read and validate metadata + FAISS index (checksum, dimension, count); search parameters from the config."""
    index_dir = Path(index_dir)
    metadata = read_metadata(index_dir)
    path = index_dir / INDEX_FILE
    rebuild = "rebuild it with patchcore-build-index --force"
    if not path.is_file():
        raise IndexStoreError(f"{path} is missing; {rebuild}")
    digest = sha256_file(path)
    if digest != metadata.index_sha256:
        raise IndexStoreError(
            f"{path} is corrupt or does not belong to this metadata (sha256 {digest[:12]}..., metadata says "
            f"{metadata.index_sha256[:12]}...); {rebuild}"
        )
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexStoreError(f"FAISS cannot read {path} ({str(exc).splitlines()[0]}); {rebuild}") from exc
    if index.d != metadata.embedding_dim:
        raise IndexStoreError(f"{path} holds {index.d}-d vectors, metadata says {metadata.embedding_dim}; {rebuild}")
    if index.ntotal != metadata.bank_size:
        raise IndexStoreError(f"{path} holds {index.ntotal} vectors, metadata says {metadata.bank_size}; {rebuild}")
    for name, expected in metadata.sidecars.items():
        if not (index_dir / name).is_file() or sha256_file(index_dir / name) != expected:
            fix = f"re-export it with patchcore-export {index_dir}" if name == EXTRACTOR_FILE else rebuild
            raise IndexStoreError(f"{index_dir / name} is missing or corrupt (sha256 differs from metadata.json); "
                                  f"{fix}")
    knn.configure_search(index, metadata.config.index)
    return metadata, index


def load(index_dir: Path, device: str = "cpu", runtime: str = "auto", threads: int | None = None,
         make_embedder: Callable[[PatchCoreConfig, str], Extractor] | None = None) -> IndexBundle:
    """Load an index folder and rebuild its detector from the config stored in the metadata.

    runtime: "torch" (torchvision's backbone), "onnx" (onnxruntime on the index's extractor.onnx) or "auto" (onnx
    when extractor.onnx is listed in the metadata and onnxruntime is installed, else torch). threads: onnxruntime's
    intra-op threads (torch's are set process-wide by index_store.runtime.configure_threads).

    make_embedder(config, device) builds the torch extractor (default: a new PatchEmbedder); a server's hot reload
    passes one that reuses the running version's extractor when the config is the same (building one traces the
    backbone: torch.fx patches nn.Module globally while it traces, which must not overlap a forward pass in another
    thread). The onnx runtime always builds its own session from the index's extractor.onnx.
    """
    metadata, index = load_index(index_dir)
    embedder = open_extractor(index_dir, metadata, runtime, device, threads, make_embedder)
    if embedder.dim != metadata.embedding_dim or embedder.grid != metadata.grid:
        raise IndexStoreError(
            f"{metadata.config.backbone} ({chosen} runtime) now gives {embedder.dim}-d embeddings on a "
            f"{embedder.grid} grid, but the index was built with {metadata.embedding_dim}-d on {metadata.grid}; the "
            "backbone code or weights changed: rebuild the index with patchcore-build-index --force"
        )
    return IndexBundle(Path(index_dir), metadata, Detector(metadata.config, embedder, index, metadata.calibration))


def open_extractor(index_dir: Path, metadata: IndexMetadata, runtime: str = "auto", device: str = "cpu",
                   threads: int | None = None,
                   make_embedder: Callable[[PatchCoreConfig, str], Extractor] | None = None) -> Extractor:
    """The extractor of a loaded index (load_index) in the chosen runtime (resolve_runtime): onnxruntime on its
    checked extractor.onnx, or torch (make_embedder, default a new PatchEmbedder)."""
    if resolve_runtime(runtime, Path(index_dir), metadata) == "onnx":
        return _onnx_extractor(Path(index_dir), metadata, device, threads)
    return (make_embedder or _torch_extractor)(metadata.config, device)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def resolve_runtime(runtime: str, index_dir: Path, metadata: IndexMetadata) -> str:
    """"torch" or "onnx" for a runtime choice (auto, onnx, torch), or IndexStoreError saying what to do."""
    if runtime not in RUNTIME_CHOICES:
        raise IndexStoreError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    has_onnx = EXTRACTOR_FILE in metadata.sidecars
    if runtime == "auto":
        if has_onnx and _installed("onnxruntime"):
            return "onnx"
        if _installed("torch"):
            return "torch"
        raise IndexStoreError(
            f"{index_dir} cannot be served without torch: "
            + ("install onnxruntime (pip install 'patchcore-service[onnx]')" if has_onnx else
               f"it has no {EXTRACTOR_FILE}; add one with patchcore-export {index_dir} where torch is installed")
        )
    if runtime == "onnx":
        if not has_onnx:
            raise IndexStoreError(f"{index_dir} has no {EXTRACTOR_FILE}; add it with patchcore-export {index_dir}, or "
                                  "use the torch runtime (PATCHCORE_RUNTIME=torch)")
        if not _installed("onnxruntime"):
            raise IndexStoreError("the onnx runtime needs onnxruntime: pip install 'patchcore-service[onnx]', or use "
                                  "PATCHCORE_RUNTIME=torch")
    elif not _installed("torch"):
        raise IndexStoreError("the torch runtime needs torch and torchvision (the full image, or pip install "
                              "patchcore-service); this install has only the onnx runtime: use PATCHCORE_RUNTIME=onnx")
    return runtime


def _torch_extractor(config: PatchCoreConfig, device: str) -> Extractor:
    from model.features import PatchEmbedder

    return PatchEmbedder(config, device)


def _onnx_extractor(index_dir: Path, metadata: IndexMetadata, device: str, threads: int | None) -> Extractor:
    """onnxruntime on DIR/extractor.onnx, whose sha256 load_index has checked; its embedded config must be the
    index's."""
    import hashlib
    import json

    from model.onnx_runtime import OnnxExtractor

    path = index_dir / EXTRACTOR_FILE
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != metadata.sidecars[EXTRACTOR_FILE]:  # replaced since load_index read it
        raise IndexStoreError(f"{path} changed while loading; load again, or re-export it with patchcore-export")
    extractor = OnnxExtractor(data, metadata.config, str(device), threads)
    if not _same_config(extractor.model_config, metadata.config):
        raise IndexStoreError(f"{path} was exported for another model config than {index_dir}'s metadata; re-export "
                              f"it with patchcore-export {index_dir}")
    return extractor


def _same_config(exported: object, config: PatchCoreConfig) -> bool:
    """Whether the config embedded in extractor.onnx is the index's. Compared as configs, defaults filled in, so a
    file exported before a config field was added (e.g. tile_size, at its default) still matches."""
    import json

    if json.dumps(exported, sort_keys=True) == json.dumps(config.to_dict(), sort_keys=True):
        return True
    if not isinstance(exported, dict):
        return False
    try:
        return PatchCoreConfig.from_dict(exported) == config
    except (PatchCoreError, TypeError, ValueError):
        return False
