"""Wait for many children: pyclone3.wait_all against the standard library's loop.

500 children sleep 0.5-1.5 s (staggered at random); the parent waits for all
of them with a deadline. Contenders, each in a fresh process of its own:

* ``stdlib``: ``subprocess.Popen`` children, ``for p in procs:
  p.wait(timeout=remaining)``;
* ``pyclone3``: ``pyclone3.Popen`` children, ``pyclone3.wait_all(procs,
  timeout)`` (sleeps on the last child still running; every exited child
  reaped on each wake-up).

And, for exits taken one by one as they happen:

* ``stdlib-poll``: ``subprocess.Popen`` children, ``poll()`` on each child
  still running every 50 ms (the step ``Popen.wait`` itself polls with);
* ``iter_exits``: ``pyclone3.Popen`` children, ``for child, status in
  pyclone3.iter_exits(procs, timeout)``.

Reported for the wait phase only: parent CPU (user+system), context switches
(the wake-ups), how late the last exit was noticed, and the process's peak
RSS. The modules behind ``wait_all`` and ``iter_exits`` are loaded before
the phase (``bench_import.py`` measures imports).

Then asyncio: 200 concurrent children (``/bin/true``, output captured),
``pyclone3.aio.create_subprocess_exec`` against
``asyncio.create_subprocess_exec``: total wall time and CPU.

Run: ``python bench/bench_many.py [--children N] [--runs R]``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time


def one(kind: str, n: int, seed: int) -> dict[str, float]:
    import pyclone3

    rng = random.Random(seed)
    delays = [rng.uniform(0.5, 1.5) for _ in range(n)]
    popen = subprocess.Popen if kind.startswith("stdlib") else pyclone3.Popen
    # Resolved now, outside the figures: pyclone3 loads each module on the first
    # use of one of its names, and the import is bench_import's to measure.
    wait_all, iter_exits = pyclone3.wait_all, pyclone3.iter_exits
    procs, ends = [], []
    for d in delays:
        procs.append(popen(["/bin/sleep", f"{d:.3f}"]))
        ends.append(time.monotonic() + d)
    before = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + 30
    if kind == "stdlib":
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0))
    elif kind == "stdlib-poll":
        running = list(procs)
        while running:
            running = [p for p in running if p.poll() is None]
            if running:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    elif kind == "iter_exits":
        for _child, _status in iter_exits(procs, timeout=30):
            pass
    else:
        wait_all(procs, timeout=30)
    done = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert all(p.returncode == 0 for p in procs)
    return {
        "cpu_ms": ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e3,
        "switches": (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw),
        "late_ms": (done - max(ends)) * 1e3,
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


def one_async(kind: str, n: int) -> dict[str, float]:
    import asyncio

    import pyclone3.aio

    create = (
        asyncio.create_subprocess_exec
        if kind == "asyncio"
        else pyclone3.aio.create_subprocess_exec
    )

    async def child() -> int | None:
        proc = await create("/bin/true", stdout=asyncio.subprocess.PIPE)
        await proc.communicate()
        return proc.returncode

    async def all_of_them() -> list[int | None]:
        return await asyncio.gather(*(child() for _ in range(n)))

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    codes = asyncio.run(all_of_them())
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert codes == [0] * n
    return {
        "wall_ms": wall * 1e3,
        "cpu_ms": ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--one",
        choices=["stdlib", "pyclone3", "stdlib-poll", "iter_exits", "asyncio", "aio"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one in ("asyncio", "aio"):
        print(json.dumps(one_async(args.one, 200)))
        return 0
    if args.one:
        print(json.dumps(one(args.one, args.children, args.seed)))
        return 0
    results: dict[str, list[dict[str, float]]] = {
        "stdlib": [],
        "pyclone3": [],
        "stdlib-poll": [],
        "iter_exits": [],
    }
    for run in range(args.runs):
        for kind in results:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    kind,
                    "--children",
                    str(args.children),
                    "--seed",
                    str(run),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[kind].append(json.loads(out))
    print(f"{args.children} children sleeping 0.5-1.5 s, medians of {args.runs} runs:")
    print(f"{'':12}{'cpu ms':>9}{'switches':>10}{'late ms':>9}{'peak MB':>9}")
    med = {}
    for kind, runs in results.items():
        med[kind] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = med[kind]
        print(
            f"{kind:12}{m['cpu_ms']:>9.1f}{m['switches']:>10.0f}{m['late_ms']:>9.1f}"
            f"{m['peak_rss_mb']:>9.1f}"
        )
    sooner = sum(
        a["late_ms"] < b["late_ms"] for a, b in zip(results["pyclone3"], results["stdlib"])
    )
    print(
        f"CPU pyclone3/stdlib: {med['pyclone3']['cpu_ms'] / med['stdlib']['cpu_ms']:.2f}x"
        f"  (target <= 1.0x); last exit noticed sooner in {sooner} of {args.runs} runs"
    )
    print(
        "CPU iter_exits/stdlib-poll: "
        f"{med['iter_exits']['cpu_ms'] / med['stdlib-poll']['cpu_ms']:.2f}x, "
        f"iter_exits/stdlib: {med['iter_exits']['cpu_ms'] / med['stdlib']['cpu_ms']:.2f}x"
    )
    aresults: dict[str, list[dict[str, float]]] = {"asyncio": [], "aio": []}
    for _ in range(args.runs):
        for kind in aresults:
            out = subprocess.run(
                [sys.executable, __file__, "--one", kind],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            aresults[kind].append(json.loads(out))
    amed = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in aresults.items()}
    print(f"\n200 concurrent asyncio children, medians of {args.runs} runs:")
    print(f"{'':16}{'wall ms':>9}{'cpu ms':>9}")
    for kind, label in (("asyncio", "asyncio"), ("aio", "pyclone3.aio")):
        print(f"{label:16}{amed[kind]['wall_ms']:>9.1f}{amed[kind]['cpu_ms']:>9.1f}")
    wall = amed["aio"]["wall_ms"] / amed["asyncio"]["wall_ms"]
    cpu = amed["aio"]["cpu_ms"] / amed["asyncio"]["cpu_ms"]
    print(f"pyclone3.aio/asyncio: wall {wall:.2f}x, CPU {cpu:.2f}x  (target <= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
