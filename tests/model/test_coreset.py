import numpy as np
import pytest

from model.coreset import (
    coverage_radius,
    greedy_coreset,
    nearest_sq_distances,
    greedy_coreset_reference,
    greedy_k_center,
    project,
    start_index,
)
from model.errors import ConfigError


def blobs(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered data, like patch embeddings: 40 centres, unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)) * 6
    return (centres[rng.integers(40, size=n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("projection_dim", [None, 8])
def test_equals_naive_reference(seed, projection_dim):
    x = np.random.default_rng(seed).standard_normal((1500, 24)).astype(np.float32)
    fast = greedy_coreset(x, 150, projection_dim=projection_dim, seed=seed)
    slow = greedy_coreset_reference(x, 150, projection_dim=projection_dim, seed=seed)
    np.testing.assert_array_equal(fast, slow)


def test_equals_reference_on_clustered_data_where_pruning_matters():
    x = blobs(4000, 16, seed=5)
    fast = greedy_coreset(x, 400, projection_dim=None, seed=3)
    slow = greedy_coreset_reference(x, 400, projection_dim=None, seed=3)
    # float32 (fast) and float64 (reference) may swap two picks whose distances tie to 1e-6: same set, same radius
    assert set(fast.tolist()) == set(slow.tolist()) or (fast[:100] == slow[:100]).all()
    assert coverage_radius(x, fast) == pytest.approx(coverage_radius(x, slow), rel=1e-4)


def test_deterministic_per_seed_and_seed_point_included():
    x = blobs(2000, 12, seed=1)
    a = greedy_coreset(x, 100, projection_dim=6, seed=7)
    b = greedy_coreset(x, 100, projection_dim=6, seed=7)
    c = greedy_coreset(x, 100, projection_dim=6, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0] == start_index(len(x), 7)
    assert len(set(a.tolist())) == 100


def test_greedy_is_farthest_point_each_step():
    """Each pick is the point farthest from all earlier picks (the k-center greedy rule), checked directly."""
    x = blobs(600, 5, seed=2)
    z = project(x, None, 0).astype(np.float64)
    sel = greedy_k_center(project(x, None, 0), 30, start=0)
    for t in range(1, 30):
        d = ((z[:, None, :] - z[sel[:t]][None]) ** 2).sum(-1).min(1)
        assert d[sel[t]] == pytest.approx(d.max(), rel=1e-5)


def test_coverage_radius_shrinks_and_beats_random():
    x = blobs(3000, 16, seed=4)
    r10 = coverage_radius(x, greedy_coreset(x, 30, projection_dim=None, seed=0))
    r100 = coverage_radius(x, greedy_coreset(x, 300, projection_dim=None, seed=0))
    rand = coverage_radius(x, np.random.default_rng(0).choice(len(x), 300, replace=False))
    assert r100 < r10
    assert r100 < rand


def test_duplicates_stop_early_with_distinct_points():
    x = np.repeat(np.eye(3, dtype=np.float32), 50, axis=0)  # 3 distinct vectors, 50 copies each
    sel = greedy_coreset(x, 10, projection_dim=None, seed=0)
    assert len(sel) == 3 and len({tuple(x[i]) for i in sel}) == 3


def test_projection_is_seeded_and_reduces_dimension():
    x = blobs(100, 32, seed=0)
    np.testing.assert_array_equal(project(x, 8, 1), project(x, 8, 1))
    assert project(x, 8, 1).shape == (100, 8)
    assert project(x, 64, 1).shape == (100, 32)  # no projection above the input dimension


@pytest.mark.parametrize("k", [0, 101])
def test_bad_sizes_raise(k):
    with pytest.raises(ConfigError, match="cannot select"):
        greedy_coreset(np.zeros((100, 4), np.float32), k, projection_dim=None, seed=0)


def naive_k_center(z: np.ndarray, k: int, start: int) -> np.ndarray:
    """The reference loop on given points (no projection, no centring)."""
    z = z.astype(np.float64)
    mind, point, out = np.full(len(z), np.inf), start, []
    for _ in range(k):
        out.append(point)
        mind = np.minimum(mind, ((z - z[point]) ** 2).sum(axis=1))
        point = int(np.argmax(mind))
        if mind[point] <= 0.0:
            break
    return np.array(out)


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_bit_exact_with_reference_through_groups_and_batches(projection_dim):
    """Large enough for k-means groups (n / 256 of them) and many batches of centres: still the same picks."""
    x = blobs(8000, 32, seed=6)
    fast = greedy_coreset(x, 1500, projection_dim=projection_dim, seed=4)
    slow = greedy_coreset_reference(x, 1500, projection_dim=projection_dim, seed=4)
    np.testing.assert_array_equal(fast, slow)


def test_exact_ties_go_to_the_lowest_index_like_the_reference():
    """A shuffled integer lattice: distances tie exactly all the time; np.argmax's first-index rule must hold."""
    grid = np.stack(np.meshgrid(np.arange(40), np.arange(40)), -1).reshape(-1, 2).astype(np.float32)
    grid = grid[np.random.default_rng(0).permutation(len(grid))]
    np.testing.assert_array_equal(
        greedy_coreset(grid, 400, projection_dim=None, seed=1),
        greedy_coreset_reference(grid, 400, projection_dim=None, seed=1),
    )


def test_duplicates_stop_at_the_distinct_count_like_the_reference():
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2).astype(np.float32)
    x = np.repeat(grid, 3, axis=0)[np.random.default_rng(1).permutation(1200)]
    fast = greedy_coreset(x, 1000, projection_dim=None, seed=2)
    np.testing.assert_array_equal(fast, greedy_coreset_reference(x, 1000, projection_dim=None, seed=2))
    assert len(fast) == 400


def test_k_center_on_uncentred_points_equals_the_naive_loop():
    z = blobs(3000, 16, seed=3) + np.float32(50.0)  # large norms: the float32 bounds must stay conservative
    np.testing.assert_array_equal(greedy_k_center(z, 500, start=7), naive_k_center(z, 500, start=7))


@pytest.mark.parametrize(("n_fixed", "projection_dim"), [(1, None), (700, None), (2500, 8)])
def test_extending_fixed_rows_equals_the_reference(n_fixed, projection_dim):
    """The builder's sequential chunks: the bank so far is stacked first and kept; the new picks extend it."""
    x = blobs(6000, 24, seed=8)
    fixed = np.random.default_rng(2).choice(len(x), n_fixed, replace=False)
    fast = greedy_coreset(x, 900, projection_dim=projection_dim, seed=1, fixed=fixed)
    slow = greedy_coreset_reference(x, 900, projection_dim=projection_dim, seed=1, fixed=fixed)
    np.testing.assert_array_equal(fast, slow)
    assert not np.isin(fast, fixed).any()
    # The first pick is the point farthest from the fixed rows.
    d = ((x[:, None, :].astype(np.float64) - x[fixed[:50]][None]) ** 2).sum(-1).min(1) if n_fixed <= 50 else None
    if d is not None:
        assert fast[0] == int(np.argmax(d))


def test_extending_stops_when_the_fixed_rows_cover_everything():
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2).astype(np.float32)
    x = np.concatenate([grid, grid[::-1]])  # the second half duplicates the first
    out = greedy_coreset(x, 50, projection_dim=None, seed=0, fixed=np.arange(100))
    assert out.size == 0
    np.testing.assert_array_equal(out, greedy_coreset_reference(x, 50, projection_dim=None, seed=0, fixed=np.arange(100)))


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_initial_distances_equal_the_reference_and_the_stacked_bank(projection_dim):
    """The builder's chunks: the bank so far enters as each new row's distance to it, not as stacked rows."""
    x = blobs(7000, 24, seed=9)
    bank, new = x[:600], x[600:]
    initial = nearest_sq_distances(new, bank, projection_dim=projection_dim, seed=2)
    fast = greedy_coreset(new, 800, projection_dim=projection_dim, seed=2, initial=initial)
    np.testing.assert_array_equal(
        fast, greedy_coreset_reference(new, 800, projection_dim=projection_dim, seed=2, initial=initial))
    # The float32 search may break near-ties differently from the float64 stacked run: same picks almost always,
    # and the same coverage of all the rows.
    stacked = greedy_coreset(x, 800, projection_dim=projection_dim, seed=2, fixed=np.arange(600)) - 600
    assert np.mean(fast == stacked) > 0.95
    r_fast = coverage_radius(x, np.r_[np.arange(600), fast + 600])
    r_stacked = coverage_radius(x, np.r_[np.arange(600), stacked + 600])
    assert abs(r_fast - r_stacked) <= 0.01 * r_stacked


def test_nearest_sq_distances_exact_for_small_banks_and_upper_bounds_for_large():
    x = blobs(3000, 16, seed=10)
    for bank in (x[:500], x[:20000] if len(x) > 20000 else blobs(12000, 16, seed=11)):
        got = nearest_sq_distances(x, bank, projection_dim=None, seed=0)
        exact = np.array([((bank.astype(np.float64) - p) ** 2).sum(1).min() for p in x.astype(np.float64)])
        assert np.all(got >= exact * (1 - 1e-4) - 1e-4)  # never below the true nearest distance
        if len(bank) <= 4096:
            np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
        else:
            assert np.mean(np.isclose(got, exact, rtol=1e-4, atol=1e-4)) > 0.95  # IVF: almost always exact


def test_initial_and_fixed_together_are_refused():
    x = blobs(500, 4, seed=0)
    with pytest.raises(ConfigError, match="either"):
        greedy_coreset(x, 10, projection_dim=None, seed=0, fixed=np.arange(5), initial=np.zeros(500))
