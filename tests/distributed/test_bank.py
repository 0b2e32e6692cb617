"""The driver's and the workers' sides of a cluster build, without Ray: fed each image's patches that the bank does
not cover yet, ChunkedBank gives the local builder's bank pick for pick over the same chunks, and proves it."""

import faiss
import numpy as np
import pytest

from distributed.bank import BankFilter, ChunkedBank
from imaging.decode import list_images, read_image
from index_store.build import BuildOptions, _chunk_rows, build_index, split_held_out
from model.config import PatchCoreConfig
from model.features import PatchEmbedder

CONFIG = PatchCoreConfig(image_size=64, coreset_ratio=0.1)  # 8 x 8 patches per image


def radius(patches: np.ndarray, bank: np.ndarray) -> float:
    """Coverage radius: the largest distance from a patch to its nearest bank vector."""
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    d, _ = index.search(np.ascontiguousarray(patches, dtype=np.float32), 1)
    return float(np.sqrt(d.max()))


def driver_bank(patches, per_image, options, k_max, margin, lag=0):
    """Feed ChunkedBank image by image as workers would: each image filtered against the bank published `lag`
    versions ago (workers run ahead of the driver)."""
    bank = ChunkedBank(CONFIG, patches.shape[0], per_image, patches.shape[1], _chunk_rows(per_image, options), k_max,
                       options.batch_size, margin)
    published = [bank.current()]
    for rows in patches.reshape(-1, per_image, patches.shape[1]):
        _, tau_sq, vectors = published[max(0, len(published) - 1 - lag)]
        worker = BankFilter(vectors.copy(), tau_sq, CONFIG.seed)
        bank.add(rows[worker.keep(rows)], worker.tau_sq if worker.index is not None else 0.0)
        if bank.version != published[-1][0]:
            published.append(bank.current())
    return bank, *bank.finish()


@pytest.fixture(scope="module")
def train(sample_dir):
    paths, _ = split_held_out(list_images(sample_dir), 200, CONFIG.seed)  # what a chunked build keeps in the bank
    embedder = PatchEmbedder(CONFIG)
    emb = embedder.embed([read_image(p)[0] for p in paths])
    return paths, emb.reshape(-1, embedder.dim), embedder.grid[0] * embedder.grid[1]


@pytest.mark.parametrize("chunk,batch,margin,lag", [(5 * 64, 3, 0.0, 0), (3 * 64, 1, 0.5, 0), (3 * 64, 1, 0.5, 1),
                                                    (3 * 64, 1, 0.9, 0)])
def test_filtered_patches_give_the_local_builders_picks(sample_dir, train, chunk, batch, margin, lag):
    """Margins 0 and 0.5 keep every patch the greedy picks here; 0.9 drops some, and then the driver must not call
    those chunks exact: whenever it says every chunk is exact, the picks are the local builder's."""
    paths, patches, per_image = train
    options = BuildOptions(progress=False, max_chunk_patches=chunk, batch_size=batch)
    local = build_index(list_images(sample_dir), CONFIG, options)
    assert local.metadata.coreset_method.startswith("sequential")
    k_max = int(round(CONFIG.coreset_ratio * len(paths) * per_image))
    bank, vectors, owners, n_seen, method = driver_bank(patches, per_image, options, k_max, margin, lag)
    assert method == local.metadata.coreset_method and n_seen == local.metadata.n_patches_seen
    print(f"margin {margin}, lag {lag}: {bank.n_received} of {n_seen} patches sent, "
          f"{bank.exact_chunks}/{bank.n_chunks} chunks exact")
    if margin <= 0.5:
        assert bank.exact_chunks == bank.n_chunks
    if bank.exact_chunks == bank.n_chunks:
        np.testing.assert_array_equal(owners, local.bank_image_ids)
        np.testing.assert_allclose(vectors, local.index.reconstruct_n(0, local.index.ntotal), rtol=1e-5, atol=1e-5)
    else:
        assert not np.array_equal(owners, local.bank_image_ids)
    if margin == 0:
        assert bank.n_received == n_seen
    else:  # the filter dropped patches, more of them when the workers see the newest bank
        assert bank.n_received < n_seen


def test_a_margin_past_the_radius_is_caught(train):
    """Workers that drop too much (tau above the chunk's radius) change the bank, and the driver says so."""
    paths, patches, per_image = train
    options = BuildOptions(progress=False, max_chunk_patches=3 * 64, batch_size=1)
    k_max = int(round(CONFIG.coreset_ratio * len(paths) * per_image))
    bank = ChunkedBank(CONFIG, patches.shape[0], per_image, patches.shape[1], _chunk_rows(per_image, options), k_max,
                       options.batch_size, 0.5)
    for rows in patches.reshape(-1, per_image, patches.shape[1]):
        _, _, vectors = bank.current()
        tau_sq = 16.0 * bank.tau_sq  # twice the last radius: drops patches the greedy would pick
        worker = BankFilter(vectors.copy(), tau_sq, CONFIG.seed)
        bank.add(rows[worker.keep(rows)], tau_sq if worker.index is not None else 0.0)
    bank.finish()
    assert bank.exact_chunks < bank.n_chunks


def test_a_single_pass_build_refuses_filtered_patches(train):
    paths, patches, per_image = train
    bank = ChunkedBank(CONFIG, patches.shape[0], per_image, patches.shape[1], 10**6, 100, 3, 0.5)
    with pytest.raises(ValueError, match="single-pass"):
        bank.add(patches[:10], 0.5)
