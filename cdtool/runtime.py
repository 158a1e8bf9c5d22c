"""Process-wide settings: the allocator settings that torch's CPU work needs to run at the speed of its kernels,
in memory bounded by the window, and SIGTERM handled as an interrupt."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from cdtool.errors import Terminated

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
_KEEP = 2**31 - 1  # bytes: above any one tensor a batch allocates
_done = False


def tune_allocator() -> bool:
    """Two glibc malloc settings, made once per process before the worker threads start:

    - Keep large freed blocks for reuse instead of unmapping them. By default every block over 32 MB is mapped
      fresh and returned to the system when freed, so each batch's activations are page-faulted and zeroed
      anew, and most of a U-Net's CPU time goes to the kernel (the timings: README "Speed").
    - One arena for all threads. Each reader, writer and GDAL thread otherwise fragments an arena of its own,
      and peak memory creeps up with the raster's height; one arena is no slower.

    Linux/glibc only; elsewhere, or with CDTOOL_TUNE_ALLOCATOR=0, a no-op. Returns whether the settings
    took."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("CDTOOL_TUNE_ALLOCATOR") == "0":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = all(libc.mallopt(option, value) for option, value in
                    ((_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP), (_M_ARENA_MAX, 1)))
    except (OSError, AttributeError):  # musl and others: no mallopt
        _done = False
    return _done


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while cleaning up ends the process at once
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, as SIGINT does:
    by default it kills the process on the spot, leaving partial outputs, a stale lock and an unsaved journal
    band, where an interrupt removes the partial outputs and keeps what --resume continues from. A no-op off
    the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
