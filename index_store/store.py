"""Save and load a memory bank: DIR/index.faiss (faiss.write_index) + DIR/metadata.json. No pickle.

Saving is atomic: everything is written into a temporary sibling folder, which then replaces DIR with os.replace,
so a crashed build never leaves a half-written index, and an old index stays intact until the new one is complete.
Loading checks the schema version, the sha256 of index.faiss, its dimension and vector count, and says how to fix
each problem.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import torch

from index_store.metadata import IndexMetadata, MetadataError
from index_store.weights import sha256_file  # weights.py stays standalone: the Docker build runs it alone
from model import knn
from model.detector import Detector
from model.errors import PatchCoreError
from model.features import PatchEmbedder

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"


class IndexStoreError(PatchCoreError):
    """An index folder cannot be written or read; the message says how to fix it."""


@dataclass(frozen=True)
class IndexBundle:
    """A loaded index: the detector that predicts with it and the metadata it was built with."""

    path: Path
    metadata: IndexMetadata
    detector: Detector


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save(out_dir: Path, index: faiss.Index, metadata: IndexMetadata, force: bool = False) -> IndexMetadata:
    """Write the index and its metadata atomically; returns the metadata as written (with the index sha256)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise IndexStoreError(f"{out_dir} already exists; pass --force to replace it, or choose another --out")
    if index.ntotal != metadata.bank_size or index.d != metadata.embedding_dim:
        raise IndexStoreError(f"index ({index.ntotal} x {index.d}) does not match its metadata; this is a bug")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        _fsync_file(tmp / INDEX_FILE)
        metadata = dataclasses.replace(metadata, index_sha256=sha256_file(tmp / INDEX_FILE))
        (tmp / METADATA_FILE).write_text(metadata.to_json() + "\n")
        _fsync_file(tmp / METADATA_FILE)
        if out_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, backup / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def read_metadata(index_dir: Path) -> IndexMetadata:
    index_dir = Path(index_dir)
    path = index_dir / METADATA_FILE
    if not index_dir.is_dir():
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
