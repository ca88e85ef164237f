"""Exit-detection latency and syscall count of a wait with a timeout.

A child lives about a second and exits at a random moment; just before it
exits it writes CLOCK_MONOTONIC (shared by all processes) to a pipe. The
parent notes the time its wait returns. Three waits, interleaved, in one run:

* ``pidfd``: ``pyclone3.PidFd.wait(timeout=10)`` on a clone3(CLONE_PIDFD) child;
* ``popen``: ``subprocess.Popen.wait(timeout=10)``;
* ``p3popen``: ``pyclone3.Popen.wait(timeout=10)`` (the drop-in, on its pidfd);
* ``waitpid``: a blocking ``os.waitpid(pid, 0)``, the machine's wake-up floor.

Then each wait runs once more under ``strace`` to count the syscalls it makes
(everything between two marker calls). Run: ``python bench/bench_wait.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pyclone3
from pyclone3 import CloneFlag, PidFd, syscalls

CHILD = (
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "os.write(1, repr(time.monotonic()).encode())\n"
    "os._exit(0)\n"
)


def clone_child(lifetime: float) -> tuple[int, int | None, int]:
    r, w = os.pipe()
    pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD)
    if pid == 0:
        try:
            os.dup2(w, 1)
            os.execv(sys.executable, [sys.executable, "-c", CHILD, repr(lifetime)])
        finally:
            os._exit(127)
    os.close(w)
    return pid, fd, r


def mark(name: str) -> None:
    os.access(f"/pyclone3-bench-{name}", os.F_OK)  # a syscall strace shows


def one_wait(method: str, lifetime: float) -> float:
    """Run one child, wait with *method*; return latency in seconds."""
    if method in ("popen", "p3popen"):
        popen = subprocess.Popen if method == "popen" else pyclone3.Popen
        proc = popen([sys.executable, "-c", CHILD, repr(lifetime)], stdout=subprocess.PIPE)
        mark("begin")
        proc.wait(timeout=10)
        mark("end")
        done = time.monotonic()
        assert proc.stdout is not None
        exited = float(proc.stdout.read())
        proc.stdout.close()
        return done - exited
    pid, fd, r = clone_child(lifetime)
    assert fd is not None
    with PidFd(fd, pid=pid) as child:
        if method == "pidfd":
            mark("begin")
            child.wait(timeout=10)
            mark("end")
        else:
            mark("begin")
            os.waitpid(pid, 0)
            mark("end")
        done = time.monotonic()
    exited = float(os.read(r, 64))
    os.close(r)
    return done - exited


def count_syscalls(method: str, lifetime: float) -> int:
    """Syscalls made by the parent's wait, counted by strace between markers."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace")
        subprocess.run(
            [
                "strace",
                "-qq",
                "-o",
                trace,
                sys.executable,
                __file__,
                "--one",
                method,
                "--lifetime",
                repr(lifetime),
            ],
            check=True,
        )
        with open(trace, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    begin = next(i for i, line in enumerate(lines) if "pyclone3-bench-begin" in line)
    end = next(i for i, line in enumerate(lines) if "pyclone3-bench-end" in line)
    inner = [line for line in lines[begin + 1 : end] if not line.startswith("---")]
    return len(inner)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=15, help="waits per method")
    parser.add_argument(
        "--one", choices=["pidfd", "popen", "p3popen", "waitpid"], help=argparse.SUPPRESS
    )
    parser.add_argument("--lifetime", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_wait(args.one, args.lifetime)
        return 0

    methods = ["pidfd", "p3popen", "popen", "waitpid"]
    latencies: dict[str, list[float]] = {m: [] for m in methods}
    rng = random.Random(1)
    for _ in range(args.trials):
        for method in rng.sample(methods, len(methods)):
            latencies[method].append(one_wait(method, rng.uniform(0.5, 1.5)))

    print(f"exit-detection latency over {args.trials} waits each (child lives 0.5-1.5 s)")
    print(f"{'method':<10}{'median ms':>12}{'p90 ms':>10}{'max ms':>10}")
    med = {}
    for method in methods:
        xs = sorted(latencies[method])
        med[method] = statistics.median(xs)
        p90 = xs[int(0.9 * (len(xs) - 1))]
        print(f"{method:<10}{med[method] * 1e3:>12.3f}{p90 * 1e3:>10.3f}{xs[-1] * 1e3:>10.3f}")
    print(f"pidfd / waitpid (floor): {med['pidfd'] / med['waitpid']:.2f}x   (target <= 1.5x)")
    print(f"pidfd / popen:           {med['pidfd'] / med['popen']:.3f}x  (target <= 0.2x)")
    print(f"p3popen / waitpid:       {med['p3popen'] / med['waitpid']:.2f}x   (target <= 1.5x)")
    print(f"p3popen / popen:         {med['p3popen'] / med['popen']:.3f}x  (target <= 0.2x)")

    if shutil.which("strace"):
        print("syscalls in one wait of a ~3 s child (strace):")
        for method in methods:
            print(f"  {method:<10}{count_syscalls(method, 3.0):>6}")
    else:
        print("strace not found: syscall counts skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
