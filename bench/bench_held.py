"""Spawn cost while the parent holds many live children: pyclone3 against subprocess.

A supervisor or a test runner keeps thousands of children alive. Each live
``pyclone3.Popen`` holds a pidfd in the parent, so this measures whether a
spawn gets dearer as the parent's fd table grows:

* **spawn phase**: start ``--children`` (default 3,000) long-lived children
  back to back with ``Popen``, timing every spawn; then kill and reap them
  all (not timed). Contenders alternate round by round.
  Reported: the whole phase, and the median spawn of the first and of the
  last hundred, with their ratio.
* **spawn+wait at a held count**: with 0, 1,000 and 4,000 children held, the
  median spawn+wait of a static no-op (1,000 each, in ten interleaved
  chunks, after a warm-up), pyclone3 against subprocess.

Targets are static programs built here (``bench/c/pause.c``, ``bench/c/noop.c``),
so that ld.so does not drown the machinery. Needs gcc, and an RLIMIT_NOFILE
hard limit above the children held (the soft limit is raised to it).
Run: ``python bench/bench_held.py [--children N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pyclone3

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS: dict[str, Callable[..., subprocess.Popen[bytes]]] = {
    "subprocess": subprocess.Popen,
    "pyclone3": pyclone3.Popen,
}


def build(tmp: str, name: str) -> str:
    out = os.path.join(tmp, name)
    src = os.path.join(HERE, "c", f"{name}.c")
    subprocess.run(["gcc", "-O2", "-static", "-nostdlib", "-o", out, src], check=True)
    return out


def release(children: list[subprocess.Popen[bytes]]) -> None:
    for p in children:
        p.kill()
    for p in children:
        p.wait()


def spawn_phase(
    popen: Callable[..., subprocess.Popen[bytes]], argv: list[str], n: int
) -> list[float]:
    """Start n children, timing each spawn; then kill and reap them."""
    children: list[subprocess.Popen[bytes]] = []
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            children.append(popen(argv))
            times.append(time.perf_counter() - start)
    finally:
        release(children)
    return times


def spawn_wait(popen: Callable[..., subprocess.Popen[bytes]], argv: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        popen(argv).wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--children", type=int, default=3000, help="children held in the spawn phase"
    )
    parser.add_argument("--rounds", type=int, default=3, help="spawn phases per contender")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4000 + 100
    if hard != resource.RLIM_INFINITY and hard < need:
        print(
            f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot hold the children", file=sys.stderr
        )
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pyclone3.features()  # the one-time probe stays out of the figures
    with tempfile.TemporaryDirectory() as tmp:
        pause = [build(tmp, "pause")]
        noop = [build(tmp, "noop")]
        with pyclone3.Popen(noop) as probe:
            path = probe.spawn_path
        print(f"pyclone3 path: {path}; RLIMIT_NOFILE {hard}")

        n = args.children
        phases: dict[str, list[list[float]]] = {k: [] for k in KINDS}
        for _ in range(args.rounds):
            for kind, popen in KINDS.items():
                phases[kind].append(spawn_phase(popen, pause, n))
        print(f"\nspawn phase: {n} live children, {args.rounds} rounds (median of rounds)")
        print(
            f"  {'':<12}{'phase ms':>10}{'first 100 µs':>14}{'last 100 µs':>13}{'last/first':>12}"
        )
        total = {}
        for kind, runs in phases.items():
            total[kind] = statistics.median(sum(r) for r in runs)
            first = statistics.median(statistics.median(r[:100]) for r in runs)
            last = statistics.median(statistics.median(r[-100:]) for r in runs)
            print(
                f"  {kind:<12}{total[kind] * 1e3:>10.1f}{first * 1e6:>14.1f}{last * 1e6:>13.1f}"
                f"{last / first:>11.2f}x"
            )
        print(
            f"  pyclone3 / subprocess, spawn phase: {total['pyclone3'] / total['subprocess']:.3f}x"
            "  (target <= 1.0x; last/first target <= 1.3x)"
        )

        print("\nmedian spawn+wait of a static no-op with children held (µs)")
        per = 1000
        for popen in KINDS.values():  # warm up: the first level is not measured cold
            spawn_wait(popen, noop, 200)
        for held in (0, 1000, 4000):
            holders = [pyclone3.Popen(pause) for _ in range(held)]
            try:
                med: dict[str, list[float]] = {k: [] for k in KINDS}
                for _ in range(10):  # interleaved chunks
                    for kind, popen in KINDS.items():
                        med[kind].append(spawn_wait(popen, noop, per // 10))
                m = {k: statistics.median(v) for k, v in med.items()}
            finally:
                release(holders)
            print(
                f"  {held:>5} held: subprocess {m['subprocess'] * 1e6:7.1f}  pyclone3 "
                f"{m['pyclone3'] * 1e6:7.1f}  ratio {m['pyclone3'] / m['subprocess']:.3f}x"
            )
            if held == 0:
                base = m["pyclone3"]
            else:
                print(f"         pyclone3 against none held: {m['pyclone3'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
