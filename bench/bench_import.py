"""Start-up: fresh interpreters importing pyclone3 against importing subprocess, in one run.

Each contender is a whole new process, run in turn with the others (a
shuffled order each round, seeded), and the median wall time of each is
printed with its ratio to ``python -c "import subprocess"``:

* ``import subprocess``: the baseline;
* ``import pyclone3``: the package (its names load on first use);
* ``from pyclone3 import Popen``: what a program that spawns loads;
* ``pyclone3 run -- /bin/true``: the command, spawning and waiting for one child.

Run: ``python bench/bench_import.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

CONTENDERS = {
    "import subprocess": [sys.executable, "-c", "import subprocess"],
    "import pyclone3": [sys.executable, "-c", "import pyclone3"],
    "from pyclone3 import Popen": [sys.executable, "-c", "from pyclone3 import Popen"],
    "pyclone3 run -- /bin/true": [sys.executable, "-m", "pyclone3", "run", "--", "/bin/true"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="runs of each contender")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    order = list(CONTENDERS)
    rng = random.Random(1)
    # Warm up: the page cache, and the bytecode caches, which an installed
    # package has; written even under PYTHONDONTWRITEBYTECODE, which would
    # otherwise have pyclone3 (not the standard library) compiled at every run.
    warm_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for name in order:
        subprocess.run(CONTENDERS[name], check=True, env=warm_env)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            subprocess.run(CONTENDERS[name], check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["import subprocess"])
    print(f"median wall time of a fresh interpreter, {args.rounds} runs each (ms)")
    for name, runs in times.items():
        med = statistics.median(runs)
        print(f"  {name:<28}{med * 1e3:7.1f}   {med / base:5.2f}x")
    print("targets: import pyclone3 <= 1.2x; pyclone3 run -- /bin/true <= 1.3x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
