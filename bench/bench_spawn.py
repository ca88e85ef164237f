"""Spawn + wait: pyclone3 against subprocess and a C floor, in one run.

Measures the median time of one spawn + wait, interleaving the contenders
round by round so that machine noise hits all alike:

* ``subprocess``: ``subprocess.Popen(argv).wait()`` (its vfork path);
* ``pyclone3``: ``pyclone3.Popen(argv).wait()`` (clone3 + pidfd);
* ``spawn``: the low-level ``pyclone3.spawn(argv).pidfd.wait()``;
* ``no pidfd``: ``pyclone3.Popen(argv, create_pidfd=False).wait()``, to
  price the pidfd itself;
* ``C floor``: a C loop of clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) + execve +
  waitid(P_PIDFD) + close, the same without a pidfd, and glibc's posix_spawn
  + waitpid (no Python at all, in a small process of its own).

Targets are ``/bin/true`` (dynamically linked: ld.so dominates) and a static
no-op built here (``bench/c/noop.c``), to see the machinery itself. Needs gcc.
Run: ``python bench/bench_spawn.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyclone3

HERE = os.path.dirname(os.path.abspath(__file__))


def build(tmp: str) -> tuple[str, str]:
    noop = os.path.join(tmp, "noop")
    floor = os.path.join(tmp, "floor")
    subprocess.run(
        ["gcc", "-O2", "-static", "-nostdlib", "-o", noop, os.path.join(HERE, "c", "noop.c")],
        check=True,
    )
    subprocess.run(["gcc", "-O2", "-o", floor, os.path.join(HERE, "c", "floor.c")], check=True)
    return noop, floor


def time_one(kind: str, argv: list[str]) -> float:
    start = time.perf_counter()
    if kind == "subprocess":
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


def floor(binary: str, method: str, target: str, n: int) -> float:
    out = subprocess.run([binary, method, target, str(n)], capture_output=True, check=True)
    return int(out.stdout) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400, help="spawns per contender and target")
    args = parser.parse_args()
    kinds = ["subprocess", "pyclone3", "no pidfd", "spawn"]
    pyclone3.features()  # the one-time probe stays out of the figures
    with tempfile.TemporaryDirectory() as tmp:
        noop, floor_bin = build(tmp)
        targets = {"static no-op": noop, "/bin/true": "/bin/true"}
        with pyclone3.Popen([noop]) as probe:
            path = probe.spawn_path
        print(f"median spawn+wait over {args.rounds} rounds (µs); pyclone3 path: {path}")
        for name, target in targets.items():
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for k in kinds:  # warm up
                time_one(k, [target])
            for _ in range(args.rounds):
                for k in kinds:
                    times[k].append(time_one(k, [target]))
            med = {k: statistics.median(v) for k, v in times.items()}
            c_clone = floor(floor_bin, "clone", target, args.rounds)
            c_spawn = floor(floor_bin, "posix_spawn", target, args.rounds)
            c_nopidfd = floor(floor_bin, "clone_nopidfd", target, args.rounds)
            print(f"\n{name}:")
            for k in kinds:
                print(f"  {k:<12}{med[k] * 1e6:>9.1f}")
            print(f"  {'C clone':<12}{c_clone * 1e6:>9.1f}")
            print(f"  {'C no pidfd':<12}{c_nopidfd * 1e6:>9.1f}")
            print(f"  {'C posix_spawn':<12}{c_spawn * 1e6:>7.1f}")
            print(
                f"  pyclone3.Popen / subprocess.Popen: {med['pyclone3'] / med['subprocess']:.2f}x"
                "  (target <= 1.0x)"
            )
            print(
                f"  spawn / C clone floor:             {med['spawn'] / c_clone:.2f}x"
                "  (target <= 1.5x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
