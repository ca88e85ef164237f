"""The documented trio and anyio examples (docs/examples/), on real children.

They run where trio (and, for anyio, anyio 4.7 or later) is installed:
``nox -s trio`` installs both, and CI runs that session.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import random
import signal
from types import ModuleType

import pytest
from conftest import open_fds

from pyclone3 import Popen

trio = pytest.importorskip("trio")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trio_wait = _example("trio_wait")


def test_trio_waits_for_many_children_exiting_in_random_order() -> None:
    delays = [random.uniform(0, 0.2) for _ in range(40)]
    procs = [Popen(["/bin/sh", "-c", f"sleep {d:.3f}; exit {i}"]) for i, d in enumerate(delays)]
    codes: dict[int, int] = {}

    async def one(i: int) -> None:
        codes[i] = await trio_wait.wait_exit(procs[i])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(len(procs)):
                nursery.start_soon(one, i)

    trio.run(main)
    assert codes == {i: i for i in range(40)}
    assert [p.returncode for p in procs] == list(range(40))


def test_trio_cancelled_wait_leaves_the_child_running_and_waitable() -> None:
    before = open_fds()
    proc = Popen(["/bin/sleep", "30"])

    async def main() -> int:
        with trio.move_on_after(0.05) as scope:
            await trio_wait.wait_exit(proc)
        assert scope.cancelled_caught
        assert proc.poll() is None and proc.pidfd.is_alive()
        proc.kill()
        return await trio_wait.wait_exit(proc)  # the same pidfd, waited on again

    assert trio.run(main) == -signal.SIGKILL
    assert open_fds() <= before  # trio's own fds and the pidfd are all closed


def test_trio_sees_a_child_killed_from_outside() -> None:
    proc = Popen(["/bin/sleep", "30"])

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, os.kill, proc.pid, signal.SIGTERM)
            return await trio_wait.wait_exit(proc)

    assert trio.run(main) == -signal.SIGTERM


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_waits_and_cancels_on_each_backend(backend: str) -> None:
    anyio = pytest.importorskip("anyio")
    if not hasattr(anyio, "wait_readable"):
        pytest.skip("anyio.wait_readable needs anyio 4.7 or later")
    anyio_wait = _example("anyio_wait")
    short = Popen(["/bin/sh", "-c", "sleep 0.05; exit 7"])
    long = Popen(["/bin/sleep", "30"])

    async def main() -> tuple[int, int]:
        code = await anyio_wait.wait_exit(short)
        with anyio.move_on_after(0.05) as scope:
            await anyio_wait.wait_exit(long)
        assert scope.cancelled_caught and long.poll() is None
        if backend == "asyncio":
            import asyncio

            assert asyncio.get_running_loop().remove_reader(long.pidfd.fileno()) is False
        long.terminate()
        return code, await anyio_wait.wait_exit(long)

    assert anyio.run(main, backend=backend) == (7, -signal.SIGTERM)
