"""Save and load a memory bank: DIR/index.faiss (faiss.write_index) + DIR/metadata.json. No pickle.

Saving is atomic: everything is written into a temporary sibling folder (.DIR.tmp-*), which is then swapped with
DIR in one step (renameat2 RENAME_EXCHANGE), so a build killed at any point never leaves a half-written index, and an
old index stays whole until the new one replaces it. One writer per folder (an fcntl lock, .DIR.lock); the next
writer removes what a killed one left behind. The server never writes here and skips dot folders.
Loading checks the schema version, the sha256 of index.faiss, its dimension and vector count, and says how to fix
each problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import torch

from index_store.atomic import WriterLock, exchange, fsync_dir, fsync_file
from index_store.metadata import IndexMetadata, MetadataError
from index_store.weights import sha256_file  # weights.py stays standalone: the Docker build runs it alone
from model import knn
from model.detector import Detector
from model.errors import PatchCoreError
from model.features import PatchEmbedder

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"
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


def save(out_dir: Path, index: faiss.Index, metadata: IndexMetadata, force: bool = False,
         lock: WriterLock | None = None) -> IndexMetadata:
    """Write the index and its metadata atomically; returns the metadata as written (with the index sha256).

    Holds the writer lock of out_dir (or the caller's ``lock``, taken before a long build), removes what killed
    writers left behind, writes a temporary sibling and swaps it in. Killed at any instant, it leaves out_dir
    either the whole old index or the whole new one.
    """
    out_dir = Path(out_dir)
    if index.ntotal != metadata.bank_size or index.d != metadata.embedding_dim:
        raise IndexStoreError(f"index ({index.ntotal} x {index.d}) does not match its metadata; this is a bug")
    if lock is not None and (not lock.held or lock.out_dir != out_dir.parent.resolve() / out_dir.name):
        raise IndexStoreError(f"the writer lock given is not held for {out_dir}; this is a bug")
    try:
        with contextlib.nullcontext(lock) if lock is not None else WriterLock(out_dir):
            clean_stale(out_dir)
            if out_dir.exists() and not force:
                raise IndexStoreError(f"{out_dir} already exists; pass --force to replace it, or choose another --out")
            return _write_and_swap(out_dir, index, metadata)
    except OSError as exc:
        raise IndexStoreError(
            f"cannot write {out_dir} ({exc.strerror or exc}); free some space, fix the folder's permissions or "
            "choose another --out (an existing index there is unchanged)"
        ) from exc


def _write_and_swap(out_dir: Path, index: faiss.Index, metadata: IndexMetadata) -> IndexMetadata:
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
        metadata = dataclasses.replace(metadata, index_sha256=sha256_file(tmp / INDEX_FILE))
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
    knn.configure_search(index, metadata.config.index)
    return metadata, index


def load(index_dir: Path, device: str | torch.device = "cpu") -> IndexBundle:
    """Load an index folder and rebuild its detector from the config stored in the metadata."""
    metadata, index = load_index(index_dir)
    embedder = PatchEmbedder(metadata.config, device)
    if embedder.dim != metadata.embedding_dim or embedder.grid != metadata.grid:
        raise IndexStoreError(
            f"{metadata.config.backbone} now gives {embedder.dim}-d embeddings on a {embedder.grid} grid, but the "
            f"index was built with {metadata.embedding_dim}-d on {metadata.grid}; the backbone code or weights "
            "changed: rebuild the index with patchcore-build-index --force"
        )
    return IndexBundle(Path(index_dir), metadata, Detector(metadata.config, embedder, index, metadata.calibration))
