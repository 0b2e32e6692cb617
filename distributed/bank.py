"""The driver's side of a build on a cluster: the memory bank from per-image candidates, pure numpy.

Workers send, for each image, the patches it keeps (all of them, or the first `candidates` picks of a greedy over
that image's patches alone: a composable k-center coreset, Indyk et al. PODS 2014). They arrive in image order and
go through exactly the steps of index_store.build._stream_coreset, counted in the images' full patch counts: batches
of batch_size readable images, a chunk closed when the next batch no longer fits behind the bank, then the same
seeded greedy continuation (index_store.build.greedy_continuation) adds coreset_ratio x the chunk's patches. With
every patch kept the picks are the local builder's, pick for pick; with fewer, the driver's greedy sees fewer rows
(oversample x ratio of them) and the bank covers the patches almost as well (tests/distributed measure it).
"""

from __future__ import annotations

import math
import time

import numpy as np

from index_store.build import MIN_BANK, buffer_rows, chunk_picks, greedy_continuation
from model.config import PatchCoreConfig
from model.coreset import greedy_coreset


def reduce_image(rows: np.ndarray, candidates: int, config: PatchCoreConfig) -> np.ndarray:
    """One image's patch embeddings (P, D) -> the (candidates, D) it sends to the driver: all of them when
    candidates >= P, else the first picks of a seeded greedy over them, in selection order."""
    if candidates >= rows.shape[0]:
        return rows
    picked = greedy_coreset(rows, candidates, projection_dim=config.projection_dim, seed=config.seed)
    return rows[picked]


class ChunkedBank:
    """Collects per-image candidates in image order and extends the memory bank chunk by chunk.

    total: patches of every training image (n_images x per_image), as the local builder counts them;
    chunk: its buffer's chunk rows. sequential=False (everything fits one chunk): the candidates of every image are
    kept and one greedy runs at the end, over all of them, as in a single-pass build."""

    def __init__(self, config: PatchCoreConfig, total: int, per_image: int, dim: int, chunk: int, k_max: int,
                 batch_size: int, candidates: int) -> None:
        self.config, self.per_image, self.candidates, self.batch_size = config, per_image, candidates, batch_size
        self.sequential = total > chunk
        self.capacity = buffer_rows(total, chunk, k_max) if self.sequential else total
        bank_rows = k_max + math.ceil(total / chunk) if self.sequential else 0
        images_per_chunk = self.capacity // per_image + batch_size  # pending images never exceed this
        self.bank = np.empty((bank_rows, dim), dtype=np.float32)
        self.bank_owner = np.empty(bank_rows, dtype=np.int32)
        self.pending = np.empty((images_per_chunk * candidates, dim), dtype=np.float32)  # preallocated, never grown
        self.pending_owner = np.empty(images_per_chunk * candidates, dtype=np.int32)
        self.banked = self.n_pending = self.pending_patches = self.n_seen = self.n_chunks = 0
        self.batch: list[tuple[int, np.ndarray]] = []
        self.coreset_seconds = 0.0
        self.n_images = 0

    def add(self, rows: np.ndarray) -> int:
        """The candidates (candidates, D) of the next readable image -> its image id (0, 1, ... in arrival order)."""
        image_id = self.n_images
        self.n_images += 1
        self.batch.append((image_id, rows))
        if len(self.batch) == self.batch_size:
            self._add_batch()
        return image_id

    def finish(self) -> tuple[np.ndarray, np.ndarray, int, str]:
        """-> (bank (M, D), owner image id of each (M,), patches seen, coreset method)."""
        if self.batch:
            self._add_batch()
        if self.sequential:
            if self.pending_patches:
                self._extend()
            return (self.bank[: self.banked].copy(), self.bank_owner[: self.banked].copy(), self.n_seen,
                    f"sequential(chunks={self.n_chunks})")
        t = time.perf_counter()
        rows = self.pending[: self.n_pending]
        k = min(rows.shape[0], max(MIN_BANK, int(round(self.config.coreset_ratio * self.n_seen))))
        picked = greedy_coreset(rows, k, projection_dim=self.config.projection_dim, seed=self.config.seed)
        self.coreset_seconds += time.perf_counter() - t
        return rows[picked].copy(), self.pending_owner[picked].copy(), self.n_seen, "single-pass"

    def all_rows(self) -> np.ndarray:
        """Single pass with every patch kept: all training patches, image by image (leave-one-out calibration)."""
        if self.sequential or self.candidates != self.per_image:
            raise ValueError("all rows are only kept by a single-pass build that keeps every patch")
        return self.pending[: self.n_pending]

    def _add_batch(self) -> None:
        patches = len(self.batch) * self.per_image
        if self.sequential and self.banked + self.pending_patches + patches > self.capacity:
            self._extend()
        for image_id, rows in self.batch:
            self.pending[self.n_pending : self.n_pending + rows.shape[0]] = rows
            self.pending_owner[self.n_pending : self.n_pending + rows.shape[0]] = image_id
            self.n_pending += rows.shape[0]
        self.pending_patches += patches
        self.n_seen += patches
        self.batch = []

    def _extend(self) -> None:
        """The chunk's candidates join the bank by the seeded greedy continuation; k counts the chunk's patches."""
        t = time.perf_counter()
        new = self.pending[: self.n_pending]
        picked = greedy_continuation(new, self.bank[: self.banked], chunk_picks(self.pending_patches, self.config),
                                     self.config)
        self.bank[self.banked : self.banked + picked.size] = new[picked]
        self.bank_owner[self.banked : self.banked + picked.size] = self.pending_owner[: self.n_pending][picked]
        self.banked += picked.size
        self.n_pending = self.pending_patches = 0
        self.n_chunks += 1
        self.coreset_seconds += time.perf_counter() - t
