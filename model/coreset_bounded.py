"""Bounded greedy k-center: the coreset in a time that does not blow up on hard data (an approximation).

The exact greedy (model.coreset) is fast while its triangle-inequality bounds prune: on redundant products such
as bottle, a new centre reaches a few groups of the bank. On less redundant data (textures, pills on a mat, a 10 %
ratio) the running distances stay large against the distances between points, nothing is pruned, and every
centre costs a pass over the bank: O(N * k * d), hundreds of seconds for a few hundred images. This variant
keeps the greedy's rule and its data layout (k-means groups sorted by radius) but bounds the work per centre:

1. epsilon-greedy batches. A candidate is taken as the next centre while its running distance is at least
   (1 - epsilon) x the largest running distance of the whole bank (the exact rule: > every other point). Each
   pick is then a (1 - epsilon)-approximate farthest point, and the greedy's guarantee becomes
   radius <= 2 / (1 - epsilon) x the optimal k-center radius (Gonzalez 1985, with approximate farthest points).
   Batches of hundreds of centres come out of one round on any data.
2. Nearest groups only. A new centre updates the running distances of the points in the `near_points` / group-size
   groups nearest to it (among those its triangle-inequality annulus reaches), never more: work per centre is
   bounded whatever N and whatever the data. A point outside them keeps a running distance that may be too large
   (an upper bound of the true one), which can only make it a candidate again; it is never wrongly dropped.
3. Dense float32 updates. Each touched group is one matrix product (rows x d) @ (d x centres) and a row minimum;
   no (point, centre) pair list is materialised, and no float64 copy of the bank is kept.

With epsilon = 0 and unlimited groups it is the exact greedy computed in float32 (tests/model/test_coreset_bounded.py
checks it against the reference); bench/bench_coreset_bounded.py measures time, coverage radius and AUROC against
the exact greedy on the development suite. Memory beyond the input: the bank on its principal axes (N x d float32)
and about 40 bytes per point.
"""

from __future__ import annotations

import numpy as np

from model import coreset, knn
from model.errors import ConfigError

MODES = ("auto", "bounded", "exact")
DEFAULT_EPSILON = 0.05
DEFAULT_NEAR_POINTS = 8192  # points a new centre may update (rounded to whole groups)
# mode "auto": the exact greedy up to this many centres, the bounded one above. On the development suite
# (bench/bench_build_bottle.py, concatenated layers, ../shared/data), the exact greedy + calibration stayed within
# 1.9 x the extraction up to 3,174 centres and took 3.5-3.8 x at 10,240-20,480 (screw, pill_qc at 10 %), where the
# bounded one took 0.7-2.3 x with image AUROC within 0.0044 of the exact (bench/bench_coreset_bounded.py).
AUTO_EXACT_MAX_CENTRES = 4096
_SEED_BATCH = 4096  # bank vectors lowering the running distances at once (seeded runs)
_AMONG_BLOCK = 256  # candidates whose distances to the others are computed at once (_greedy_among)


def resolve_mode(mode: str, n_select: int) -> str:
    """The greedy a coreset mode runs for n_select centres: "exact" or "bounded"."""
    if mode == "auto":
        return "exact" if n_select <= AUTO_EXACT_MAX_CENTRES else "bounded"
    if mode not in MODES:
        raise ConfigError(f"unknown coreset mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def select_coreset(features: np.ndarray, n_select: int, *, mode: str, projection_dim: int | None, seed: int,
                   bank: np.ndarray | None = None) -> np.ndarray:
    """The builder's coreset: `mode` "exact" (model.coreset.greedy_coreset), "bounded" (this module), or "auto"
    (resolve_mode: exact up to AUTO_EXACT_MAX_CENTRES centres, else bounded).

    With `bank` (M, D), vectors chosen earlier (the memory bank so far), the greedy continues it: running
    distances start from the bank, and only rows the bank does not cover are picked (index_store.build's chunked
    builds and --update). The exact greedy takes every row's distance to the bank up front
    (model.coreset.nearest_sq_distances); the bounded one lazily (bounded_greedy_coreset)."""
    mode = resolve_mode(mode, n_select)
    has_bank = bank is not None and bank.shape[0] > 0
    if mode == "exact":
        initial = (coreset.nearest_sq_distances(features, bank, projection_dim=projection_dim, seed=seed)
                   if has_bank else None)
        return coreset.greedy_coreset(features, n_select, projection_dim=projection_dim, seed=seed, initial=initial)
    if mode == "bounded":
        return bounded_greedy_coreset(features, n_select, projection_dim=projection_dim, seed=seed,
                                      bank=bank if has_bank else None)
    raise ConfigError(f"unknown coreset mode {mode!r}; choose one of {', '.join(MODES)}")


def bounded_greedy_coreset(
    features: np.ndarray, n_select: int, *, projection_dim: int | None, seed: int, initial: np.ndarray | None = None,
    bank: np.ndarray | None = None, epsilon: float = DEFAULT_EPSILON, near_points: int | None = DEFAULT_NEAR_POINTS,
) -> np.ndarray:
    """Indices (k,) int64 of the bounded greedy coreset, in selection order; the first one is the seeded start
    (model.coreset.start_index) unless the greedy continues centres chosen elsewhere: `initial` ((N,) squared
    distances to them) or `bank` ((M, D) the centres themselves, in feature space).

    With `bank`, no row's distance to the bank is searched up front (at 20,000 images that search of 2 M rows
    against a 200 k-vector bank took 70-110 s per chunk, 5-8 x the greedy itself). Each bank vector first lowers the
    running distances of its nearest groups, like a centre of this greedy (step 2 of the module docstring): upper
    bounds. A row's distance to the bank is searched (an inverted file on numpy's BLAS, knn.CellSearch) only
    when it is about to be picked, i.e. among a round's candidates: about two rows per pick.

    epsilon in [0, 1): each pick is at least (1 - epsilon) x the farthest point's distance. near_points: points a new
    centre may update (None: all that its annulus reaches, i.e. exact updates). Fewer than n_select come back only
    when every point is covered at distance 0 (duplicates)."""
    if not 0.0 <= epsilon < 1.0:
        raise ConfigError(f"epsilon must be in [0, 1), got {epsilon}")
    if near_points is not None and near_points < 1:
        raise ConfigError(f"near_points must be >= 1 or None, got {near_points}")
    if initial is not None and bank is not None:
        raise ConfigError("pass either initial distances or the bank, not both")
    x = coreset._as_points(features)
    coreset.check_size(x.shape[0], n_select)
    mean = coreset._mean(x)
    projection = None
    if projection_dim is None or projection_dim >= x.shape[1]:
        base, shift = x, mean
    else:  # coreset.project, with the mean and the projection kept for the bank
        projection = coreset._projection(x.shape[1], projection_dim, seed)
        base, shift = (x - mean) @ projection, None
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64).reshape(-1)
        if initial.shape[0] != x.shape[0]:
            raise ConfigError(f"initial distances: {initial.shape[0]} values for {x.shape[0]} rows")
    if bank is not None:
        bank = coreset._as_points(bank)
        if bank.shape[1] != x.shape[1]:
            raise ConfigError(f"bank vectors have {bank.shape[1]} dimensions, the rows {x.shape[1]}")
    with coreset.one_blas_thread():
        kc = _BoundedKCenter(base, shift, epsilon, near_points)
        if bank is not None:  # into the rows' frame z: centred on the rows' mean, then projected like them
            kc.seed_with_bank(bank, mean, projection, seed)
            return kc.run(n_select, 0)
        if initial is not None:
            return kc.run(n_select, 0, None, initial)
        return kc.run(n_select, coreset.start_index(x.shape[0], seed))


class _BoundedKCenter(coreset._KCenter):
    """model.coreset._KCenter with bounded updates: only y (the bank on its principal axes, all d of them) is kept."""

    BOUND_DIMS = None  # all coordinates: y holds the whole (rotated) point, and its distances are the distances
    KEEP_ROWS = False  # no separate copy of the rows for float64 distances
    BATCH_SCALE = 8.0  # larger rounds: the epsilon rule lets most of a round's candidates through

    def __init__(self, base: np.ndarray, shift: np.ndarray | None, epsilon: float, near_points: int | None) -> None:
        super().__init__(base, shift)
        self.relax = (1.0 - epsilon) ** 2  # on squared distances
        size = max(1.0, self.n / self.counts.size)  # mean group size
        self.near_groups = None if near_points is None else max(1, int(round(near_points / size)))
        self.pending: np.ndarray | None = None  # seeded runs: rows whose distance to the bank is an upper bound
        self.bank_search = None  # seeded runs: the bank (in y's frame) to search candidates in

    def seed_with_bank(self, bank: np.ndarray, mean: np.ndarray, projection: np.ndarray | None, seed: int) -> None:
        """Running distances from the bank (M, D) in feature space (the rows' frame: minus mean, then @ projection).

        Each bank vector lowers the running distances of its near_groups nearest groups (by centroid), as a centre
        does in _add_centres, but group by group: one (rows x d) @ (d x bank vectors) product per group. These are
        upper bounds. A row's distance to the bank is searched (bank_search) when it becomes a candidate
        (_candidates), and now for rows no bank vector reached."""
        ys = []
        for lo in range(0, bank.shape[0], coreset._ROW_CHUNK):
            z = bank[lo : lo + coreset._ROW_CHUNK] - mean
            if projection is not None:
                z = z @ projection
            ys.append((z - self.centre) @ self.rotation)
        bank_y = np.concatenate(ys)
        bank_sq = np.einsum("ij,ij->i", bank_y, bank_y)
        n_groups = self.counts.size
        m = n_groups if self.near_groups is None else min(self.near_groups, n_groups)
        near = np.empty((bank_y.shape[0], m), np.int64)  # each bank vector's m nearest groups
        for lo in range(0, bank_y.shape[0], _SEED_BATCH):
            dist = self._centroid_distances(bank_y[lo : lo + _SEED_BATCH])
            near[lo : lo + _SEED_BATCH] = (np.argpartition(dist, m - 1, axis=1)[:, :m] if m < n_groups
                                           else np.arange(n_groups))
        flat = near.ravel()
        by_group = np.argsort(flat, kind="stable")
        members = by_group // m  # bank vector ids, grouped by the group they lower
        bounds = np.searchsorted(flat[by_group], np.arange(n_groups + 1))
        self.mind[:] = np.inf
        for g in range(n_groups):
            a, b = int(self.starts[g]), int(self.ends[g])
            for lo in range(int(bounds[g]), int(bounds[g + 1]), _SEED_BATCH):  # bounds the (rows x q) temporary
                q = members[lo : min(lo + _SEED_BATCH, int(bounds[g + 1]))]
                self._lower_slice(a, b, -2.0 * bank_y[q].T, bank_sq[q])
        self.dmax[:] = np.maximum.reduceat(self.mind, self.starts)
        # A few rows per pick are searched: an inverted file on numpy's BLAS (one cell, i.e. flat, for small banks)
        self.bank_search = knn.CellSearch(bank_y, seed)
        self.pending = np.ones(self.n, bool)  # rows whose distance to the bank is still an upper bound
        unreached = np.flatnonzero(np.isinf(self.mind))
        if unreached.size:
            self._search_bank(unreached)

    def _search_bank(self, rows: np.ndarray) -> None:
        """mind <- min(mind, distance to the bank) for rows (sorted positions), searched in bank_search; those rows
        are then no longer pending."""
        sq = self.bank_search.search(self.y[rows])
        self.mind[rows] = np.minimum(self.mind[rows], sq.astype(np.float64))
        self.pending[rows] = False
        self._refresh(self.group[rows])

    def _candidates(self, want: int) -> tuple[np.ndarray, np.ndarray, float]:
        """The base rule's candidates, once each of them has its distance to the bank searched (seeded runs)."""
        while True:
            idx, vals, tau = super()._candidates(want)
            todo = idx[self.pending[idx]] if self.pending is not None else idx[:0]
            if not todo.size:
                return idx, vals, tau
            self._search_bank(todo)

    def run(self, k: int, start: int, fixed: np.ndarray | None = None, initial: np.ndarray | None = None) -> np.ndarray:
        if fixed is not None:
            raise ConfigError("the bounded greedy takes initial distances, not fixed rows")
        selected = np.empty(k, dtype=np.int64)
        if self.pending is not None:  # seed_with_bank set the running distances
            return self._loop(selected, k, 0)
        if initial is not None:
            self.mind[:] = np.maximum(initial[self.order].astype(np.float64), 0.0)
            self.dmax[:] = np.maximum.reduceat(self.mind, self.starts)
            return self._loop(selected, k, 0)
        position = np.empty(self.n, np.int64)  # original row -> sorted position
        position[self.order] = np.arange(self.n)
        first = position[start]
        selected[0] = start
        c = self.y[first]
        for lo in range(0, self.n, coreset._ROW_CHUNK):  # the first centre: one full pass
            block = self.y[lo : lo + coreset._ROW_CHUNK] - c
            self.mind[lo : lo + coreset._ROW_CHUNK] = np.einsum("ij,ij->i", block, block)
        self.mind[first] = 0.0
        self.dmax[:] = np.maximum.reduceat(self.mind, self.starts)
        return self._loop(selected, k, 1)

    def _greedy_among(self, idx: np.ndarray, vals: np.ndarray, tau: float, want: int) -> list[int]:
        """The greedy among the candidates while each pick is >= (1 - epsilon) x the global farthest distance.

        A pick needs its squared distances to the other candidates: computed for _AMONG_BLOCK candidates at a time,
        in order of running distance (largest first), when a pick first falls in a block. About a quarter of the
        candidates are picked, mostly from the first blocks: the (L, L) matrix is never formed whole."""
        yc = self.y[idx]
        sq = np.einsum("ij,ij->i", yc, yc)
        # Every running distance is <= dmax.max(), and only decreases: a candidate above the threshold is a
        # (1 - epsilon)-farthest point (above tau, it is the farthest point, as in the exact rule).
        limit = max(min(tau, self.relax * float(self.dmax.max())), 0.0)
        rank = np.argsort(-vals, kind="stable")  # candidates by running distance, largest first
        block_of = np.empty(rank.size, np.int64)
        block_of[rank] = np.arange(rank.size) // _AMONG_BLOCK
        row_of = np.empty(rank.size, np.int64)
        row_of[rank] = np.arange(rank.size) % _AMONG_BLOCK
        blocks: dict[int, np.ndarray] = {}
        u = vals.copy()
        picks: list[int] = []
        while len(picks) < want:
            i = int(np.argmax(u))
            if not u[i] > limit:
                break
            picks.append(i)
            block = int(block_of[i])
            if block not in blocks:  # (B, L) squared distances, float32
                members = rank[block * _AMONG_BLOCK : (block + 1) * _AMONG_BLOCK]
                scaled = yc[members]
                scaled *= -2.0  # the block's rows, not all L: a power of two, so the same bits either way
                dist = scaled @ yc.T
                dist += sq[None, :]
                dist += sq[members, None]
                blocks[block] = np.maximum(dist, 0.0, out=dist)
            np.minimum(u, blocks[block][row_of[i]], out=u)
            u[i] = 0.0
        return picks

    def _annuli(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact rule's (centre, group) pairs for centres (j, d) in y's coordinates, cut to each centre's
        near_groups nearest groups."""
        dist, reach, reaches = self._reaches(centres)
        m = self.near_groups
        if m is None or m >= dist.shape[1]:
            centre, group = np.nonzero(reaches)
        else:
            masked = np.where(reaches, dist, np.inf)
            group = np.argpartition(masked, m - 1, axis=1)[:, :m].ravel()  # (j * m,) the m nearest per centre
            centre = np.repeat(np.arange(centres.shape[0]), m)
            keep = np.isfinite(masked[centre, group])
            centre, group = centre[keep], group[keep]
        return self._slices(centre, group, dist, reach)

    def _add_centres(self, picks: np.ndarray) -> None:
        """mind <- min(mind, d(., c)^2) over the new centres c (sorted positions), on the slices they reach."""
        touched = self._lower_to(self.y[picks])
        self.mind[picks] = 0.0
        self._refresh(np.concatenate([touched, self.group[picks]]))

    def _lower_to(self, centres: np.ndarray) -> np.ndarray:
        """mind <- min(mind, d(., c)^2) over centres (j, d) in y's coordinates, group by group, on the slices the
        centres reach. Returns the groups touched (their dmax is stale until _refresh)."""
        pair_centre, lo, hi = self._annuli(centres)
        if not lo.size:
            return np.empty(0, np.int64)
        weights = -2.0 * centres.T  # (d, j)
        cen_sq = np.einsum("ij,ij->i", centres, centres)
        group_of = self.group[lo]
        heads = np.r_[0, np.flatnonzero(group_of[1:] != group_of[:-1]) + 1]
        seg_lo = np.minimum.reduceat(lo, heads).tolist()
        seg_hi = np.maximum.reduceat(hi, heads).tolist()
        bounds = np.r_[heads, lo.size].tolist()
        for i, (a, b) in enumerate(zip(seg_lo, seg_hi)):
            q = pair_centre[bounds[i] : bounds[i + 1]]
            self._lower_slice(a, b, weights[:, q], cen_sq[q])
        return group_of[heads]

    def _lower_slice(self, a: int, b: int, weights: np.ndarray, cen_sq: np.ndarray) -> None:
        """mind[a:b] <- min(mind[a:b], squared distance to the nearest of some centres c), given weights = -2 c.T
        (d, j) and cen_sq = |c|^2 (j,): one (rows x d) @ (d x j) product and a row minimum."""
        part = self.y[a:b] @ weights  # (rows, centres): -2 x.c
        part += cen_sq
        best = part.min(axis=1) + self.head_sq[a:b]  # + |x|^2: the squared distance to the nearest centre
        np.minimum(self.mind[a:b], np.maximum(best, 0.0), out=self.mind[a:b])

    def _refresh(self, groups: np.ndarray) -> None:
        """dmax of the given groups (repeats allowed) from mind."""
        groups = np.unique(groups)
        sizes = self.counts[groups]
        self.dmax[groups] = np.maximum.reduceat(self.mind[coreset._ranges(self.starts[groups], self.ends[groups])],
                                                np.cumsum(sizes) - sizes)

