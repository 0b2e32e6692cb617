"""Process-wide runtime settings, decided in one place: thread counts and memory readings.

Called once at process start by the CLIs and the server's lifespan, never inside a constructor.
"""

from __future__ import annotations

import os
import resource
import sys
from contextlib import contextmanager
from pathlib import Path


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
    # torch only where it is already loaded: importing it here would cost an onnx-runtime server 1.5 s of start-up
    # and 300 MB. A torch imported later sizes its pool from OMP_NUM_THREADS, set above.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n)  # every BLAS/OpenMP pool already loaded: numpy's (the coreset's products) too
    return n


def serial_numpy_blas() -> int:
    """Put numpy's own BLAS on one thread; faiss's, torch's and onnxruntime's pools keep theirs. Returns how many
    BLAS libraries were set (0 where numpy's BLAS cannot be told apart, e.g. one shared with faiss: then nothing).

    For the server. Its only numpy product is the anomaly map's (model/heatmap.py: (H, h) @ (h, w) @ (w, W), under
    1 ms on one thread for a 900 x 900 picture); on several threads OpenBLAS's workers then spin for a while and take
    the cores from the next request's backbone and search. Call once at start, after configure_threads."""
    import numpy
    from threadpoolctl import ThreadpoolController

    home = Path(numpy.__file__).resolve().parent  # site-packages/numpy; wheels vendor their BLAS in numpy.libs
    own = (home, home.with_name(home.name + ".libs"))
    controller = ThreadpoolController()
    paths = [lib.filepath for lib in controller.lib_controllers
             if lib.user_api == "blas" and any(Path(lib.filepath).resolve().is_relative_to(d) for d in own)]
    if paths:
        controller.select(filepath=paths).limit(limits=1)
    return len(paths)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Shared libraries that only a CUDA device runs: the CUDA wheel of torch loads them at import even on a CPU
# machine, and relocating them touches ~250 MB of their pages, all counted in this process's RSS.
GPU_LIBRARY_MARKERS = ("/nvidia/", "libtorch_cuda", "libcudnn", "libnccl", "libcusparseLt", "libnvjpeg", "/triton/",
                       "libnvrtc", "libnvJitLink", "libcublas", "libcufft", "libcurand", "libcusolver", "libcusparse")
_MADV_DONTNEED = 4


def release_gpu_library_pages() -> float:
    """On a process that will not use CUDA: hand back the resident pages of the GPU-only libraries. Returns MiB.

    Only mappings that hold no private (copy-on-write) page are touched: their pages are clean copies of the file,
    so dropping them (madvise MADV_DONTNEED) changes nothing but RSS; were one needed again, it would be read back
    from the page cache. Relocated (written) segments are left alone. Call once at start, after the imports."""
    import ctypes
    import re

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    try:
        text = open("/proc/self/smaps").read()
    except OSError:  # not Linux
        return 0.0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        head = block.split("\n", 1)[0].split()
        if len(head) < 6 or not any(m in head[5] for m in GPU_LIBRARY_MARKERS) or "w" in head[1]:
            continue
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", block, flags=re.M))
        if int(fields.get("Anonymous", 1)) or int(fields.get("Private_Dirty", 1)) or not int(fields.get("Rss", 0)):
            continue
        lo, hi = (int(v, 16) for v in head[0].split("-"))
        if libc.madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            released += int(fields["Rss"])
    return released / 1024.0


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
FREED_MEMORY_MMAP_THRESHOLD = 1 << 20  # return_freed_memory's: blocks above it are mmapped, and unmapped when freed
_DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's M_TRIM_THRESHOLD default


def _glibc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def return_freed_memory() -> None:
    """glibc malloc: serve every block over 1 MiB with its own mmap, so that freeing it returns it to the system.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB), after which the
    backbone's per-batch activations and the builder's temporaries stay in the heap once freed, and RSS only grows.
    Call once at process start (a no-op where glibc is not the allocator)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, FREED_MEMORY_MMAP_THRESHOLD)  # fixed: turns the dynamic adjustment off


@contextmanager
def heap_temporaries(limit_mib: int = 64):
    """Context, for a process set by return_freed_memory: blocks up to limit_mib come from glibc's heap and stay there
    once freed, for the next ones; on exit return_freed_memory's setting is back and malloc_trim hands the heap's free
    memory to the system.

    For the numpy stages after extraction (coreset, calibration): rounds of 1-30 MB temporaries that, each a fresh
    mmap under the 1 MiB threshold, are page-faulted in every time. The greedy coreset ran 20-30 % slower that way
    (screw at 10 %, one process, alternating: 4.6-6.1 s against 3.8-4.1 s; cookies 1.15-1.85 s against 0.88-1.29 s).
    The extraction keeps the 1 MiB threshold: its per-batch activations are what made RSS grow."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, limit_mib << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * limit_mib << 20)  # freed blocks at the heap's top are kept, not trimmed
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, FREED_MEMORY_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
