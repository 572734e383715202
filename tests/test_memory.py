"""The server gives freed memory back to the system after a request (geodemo.memory)."""

import platform
from pathlib import Path

import pytest

from geodemo.memory import release_freed_memory


def rss_mb() -> float:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_held_by_malloc_goes_back_to_the_system():
    blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MB in malloc'd chunks
    pinned = bytearray(4096)  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    full = rss_mb()
    del blocks
    held = rss_mb()
    assert release_freed_memory()
    released = rss_mb()
    assert full - held < 50, (full, held)  # malloc kept the freed pages
    assert held - released > 150, (full, held, released)
    del pinned
