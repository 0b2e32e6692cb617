"""Leave-one-image-out image scores: every good training image scored as an unseen good image would be.

The threshold needs the scores of good images the memory bank has never seen. Holding images out of the bank
costs accuracy on the small sets factories start with (30-60 pictures), so every image goes into the bank and each
calibration image i is scored against the bank *as it would have been without image i*:

1. Image i's own bank vectors C_i are left out (its patches must not find themselves).
2. Leaving them out opens holes: the greedy coreset did not pick other images' patches near C_i because C_i
   already covered them; without image i it would have picked some of them instead. So the holes are refilled the
   way the greedy fills them: among the other images' patches whose nearest bank vector was in C_i, repeatedly take
   the one farthest from the bank (without C_i) and from the refills so far, |C_i| times at most, and stop once the
   farthest is no farther than the coverage radius of the whole bank.

Step 1 alone scores training images 0.1-0.2 (patch-score units) above the unseen good images of the same product;
steps 1 + 2 land within about 0.05, as close as a 5-fold rebuild of the coreset at a fraction of its cost
(bench/experiment_calibration.py measures them against the test sets' good images).

Arrays in, arrays out; searches go through model.knn.
"""

from __future__ import annotations

import faiss
import numpy as np

from model import knn, scoring
from model.errors import ConfigError

EXACT_ASSIGNMENT_MAX_BANK = 4096  # above: nearest bank vectors from an IVF-Flat search (a miss only overstates)


class LeaveOneOut:
    """The memory bank (its index and its vectors, with the source image of each) and every training patch the
    coreset chose from, with theirs; scores training images as if each had been left out of the build.

    rows (N, D) hold the training patches image by image: row_owners (N,) must be non-decreasing."""

    def __init__(self, index: faiss.Index, bank: np.ndarray, bank_owners: np.ndarray, rows: np.ndarray,
                 row_owners: np.ndarray, seed: int = 0) -> None:
        self.index, self.bank = index, knn.as_f32(bank)
        self.bank_owners = np.asarray(bank_owners).ravel()
        self.rows, self.row_owners = rows, np.asarray(row_owners).ravel()
        if self.bank.shape[0] != index.ntotal or self.bank_owners.size != index.ntotal:
            raise ConfigError(f"bank ({self.bank.shape[0]} vectors, {self.bank_owners.size} owners) does not match "
                              f"its index ({index.ntotal})")
        if self.row_owners.size != rows.shape[0] or np.any(np.diff(self.row_owners) < 0):
            raise ConfigError(f"need one owner per row ({rows.shape[0]} rows, {self.row_owners.size} owners), "
                              "grouped image by image")
        # Every row's nearest bank vector (N,), and the coverage radius of the whole bank, squared.
        self.nearest_sq, self.nearest = nearest_bank_vectors(index, self.bank, rows, seed)
        self.radius_sq = float(self.nearest_sq.max())

    def rows_of(self, image_id: int) -> slice:
        lo, hi = np.searchsorted(self.row_owners, [image_id, image_id + 1])
        return slice(int(lo), int(hi))

    def refills(self, image_ids: np.ndarray) -> dict[int, np.ndarray]:
        """image id -> (r, D) float32 hole refills (step 2 of the module docstring), for each of image_ids."""
        image_ids = np.asarray(image_ids, dtype=np.int64).ravel()
        hole_of = self.bank_owners[self.nearest]  # (N,) whose bank vector covers each row
        cand = np.flatnonzero(np.isin(hole_of, image_ids) & (hole_of != self.row_owners))
        cand = cand[np.argsort(hole_of[cand], kind="stable")]  # grouped by hole owner
        # (c,) distance of each candidate to the bank without its hole owner's vectors
        cand_sq, _ = knn.search_excluding(self.index, self.rows[cand], hole_of[cand], self.bank_owners, k=1)
        cand_sq = cand_sq[:, 0].astype(np.float64)
        n_own = np.bincount(self.bank_owners, minlength=int(image_ids.max(initial=0)) + 1)
        out = {}
        for image_id in image_ids:
            lo, hi = np.searchsorted(hole_of[cand], [image_id, image_id + 1])
            picked = _greedy_refill(self.rows[cand[lo:hi]], cand_sq[lo:hi], int(n_own[image_id]), self.radius_sq)
            out[int(image_id)] = knn.as_f32(self.rows[cand[lo:hi][picked]])
        return out

    def neighbours(self, queries: np.ndarray, image_id: int, refill: np.ndarray, k: int = 1,
                   known: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each query's k nearest vectors in (bank minus image_id's vectors) + refill:
        (squared distances (n, k) float64, vectors (n, k, D) float32). `known` = (sq, ids) of each query's nearest
        bank vector (k = 1 only): queries whose nearest is not image_id's own need no new search."""
        queries = knn.as_f32(queries)
        n = queries.shape[0]
        if known is not None and k == 1:
            sq, ids = known[0][:, None].astype(np.float32), known[1][:, None].copy()
            redo = np.flatnonzero(self.bank_owners[ids[:, 0]] == image_id)
            if redo.size:
                sq[redo], ids[redo] = knn.search_excluding(self.index, queries[redo], np.full(redo.size, image_id),
                                                           self.bank_owners, k=1)
        else:
            sq, ids = knn.search_excluding(self.index, queries, np.full(n, image_id), self.bank_owners, k=k)
        vectors = self.bank[np.maximum(ids, 0)]  # (n, k, D)
        sq = np.where(ids >= 0, sq, np.inf).astype(np.float64)
        if refill.shape[0]:
            sq = np.concatenate([sq, _sq_dists(queries, refill)], axis=1)  # (n, k + r)
            vectors = np.concatenate([vectors, np.broadcast_to(refill, (n, *refill.shape))], axis=1)
            top = np.argsort(sq, axis=1, kind="stable")[:, :k]
            sq, vectors = np.take_along_axis(sq, top, axis=1), np.take_along_axis(vectors, top[:, :, None], axis=1)
        return sq, vectors

    def image_score(self, image_id: int, refill: np.ndarray, reweight_neighbors: int | None) -> float:
        """Leave-one-out image score of training image image_id: s* (eq. 6), or eq. 7 re-weighted over
        reweight_neighbors neighbours when that is set."""
        rows = self.rows_of(image_id)
        patches = self.rows[rows]  # (h*w, D)
        sq, nearest = self.neighbours(patches, image_id, refill, k=1,
                                      known=(self.nearest_sq[rows], self.nearest[rows]))
        scores = np.sqrt(np.maximum(sq[:, 0], 0.0))
        worst = int(np.argmax(scores))
        s_star = float(scores[worst])
        if not reweight_neighbors:
            return s_star
        _, support = self.neighbours(nearest[worst], image_id, refill, k=reweight_neighbors)  # N_b(m*)
        dists = np.linalg.norm(support[0].astype(np.float64) - patches[worst], axis=1)
        return scoring.reweight(s_star, dists[np.isfinite(dists)])

    def image_scores(self, image_ids: np.ndarray, reweight_neighbors: int | None) -> np.ndarray:
        """(n,) leave-one-out image scores of the training images image_ids."""
        fills = self.refills(image_ids)
        return np.array([self.image_score(int(i), fills[int(i)], reweight_neighbors) for i in image_ids])


def nearest_bank_vectors(index: faiss.Index, bank: np.ndarray, rows: np.ndarray, seed: int, nprobe: int = 16,
                         batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) rows -> (squared distance (N,) float32, id (N,) int64) of each row's nearest bank vector.

    Exact up to EXACT_ASSIGNMENT_MAX_BANK bank vectors; beyond, from a temporary IVF-Flat over the bank, whose
    distance is exact to the vector it finds (a missed nearest one can only overstate the distance)."""
    search_index = index
    if bank.shape[0] > EXACT_ASSIGNMENT_MAX_BANK:
        d = bank.shape[1]
        nlist = int(min(4 * np.sqrt(bank.shape[0]), bank.shape[0] // knn.MIN_POINTS_PER_CELL))
        search_index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        search_index.cp.seed = seed
        search_index.train(bank)
        search_index.add(bank)
        search_index.nprobe = nprobe
    sq = np.empty(rows.shape[0], np.float32)
    ids = np.empty(rows.shape[0], np.int64)
    for lo in range(0, rows.shape[0], batch):
        s, i = knn.search(search_index, rows[lo: lo + batch], k=1)
        sq[lo: lo + batch], ids[lo: lo + batch] = s[:, 0], i[:, 0]
    return sq, ids


def _greedy_refill(points: np.ndarray, dist: np.ndarray, n_max: int, radius_sq: float) -> list[int]:
    """Greedy k-center continuation on `points` (c, D) with running squared distances `dist` (c,): up to n_max picks,
    stopping once the farthest point is within radius_sq."""
    points, dist = points.astype(np.float64), dist.copy()
    picked: list[int] = []
    while len(picked) < n_max and dist.size:
        j = int(np.argmax(dist))
        if dist[j] <= radius_sq:
            break
        picked.append(j)
        dist = np.minimum(dist, ((points - points[j]) ** 2).sum(axis=1))
    return picked


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, D), (r, D) -> (n, r) float64 squared distances."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a64 ** 2).sum(1)[:, None] - 2.0 * a64 @ b64.T + (b64 ** 2).sum(1)[None, :], 0.0)
