"""The package as a program meets it: what ``import pyclone3`` loads, and every public name."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pyclone3


def _fresh(code: str) -> str:
    """Run *code* in a fresh interpreter; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_loads_no_submodule_and_no_heavy_library() -> None:
    loaded = _fresh(
        "import sys; before = set(sys.modules); import pyclone3; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    ).split()
    assert "pyclone3" in loaded
    # Nothing of ours but the package, and none of what made it slow.
    assert [m for m in loaded if m.startswith("pyclone3.")] == []
    heavy = {"_cffi_backend", "dataclasses", "inspect", "json", "shutil", "subprocess", "typing"}
    assert heavy.isdisjoint(loaded), sorted(heavy & set(loaded))


@pytest.mark.parametrize(
    "code", ["from pyclone3 import Popen", "import pyclone3.cli", "from pyclone3 import spawn"]
)
def test_spawning_loads_no_heavy_library(code: str) -> None:
    """What a program that spawns, and the command, load: no more than they must."""
    loaded = _fresh(
        f"import sys; before = set(sys.modules); {code}; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    ).split()
    heavy = {"dataclasses", "inspect", "json", "numbers", "resource", "shutil", "typing"}
    assert heavy.isdisjoint(loaded), sorted(heavy & set(loaded))
    assert "pyclone3.tree" not in loaded


def test_a_name_loads_only_what_it_needs() -> None:
    loaded = _fresh(
        "import sys, pyclone3; pyclone3.CloneFlag; "
        "print(' '.join(m for m in sys.modules if m.startswith('pyclone3')))"
    ).split()
    assert "pyclone3.flags" in loaded
    assert "pyclone3.popen" not in loaded and "pyclone3._spawn" not in loaded


@pytest.mark.parametrize("name", pyclone3.__all__)
def test_every_public_name_resolves_to_its_defining_module(name: str) -> None:
    value = getattr(pyclone3, name)
    assert value is not None
    module = getattr(value, "__module__", None)
    if module is not None and name not in ("SPAWN_PATHS", "__version__"):
        assert module.startswith("pyclone3"), (name, module)


def test_star_import_and_dir_offer_every_public_name() -> None:
    names = _fresh(
        "from pyclone3 import *; import pyclone3; "
        "print(' '.join(n for n in pyclone3.__all__ if n not in globals())); "
        "print(' '.join(n for n in pyclone3.__all__ if n not in dir(pyclone3)))"
    )
    assert names.split("\n")[:2] == ["", ""]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Popn'"):
        pyclone3.Popn  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(pyclone3, "_clone3_private_name")
