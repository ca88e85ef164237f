"""asyncio on pidfds: wait_exit and create_subprocess_exec/shell."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import pytest
from conftest import (
    PYTHON,
    needs_threads,
    polled_from_another_thread,
    reap_every_child,
    require,
    sleeper,
    users_of,
)

import pyclone3
from pyclone3 import Popen
from pyclone3.aio import create_subprocess_exec, create_subprocess_shell, wait_exit

PIPE = asyncio.subprocess.PIPE


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- wait_exit -------------------------------------------------------------------


def test_wait_exit_on_a_popen_and_a_pidfd() -> None:
    async def main() -> tuple[int | None, int | None]:
        p = Popen(["/bin/sh", "-c", "sleep 0.05; exit 5"])
        status = await wait_exit(p)
        child = pyclone3.spawn(["/bin/sh", "-c", "exit 6"])
        assert child.pidfd is not None
        with child.pidfd as pidfd:
            other = await wait_exit(pidfd)
        assert p.returncode == 5
        return status.exit_code, other.exit_code

    assert run(main()) == (5, 6)


def test_wait_exit_on_an_exited_child_returns_at_once() -> None:
    async def main() -> int | None:
        p = Popen(["/bin/true"])
        p.wait()
        return (await wait_exit(p)).exit_code

    assert run(main()) == 0


def test_timeout_and_cancellation_leave_nothing_registered() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with sleeper() as child:
            fd = child.fileno()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(wait_exit(child), 0.05)
            assert loop.remove_reader(fd) is False  # no reader left behind
            assert users_of(child) == 0  # and the pidfd released
            task = asyncio.ensure_future(wait_exit(child))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.remove_reader(fd) is False and users_of(child) == 0
            child.kill()
            assert (await wait_exit(child)).returncode == -signal.SIGKILL

    run(main())


@needs_threads
def test_wait_exit_while_another_thread_polls() -> None:
    """Another thread's poll() may reap a child (and close its pidfd) at any
    moment, even before wait_exit has started watching it: each wait still
    reports the child's own exit code."""

    async def main(procs: list[Popen]) -> list[int | None]:
        return [s.exit_code for s in await asyncio.gather(*(wait_exit(p) for p in procs))]

    for _ in range(5):
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 3}; exit {i}"]) for i in range(100)]
        with polled_from_another_thread(procs):
            codes = run(main(procs))
        assert codes == list(range(100))
        assert [p.returncode for p in procs] == list(range(100))


@pytest.mark.parametrize("already_reaped", [False, True])
def test_wait_exit_records_the_exit_while_a_poll_holds_the_popens_lock(
    already_reaped: bool,
) -> None:
    """A Popen's poll() returns at once, recording nothing, while another
    thread is inside one (holding its waitpid lock): wait_exit must still
    leave the Popen with its returncode and its pidfd closed."""
    p = Popen(["/bin/sh", "-c", "exit 7"])
    pidfd = p.pidfd
    if already_reaped:
        assert pidfd.wait().exit_code == 7  # through the PidFd, behind the Popen's back
    with p._waitpid_lock:  # as if another thread were inside p.poll()
        assert run(wait_exit(p)).exit_code == 7
        assert p.returncode == 7 and pidfd.closed


def test_many_concurrent_waits() -> None:
    async def main() -> list[int | None]:
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 10}; exit {i % 7}"]) for i in range(100)]
        statuses = await asyncio.gather(*(wait_exit(p) for p in procs))
        return [s.exit_code for s in statuses]

    assert run(main()) == [i % 7 for i in range(100)]


# ---- create_subprocess_exec / shell -------------------------------------------------------


def test_communicate_and_returncode() -> None:
    async def main() -> tuple[bytes, bytes, int | None]:
        proc = await create_subprocess_exec(
            "/bin/sh",
            "-c",
            "read x; echo out $x; echo err >&2; exit 3",
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        assert isinstance(proc, asyncio.subprocess.Process) and proc.pid > 0
        out, err = await proc.communicate(b"in\n")
        return out, err, proc.returncode

    assert run(main()) == (b"out in\n", b"err\n", 3)


def test_streams_line_by_line_and_large_output() -> None:
    async def main() -> tuple[list[bytes], int]:
        proc = await create_subprocess_exec(
            PYTHON, "-c", "import sys\nfor i in range(3): print(i, flush=True)", stdout=PIPE
        )
        assert proc.stdout is not None
        lines = [await proc.stdout.readline() for _ in range(3)]
        await proc.wait()
        big = await create_subprocess_exec(
            PYTHON, "-c", "import sys; sys.stdout.write('x' * 3_000_000)", stdout=PIPE
        )
        out, _ = await big.communicate()
        return lines, len(out)

    assert run(main()) == ([b"0\n", b"1\n", b"2\n"], 3_000_000)


@pytest.mark.usefixtures("sigint_default")  # the SIGINT below must kill: not inherited ignored
def test_shell_and_signals() -> None:
    async def main() -> list[int | None]:
        codes = []
        for how in ("terminate", "kill", "send_signal"):
            proc = await create_subprocess_shell("exec sleep 30")
            if how == "send_signal":
                proc.send_signal(signal.SIGINT)
            else:
                getattr(proc, how)()
            codes.append(await proc.wait())
        return codes

    assert run(main()) == [-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT]


def test_errors_are_asyncios() -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await create_subprocess_exec("/no/such/program")
        with pytest.raises(ValueError, match="text"):
            await create_subprocess_exec("/bin/true", text=True)
        with pytest.raises(ValueError, match="bufsize"):
            await create_subprocess_exec("/bin/true", bufsize=1)
        with pytest.raises(ValueError, match="string"):
            await create_subprocess_shell(["echo"])  # type: ignore[arg-type]

    run(main())


def test_cancellation_at_every_await_point_leaves_no_child_or_fd() -> None:
    async def main() -> None:
        for point in ("wait", "communicate", "read"):
            proc = await create_subprocess_exec(
                "/bin/sh", "-c", "exec sleep 30", stdin=PIPE, stdout=PIPE
            )
            assert proc.stdout is not None
            if point == "wait":
                coro: Any = proc.wait()
            elif point == "communicate":
                coro = proc.communicate(b"")
            else:
                coro = proc.stdout.read()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(coro, 0.05)
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            if proc.stdin is not None:
                proc.stdin.close()
            await asyncio.sleep(0)

    run(main())  # the no_leaks fixture checks fds and zombies afterwards


def test_200_concurrent_children() -> None:
    async def one(i: int) -> int | None:
        proc = await create_subprocess_exec("/bin/sh", "-c", f"exit {i % 5}", stdout=PIPE)
        await proc.communicate()
        return proc.returncode

    async def main() -> list[int | None]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert run(main()) == [i % 5 for i in range(200)]


def test_no_sigchld_handler_is_installed() -> None:
    before = signal.getsignal(signal.SIGCHLD)

    async def main() -> int | None:
        proc = await create_subprocess_exec("/bin/true")
        return await proc.wait()

    assert run(main()) == 0
    assert signal.getsignal(signal.SIGCHLD) == before


@require("pidfd_info_exit")
def test_a_foreign_reaper_does_not_lose_the_status() -> None:
    # What an asyncio FastChildWatcher, or any waitpid(-1) loop, does.
    old = signal.signal(signal.SIGCHLD, reap_every_child)
    try:

        async def main() -> list[int | None]:
            procs = [await create_subprocess_exec("/bin/sh", "-c", f"exit {i}") for i in range(5)]
            return [await p.wait() for p in procs]

        assert run(main()) == [0, 1, 2, 3, 4]
    finally:
        signal.signal(signal.SIGCHLD, old)
    time.sleep(0)


WATCHERS = ["SafeChildWatcher", "FastChildWatcher", "ThreadedChildWatcher", "PidfdChildWatcher"]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="child watchers are gone after 3.11")
@pytest.mark.parametrize("name", WATCHERS)
def test_any_child_watcher_is_fine(name: str) -> None:
    import warnings

    from conftest import FEATURES

    if name == "FastChildWatcher" and not FEATURES.pidfd_info_exit:
        pytest.skip("FastChildWatcher reaps every child; statuses need PIDFD_INFO_EXIT")
    watcher_type = getattr(asyncio, name, None)
    if watcher_type is None:
        pytest.skip(f"asyncio has no {name} here")
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = policy.get_child_watcher() if hasattr(policy, "get_child_watcher") else None

        async def main() -> list[int | None]:
            watcher = watcher_type()
            watcher.attach_loop(asyncio.get_running_loop())
            policy.set_child_watcher(watcher)
            try:
                codes = []
                for i in range(5):
                    proc = await create_subprocess_exec("/bin/sh", "-c", f"exit {i}")
                    codes.append(await proc.wait())
                # asyncio's own subprocesses still work beside ours
                std = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 9")
                codes.append(await std.wait())
                return codes
            finally:
                watcher.close()

        try:
            assert run(main()) == [0, 1, 2, 3, 4, 9]
        finally:
            policy.set_child_watcher(old)


# asyncio's own transport, refusing loop= on 3.10+, is left half made and
# complains from __del__; pyclone3 refuses it before making anything.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_loop_argument_is_taken_as_this_pythons_asyncio_takes_it() -> None:
    """3.9's asyncio accepts ``loop=`` with a DeprecationWarning; 3.10 removed it."""
    import warnings

    async def both() -> list[Any]:
        loop = asyncio.get_running_loop()
        outcomes: list[Any] = []
        for create in (asyncio.create_subprocess_exec, create_subprocess_exec):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    proc = await create("/bin/true", loop=loop)
                except TypeError:
                    outcomes.append(TypeError)
                    continue
            warned = [w.category for w in caught if "loop argument" in str(w.message)]
            outcomes.append((await proc.wait(), warned))
        return outcomes

    stdlib, ours = asyncio.run(both())
    assert ours == stdlib
    if sys.version_info < (3, 10):
        assert stdlib == (0, [DeprecationWarning])
    else:
        assert stdlib is TypeError
