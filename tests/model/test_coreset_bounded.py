import numpy as np
import pytest

from model.config import PatchCoreConfig
from model.coreset import coverage_radius, greedy_coreset, greedy_coreset_reference, nearest_sq_distances
from model import coreset_bounded
from model.coreset_bounded import bounded_greedy_coreset, select_coreset
from model.errors import ConfigError


def blobs(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)) * 6
    return (centres[rng.integers(40, size=n)] + rng.standard_normal((n, d))).astype(np.float32)


def sq_to(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n,) squared distance of each point to its nearest centre, brute force in float64."""
    p, c = points.astype(np.float64), centres.astype(np.float64)
    return ((p[:, None, :] - c[None]) ** 2).sum(-1).min(1)


@pytest.mark.parametrize(("data", "projection_dim"), [("noise", None), ("blobs", None), ("blobs", 8)])
def test_without_slack_and_with_every_group_it_is_the_exact_greedy(data, projection_dim):
    """epsilon 0 and unlimited updates: the one-at-a-time rule, computed in float32: the reference's picks."""
    x = (np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32) if data == "noise"
         else blobs(6000, 24, seed=1))
    fast = bounded_greedy_coreset(x, 400, projection_dim=projection_dim, seed=2, epsilon=0.0, near_points=None)
    slow = greedy_coreset_reference(x, 400, projection_dim=projection_dim, seed=2)
    # float32 vs float64: near-ties (common inside blobs) may swap picks; the rule itself is checked pick by pick below
    assert len(set(fast.tolist()) & set(slow.tolist())) >= 0.9 * 400
    assert coverage_radius(x, fast) == pytest.approx(coverage_radius(x, slow), rel=1e-3)


@pytest.mark.parametrize(("epsilon", "data"), [(0.0, "blobs"), (0.05, "noise"), (0.05, "blobs"), (0.2, "noise")])
def test_every_pick_is_a_one_minus_epsilon_farthest_point(epsilon, data):
    """With every group updated, each pick is at least (1 - epsilon) x the farthest point's distance to the picks
    before it (checked by brute force): the radius is then within 2 / (1 - epsilon) of the optimal k-center."""
    x = np.random.default_rng(3).standard_normal((2500, 16)).astype(np.float32) if data == "noise" else blobs(
        2500, 16, seed=3)
    picks = bounded_greedy_coreset(x, 200, projection_dim=None, seed=0, epsilon=epsilon, near_points=None)
    assert len(set(picks.tolist())) == 200
    z = x.astype(np.float64)
    mind = ((z - z[picks[0]]) ** 2).sum(1)
    for p in picks[1:]:
        assert mind[p] >= (1 - epsilon) ** 2 * mind.max() * (1 - 1e-5)
        mind = np.minimum(mind, ((z - z[p]) ** 2).sum(1))


@pytest.mark.parametrize("data", ["noise", "blobs"])
def test_bounded_updates_stay_close_to_the_exact_radius(data):
    """The default (epsilon 0.05, a few groups per centre) on structured and on structureless data."""
    x = (np.random.default_rng(4).standard_normal((20000, 32)).astype(np.float32) if data == "noise"
         else blobs(20000, 32, seed=4))
    for k in (200, 2000):
        exact = greedy_coreset(x, k, projection_dim=None, seed=0)
        bounded = bounded_greedy_coreset(x, k, projection_dim=None, seed=0, near_points=1024)
        assert len(set(bounded.tolist())) == k
        assert coverage_radius(x, bounded) <= 1.10 * coverage_radius(x, exact)


def test_initial_distances_extend_a_bank():
    x = blobs(5000, 16, seed=5)
    bank, new = x[:500], x[500:]
    initial = nearest_sq_distances(new, bank, projection_dim=None, seed=0)
    picks = bounded_greedy_coreset(new, 300, projection_dim=None, seed=0, initial=initial, near_points=None)
    # The first pick is the new row farthest from the bank.
    assert picks[0] == int(np.argmax(sq_to(new, bank)))
    both = np.concatenate([bank, new[picks]])
    exact = greedy_coreset(new, 300, projection_dim=None, seed=0, initial=initial)
    assert coverage_radius(np.concatenate([bank, new]), np.r_[np.arange(500), 500 + picks]) <= 1.10 * coverage_radius(
        np.concatenate([bank, new]), np.r_[np.arange(500), 500 + exact])
    assert both.shape == (800, 16)


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_a_bank_seeds_the_greedy_as_its_exact_distances_do(projection_dim):
    """Every group updated (near_points None), no slack: seeding from the bank vectors gives the picks that the
    rows' exact distances to the bank give (float32 vs float64: near-ties may swap a few), first the row farthest
    from the bank, in the greedy's (projected) space."""
    x = blobs(6000, 16, seed=8)
    bank, new = x[:600], x[600:]
    initial = nearest_sq_distances(new, bank, projection_dim=projection_dim, seed=1)  # flat: exact
    seeded = bounded_greedy_coreset(new, 300, projection_dim=projection_dim, seed=1, bank=bank, epsilon=0.0,
                                    near_points=None)
    slow = greedy_coreset_reference(new, 300, projection_dim=projection_dim, seed=1, initial=initial)
    assert seeded[0] == slow[0] == int(np.argmax(initial))
    assert len(set(seeded.tolist()) & set(slow.tolist())) >= 0.9 * 300
    both = np.concatenate([bank, new])
    assert coverage_radius(both, np.r_[np.arange(600), 600 + seeded]) == pytest.approx(
        coverage_radius(both, np.r_[np.arange(600), 600 + slow]), rel=1e-3)


@pytest.mark.parametrize("data", ["noise", "blobs"])
def test_a_bank_seeds_the_default_greedy_without_picking_covered_rows(data):
    """Defaults scaled down (each bank vector reaches one group; candidates are searched around four): rows that
    duplicate bank vectors are never picked, and the radius stays within 10 % of the exactly seeded greedy's."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((12000, 24)).astype(np.float32) if data == "noise" else blobs(12000, 24, seed=9)
    bank = x[:2000]
    new = np.concatenate([bank[:1000], x[2000:]])  # the first 1,000 rows are bank vectors
    seeded = bounded_greedy_coreset(new, 500, projection_dim=None, seed=0, bank=bank, near_points=256)
    assert len(set(seeded.tolist())) == 500 and seeded.min() >= 1000
    initial = sq_to(new, bank)
    exact = bounded_greedy_coreset(new, 500, projection_dim=None, seed=0, initial=initial, near_points=None)
    both = np.concatenate([bank, new])
    radius = {name: coverage_radius(both, np.r_[np.arange(2000), 2000 + picks])
              for name, picks in (("seeded", seeded), ("exact", exact))}
    assert radius["seeded"] <= 1.10 * radius["exact"]


def test_select_continues_a_bank_in_either_greedy():
    x = blobs(4000, 12, seed=10)
    bank, new = x[:400], x[400:]
    for mode in ("exact", "bounded"):
        picks = select_coreset(new, 200, mode=mode, projection_dim=None, seed=0, bank=bank)
        assert picks[0] == int(np.argmax(sq_to(new, bank)))
    with pytest.raises(ConfigError, match="either"):
        bounded_greedy_coreset(new, 10, projection_dim=None, seed=0, bank=bank, initial=sq_to(new, bank))


def test_duplicates_stop_at_the_distinct_count():
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2).astype(np.float32)
    x = np.repeat(grid, 3, axis=0)[np.random.default_rng(1).permutation(1200)]
    picks = bounded_greedy_coreset(x, 1000, projection_dim=None, seed=2)
    assert len(picks) == 400 and len({tuple(x[i]) for i in picks}) == 400


def test_seeded_and_deterministic():
    x = blobs(3000, 12, seed=6)
    a = bounded_greedy_coreset(x, 100, projection_dim=6, seed=7)
    np.testing.assert_array_equal(a, bounded_greedy_coreset(x, 100, projection_dim=6, seed=7))
    assert not np.array_equal(a, bounded_greedy_coreset(x, 100, projection_dim=6, seed=8))


def test_select_dispatches_on_the_config_mode_and_refuses_unknown_ones():
    x = blobs(2000, 8, seed=7)
    np.testing.assert_array_equal(select_coreset(x, 50, mode="exact", projection_dim=None, seed=0),
                                  greedy_coreset(x, 50, projection_dim=None, seed=0))
    np.testing.assert_array_equal(select_coreset(x, 50, mode="bounded", projection_dim=None, seed=0),
                                  bounded_greedy_coreset(x, 50, projection_dim=None, seed=0))
    with pytest.raises(ConfigError, match="choose one of"):
        select_coreset(x, 50, mode="fast", projection_dim=None, seed=0)
    # auto: the exact greedy up to AUTO_EXACT_MAX_CENTRES centres, the bounded one above
    limit = coreset_bounded.AUTO_EXACT_MAX_CENTRES
    assert (coreset_bounded.resolve_mode("auto", limit), coreset_bounded.resolve_mode("auto", limit + 1)) == (
        "exact", "bounded")
    assert PatchCoreConfig().coreset_mode == "auto"
    exact, bounded = (greedy_coreset(x, 1200, projection_dim=None, seed=0),
                      bounded_greedy_coreset(x, 1200, projection_dim=None, seed=0))
    assert not np.array_equal(exact, bounded)  # so that the dispatch below is seen
    for n_limit, expected in ((1200, exact), (1199, bounded)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(coreset_bounded, "AUTO_EXACT_MAX_CENTRES", n_limit)
            np.testing.assert_array_equal(select_coreset(x, 1200, mode="auto", projection_dim=None, seed=0), expected)
    with pytest.raises(ConfigError, match="coreset_mode"):
        PatchCoreConfig(coreset_mode="fast")
    with pytest.raises(ConfigError, match="epsilon"):
        bounded_greedy_coreset(x, 5, projection_dim=None, seed=0, epsilon=1.0)
