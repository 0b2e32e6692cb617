"""Greedy k-center coreset subsampling of the patch embeddings (paper section 3.2, Algorithm 1).

PatchCore keeps the patch embeddings picked by the greedy k-center rule (Gonzalez 1985, Sener & Savarese 2018):
start from one seeded point, then repeatedly add the point farthest from everything picked so far, keeping a running
min-distance vector. Like the paper, distances are taken on a seeded Johnson-Lindenstrauss random projection.

The straightforward implementation (``greedy_coreset_reference``) makes one full float64 pass over the bank per
centre: O(N * k * d). ``greedy_k_center`` returns exactly the same indices (every distance it keeps is computed by
the same float64 expression, and ties go to the lowest index, as np.argmax does) but skips almost all of that work:

1. Batches of centres. Take the L points with the largest running distance and tau, an upper bound on everyone
   else's. Run the greedy on those L alone (an L x L problem): while the best of them is still > tau, it is also
   the global farthest point, so it is the next centre. Late in the run hundreds of centres come out of one batch.
2. Bounds instead of distances. The bank is cut into k-means groups and sorted by (group, distance to the group
   centroid). Each point also keeps its first 48 coordinates on the bank's principal axes: an orthogonal
   projection, so the distance there is a lower bound of the true one. A (point, new centre) pair only matters if
   that bound is below the point's running distance. The triangle inequality around each group centroid limits a
   centre to an annulus of each nearby group (a slice of the sorted bank), and the bound is one small matrix
   product per touched group for all the batch's centres at once.
3. The pairs that survive get the float32 distance, and those still below the running distance the exact float64
   one (the reference's expression, on the same float32 rows).
Memory beyond the input: z in sorted order (N x d float32), 48 float32 and about 40 bytes more per point.
No N x N matrix is ever formed.
"""

from __future__ import annotations

import numpy as np

from model.errors import ConfigError

_F64 = np.float64
_BOUND_DIMS = 48  # principal coordinates kept for the lower bound (16: 92 % of bottle's variance, 48: 99 %)
_GROUP_DIMS = 16  # coordinates the k-means groups and their annuli live in
_GROUP_SIZE = 256  # points per group on average ...
_MAX_GROUPS = 1024  # ... up to this many groups
# (point, centre) pairs checked at once, and rows per pass of the set-up and the first centre: they bound the
# float64 temporaries (8 K x d x 8 bytes, 8 MiB at d = 128). At 64 K the temporaries added 165 MB to the build's
# peak (screw, 205 k x 128 rows: 316 MB traced at peak against 177 MB at 8 K, same picks, no slower).
_PAIR_CHUNK = 1 << 13
_ROW_CHUNK = 1 << 13
EXACT_SEARCH_MAX_CENTRES = 4096  # nearest_sq_distances: a flat search up to this many centres, an IVF beyond
_FIXED_BATCH = 1024  # fixed centres added per bound update (bounds the centres x groups temporaries)
_REL = 1e-4  # slack of every float32 bound against rounding: prune only when the bound clearly exceeds the distance
_ABS = 1e-5  # ... plus this fraction of the largest squared norm


def project(features: np.ndarray, projection_dim: int | None, seed: int) -> np.ndarray:
    """(N, D) -> (N, d) float32, centred, on a seeded Gaussian random projection (identity if d >= D)."""
    x = _as_points(features)
    mean = _mean(x)
    if projection_dim is None or projection_dim >= x.shape[1]:
        return x - mean  # centring changes no distance but keeps float32 norms small (less cancellation)
    return (x - mean) @ _projection(x.shape[1], projection_dim, seed)


def start_index(n: int, seed: int) -> int:
    """The seeded first centre; it is always part of the result."""
    return int(np.random.default_rng([seed, 1]).integers(n))


def check_size(n_points: int, n_select: int) -> None:
    if not 1 <= n_select <= n_points:
        raise ConfigError(f"cannot select {n_select} coreset points out of {n_points}; need 1 <= k <= N")


def greedy_coreset(
    features: np.ndarray, n_select: int, *, projection_dim: int | None, seed: int, fixed: np.ndarray | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (k,) int64 of the greedy k-center coreset, in selection order, first one the seeded start.

    With `fixed` (row indices already chosen, e.g. the memory bank built so far, stacked in front of new rows), the
    running distances start from those rows and the n_select picks extend them: the first pick is the point
    farthest from every fixed row, and no fixed row is returned. Fewer than n_select come back only when every
    point is already covered at distance 0 (duplicates).

    With `initial` ((N,) squared distances of the rows to centres chosen elsewhere, in the greedy's space: see
    `nearest_sq_distances`), the running distances start from those; the builder passes the bank built so far
    this way, so a new chunk's rows never have to be stacked with it.
    """
    x = _as_points(features)
    if initial is not None:
        if fixed is not None:
            raise ConfigError("pass either fixed rows or initial distances, not both")
        initial = np.asarray(initial, dtype=np.float64).reshape(-1)
        if initial.shape[0] != x.shape[0]:
            raise ConfigError(f"initial distances: {initial.shape[0]} values for {x.shape[0]} rows")
        check_size(x.shape[0], n_select)
        z = x if projection_dim is None or projection_dim >= x.shape[1] else project(x, projection_dim, seed)
        with one_blas_thread():
            return _KCenter(z, _mean(z) if z is x else None).run(n_select, 0, None, initial)
    fixed = None if fixed is None or len(fixed) == 0 else np.unique(np.asarray(fixed, dtype=np.int64))
    check_size(x.shape[0] - (0 if fixed is None else fixed.size), n_select)
    start = start_index(x.shape[0], seed)
    with one_blas_thread():
        if projection_dim is None or projection_dim >= x.shape[1]:
            # z = x - mean, never materialised: rows are rebuilt (bit for bit) when needed. Saves one N x D copy.
            return _KCenter(x, _mean(x)).run(n_select, start, fixed)
        return _KCenter(project(x, projection_dim, seed), None).run(n_select, start, fixed)


def one_blas_thread():
    """Context: numpy's BLAS on one thread. The greedy's products are small (a group of ~256 rows x a batch of
    centres); a threaded BLAS spends more time waking and spinning its threads than computing them, 4x slower
    on a busy 2-core machine (pill_qc, 51k points, 2,000 centres: 39 s with 2 threads, 10 s with one). This is a
    local, temporary limit around one computation, restored on exit; the process-wide counts stay those set at
    start (index_store.runtime)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def greedy_k_center(z: np.ndarray, k: int, start: int) -> np.ndarray:
    """Exact greedy k-center on the rows of z (N, d): the selected row indices, in selection order.

    Stops early if every point is already covered at distance 0 (duplicates only): the bank then holds fewer than
    k distinct vectors.
    """
    z = _as_points(z)
    check_size(z.shape[0], k)
    return _KCenter(z, None).run(k, start)


def nearest_sq_distances(
    points: np.ndarray, centres: np.ndarray, *, projection_dim: int | None, seed: int, nprobe: int = 16
) -> np.ndarray:
    """(N,) float64 squared distance of each point to its nearest centre, in the greedy's space (the same seeded
    projection). Up to EXACT_SEARCH_MAX_CENTRES centres: exact (flat). Beyond: an IVF-Flat search (about 4 sqrt(M)
    lists, `nprobe` probed), whose distance is exact to the centre it finds, so a missed nearest centre can only make
    the value larger."""
    import faiss

    x, c = _as_points(points), _as_points(centres)
    if projection_dim is not None and projection_dim < x.shape[1]:
        p = _projection(x.shape[1], projection_dim, seed)
        x, c = x @ p, c @ p  # no centring: cross distances need one frame
    shift = _mean(c)
    c = c - shift
    quantizer = faiss.IndexFlatL2(c.shape[1])
    if c.shape[0] <= EXACT_SEARCH_MAX_CENTRES:
        index = quantizer
    else:
        nlist = int(min(4 * np.sqrt(c.shape[0]), c.shape[0] // 39))  # FAISS wants >= 39 points per list
        index = faiss.IndexIVFFlat(quantizer, c.shape[1], nlist)
        index.cp.seed = seed
        index.train(c)
        index.nprobe = nprobe
    index.add(c)
    out = np.empty(x.shape[0], np.float64)
    for lo in range(0, x.shape[0], _ROW_CHUNK):
        sq, _ = index.search(x[lo : lo + _ROW_CHUNK] - shift, 1)
        out[lo : lo + _ROW_CHUNK] = np.maximum(sq[:, 0], 0.0)
    return out


def greedy_coreset_reference(
    features: np.ndarray, n_select: int, *, projection_dim: int | None, seed: int, fixed: np.ndarray | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """The straightforward O(N * k * d) greedy, one full numpy pass per centre. Slow; the fast path's reference."""
    z = project(features, projection_dim, seed).astype(np.float64)
    fixed = () if fixed is None else np.unique(np.asarray(fixed, dtype=np.int64))
    check_size(z.shape[0] - len(fixed), n_select)
    mind = np.full(z.shape[0], np.inf) if initial is None else np.maximum(np.asarray(initial, np.float64), 0.0)
    for f in fixed:
        mind = np.minimum(mind, ((z - z[f]) ** 2).sum(axis=1))
    point = start_index(z.shape[0], seed) if len(fixed) == 0 and initial is None else int(np.argmax(mind))
    selected = np.empty(n_select, dtype=np.int64)
    for t in range(n_select):
        if mind[point] <= 0.0:  # everything covered (duplicates only)
            return selected[:t]
        selected[t] = point
        mind = np.minimum(mind, ((z - z[point]) ** 2).sum(axis=1))
        point = int(np.argmax(mind))
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


def _as_points(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"coreset input must be a non-empty (N, D) array, got shape {x.shape}")
    return x


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def _projection(dim: int, projection_dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim, projection_dim), dtype=np.float32) / np.float32(np.sqrt(projection_dim))


def _sq_dist64(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """((rows - centres) ** 2).sum(axis=1) in float64, bit for bit the reference's expression, in place."""
    diff = rows.astype(_F64)
    np.subtract(diff, centres, out=diff)
    np.multiply(diff, diff, out=diff)
    return diff.sum(axis=1)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """concatenate(arange(lo[i], hi[i]) for all i), without a Python loop."""
    size = hi - lo
    out = np.arange(int(size.sum()), dtype=np.int64)
    out += np.repeat(lo - (np.cumsum(size) - size), size)
    return out


class _KCenter:
    """The bank in the layout the pruned greedy needs. One instance per run; private."""

    BOUND_DIMS: int | None = _BOUND_DIMS  # rotated coordinates kept in y (None: all of them)
    KEEP_ROWS = True  # keep zs, the rows in sorted order, for the exact float64 distances
    BATCH_SCALE = 2.0  # centres wanted per round: BATCH_SCALE x sqrt(k), within 128 ... 1024

    def __init__(self, base: np.ndarray, shift: np.ndarray | None) -> None:
        # The points are z = base - shift (shift None: z = base). Exact distances use these rows in float64.
        self.base, self.shift = base, shift
        n, d = base.shape
        self.n, self.d = n, d
        gd = min(_GROUP_DIMS, d)
        sample = self.rows(slice(0, n, max(1, n // 16384))).astype(_F64)
        centre = sample.mean(axis=0)
        _, vecs = np.linalg.eigh((sample - centre).T @ (sample - centre))
        rotation = np.ascontiguousarray(vecs[:, ::-1], dtype=np.float32)  # (d, d) orthogonal, main axes first
        centre = centre.astype(np.float32)
        head = np.empty((n, gd), np.float32)  # the first gd rotated coordinates, for the groups
        for lo in range(0, n, _ROW_CHUNK):
            head[lo : lo + _ROW_CHUNK] = (self.rows(slice(lo, lo + _ROW_CHUNK)) - centre) @ rotation[:, :gd]
        group, self.mu = _kmeans_groups(head, n)
        radius = np.empty(n)  # distance to the own group's centroid
        for lo in range(0, n, _ROW_CHUNK):
            diff = head[lo : lo + _ROW_CHUNK].astype(_F64) - self.mu[group[lo : lo + _ROW_CHUNK]]
            radius[lo : lo + _ROW_CHUNK] = np.sqrt((diff * diff).sum(axis=1))
        del head
        # Sort by (group, radius): each group is a slice, and an annulus of radii inside it a sub-slice.
        self.order = np.lexsort((radius, group))  # sorted position -> original row
        self.group = group[self.order]
        self.radius = radius[self.order]
        counts = np.bincount(self.group, minlength=self.mu.shape[0])
        self.ends = np.cumsum(counts)
        self.starts = self.ends - counts
        self.counts = counts
        self.span = 2.0 * float(radius.max()) + 1.0
        self.key = self.group * self.span + self.radius  # increasing: searchsorted finds annuli
        self.rho = np.maximum.reduceat(self.radius, self.starts)  # group radius
        self.musq = (self.mu * self.mu).sum(axis=1)
        s1 = d if self.BOUND_DIMS is None else min(self.BOUND_DIMS, d)
        # z in sorted order: the exact distances read these rows (subclasses that need no float64 distances skip it)
        self.zs = np.empty((n, d), np.float32) if self.KEEP_ROWS else None
        self.y = np.empty((n, s1), np.float32)  # the first s1 rotated coordinates, sorted: the lower bounds
        for lo in range(0, n, _ROW_CHUNK):
            block = self.rows(self.order[lo : lo + _ROW_CHUNK])
            if self.zs is not None:
                self.zs[lo : lo + _ROW_CHUNK] = block
            self.y[lo : lo + _ROW_CHUNK] = (block - centre) @ rotation[:, :s1]
            del block
        self.centre, self.rotation = centre, rotation[:, :s1]  # y = (z - centre) @ rotation
        self.head_sq = np.einsum("ij,ij->i", self.y, self.y)
        scale = float((self.head_sq if self.zs is None else np.einsum("ij,ij->i", self.zs, self.zs)).max())
        self.abs2 = _ABS * scale + 1e-30
        self.eps = _ABS * np.sqrt(scale) + 1e-30
        self.mind = np.empty(n)  # running squared distance to the nearest centre (float64), in sorted order
        self.dmax = np.empty(counts.size)  # per group: max of mind

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        """Float32 rows of z by original index (bit for bit the reference's)."""
        return self.base[idx] if self.shift is None else self.base[idx] - self.shift

    def run(self, k: int, start: int, fixed: np.ndarray | None = None, initial: np.ndarray | None = None) -> np.ndarray:
        """k greedy centres (original row indices). With `fixed` (original rows already chosen as centres), the
        running distances start from those, and the k picks (none of them fixed) follow from the farthest point.
        With `initial` (N,) squared distances, the running distances start from those instead."""
        selected = np.empty(k, dtype=np.int64)
        if initial is not None:
            self.mind[:] = np.maximum(initial[self.order].astype(_F64), 0.0)
            self.dmax[:] = np.maximum.reduceat(self.mind, self.starts)
            return self._loop(selected, k, 0)
        if fixed is not None and fixed.size:
            position = np.empty(self.n, np.int64)  # original row -> sorted position
            position[self.order] = np.arange(self.n)
            first, rest, t = position[fixed[0]], position[fixed[1:]], 0
        else:
            selected[0], first, rest, t = start, None, None, 1
        c = self.rows(np.array([start if first is None else self.order[first]]))[0].astype(_F64)
        for lo in range(0, self.n, _ROW_CHUNK):  # the first centre: one full pass, like the reference
            self.mind[lo : lo + _ROW_CHUNK] = _sq_dist64(self.zs[lo : lo + _ROW_CHUNK], c)
        self.dmax[:] = np.maximum.reduceat(self.mind, self.starts)
        if first is not None:
            self.mind[first] = 0.0
            a = 0
            while a < rest.size:  # growing batches: while the running distances are large, bounds prune little
                b = int(np.clip(a // 4, 16, _FIXED_BATCH))
                self._add_centres(rest[a : a + b])
                a += b
        return self._loop(selected, k, t)

    def _loop(self, selected: np.ndarray, k: int, t: int) -> np.ndarray:
        batch = int(np.clip(self.BATCH_SCALE * np.sqrt(k), 128, 1024))
        while t < k:
            if self.dmax.max() <= 0.0:  # everything covered (duplicates only)
                return selected[:t]
            picks = self._next_centres(min(batch, k - t))
            selected[t : t + picks.size] = self.order[picks]
            t += picks.size
            self._add_centres(picks)
        return selected

    def _next_centres(self, want: int) -> np.ndarray:
        """Sorted positions of the next greedy centres (1..want of them), exactly as the one-at-a-time rule."""
        idx, vals, tau = self._candidates(want)
        picks = self._greedy_among(idx, vals, tau, want) if idx.size else []
        if picks:
            return idx[np.asarray(picks)]
        # The best candidate ties with tau: fall back to one exact global argmax (lowest index among equals).
        best = self.dmax.max()
        groups = np.flatnonzero(self.dmax == best)
        idx = _ranges(self.starts[groups], self.ends[groups])
        idx = idx[self.mind[idx] == best]
        return idx[[np.argmin(self.order[idx])]]

    def _candidates(self, want: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(sorted positions, running distances, tau): the up to 2 * want points with the largest running
        distances above tau, ordered by original row; tau bounds every other point's running distance."""
        # Candidates: the points of the `want` groups with the largest maxima; tau bounds every other point.
        n_groups = self.dmax.size
        if n_groups > want:
            part = np.argpartition(self.dmax, n_groups - want - 1)
            top, tau = part[n_groups - want :], float(self.dmax[part[n_groups - want - 1]])
        else:
            top, tau = np.arange(n_groups), -1.0
        idx = _ranges(self.starts[top], self.ends[top])
        vals = self.mind[idx]
        idx, vals = idx[vals > tau], vals[vals > tau]
        if idx.size > 2 * want:  # keep the 2 * want largest; the cut-off value joins tau
            part = np.argpartition(vals, idx.size - 2 * want - 1)
            tau = max(tau, float(vals[part[idx.size - 2 * want - 1]]))
            keep = part[idx.size - 2 * want :]
            idx, vals = idx[keep], vals[keep]
            idx, vals = idx[vals > tau], vals[vals > tau]
        by_row = np.argsort(self.order[idx])  # ties go to the lowest original index, as in np.argmax
        return idx[by_row], vals[by_row], tau

    def _greedy_among(self, idx: np.ndarray, vals: np.ndarray, tau: float, want: int) -> list[int]:
        """The greedy restricted to the candidates, while its pick is provably the global farthest point (> tau)."""
        zc = self.zs[idx] - self.centre  # (L, d), for a cheap lower bound
        exact = self.zs[idx].astype(_F64)  # (L, d) for the exact distances
        sq = np.einsum("ij,ij->i", zc, zc)
        lower = sq[:, None] + sq[None, :] - 2.0 * (zc @ zc.T)  # (L, L) squared distances, float32
        lower -= _REL * (sq[:, None] + sq[None, :]) + self.abs2  # ... made a sure lower bound
        u = vals.copy()  # the candidates' running distances, updated exactly as the picks come
        picks: list[int] = []
        while len(picks) < want:
            i = int(np.argmax(u))
            if not u[i] > tau:
                break
            picks.append(i)
            near = np.flatnonzero(lower[i] < u)  # includes i itself
            if near.size > 1:
                u[near] = np.minimum(u[near], ((exact[near] - exact[i]) ** 2).sum(axis=1))
            else:
                u[i] = 0.0
        return picks

    def _add_centres(self, picks: np.ndarray) -> None:
        """mind <- min(mind, d(., c)^2) for every new centre c, computing only the pairs the bounds cannot rule out."""
        pair_centre, lo, hi = self._annuli(picks)
        changed = [self.group[picks]]
        xi, ci = self._first_bound(picks, pair_centre, lo, hi)
        centres = self.zs[picks].astype(_F64)  # (j, d)
        for a in range(0, xi.size, _PAIR_CHUNK):
            x, c = self._later_bounds(picks, xi[a : a + _PAIR_CHUNK], ci[a : a + _PAIR_CHUNK])
            d2 = _sq_dist64(self.zs[x], centres[c])
            closer = d2 < self.mind[x]
            np.minimum.at(self.mind, x[closer], d2[closer])
            changed.append(self.group[x[closer]])
        self.mind[picks] = 0.0
        groups = np.unique(np.concatenate(changed))
        sizes = self.counts[groups]
        self.dmax[groups] = np.maximum.reduceat(self.mind[_ranges(self.starts[groups], self.ends[groups])],
                                                np.cumsum(sizes) - sizes)

    def _annuli(self, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centre, group) pairs that may hold a closer point, as slices [lo, hi) of the sorted bank, by group.

        A point x of group g (centroid mu, x at radius r) with running distance D(x) <= D_g can only get closer to
        centre c if |d(c, mu) - r| < D_g (triangle inequality, in the group coordinates: a lower bound).
        """
        dist, reach, reaches = self._reaches(self.y[picks])
        centre, group = np.nonzero(reaches)
        return self._slices(centre, group, dist, reach)

    def _reaches(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """centres (j, >= gd) in y's coordinates -> (centre-to-centroid distances (j, G), reach of each group (G,),
        whether centre j reaches group g (j, G))."""
        dist = self._centroid_distances(centres)
        reach = np.sqrt(self.dmax) + self.eps  # (G,)
        return dist, reach, dist - self.rho[None, :] < reach[None, :]

    def _centroid_distances(self, centres: np.ndarray) -> np.ndarray:
        """centres (j, >= gd) in y's coordinates -> (j, G) distances to the group centroids, in the group
        coordinates (a lower bound of the distance to any point of the group, less its radius)."""
        head = centres[:, : self.mu.shape[1]].astype(_F64)
        return np.sqrt(np.maximum((head * head).sum(1)[:, None] + self.musq[None, :] - 2.0 * (head @ self.mu.T), 0))

    def _slices(self, centre, group, dist, reach) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The annulus of each (centre, group) pair as a slice [lo, hi) of the sorted bank; pairs sorted by group."""
        d_cg, base = dist[centre, group], group * self.span
        lo = np.maximum(np.searchsorted(self.key, base + d_cg - reach[group]), self.starts[group])
        hi = np.minimum(np.searchsorted(self.key, base + d_cg + reach[group], side="right"), self.ends[group])
        keep = hi > lo
        by_group = np.argsort(group[keep], kind="stable")
        return centre[keep][by_group], lo[keep][by_group], hi[keep][by_group]

    def _first_bound(self, picks, pair_centre, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """(point, centre) pairs whose distance over the first rotated coordinates is below the point's mind.

        One matrix product per touched group for all the centres that reach it: (rows, s) @ (s, centres).
        """
        if lo.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        cen = self.y[picks]
        weights = -2.0 * cen.T  # (s, j)
        cen_sq = np.einsum("ij,ij->i", cen, cen)
        group_of = self.group[lo]
        heads = np.r_[0, np.flatnonzero(group_of[1:] != group_of[:-1]) + 1]
        seg_lo = np.minimum.reduceat(lo, heads)
        seg_hi = np.maximum.reduceat(hi, heads)
        head = self.y
        xs, cs = [], []
        bounds = np.r_[heads, lo.size].tolist()
        for i, (a, b) in enumerate(zip(seg_lo.tolist(), seg_hi.tolist())):
            q = pair_centre[bounds[i] : bounds[i + 1]]
            part = head[a:b] @ weights[:, q]  # (rows, centres): |x|^2 + |c|^2 - 2 x.c, less the |x|^2 term
            part += cen_sq[q]
            limit = self.mind[a:b] * (1 + _REL) + self.abs2 - self.head_sq[a:b]
            rows, cols = np.nonzero(part < limit[:, None])
            xs.append(rows + a)
            cs.append(q[cols])
        return np.concatenate(xs), np.concatenate(cs)

    def _later_bounds(self, picks, x, c) -> tuple[np.ndarray, np.ndarray]:
        """Keep the pairs whose partial distance over each longer prefix of coordinates stays below mind."""
        if self.y.shape[1] == self.d:  # the first bound was already the whole distance
            return x, c
        diff = self.zs[x] - self.zs[picks[c]]
        ok = np.einsum("ij,ij->i", diff, diff) < self.mind[x] * (1 + _REL) + self.abs2
        return x[ok], c[ok]


def _kmeans_groups(head: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(group of each point (N,) int64, centroids (G, gd) float64); the grouping only affects speed, never results."""
    n_groups = int(np.clip(n // _GROUP_SIZE, 1, _MAX_GROUPS))
    if n_groups == 1:
        return np.zeros(n, np.int64), head.mean(axis=0, dtype=_F64)[None]
    import faiss

    km = faiss.Kmeans(head.shape[1], n_groups, niter=10, seed=1234, max_points_per_centroid=64)
    km.train(head)
    _, assign = km.index.search(head, 1)
    used, group = np.unique(assign[:, 0], return_inverse=True)
    return group.astype(np.int64), km.centroids[used].astype(_F64)
