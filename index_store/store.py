"""Save and load a memory bank: DIR/index.faiss (faiss.write_index) + DIR/metadata.json, and the sidecars
DIR/bank_image_ids.npy (int32, the source image of each bank vector; np.save, no pickle) and DIR/images.tsv (one
"relative path<TAB>sha256" line per bank image, its line number being its id). No pickle anywhere.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

from index_store.metadata import IndexMetadata, MetadataError
from index_store.weights import sha256_file  # weights.py stays standalone: the Docker build runs it alone
from model import knn
from model.detector import Detector
from model.errors import PatchCoreError
from model.features import PatchEmbedder

if TYPE_CHECKING:
    from index_store.build import BuildResult

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"
BANK_IDS_FILE = "bank_image_ids.npy"
IMAGES_FILE = "images.tsv"


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


def save(out_dir: Path, index: faiss.Index, metadata: IndexMetadata, force: bool = False, *,
         bank_image_ids: np.ndarray | None = None, images: Sequence[tuple[str, str]] | None = None) -> IndexMetadata:
    """Write the index, its sidecars (when given) and its metadata atomically; returns the metadata as written
    (with the sha256 of every file)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise IndexStoreError(f"{out_dir} already exists; pass --force to replace it, or choose another --out")
    if index.ntotal != metadata.bank_size or index.d != metadata.embedding_dim:
        raise IndexStoreError(f"index ({index.ntotal} x {index.d}) does not match its metadata; this is a bug")
    if bank_image_ids is not None and len(bank_image_ids) != index.ntotal:
        raise IndexStoreError(f"{len(bank_image_ids)} bank image ids for {index.ntotal} vectors; this is a bug")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        sidecars = {}
        if bank_image_ids is not None:
            np.save(tmp / BANK_IDS_FILE, np.ascontiguousarray(bank_image_ids, dtype=np.int32), allow_pickle=False)
        if images is not None:
            (tmp / IMAGES_FILE).write_text("".join(f"{path}\t{digest}\n" for path, digest in images))
        for name in (INDEX_FILE, BANK_IDS_FILE, IMAGES_FILE):
            if (tmp / name).exists():
                _fsync_file(tmp / name)
                if name != INDEX_FILE:
                    sidecars[name] = sha256_file(tmp / name)
        metadata = dataclasses.replace(metadata, index_sha256=sha256_file(tmp / INDEX_FILE), sidecars=sidecars)
        (tmp / METADATA_FILE).write_text(metadata.to_json() + "\n")
        _fsync_file(tmp / METADATA_FILE)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def save_result(out_dir: Path, result: BuildResult, force: bool = False) -> IndexMetadata:
    """Save what build_index returned: index, metadata and both sidecars."""
    return save(out_dir, result.index, result.metadata, force, bank_image_ids=result.bank_image_ids,
                images=result.images)


def write_metadata(index_dir: Path, metadata: IndexMetadata) -> None:
    """Replace metadata.json of an existing index folder atomically (e.g. a new threshold); the rest is unchanged."""
    index_dir = Path(index_dir)
    tmp = index_dir / f".{METADATA_FILE}.tmp"
    tmp.write_text(metadata.to_json() + "\n")
    _fsync_file(tmp)
    os.replace(tmp, index_dir / METADATA_FILE)


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


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, backup / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


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
    for name, expected in metadata.sidecars.items():
        if not (index_dir / name).is_file() or sha256_file(index_dir / name) != expected:
            raise IndexStoreError(f"{index_dir / name} is missing or corrupt (sha256 differs from metadata.json); "
                                  f"{rebuild}")
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
