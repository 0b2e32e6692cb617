"""Process-wide runtime settings, decided in one place: thread counts and memory readings.

Called once at process start by the CLIs and the server's lifespan, never inside a constructor.
"""

from __future__ import annotations

import os
import resource


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def passive_openmp(environ: dict[str, str] = os.environ) -> str:
    """Make OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE) unless the environment already chose; returns
    the policy in force. Call it before torch or faiss is imported: each OpenMP runtime (torch's libgomp, faiss's
    own) reads it when it loads.

    With the default (active) policy, torch's threads spin for milliseconds after every forward pass and faiss's
    after every search; in the server's predict path they take the cores from each other (bench/bench_predict.py:
    FAISS search and forward pass several times slower than alone on a loaded machine).
    """
    return environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(threads: int | None) -> int:
    """Give torch (intra-op), OpenMP, FAISS and numpy's BLAS the same thread count (default: the usable cores).

    onnxruntime's sessions take the returned count when they are created (store.load(threads=...)). torch is
    optional: an onnx-only install has none.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(n)  # for OpenMP runtimes not yet started (child processes too)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n)  # every BLAS/OpenMP pool already loaded: numpy's (the coreset's products) too
    return n


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
