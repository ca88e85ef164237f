"""20,000 spawn/wait cycles keep the parent's memory flat."""

from __future__ import annotations

import os

import pytest

import pyclone3


def rss_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def cycles(n: int) -> None:
    for i in range(n):
        if i % 3 == 0:
            with pyclone3.Popen(["/bin/true"]):
                pass
        elif i % 3 == 1:
            child = pyclone3.spawn(["/bin/true"])
            assert child.pidfd is not None
            with child.pidfd as pidfd:
                pidfd.wait()
        else:
            with pytest.raises(FileNotFoundError):
                pyclone3.Popen(["/no/such/program"])


def test_20000_spawns_keep_rss_flat() -> None:
    cycles(2000)  # warm up: caches, allocator arenas, the features probe
    before = rss_kib()
    cycles(20000)
    growth = rss_kib() - before
    print(f"RSS growth over 20,000 spawn/wait cycles: {growth} KiB")
    assert growth < 1024, f"RSS grew by {growth} KiB"
