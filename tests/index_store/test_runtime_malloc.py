"""glibc malloc settings of the builder: return_freed_memory (blocks over 1 MiB mmapped) and heap_temporaries (the
post-extraction stages' temporaries kept in the heap), read back through mallinfo2."""

import ctypes

import numpy as np
import pytest

from index_store import runtime


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mmapped_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)


def is_mmapped(nbytes: int) -> bool:
    """Whether a fresh block of nbytes is served by its own mmap (it shows in mallinfo2's hblkhd while alive)."""
    before = mmapped_bytes()
    block = np.empty(nbytes, np.uint8)
    grew = mmapped_bytes() - before >= nbytes
    del block
    return grew


@pytest.fixture
def glibc():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")


def test_heap_temporaries_keeps_blocks_in_the_heap_and_restores_return_freed_memory(glibc):
    runtime.return_freed_memory()
    assert is_mmapped(4 << 20)  # above the 1 MiB threshold: its own mapping
    assert not is_mmapped(512 << 10)
    with runtime.heap_temporaries(limit_mib=64):
        assert not is_mmapped(4 << 20)  # from the heap now
        assert not is_mmapped(32 << 20)
        assert is_mmapped(128 << 20)  # above the context's limit: still mmapped
    assert is_mmapped(4 << 20)  # back to return_freed_memory's setting
