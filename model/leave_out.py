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

# Above this many bank vectors, the training patches' neighbour lists come from an IVF-Flat search of the bank
# (knn.approximate_index; the farthest 1 % of the patches searched again exactly): on screw
# (2,048 vectors, 205 k patches) it finds the exact nearest vector of 99.6 % of the patches at a tenth of a flat
# search's cost. A miss can only overstate a distance (a higher, more cautious threshold).
EXACT_ASSIGNMENT_MAX_BANK = 1000
FAR_FRACTION = 0.01  # of the training patches, the farthest from the bank: searched exactly (the coverage radius)
NEIGHBOURS = 8  # bank neighbours kept per training patch
# k-means iterations of that IVF's cells (FAISS's default: 10). Screw at 10 % (20,480 vectors, 525 cells): training
# 2.8 s -> 0.9 s, nearest vector found for 99.98 % of the patches either way.
IVF_TRAIN_ITERATIONS = 4


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
        # Every row's NEIGHBOURS nearest bank vectors (N, K), searched once: the nearest one that a left-out image
        # does not own is almost always among them. The coverage radius of the whole bank, squared.
        self.knn_sq, self.knn_ids = nearest_bank_vectors(index, self.bank, rows, seed, k=min(NEIGHBOURS, index.ntotal))
        self.nearest = self.knn_ids[:, 0]
        self.radius_sq = float(self.knn_sq[:, 0].max())

    def nearest_foreign(self, rows: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(squared distance, id) of the nearest bank vector to each of rows (r,) that excluded (r,) does not own:
        from the stored neighbour lists, and a search of the bank for the rows whose list holds none."""
        ids = self.knn_ids[rows]  # (r, K)
        foreign = (ids >= 0) & (self.bank_owners[np.maximum(ids, 0)] != excluded[:, None])
        first = np.argmax(foreign, axis=1)  # first foreign column (0 where there is none: fixed below)
        sq = self.knn_sq[rows, first].astype(np.float32)
        out = ids[np.arange(ids.shape[0]), first].astype(np.int64)
        missing = np.flatnonzero(~foreign.any(axis=1))
        if missing.size:
            s, i = knn.search_excluding(self.index, self.rows[rows[missing]], excluded[missing], self.bank_owners, k=1)
            sq[missing], out[missing] = s[:, 0], i[:, 0]
        return sq, out

    def _foreign_to_own_rows(self, rows: slice, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """nearest_foreign for the training rows of image_id (rows = rows_of(image_id))."""
        idx = np.arange(rows.start, rows.stop)
        return self.nearest_foreign(idx, np.full(idx.size, image_id))

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
        cand_sq = self.nearest_foreign(cand, hole_of[cand])[0].astype(np.float64)
        n_own = np.bincount(self.bank_owners, minlength=int(image_ids.max(initial=0)) + 1)
        out = {}
        for image_id in image_ids:
            lo, hi = np.searchsorted(hole_of[cand], [image_id, image_id + 1])
            picked = _greedy_refill(self.rows[cand[lo:hi]], cand_sq[lo:hi], int(n_own[image_id]), self.radius_sq)
            out[int(image_id)] = knn.as_f32(self.rows[cand[lo:hi][picked]])
        return out

    def neighbours(self, queries: np.ndarray, image_id: int, refill: np.ndarray, k: int = 1,
                   rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each query's k nearest vectors in (bank minus image_id's vectors) + refill:
        (squared distances (n, k) float64, vectors (n, k, D) float32). With `rows` (k = 1 only), the queries are
        those training rows, and their stored neighbour lists spare the search."""
        queries = knn.as_f32(queries)
        n = queries.shape[0]
        if rows is not None and k == 1:
            sq, ids = self._foreign_to_own_rows(rows, image_id)
            sq, ids = sq[:, None], ids[:, None]
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
        if not reweight_neighbors:  # s* only: the distances, without gathering the neighbours
            sq = self._foreign_to_own_rows(rows, image_id)[0].astype(np.float64)
            if refill.shape[0]:
                sq = np.minimum(sq, _sq_dists(patches, refill).min(axis=1))
            return float(np.sqrt(max(sq.max(), 0.0)))
        sq, nearest = self.neighbours(patches, image_id, refill, k=1, rows=rows)
        scores = np.sqrt(np.maximum(sq[:, 0], 0.0))
        worst = int(np.argmax(scores))
        s_star = float(scores[worst])
        _, support = self.neighbours(nearest[worst], image_id, refill, k=reweight_neighbors)  # N_b(m*)
        dists = np.linalg.norm(support[0].astype(np.float64) - patches[worst], axis=1)
        return scoring.reweight(s_star, dists[np.isfinite(dists)])

    def image_scores(self, image_ids: np.ndarray, reweight_neighbors: int | None) -> np.ndarray:
        """(n,) leave-one-out image scores of the training images image_ids."""
        fills = self.refills(image_ids)
        return np.array([self.image_score(int(i), fills[int(i)], reweight_neighbors) for i in image_ids])


def nearest_bank_vectors(index: faiss.Index, bank: np.ndarray, rows: np.ndarray, seed: int, k: int = 1,
                         batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) rows -> (squared distances (N, k) float32, ids (N, k) int32) of each row's k nearest bank vectors.

    Exact up to EXACT_ASSIGNMENT_MAX_BANK bank vectors; beyond, from a temporary IVF-Flat over the bank, whose
    distance is exact to the vector it finds (a missed nearest one can only overstate the distance)."""
    search_index = index
    if bank.shape[0] > EXACT_ASSIGNMENT_MAX_BANK:
        search_index = knn.approximate_index(bank, seed, train_iterations=IVF_TRAIN_ITERATIONS)
    sq = np.empty((rows.shape[0], k), np.float32)
    ids = np.empty((rows.shape[0], k), np.int32)
    for lo in range(0, rows.shape[0], batch):
        sq[lo: lo + batch], ids[lo: lo + batch] = knn.search(search_index, rows[lo: lo + batch], k=k)
    if search_index is not index:
        # The farthest rows set the coverage radius (where the hole refill stops): search them exactly, so that a
        # missed neighbour cannot inflate it. A row left out of this has an IVF distance, hence an exact one, below
        # every row searched here.
        n_far = max(1, int(FAR_FRACTION * rows.shape[0]))
        far = np.argpartition(sq[:, 0], rows.shape[0] - n_far)[-n_far:]
        exact = faiss.IndexFlatL2(bank.shape[1])
        exact.add(bank)
        sq[far], ids[far] = knn.search(exact, rows[far], k=k)
    return sq, ids


def _greedy_refill(points: np.ndarray, dist: np.ndarray, n_max: int, radius_sq: float) -> list[int]:
    """Greedy k-center continuation on `points` (c, D) with running squared distances `dist` (c,): up to n_max picks,
    stopping once the farthest point is within radius_sq."""
    points, dist = points.astype(np.float64), dist.copy()
    norms = np.einsum("ij,ij->i", points, points)
    picked: list[int] = []
    while len(picked) < n_max and dist.size:
        j = int(np.argmax(dist))
        if dist[j] <= radius_sq:
            break
        picked.append(j)
        # |p - q|^2 = |p|^2 - 2 p.q + |q|^2: one matrix-vector product per pick, no (c, D) temporary
        np.minimum(dist, np.maximum(norms - 2.0 * (points @ points[j]) + norms[j], 0.0), out=dist)
    return picked


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, D), (r, D) -> (n, r) float64 squared distances (float32 products, as FAISS computes them)."""
    a32, b32 = knn.as_f32(a), knn.as_f32(b)
    d = (a32 * a32).sum(1)[:, None] - 2.0 * (a32 @ b32.T) + (b32 * b32).sum(1)[None, :]
    return np.maximum(d, 0.0).astype(np.float64)
