"""The server's freed memory, given back to the operating system after each request.

glibc's malloc keeps the memory a thread freed in that thread's arena for reuse; a server whose requests run on
a pool of worker threads (Gradio's) holds on to the peak of every arena. malloc_trim(0) returns the free pages of
every arena to the system (measured: it took a quarter off the server's growth over 600 load-test requests; the
rest was Gradio's per-skip components, benchmarks/README.md); elsewhere (no glibc) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Give the pages malloc holds free back to the system; True where that was done (glibc)."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0) >= 0)
