"""Leave-one-image-out scores against brute-force rebuilds of the memory bank without the image."""

from types import SimpleNamespace

import numpy as np
import pytest

from model import knn
from model.config import PatchCoreConfig
from model.coreset import greedy_coreset
from model.detector import Detector
from model.leave_out import LeaveOneOut

N_IMAGES, GRID, DIM = 12, (5, 6), 8


@pytest.fixture(scope="module")
def case():
    """12 'images' of 5 x 6 patches in 8-d, clustered so that images share structure, and a 15 % greedy bank."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, DIM)) * 3
    emb = (centres[rng.integers(6, size=(N_IMAGES, *GRID))] + rng.normal(size=(N_IMAGES, *GRID, DIM))).astype(np.float32)
    rows = emb.reshape(-1, DIM)
    owners = np.repeat(np.arange(N_IMAGES), GRID[0] * GRID[1]).astype(np.int32)
    picked = greedy_coreset(rows, int(0.15 * len(rows)), projection_dim=None, seed=0)
    return emb, rows, owners, rows[picked], owners[picked]


def detector_over(bank: np.ndarray, reweight: bool) -> Detector:
    config = PatchCoreConfig(reweight=reweight, num_neighbors=3)
    return Detector(config, SimpleNamespace(dim=DIM), knn.build_index(bank, config.index, 0), None)


def brute_force_score(emb_i: np.ndarray, bank: np.ndarray, reweight: bool) -> float:
    """The product's own scoring path (Detector) over a flat index built from `bank`."""
    det = detector_over(bank, reweight)
    patch, ids = det.patch_scores(emb_i[None])
    return float(det.image_scores(emb_i[None], patch, ids)[0])


def naive_refill(rows, owners, bank, bank_owners, i) -> np.ndarray:
    """Step 2 of model.leave_out, the slow way: every distance by numpy, one greedy pick at a time."""
    d_all = ((rows[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1)  # (N, M)
    nearest, radius_sq = d_all.argmin(1), d_all.min(1).max()
    keep = bank_owners != i
    cand = np.flatnonzero((bank_owners[nearest] == i) & (owners != i))
    dist = d_all[cand][:, keep].min(1)
    picked = []
    for _ in range(int((~keep).sum())):
        if not cand.size or dist.max() <= radius_sq:
            break
        j = int(np.argmax(dist))
        picked.append(cand[j])
        dist = np.minimum(dist, ((rows[cand].astype(np.float64) - rows[cand[j]]) ** 2).sum(-1))
    return rows[picked]


@pytest.mark.parametrize("reweight", [False, True])
def test_leave_out_without_refill_equals_a_bank_rebuilt_without_the_image(case, reweight):
    emb, rows, owners, bank, bank_owners = case
    config = PatchCoreConfig()
    loo = LeaveOneOut(knn.build_index(bank, config.index, 0), bank, bank_owners, rows, owners)
    empty = np.empty((0, DIM), np.float32)
    for i in range(N_IMAGES):
        expected = brute_force_score(emb[i], bank[bank_owners != i], reweight)
        assert loo.image_score(i, empty, 3 if reweight else None) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reweight", [False, True])
def test_leave_out_with_refill_equals_its_naive_reference(case, reweight):
    emb, rows, owners, bank, bank_owners = case
    loo = LeaveOneOut(knn.build_index(bank, PatchCoreConfig().index, 0), bank, bank_owners, rows, owners)
    fills = loo.refills(np.arange(N_IMAGES))
    n_refilled = 0
    for i in range(N_IMAGES):
        ref = naive_refill(rows, owners, bank, bank_owners, i)
        np.testing.assert_array_equal(fills[i], ref)
        n_refilled += len(ref)
        expected = brute_force_score(emb[i], np.concatenate([bank[bank_owners != i], ref]), reweight)
        assert loo.image_score(i, fills[i], 3 if reweight else None) == pytest.approx(expected, rel=1e-5)
    assert n_refilled > 0  # the case does open holes
    scores = loo.image_scores(np.arange(N_IMAGES), None)
    seen = [brute_force_score(emb[i], bank, False) for i in range(N_IMAGES)]
    assert np.all(scores >= np.array(seen) - 1e-6)  # leaving an image out never brings the bank closer to it


def test_rows_must_be_grouped_by_image(case):
    emb, rows, owners, bank, bank_owners = case
    index = knn.build_index(bank, PatchCoreConfig().index, 0)
    with pytest.raises(Exception, match="grouped image by image"):
        LeaveOneOut(index, bank, bank_owners, rows, owners[::-1].copy())


def test_large_bank_neighbour_lists_from_ivf_match_the_flat_search(monkeypatch):
    """Above EXACT_ASSIGNMENT_MAX_BANK the neighbour lists come from an IVF-Flat search: the scores must be those of
    the exact (flat) lists, up to a rare missed neighbour."""
    from model import leave_out

    rng = np.random.default_rng(1)
    n_images, grid, dim = 40, (16, 16), 16
    centres = rng.normal(size=(30, dim)) * 2
    emb = (centres[rng.integers(30, size=(n_images, *grid))] + rng.normal(size=(n_images, *grid, dim)))
    rows = emb.reshape(-1, dim).astype(np.float32)
    owners = np.repeat(np.arange(n_images), grid[0] * grid[1]).astype(np.int32)
    picked = greedy_coreset(rows, 1500, projection_dim=None, seed=0)
    bank, bank_owners = rows[picked], owners[picked]
    assert bank.shape[0] > leave_out.EXACT_ASSIGNMENT_MAX_BANK
    index = knn.build_index(bank, PatchCoreConfig().index, 0)
    images = np.arange(0, n_images, 3)
    approx = LeaveOneOut(index, bank, bank_owners, rows, owners).image_scores(images, None)
    monkeypatch.setattr(leave_out, "EXACT_ASSIGNMENT_MAX_BANK", 10**9)
    exact = LeaveOneOut(index, bank, bank_owners, rows, owners).image_scores(images, None)
    np.testing.assert_allclose(approx, exact, rtol=0.01)
    assert np.mean(np.isclose(approx, exact, rtol=1e-5)) >= 0.8  # most of them to float rounding
