import faiss
import numpy as np
import pytest

from model import knn
from model.config import IndexConfig
from model.errors import ConfigError


def brute_force(bank, queries, k):
    d = ((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, axis=1), ids


@pytest.mark.parametrize("k", [1, 4])
def test_batched_flat_search_equals_brute_force(monkeypatch, k):
    monkeypatch.setattr(knn, "SEARCH_BATCH", 37)  # force many batches, including a ragged last one
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((300, 16)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(), seed=0)
    sq, ids = knn.search(index, queries, k=k)
    ref_sq, ref_ids = brute_force(bank, queries, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sq, ref_sq, rtol=1e-4, atol=1e-4)  # SQUARED L2 distances


def test_float64_and_non_contiguous_queries_are_coerced():
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((50, 8)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(), seed=0)
    q = rng.standard_normal((20, 16))[:, ::2]  # float64, strided
    np.testing.assert_array_equal(knn.search(index, q)[1], brute_force(bank, q, 1)[1])


def test_ivf_flat_probing_every_list_is_exact():
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((4000, 16)).astype(np.float32)
    queries = rng.standard_normal((100, 16)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(kind="ivf_flat", nlist=32, nprobe=32), seed=0)
    np.testing.assert_array_equal(knn.search(index, queries)[1], brute_force(bank, queries, 1)[1])


def test_hnsw_has_high_recall():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((5000, 16)).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(kind="hnsw", ef_search=64), seed=0)
    recall = (knn.search(index, queries)[1][:, 0] == brute_force(bank, queries, 1)[1][:, 0]).mean()
    assert recall >= 0.9


def test_ivf_pq_validates_its_parameters():
    bank = np.zeros((20000, 30), np.float32)
    with pytest.raises(ConfigError, match="must divide"):
        knn.build_index(bank, IndexConfig(kind="ivf_pq", pq_m=16), seed=0)
    with pytest.raises(ConfigError, match="needs >="):
        knn.build_index(bank[:100, :16], IndexConfig(kind="ivf_pq", pq_m=4), seed=0)


def test_reconstruct_returns_bank_vectors():
    bank = np.random.default_rng(4).standard_normal((100, 8)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(), seed=0)
    np.testing.assert_array_equal(knn.reconstruct(index, np.array([3, 7])), bank[[3, 7]])


def test_reconstruct_works_on_ivf_indexes():
    bank = np.random.default_rng(5).standard_normal((2000, 8)).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(kind="ivf_flat", nlist=16), seed=0)
    np.testing.assert_array_equal(knn.reconstruct(index, np.array([3, 1999])), bank[[3, 1999]])
    np.testing.assert_array_equal(knn.reconstruct(index, np.array([7])), bank[[7]])  # direct map reused


@pytest.mark.parametrize("k", [1, 4])
def test_search_excluding_equals_brute_force_over_the_foreign_vectors(k):
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    bank_owners = np.repeat(np.arange(10), 30)  # image 3's 30 vectors sit around the queries of image 3
    queries = bank[90:120] + 0.01 * rng.normal(size=(30, 16)).astype(np.float32)
    owners = np.full(30, 3)
    index = knn.build_index(bank, IndexConfig(), 0)
    sq, ids = knn.search_excluding(index, queries, owners, bank_owners, k=k)
    d = ((queries[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1)
    d[:, bank_owners == 3] = np.inf
    np.testing.assert_array_equal(ids, np.argsort(d, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(sq, np.sort(d, axis=1)[:, :k], rtol=1e-4)
    assert not np.isin(bank_owners[ids], 3).any()


@pytest.mark.parametrize("query_block, bank_block", [(4096, 16384), (7, 5)])
def test_flat_nearest_equals_faiss_flat_search_and_float64_brute_force(query_block, bank_block):
    """knn.FlatNearest (numpy BLAS, blocked over queries and bank) against FAISS's own flat search and a float64
    brute force: same nearest vector (where it is not a near-tie) and the same squared distance within float32
    rounding of the norms."""
    rng = np.random.default_rng(3)
    bank = (rng.normal(size=(503, 32)) * 3 + 5).astype(np.float32)  # offset: large norms, as patch embeddings have
    queries = np.concatenate([bank[rng.integers(0, 503, 100)] + rng.normal(0, 0.2, (100, 32)),
                              rng.normal(size=(61, 32)) * 3 + 5]).astype(np.float32)
    index = knn.build_index(bank, IndexConfig(kind="flat"), seed=0)
    nearest = knn.FlatNearest(index, query_block=query_block, bank_block=bank_block)
    assert np.shares_memory(nearest.bank, faiss.rev_swig_ptr(index.get_xb(), 1))  # a view, no copy
    sq, ids = nearest.search(queries)
    f_sq, f_ids = knn.search(index, queries, k=1)
    exact = ((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)
    order = np.sort(exact, axis=1)
    clear = order[:, 1] - order[:, 0] > 1e-3  # not a near-tie
    assert clear.sum() > 150
    np.testing.assert_array_equal(ids[clear, 0], exact.argmin(1)[clear])
    np.testing.assert_array_equal(ids[clear, 0], f_ids[clear, 0])
    np.testing.assert_allclose(sq[:, 0], order[:, 0], atol=2e-3 * np.abs(queries).max() ** 2 / 100)
    np.testing.assert_allclose(sq, f_sq, rtol=1e-4, atol=1e-3)
    assert sq.dtype == np.float32 and ids.dtype == np.int64 and sq.shape == ids.shape == (161, 1)
    with pytest.raises(ConfigError, match="IndexFlatL2"):
        knn.FlatNearest(knn.build_index(bank, IndexConfig(kind="hnsw"), seed=0))


def test_cell_search_finds_the_nearest_vector_of_clustered_queries_and_never_underestimates(monkeypatch):
    """knn.CellSearch (the bounded greedy's candidate search): on clustered data, the nearest vector for nearly every
    query (as FAISS's IVF-Flat with the same cells and probes would); a distance it returns is always that of a
    real bank vector, hence never below the true nearest one; duplicates of bank vectors come out at ~0."""
    monkeypatch.setattr(knn, "SEARCH_BATCH", 500)  # several query batches, a ragged last one
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((60, 16)) * 5
    bank = (centres[rng.integers(60, size=6000)] + rng.standard_normal((6000, 16))).astype(np.float32)
    queries = (centres[rng.integers(60, size=1300)] + rng.standard_normal((1300, 16))).astype(np.float32)
    search = knn.CellSearch(bank, seed=0)
    assert len(search.bounds) - 1 == int(np.sqrt(6000))  # 77 cells, 16 probed
    got = search.search(queries).astype(np.float64)
    exact = brute_force(bank, queries, 1)[0][:, 0]
    assert np.all(got >= exact * (1 - 1e-4) - 1e-4)
    assert np.mean(np.isclose(got, exact, rtol=1e-4, atol=1e-4)) >= 0.97
    assert search.search(bank[:50]).max() <= 1e-4 * float((bank * bank).sum(1).max())
    one_cell = knn.CellSearch(bank[:60], seed=0)  # under 2 x 39 vectors: one cell, i.e. a flat search
    np.testing.assert_allclose(one_cell.search(queries), brute_force(bank[:60], queries, 1)[0][:, 0], rtol=1e-4,
                               atol=1e-3)
