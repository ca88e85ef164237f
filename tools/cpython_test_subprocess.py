"""Run CPython's own ``test_subprocess`` against ``pyclone3.Popen``.

``pyclone3.Popen`` claims to be a drop-in ``subprocess.Popen``; the standard
library's test suite is the strictest check of that claim. This script, run
with the interpreter under test (pyclone3 installed in it), replaces
``subprocess.Popen`` with ``pyclone3.Popen`` before the test module is
imported, so the tests' own ``Popen`` calls, their ``Popen`` subclasses and
``subprocess.run``/``call``/``check_call``/``check_output`` all spawn through
pyclone3. It then runs that interpreter's ``test.test_subprocess`` with
unittest and prints a summary: counts, then the failing and erroring test ids.

Only this process is patched: a child Python that a test starts imports the
plain ``subprocess``. Some failures are expected and harmless: tests that mock
subprocess's private internals (``_fork_exec``, ``_USE_VFORK``,
``_USE_POSIX_SPAWN``, ``os.waitpid``...), which pyclone3 does not go through.
Run once with ``--baseline`` (no replacement) to see what fails in this
environment anyway (root, no network...).

Usage::

    python tools/cpython_test_subprocess.py                 # with pyclone3.Popen
    python tools/cpython_test_subprocess.py --baseline      # plain subprocess
    python tools/cpython_test_subprocess.py -k test_umask   # only matching tests
    python tools/cpython_test_subprocess.py --test-file /path/to/test_subprocess.py

``--test-file`` runs a ``test_subprocess.py`` from elsewhere (for an
interpreter installed without its tests); it is imported as
``test.test_subprocess``, so the interpreter's own ``test.support`` must be
there. ``--json FILE`` also writes the test ids of each outcome, for diffing
two runs. The exit status is 0 when nothing failed or errored, else 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import unittest


def patch_subprocess() -> None:
    """Make ``subprocess.Popen`` pyclone3's, so ``run`` and friends use it too."""
    import pyclone3

    subprocess.Popen = pyclone3.Popen  # type: ignore[misc]


def load_test_module(path: str | None):
    if path is None:
        return importlib.import_module("test.test_subprocess")
    import test  # the interpreter's test package, for test.support

    spec = importlib.util.spec_from_file_location("test.test_subprocess", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    test.test_subprocess = module  # type: ignore[attr-defined]
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="run with plain subprocess.Popen")
    parser.add_argument("--test-file", help="a test_subprocess.py to run, not the installed one")
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests whose id contains this (unittest -k)",
    )
    parser.add_argument("--json", help="write the test ids of each outcome to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    opts = parser.parse_args()

    if not opts.baseline:
        patch_subprocess()
    module = load_test_module(opts.test_file)
    loader = unittest.TestLoader()
    if opts.patterns:
        loader.testNamePatterns = [f"*{p}*" for p in opts.patterns]
    suite = loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2 if opts.verbose else 1).run(suite)

    def ids(pairs):
        return sorted(test.id() for test, _ in pairs)

    outcomes = {
        "failures": ids(result.failures),
        "errors": ids(result.errors),
        "skipped": ids(result.skipped),
        "expected_failures": ids(result.expectedFailures),
        "unexpected_successes": sorted(t.id() for t in result.unexpectedSuccesses),
    }
    # A test that failed in several subtests is counted once; a setUpClass
    # or setUpModule error is not a test run (it is listed with the errors).
    not_passed = {
        getattr(test, "test_case", test).id()
        for pairs in (result.failures, result.errors, result.skipped, result.expectedFailures)
        for test, _ in pairs
        if isinstance(getattr(test, "test_case", test), unittest.TestCase)
    } | {t.id() for t in result.unexpectedSuccesses}
    passed = result.testsRun - len(not_passed)
    mode = "baseline (subprocess.Popen)" if opts.baseline else "pyclone3.Popen"
    print(
        f"\n== {sys.version.split()[0]}, {mode}: ran {result.testsRun}: {passed} passed, "
        f"{len(outcomes['failures'])} failed, {len(outcomes['errors'])} errors, "
        f"{len(outcomes['skipped'])} skipped"
    )
    for kind, label in (
        ("failures", "FAIL"),
        ("errors", "ERROR"),
        ("unexpected_successes", "UNEXPECTED SUCCESS"),
    ):
        for test_id in outcomes[kind]:
            print(f"{label}: {test_id}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "mode": mode,
                    "ran": result.testsRun,
                    "passed": passed,
                    **outcomes,
                },
                f,
                indent=1,
            )
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
