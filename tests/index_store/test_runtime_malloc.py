"""glibc malloc settings of the builder: return_freed_memory (blocks over 1 MiB mmapped) and heap_temporaries (the
post-extraction stages' temporaries kept in the heap), read back through mallinfo2 in a fresh process (a heap that
earlier tests left with large free chunks would serve the blocks without asking mmap)."""

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import ctypes, json
import numpy as np
from index_store import runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def is_mmapped(nbytes):
    before = libc.mallinfo2().hblkhd
    block = np.empty(nbytes, np.uint8)
    grew = libc.mallinfo2().hblkhd - before >= nbytes
    del block
    return bool(grew)

out = {}
runtime.return_freed_memory()
out["set_4mib"], out["set_512kib"] = is_mmapped(4 << 20), is_mmapped(512 << 10)
with runtime.heap_temporaries(limit_mib=64):
    out["in_4mib"], out["in_32mib"], out["in_128mib"] = is_mmapped(4 << 20), is_mmapped(32 << 20), is_mmapped(128 << 20)
out["after_4mib"] = is_mmapped(4 << 20)
print(json.dumps(out))
"""


def test_heap_temporaries_keeps_blocks_in_the_heap_and_restores_return_freed_memory():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "set_4mib": True, "set_512kib": False,  # return_freed_memory: over 1 MiB, a mapping of its own
        "in_4mib": False, "in_32mib": False,  # heap_temporaries: from the heap, kept there once freed
        "in_128mib": True,  # above the context's limit: still mapped
        "after_4mib": True,  # return_freed_memory's setting is back
    }
