"""The allocator serves large blocks from its heap and keeps them when freed, so the next batch reuses them
instead of mapping (and faulting in) fresh pages."""

import ctypes
import sys

import numpy as np
import pytest

from cdtool.runtime import tune_allocator


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33")
    libc.mallinfo2.restype = MallInfo2
    assert tune_allocator() and tune_allocator()  # takes, and stays taken
    batch = 64 * 2**20  # above glibc's default 32 MB mapping threshold
    mapped_before = libc.mallinfo2().hblkhd
    x = np.ones(batch // 4, np.float32)
    assert libc.mallinfo2().hblkhd - mapped_before < batch  # not a fresh mapping of its own
    del x
    assert libc.mallinfo2().fordblks >= batch  # freed, kept for the next batch
