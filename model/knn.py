"""The thin FAISS wrapper: float32 contiguous in, batched search, squared L2 distances out.

Every index type here (IndexFlatL2, IndexIVFFlat, IndexHNSWFlat, IndexIVFPQ) uses the L2 metric and returns
**squared** L2 distances; callers take the square root for PatchCore's patch scores.
"""

from __future__ import annotations

import faiss
import numpy as np

from model.config import IndexConfig
from model.errors import ConfigError

# FAISS warns below 39 training points per IVF cell; we size nlist so that never happens.
MIN_POINTS_PER_CELL = 39
SEARCH_BATCH = 16384


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def effective_nlist(config: IndexConfig, n_bank: int) -> int:
    return max(1, min(config.nlist, n_bank // MIN_POINTS_PER_CELL))


def build_index(bank: np.ndarray, config: IndexConfig, seed: int) -> faiss.Index:
    """Train (where needed) and fill an index with the memory bank (M, D)."""
    bank = as_f32(bank)
    n, dim = bank.shape
    if config.kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m)
        index.hnsw.efConstruction = config.ef_construction
    else:
        nlist = effective_nlist(config, n)
        quantizer = faiss.IndexFlatL2(dim)
        if config.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        else:
            if dim % config.pq_m:
                raise ConfigError(f"index.pq_m={config.pq_m} must divide the embedding dimension {dim}")
            if n < MIN_POINTS_PER_CELL * (1 << config.pq_nbits):
                raise ConfigError(
                    f"ivf_pq with pq_nbits={config.pq_nbits} needs >= {MIN_POINTS_PER_CELL << config.pq_nbits} bank "
                    f"vectors to train, got {n}; lower pq_nbits or use flat/ivf_flat"
                )
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_m, config.pq_nbits)
        index.cp.seed = seed  # seeded k-means: the same bank gives the same index
        index.train(bank)
    index.add(bank)
    configure_search(index, config)
    return index


def configure_search(index: faiss.Index, config: IndexConfig) -> None:
    """Set the search-time parameters, which the config (not the index file) is the source of truth for."""
    if config.kind in ("ivf_flat", "ivf_pq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(config.nprobe, ivf.nlist)
    elif config.kind == "hnsw":
        index.hnsw.efSearch = config.ef_search


def search(index: faiss.Index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """k nearest bank vectors of each query: (sq_dists (n, k) float32 squared L2, ids (n, k) int64)."""
    queries = as_f32(queries)
    n = queries.shape[0]
    sq_dists = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for lo in range(0, n, SEARCH_BATCH):
        hi = min(n, lo + SEARCH_BATCH)
        sq_dists[lo:hi], ids[lo:hi] = index.search(queries[lo:hi], k)
    return sq_dists, ids


def search_excluding(
    index: faiss.Index, queries: np.ndarray, query_owners: np.ndarray, bank_owners: np.ndarray, k: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest bank vectors of each query among those NOT owned by the query's owner (its source image).

    Leave-one-image-out scoring: a training image scored against the memory bank as if its own vectors were not
    there. Searches k + 8 neighbours, keeps the first k of another owner, and searches the rows that found too few
    again with twice the depth (up to the whole bank). Exact for exact indexes. Returns (sq_dists (n, k) float32
    squared L2, ids (n, k) int64), like `search`; -1 / inf where the bank holds fewer than k foreign vectors.
    """
    queries = as_f32(queries)
    owners = np.asarray(query_owners).ravel()
    bank_owners = np.asarray(bank_owners).ravel()
    n = queries.shape[0]
    if owners.size != n or bank_owners.size != index.ntotal:
        raise ConfigError(f"need one owner per query ({n}) and per bank vector ({index.ntotal}), got "
                          f"{owners.size} and {bank_owners.size}")
    out_sq = np.full((n, k), np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    todo = np.arange(n)
    depth = min(index.ntotal, k + 8)
    while todo.size:
        sq, ids = search(index, queries[todo], depth)  # (t, depth)
        foreign = (ids >= 0) & (bank_owners[np.maximum(ids, 0)] != owners[todo, None])
        enough = foreign.sum(axis=1) >= k
        if depth >= index.ntotal:
            enough[:] = True  # nothing deeper to search: keep what there is
        rank = np.cumsum(foreign, axis=1)  # (t, depth): how many foreign neighbours up to each column
        rows, cols = np.nonzero(foreign & (rank <= k) & enough[:, None])  # the first k foreign, in distance order
        out_sq[todo[rows], rank[rows, cols] - 1] = sq[rows, cols]
        out_ids[todo[rows], rank[rows, cols] - 1] = ids[rows, cols]
        todo = todo[~enough]
        depth = min(index.ntotal, depth * 2)
    return out_sq, out_ids


def approximate_index(vectors: np.ndarray, seed: int, *, train_iterations: int = 4) -> faiss.Index:
    """A temporary IVF-Flat over vectors (M, D), for many one-off nearest-vector searches at a fraction of a flat
    search's cost: about 4 sqrt(M) cells (MIN_POINTS_PER_CELL training points each at least), trained in
    `train_iterations` k-means iterations (FAISS's default is 10; 4 cost a third and, on screw at 10 %, found the
    exact nearest vector for 99.98 % of the patches either way), a twelfth of the cells probed (4 to 16).
    Its distance is exact to the vector it finds: a missed nearest vector can only overstate a distance."""
    vectors = as_f32(vectors)
    m, d = vectors.shape
    nlist = int(max(1, min(4 * np.sqrt(m), m // MIN_POINTS_PER_CELL)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.seed = seed
    index.cp.niter = train_iterations
    index.train(vectors)
    index.add(vectors)
    index.nprobe = int(min(16, max(4, nlist // 12), nlist))
    return index


class CellSearch:
    """The nearest vector (k = 1) of each query in an inverted file searched with numpy's BLAS: the vectors sorted
    by k-means cell (about sqrt(M) cells), the `nprobe` cells nearest each query read as contiguous slices, one
    (queries x cell) matrix product per probed cell for all the queries that probe it.

    For a few thousand queries at a time against a large bank (the bounded greedy's candidates against the bank so
    far): FAISS's IVF-Flat scan ran those at about 5 GFLOP/s here (37,600 queries, 200 k bank vectors, 16 of 447
    cells probed: 14.7 s). Distances are |q|^2 - 2 q.b + |b|^2 in float32 (not exact zeros for duplicates, about
    1e-5 of the squared norms), exact to the vector found, so a missed nearest vector can only overstate one."""

    def __init__(self, vectors: np.ndarray, seed: int, *, nprobe: int = 16, train_iterations: int = 4) -> None:
        vectors = as_f32(vectors)
        m, d = vectors.shape
        nlist = int(max(1, min(np.sqrt(m), m // MIN_POINTS_PER_CELL)))
        if nlist > 1:
            km = faiss.Kmeans(d, nlist, niter=train_iterations, seed=seed, max_points_per_centroid=64)
            km.train(vectors)
            centroids = as_f32(km.centroids)
        else:
            centroids = vectors.mean(axis=0, keepdims=True)
        self.centroids, self.centroid_sq = centroids, np.einsum("ij,ij->i", centroids, centroids)
        cell = np.concatenate([self._nearest_cells(vectors[lo : lo + SEARCH_BATCH], 1)[:, 0]
                               for lo in range(0, m, SEARCH_BATCH)])
        order = np.argsort(cell, kind="stable")
        self.vectors = vectors[order]  # sorted by cell: cell c is vectors[bounds[c]:bounds[c + 1]]
        self.sq = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.bounds = np.searchsorted(cell[order], np.arange(nlist + 1)).tolist()
        self.nprobe = min(nprobe, nlist)

    def _nearest_cells(self, queries: np.ndarray, k: int) -> np.ndarray:
        d = self.centroid_sq[None, :] - 2.0 * (queries @ self.centroids.T)  # + |q|^2, the same for every cell
        return np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.argsort(d, axis=1)

    def search(self, queries: np.ndarray) -> np.ndarray:
        """(n, D) -> (n,) float32 squared distance to the nearest vector found (inf where the probes held none)."""
        queries = as_f32(queries)
        out = np.full(queries.shape[0], np.inf, np.float32)
        q_sq = np.einsum("ij,ij->i", queries, queries)
        for lo in range(0, queries.shape[0], SEARCH_BATCH):
            probes = self._nearest_cells(queries[lo : lo + SEARCH_BATCH], self.nprobe)  # (b, nprobe)
            cells = probes.ravel()
            by_cell = np.argsort(cells, kind="stable")
            who = by_cell // self.nprobe + lo  # query of each (query, cell) pair, grouped by cell
            heads = np.searchsorted(cells[by_cell], np.arange(len(self.bounds)))
            for c in np.flatnonzero(np.diff(heads)).tolist():
                a, b = self.bounds[c], self.bounds[c + 1]
                if a == b:
                    continue
                q = who[heads[c] : heads[c + 1]]
                scaled = queries[q]  # a copy already: scaled in place instead of a scaled copy of the cell
                scaled *= -2.0  # a power of two, so the same bits either way
                part = scaled @ self.vectors[a:b].T
                part += self.sq[a:b]
                np.minimum.at(out, q, part.min(axis=1) + q_sq[q])  # a query probes a cell once: no repeats in q
        return np.maximum(out, 0.0)


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Bank vectors (n, D) by id (exact for flat/HNSW/IVF-Flat, the PQ approximation for IVF-PQ)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
    if isinstance(index, faiss.IndexIVF):
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap:  # built once, on first use
            ivf.make_direct_map()
    return np.stack([index.reconstruct(int(i)) for i in ids]) if ids.size else np.empty((0, index.d), np.float32)


class FlatNearest:
    """The exact nearest bank vector (k = 1) of an IndexFlatL2, by BLAS matrix products in numpy:
    |q - b|^2 = |q|^2 - 2 q.b + |b|^2, minimised over the bank, block by block.

    It is the computation FAISS's flat search makes for more than 20 queries, but on numpy's BLAS: FAISS runs it on
    the OpenBLAS that faiss-cpu bundles (0.3.15 here), where 1,024 queries against a 2,140 x 128 bank took 13-15 ms on
    2 threads against 6 ms on one thread of numpy's (bench/bench_serving.py; the serving path's largest stage after
    decoding). The bank is a view of the index's own storage (no copy); the index must not change while this is used.
    """

    def __init__(self, index: faiss.IndexFlatL2, query_block: int = 4096, bank_block: int = 16384) -> None:
        if not isinstance(index, faiss.IndexFlatL2):
            raise ConfigError(f"FlatNearest needs an IndexFlatL2, got {type(index).__name__}")
        self.index = index  # keeps the storage the view below points into alive
        n, d = index.ntotal, index.d
        self.bank = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.empty((0, d), np.float32)
        self.bank_sq = np.einsum("ij,ij->i", self.bank, self.bank)
        self.query_block, self.bank_block = int(query_block), int(bank_block)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) queries -> (sq_dists (n, 1) float32 squared L2, ids (n, 1) int64), like `search(index, q, 1)`."""
        queries = as_f32(queries)
        n, m = queries.shape[0], self.bank.shape[0]
        if m == 0:
            return np.full((n, 1), np.inf, np.float32), np.full((n, 1), -1, np.int64)
        out_sq = np.empty((n, 1), np.float32)
        out_ids = np.empty((n, 1), np.int64)
        for lo in range(0, n, self.query_block):
            q = queries[lo: lo + self.query_block]
            best = np.full(q.shape[0], np.inf, np.float32)
            arg = np.zeros(q.shape[0], np.int64)
            for b0 in range(0, m, self.bank_block):
                part = q @ self.bank[b0: b0 + self.bank_block].T  # (q, b) inner products
                part *= -2.0
                part += self.bank_sq[b0: b0 + self.bank_block]
                j = np.argmin(part, axis=1)
                val = part[np.arange(q.shape[0]), j]
                better = val < best
                best[better], arg[better] = val[better], j[better] + b0
            out_sq[lo: lo + q.shape[0], 0] = np.maximum(best + np.einsum("ij,ij->i", q, q), 0.0)
            out_ids[lo: lo + q.shape[0], 0] = arg
        return out_sq, out_ids
