"""The driver's side of a build on a cluster, and the workers' filter: pure numpy + FAISS, no Ray.

The local builder extends the memory bank chunk by chunk with a greedy seeded by each new patch's distance to the
bank so far (index_store.build). The greedy only ever picks a patch that is the farthest one left, so a patch whose
distance to the bank is at most the chunk's final coverage radius r_c is never picked (short of an exact tie) and
never decides the radius. Workers therefore send only the patches farther than tau from the bank as they last saw
it: a bank only grows, so a patch within tau of an older bank is within tau of the current one, and the driver's
greedy over the patches it receives makes the local builder's picks whenever tau <= r_c. tau is `margin` x the
previous chunk's radius (chunk radii change slowly); after each chunk the driver checks tau <= r_c and records the
chunks for which it holds ("exact" chunks). The first chunk, and single-pass builds, keep every patch: there is no
bank yet.

ChunkedBank replays index_store.build._stream_coreset's steps, counted in full patches: batches of batch_size
readable images, a chunk closed when the next batch no longer fits behind the bank, then the same seeded greedy
continuation (index_store.build.greedy_continuation) adds coreset_ratio x the chunk's patches.
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np

from index_store.build import MIN_BANK, buffer_rows, chunk_picks, greedy_continuation
from model.config import PatchCoreConfig
from model.coreset import EXACT_SEARCH_MAX_CENTRES, nearest_sq_distances
from model.coreset_bounded import select_coreset

EXACT_MAX_BANK = EXACT_SEARCH_MAX_CENTRES  # as model.coreset.nearest_sq_distances: flat up to here, IVF-Flat beyond


class BankFilter:
    """The workers' side: which of an image's patches are farther than tau from a (possibly older) bank.

    Distances come from a flat index up to 4,096 vectors, an IVF-Flat one beyond (a missed nearest vector only
    makes a distance larger, so a patch is only ever kept by mistake, never dropped). Built once per bank version."""

    def __init__(self, bank: np.ndarray, tau_sq: float, seed: int) -> None:
        self.tau_sq = float(tau_sq)
        self.index = None
        if bank.shape[0] and self.tau_sq > 0:
            bank = np.ascontiguousarray(bank, dtype=np.float32)
            quantizer = faiss.IndexFlatL2(bank.shape[1])
            if bank.shape[0] <= EXACT_MAX_BANK:
                self.index = quantizer
            else:
                nlist = int(min(4 * np.sqrt(bank.shape[0]), bank.shape[0] // 39))
                self.index = faiss.IndexIVFFlat(quantizer, bank.shape[1], nlist)
                self.index.cp.seed = seed
                self.index.train(bank)
                self.index.nprobe = 16
                self._quantizer = quantizer  # the IVF index does not own it
            self.index.add(bank)

    def keep(self, rows: np.ndarray) -> np.ndarray:
        """(P, D) -> (P,) bool: the patches the driver's greedy may still pick."""
        if self.index is None:
            return np.ones(rows.shape[0], dtype=bool)
        sq, _ = self.index.search(np.ascontiguousarray(rows, dtype=np.float32), 1)
        return sq[:, 0] > self.tau_sq


class ChunkedBank:
    """Collects each readable image's kept patches in image order and extends the memory bank chunk by chunk.

    total: patches of every training image (n_images x per_image), as the local builder counts them; chunk: its
    buffer's chunk rows. Everything fitting one chunk: one greedy at the end over every patch (single pass)."""

    def __init__(self, config: PatchCoreConfig, total: int, per_image: int, dim: int, chunk: int, k_max: int,
                 batch_size: int, margin: float) -> None:
        self.config, self.per_image, self.batch_size, self.margin = config, per_image, batch_size, margin
        self.sequential = total > chunk
        self.capacity = buffer_rows(total, chunk, k_max) if self.sequential else total
        bank_rows = k_max + math.ceil(total / chunk) if self.sequential else 0
        pending_rows = self.capacity + batch_size * per_image if self.sequential else total  # never grown
        self.bank = np.empty((bank_rows, dim), dtype=np.float32)
        self.bank_owner = np.empty(bank_rows, dtype=np.int32)
        self.pending = np.empty((pending_rows, dim), dtype=np.float32)
        self.pending_owner = np.empty(pending_rows, dtype=np.int32)
        self.banked = self.n_pending = self.pending_patches = self.n_seen = self.n_chunks = self.n_images = 0
        self.n_received = 0  # patches the workers sent
        self.exact_chunks = 0  # chunks whose dropped patches provably could not change the picks
        self.pending_tau_sq = 0.0  # the largest tau the pending patches were filtered with
        self.tau_sq = 0.0  # what workers filter with now (0: keep everything)
        self.version = 0  # bumped each time the bank grows
        self.batch: list[tuple[int, np.ndarray, float]] = []
        self.coreset_seconds = 0.0

    def add(self, rows: np.ndarray, tau_sq: float = 0.0) -> int:
        """The kept patches (r, D) of the next readable image, filtered with tau_sq (0: all of them kept) -> its
        image id (0, 1, ... in arrival order)."""
        if tau_sq > 0 and not self.sequential:
            raise ValueError("a single-pass build needs every patch: workers must not filter")
        image_id = self.n_images
        self.n_images += 1
        self.batch.append((image_id, rows, float(tau_sq)))
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
        picked = select_coreset(rows, k, mode=self.config.coreset_mode, projection_dim=self.config.projection_dim,
                                seed=self.config.seed)
        self.coreset_seconds += time.perf_counter() - t
        return rows[picked].copy(), self.pending_owner[picked].copy(), self.n_seen, "single-pass"

    def all_rows(self) -> np.ndarray:
        """Single pass: every training patch, image by image (leave-one-image-out calibration needs them)."""
        if self.sequential:
            raise ValueError("only a single-pass build keeps every patch")
        return self.pending[: self.n_pending]

    def current(self) -> tuple[int, float, np.ndarray]:
        """(version, tau squared, bank) for the workers' BankFilter."""
        return self.version, self.tau_sq, self.bank[: self.banked]

    def _add_batch(self) -> None:
        patches = len(self.batch) * self.per_image
        if self.sequential and self.banked + self.pending_patches + patches > self.capacity:
            self._extend()
        for image_id, rows, tau_sq in self.batch:
            self.pending[self.n_pending : self.n_pending + rows.shape[0]] = rows
            self.pending_owner[self.n_pending : self.n_pending + rows.shape[0]] = image_id
            self.n_pending += rows.shape[0]
            self.n_received += rows.shape[0]
            self.pending_tau_sq = max(self.pending_tau_sq, tau_sq)
        self.pending_patches += patches
        self.n_seen += patches
        self.batch = []

    def _extend(self) -> None:
        """The chunk's patches join the bank by the seeded greedy continuation; k counts the chunk's full patches."""
        t = time.perf_counter()
        new = self.pending[: self.n_pending]
        k = chunk_picks(self.pending_patches, self.config)
        picked = (greedy_continuation(new, self.bank[: self.banked], k, self.config) if new.shape[0]
                  else np.empty(0, dtype=np.int64))  # every patch dropped: a margin past the radius
        self.bank[self.banked : self.banked + picked.size] = new[picked]
        self.bank_owner[self.banked : self.banked + picked.size] = self.pending_owner[: self.n_pending][picked]
        self.banked += picked.size
        # r_c: the chunk's coverage radius, from the patches received (the dropped ones lie within tau of the bank)
        r_sq = float(nearest_sq_distances(new, self.bank[: self.banked], projection_dim=self.config.projection_dim,
                                          seed=self.config.seed).max()) if new.shape[0] else 0.0
        if self.pending_tau_sq == 0 or (self.pending_tau_sq <= r_sq and new.shape[0] >= k):
            self.exact_chunks += 1
        projected = self.config.projection_dim is not None and self.config.projection_dim < new.shape[1]
        self.tau_sq = 0.0 if projected else (self.margin ** 2) * r_sq  # workers measure unprojected distances
        self.version += 1
        self.n_pending = self.pending_patches = 0
        self.pending_tau_sq = 0.0
        self.n_chunks += 1
        self.coreset_seconds += time.perf_counter() - t
