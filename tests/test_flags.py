"""The enum types carry exactly the kernel's constants, and round-trip."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyclone3 import flags
from pyclone3._clone3 import lib

FLAG_TYPES = [
    flags.CloneFlag,
    flags.PidfdFlag,
    flags.PidfdSignalFlag,
    flags.PidfdInfoFlag,
    flags.WaitFlag,
]
ALL_ENUMS = [*FLAG_TYPES, flags.IdType, flags.ChildCode]


@pytest.mark.parametrize("kind", ALL_ENUMS, ids=lambda k: k.__name__)
def test_every_member_is_named_and_valued_as_the_kernel_constant(kind: type[enum.Enum]) -> None:
    members = list(kind.__members__.items())
    assert members, f"{kind.__name__} is empty"
    for name, member in members:
        assert int(member.value) == getattr(lib, name), name


@st.composite
def flag_combinations(draw: st.DrawFn) -> tuple[type[enum.IntFlag], list[enum.IntFlag]]:
    kind = draw(st.sampled_from(FLAG_TYPES))
    chosen = draw(st.lists(st.sampled_from(list(kind)), unique=True))
    return kind, chosen


@given(flag_combinations())
def test_any_combination_round_trips_through_int(
    combo: tuple[type[enum.IntFlag], list[enum.IntFlag]],
) -> None:
    kind, chosen = combo
    value = 0
    for member in chosen:
        value |= int(member)
    rebuilt = kind(value)
    assert int(rebuilt) == value
    for member in chosen:
        assert member in rebuilt
    for member in kind:
        if member not in chosen and int(member) & ~value == int(member) and member.value:
            assert (rebuilt & member) == 0


@given(st.sampled_from(list(flags.CloneFlag)))
def test_each_clone_flag_is_one_bit(member: flags.CloneFlag) -> None:
    assert bin(int(member)).count("1") == 1


def test_double_underscore_wait_flags_keep_their_kernel_names() -> None:
    assert flags.WaitFlag["__WALL"] == lib.__WALL
    assert flags.WaitFlag["__WCLONE"] == lib.__WCLONE
    assert flags.WaitFlag["__WNOTHREAD"] == lib.__WNOTHREAD
    assert flags.WaitFlag.WSTOPPED is flags.WaitFlag.WUNTRACED  # same bit, alias


def test_64_bit_clone_flags_survive() -> None:
    both = flags.CloneFlag.CLONE_CLEAR_SIGHAND | flags.CloneFlag.CLONE_INTO_CGROUP
    assert int(both) == 3 << 32
