"""Spawn + wait: pyclone3 against subprocess and a C floor, in one run.

Measures the median time of one spawn + wait, interleaving every contender
call by call, in an order shuffled afresh for each round (seeded), so that
machine noise and the after-effects of one spawn on the next hit all alike:

* ``subprocess``: ``subprocess.Popen(argv).wait()`` (its vfork path);
* ``pyclone3``: ``pyclone3.Popen(argv).wait()`` (clone3, with a pidfd);
* ``no pidfd``: ``pyclone3.Popen(argv, create_pidfd=False).wait()``;
* ``spawn``: the low-level ``pyclone3.spawn(argv).pidfd.wait()``;
* C floors, a C loop of clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) + execve +
  waitid(P_PIDFD) + close, with no Python at all: ``C in-process`` runs it
  inside this Python process (the same address space and process context as
  the Python contenders; loaded with ctypes), ``C standalone`` in a small
  process of its own; ``C posix_spawn`` is glibc's posix_spawn + waitpid.
  These loops run a chunk at a time, each spawn right after the last: warm.
  ``C one by one`` is the in-process floor taking its turn among the Python
  contenders, one spawn per call, timed in C: as cold as they are.

With ``--bounds``, three more contenders from ``bench/spawn_bounds.py``
show the least a design can cost: the C spawn core called from Python with
no owner object at all, with only the child's bare owner, and with an owner
written against the C API.

Targets are ``/bin/true`` (dynamically linked: ld.so dominates) and a static
no-op built here (``bench/c/noop.c``), to see the machinery itself. Needs gcc.
Run: ``python bench/bench_spawn.py [--rounds N] [--cpu N] [--bounds]``.

Where the kernel runs the child decides the floor: on the parent's CPU a
static spawn+wait is about twice as fast as across CPUs, where the parent
also sleeps and wakes between. Unpinned, the scheduler picks, and may change
its mind between runs; ``--cpu N`` pins this process, and so its children, to
CPU N: the same-CPU case, where the Python around the spawn weighs most.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pyclone3

HERE = os.path.dirname(os.path.abspath(__file__))
BOUNDS: dict[str, Callable[[list[str]], None]] = {}  # filled with --bounds
CHUNKS = 10


def build(tmp: str) -> tuple[str, str, str]:
    noop = os.path.join(tmp, "noop")
    floor = os.path.join(tmp, "floor")
    floor_lib = os.path.join(tmp, "floor.so")
    src = os.path.join(HERE, "c", "floor.c")
    subprocess.run(
        ["gcc", "-O2", "-static", "-nostdlib", "-o", noop, os.path.join(HERE, "c", "noop.c")],
        check=True,
    )
    subprocess.run(["gcc", "-O2", "-o", floor, src], check=True)
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-DFLOOR_LIBRARY", "-o", floor_lib, src], check=True
    )
    return noop, floor, floor_lib


def time_one(kind: str, argv: list[str], floor: Callable[[str], float]) -> float:
    if kind == "C one by one":
        return floor(argv[0])  # timed inside C, around the spawn and wait only
    bound = BOUNDS.get(kind)
    start = time.perf_counter()
    if bound is not None:
        bound(argv)
    elif kind == "subprocess":
        subprocess.Popen(argv).wait()
    elif kind == "pyclone3":
        pyclone3.Popen(argv).wait()
    elif kind == "no pidfd":
        pyclone3.Popen(argv, create_pidfd=False).wait()
    else:
        child = pyclone3.spawn(argv)
        assert child.pidfd is not None
        with child.pidfd as pidfd:
            pidfd.wait()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500, help="spawns per contender and target")
    parser.add_argument(
        "--cpu", type=int, help="pin this process and its children to this CPU (default: unpinned)"
    )
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="add the lower-bound contenders of bench/spawn_bounds.py (pyclone3 internals)",
    )
    args = parser.parse_args()
    if args.bounds:
        sys.path.insert(0, HERE)
        import spawn_bounds
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    per_chunk = max(1, args.rounds // CHUNKS)
    pyclone3.features()  # the one-time probe stays out of the figures
    with tempfile.TemporaryDirectory() as tmp:
        noop, floor_bin, floor_lib = build(tmp)
        if args.bounds:
            BOUNDS.update(spawn_bounds.load(tmp))
        kinds = ["subprocess", "pyclone3", "no pidfd", "spawn", "C one by one", *BOUNDS]
        lib = ctypes.CDLL(floor_lib)
        lib.floor_median.restype = ctypes.c_longlong
        lib.floor_median.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]

        def in_process(method: str, target: str, n: int = per_chunk) -> float:
            ns = lib.floor_median(method.encode(), os.fsencode(target), n)
            if ns < 0:
                raise OSError("the in-process floor failed")
            return float(ns) / 1e9

        def standalone(method: str, target: str) -> float:
            out = subprocess.run(
                [floor_bin, method, target, str(per_chunk)], capture_output=True, check=True
            )
            return int(out.stdout) / 1e9

        with pyclone3.Popen([noop]) as probe:
            path = probe.spawn_path
        pinned = "unpinned" if args.cpu is None else f"pinned to CPU {args.cpu}"
        print(
            f"median spawn+wait, {CHUNKS} interleaved chunks of {per_chunk} (µs); "
            f"pyclone3 path: {path}; {pinned}"
        )
        for name, target in {"static no-op": noop, "/bin/true": "/bin/true"}.items():
            times: dict[str, list[float]] = {k: [] for k in kinds}
            floors: dict[str, list[float]] = {
                "C in-process": [],
                "C standalone": [],
                "C posix_spawn": [],
            }

            def one_by_one(target: str) -> float:
                return in_process("clone", target, 1)

            for k in kinds:  # warm up
                time_one(k, [target], one_by_one)
            order = list(kinds)
            rng = random.Random(1)
            for _ in range(CHUNKS):
                for _ in range(per_chunk):
                    # A fresh order each round: a spawn timed right after
                    # another kind's measures a few percent slower here,
                    # and a fixed or rotated order (rotation keeps who
                    # follows whom) would charge that to one contender.
                    rng.shuffle(order)
                    for k in order:
                        times[k].append(time_one(k, [target], one_by_one))
                floors["C in-process"].append(in_process("clone", target))
                floors["C standalone"].append(standalone("clone", target))
                floors["C posix_spawn"].append(standalone("posix_spawn", target))
            med = {k: statistics.median(v) for k, v in times.items()}
            fmed = {k: statistics.median(v) for k, v in floors.items()}
            print(f"\n{name}:")
            for k, v in [*med.items(), *fmed.items()]:
                print(f"  {k:<15}{v * 1e6:>8.1f}")
            print(
                f"  pyclone3.Popen / subprocess.Popen:  {med['pyclone3'] / med['subprocess']:.3f}x"
                "  (target <= 0.95x)"
            )
            print(
                f"  spawn / C in-process floor:         {med['spawn'] / fmed['C in-process']:.2f}x"
                "   (target <= 1.3x)"
            )
            print(
                f"  spawn / C standalone floor:         {med['spawn'] / fmed['C standalone']:.2f}x"
            )
            print(
                f"  spawn / C one by one:               {med['spawn'] / med['C one by one']:.2f}x"
            )
            for k in BOUNDS:
                print(f"  {k + ' / C in-process floor:':<36}{med[k] / fmed['C in-process']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
