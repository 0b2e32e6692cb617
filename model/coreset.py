"""Greedy k-center coreset subsampling of the patch embeddings (paper section 3.2, Algorithm 1).

PatchCore keeps the patch embeddings picked by the greedy k-center rule (Gonzalez 1985, Sener & Savarese 2018):
start from one seeded point, then repeatedly add the point farthest from everything picked so far, keeping a running
min-distance vector. Like the paper, distances are taken on a seeded Johnson-Lindenstrauss random projection.

The straightforward implementation makes one full pass over the bank per selected centre: O(N * k * d). Ours picks
exactly the same points but skips most of that work with the triangle inequality (the pruning of Elkan 2003 and of
accelerated k-center, e.g. Hochbaum & Shmoys): every point remembers its nearest centre a, and each centre keeps
the radius R_a of its cluster. A new centre c can only bring a point x of cluster a closer when
d(c, a) < 2 * R_a, because d(x, c) >= d(c, a) - d(x, a) >= 2 R_a - R_a >= d(x, a). So each step only touches the
clusters near the new centre. As k grows the radii shrink and each step costs far less than a full pass.
No N x N matrix is ever formed; memory is O(N) beyond the projected bank.
"""

from __future__ import annotations

import numpy as np

from model.errors import ConfigError

# Slack on the pruning test against float32 rounding: prune only when d(c,a)^2 >= 4 R_a^2 (1 + REL) + ABS.
_PRUNE_REL = 1e-3


def project(features: np.ndarray, projection_dim: int | None, seed: int) -> np.ndarray:
    """(N, D) -> (N, d) float32, centred, on a seeded Gaussian random projection (identity if d >= D)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"coreset input must be a non-empty (N, D) array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if projection_dim is None or projection_dim >= x.shape[1]:
        return x - mean  # centring changes no distance but keeps float32 norms small (less cancellation)
    proj = rng.standard_normal((x.shape[1], projection_dim), dtype=np.float32) / np.float32(np.sqrt(projection_dim))
    return (x - mean) @ proj


def start_index(n: int, seed: int) -> int:
    """The seeded first centre; it is always part of the result."""
    return int(np.random.default_rng([seed, 1]).integers(n))


def check_size(n_points: int, n_select: int) -> None:
    if not 1 <= n_select <= n_points:
        raise ConfigError(f"cannot select {n_select} coreset points out of {n_points}; need 1 <= k <= N")


def greedy_coreset(features: np.ndarray, n_select: int, *, projection_dim: int | None, seed: int) -> np.ndarray:
    """Indices (k,) int64 of the greedy k-center coreset, in selection order, first one the seeded start."""
    z = project(features, projection_dim, seed)
    check_size(z.shape[0], n_select)
    return greedy_k_center(z, n_select, start_index(z.shape[0], seed))


def greedy_k_center(z: np.ndarray, k: int, start: int) -> np.ndarray:
    """Exact greedy k-center on the rows of z (N, d) float32, pruned by the triangle inequality.

    Returns the selected row indices in selection order. Stops early if every point is already covered at
    distance 0 (duplicates only): the bank then holds fewer than k distinct vectors.
    """
    n = z.shape[0]
    sq = np.einsum("ij,ij->i", z, z)  # (N,) squared norms
    tol = np.float32(1e-5) * sq.max(initial=0.0)
    centers = np.empty((k, z.shape[1]), dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    radius2 = np.zeros(k, dtype=np.float32)  # R_a^2: the largest running distance inside cluster a
    # Running squared distance of each point to its nearest centre; the first centre covers everything.
    mind = np.maximum(sq - 2.0 * (z @ z[start]) + sq[start], 0.0)
    mind[start] = 0.0
    members: list[np.ndarray] = [np.arange(n)]  # members[a]: the points whose nearest centre is a
    sizes = np.zeros(k, dtype=np.int64)  # len(members[a])
    sizes[0] = n
    selected[0], centers[0], radius2[0] = start, z[start], mind.max()
    for t in range(1, k):
        if radius2[:t].max() <= 0.0:
            return selected[:t]
        far_cluster = members[int(np.argmax(radius2[:t]))]
        point = int(far_cluster[np.argmax(mind[far_cluster])])  # the farthest point overall
        c = z[point]
        selected[t], centers[t] = point, c
        # Clusters whose centre is farther than 2 R_a from c cannot change (see the module docstring).
        dc2 = sq[selected[:t]] - 2.0 * (centers[:t] @ c) + sq[point]  # (t,)
        cand = np.flatnonzero(dc2 < 4.0 * radius2[:t] * (1.0 + _PRUNE_REL) + tol)
        idx = np.concatenate([members[a] for a in cand])  # grouped by candidate cluster
        if idx.size * 4 > n:  # most of the bank: one GEMV over z beats gathering its rows
            d2 = (sq - 2.0 * (z @ c) + sq[point])[idx]
        else:
            d2 = sq[idx] - 2.0 * (z[idx] @ c) + sq[point]
        closer = d2 < mind[idx]
        closer[idx == point] = True
        mind[idx[closer]] = np.maximum(d2[closer], 0.0)
        mind[point] = 0.0
        members.append(idx[closer])
        sizes[t] = members[t].size
        radius2[t] = mind[members[t]].max()
        # The rest stay in their clusters; each keeps at least its own centre (distance 0), so none is empty.
        keep = ~closer
        kept = idx[keep]
        ends = np.cumsum(sizes[cand])
        counts = np.add.reduceat(keep, ends - sizes[cand])
        sizes[cand] = counts
        bounds = np.cumsum(counts).tolist()
        lo = 0
        for a, hi in zip(cand.tolist(), bounds):
            members[a] = kept[lo:hi]
            lo = hi
        radius2[cand] = np.maximum.reduceat(mind[kept], np.asarray(bounds) - counts)
    return selected


def greedy_coreset_reference(
    features: np.ndarray, n_select: int, *, projection_dim: int | None, seed: int
) -> np.ndarray:
    """The straightforward O(N * k * d) greedy, one full numpy pass per centre. Slow; the fast path's reference."""
    z = project(features, projection_dim, seed).astype(np.float64)
    check_size(z.shape[0], n_select)
    point = start_index(z.shape[0], seed)
    mind = np.full(z.shape[0], np.inf)
    selected = np.empty(n_select, dtype=np.int64)
    for t in range(n_select):
        selected[t] = point
        mind = np.minimum(mind, ((z - z[point]) ** 2).sum(axis=1))
        point = int(np.argmax(mind))
        if mind[point] <= 0.0:  # everything covered (duplicates only)
            return selected[: t + 1]
    return selected


def coverage_radius(features: np.ndarray, selected: np.ndarray, batch: int = 65536) -> float:
    """max_x min_{c in selected} ||x - c||, in the original space (the k-center objective)."""
    import faiss

    from model.knn import as_f32

    x = as_f32(features)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(as_f32(x[selected]))
    worst = 0.0
    for lo in range(0, x.shape[0], batch):
        sq, _ = index.search(x[lo : lo + batch], 1)  # squared L2
        worst = max(worst, float(sq.max()))
    return float(np.sqrt(max(worst, 0.0)))
