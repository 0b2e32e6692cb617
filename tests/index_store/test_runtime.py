"""configure_threads: the one place that sets every thread pool of the process."""

import faiss
import numpy as np  # noqa: F401  (loads numpy's BLAS, whose pool must follow the setting too)
import pytest
import torch
from threadpoolctl import threadpool_info

from index_store.runtime import (configure_threads, current_rss_mb, default_threads, release_gpu_library_pages,
                                 serial_numpy_blas)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    configure_threads(before)


def test_every_pool_gets_the_same_count():
    """In a fresh process: one whose BLAS pools other tests' server threads have used (the service tests leave
    an inference thread behind) can keep a pool (scipy's OpenBLAS) at its count whatever is asked."""
    import json
    import subprocess
    import sys

    code = ("import json, numpy, scipy.ndimage, scipy.stats, faiss, torch\n"
            "from threadpoolctl import threadpool_info\n"
            "from index_store.runtime import configure_threads\n"
            "n = configure_threads(1)\n"
            "print(json.dumps([n, torch.get_num_threads(), faiss.omp_get_max_threads(),\n"
            "                  [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, torch_threads, faiss_threads, blas = json.loads(out.stdout.strip().splitlines()[-1])
    assert (n, torch_threads, faiss_threads) == (1, 1, 1)
    assert len(blas) >= 2 and set(blas) == {1}  # numpy's, scipy's and faiss's OpenBLAS


def test_default_is_the_usable_cores(restore_threads):
    assert configure_threads(None) == default_threads()
    assert torch.get_num_threads() == default_threads()


def test_torch_imported_after_the_setting_follows_it_and_is_not_imported_by_it():
    """configure_threads does not import torch (an onnx-runtime server never loads it); a torch imported later
    takes the count through OMP_NUM_THREADS."""
    import subprocess
    import sys

    code = ("import sys; from index_store.runtime import configure_threads; configure_threads(1); "
            "assert 'torch' not in sys.modules; import torch; print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_serial_numpy_blas_sets_numpy_s_pool_only(restore_threads):
    configure_threads(2)
    assert serial_numpy_blas() >= 1  # pip's numpy vendors its own OpenBLAS
    blas = {p["filepath"]: p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    numpy_own = {path: n for path, n in blas.items() if "numpy" in path}
    assert numpy_own and set(numpy_own.values()) == {1}
    assert all(n == 2 for path, n in blas.items() if "faiss" in path)  # faiss's search keeps its threads
    assert faiss.omp_get_max_threads() == 2 and torch.get_num_threads() == 2


def test_bad_count_raises():
    with pytest.raises(ValueError, match=">= 1"):
        configure_threads(0)


def test_passive_openmp_is_the_default_and_an_explicit_choice_wins():
    from index_store.runtime import passive_openmp

    env: dict[str, str] = {}
    assert passive_openmp(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert passive_openmp(env) == "active" and env == {"OMP_WAIT_POLICY": "active"}


def test_the_server_cli_loads_no_openmp_runtime_before_it_sets_the_wait_policy():
    import subprocess
    import sys

    code = "import sys, service.cli; print(sorted(m for m in ('torch', 'faiss', 'onnxruntime') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_releasing_gpu_library_pages_lowers_rss_and_torch_still_works():
    """Only clean pages of GPU-only libraries are dropped: RSS falls by what it reports, and CPU torch runs on."""
    before = current_rss_mb()
    released = release_gpu_library_pages()
    assert released >= 0.0
    assert current_rss_mb() <= before - 0.5 * released + 1.0
    x = torch.randn(64, 64)
    assert torch.allclose(torch.linalg.inv(x) @ x, torch.eye(64), atol=1e-3)
    assert faiss.IndexFlatL2(8).d == 8
