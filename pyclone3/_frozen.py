"""Frozen records without :mod:`dataclasses`: :class:`Frozen`.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize``...): about 5 ms of a fresh interpreter's start-up, more than
``import subprocess`` costs. The few records pyclone3 has write their own
``__init__`` and take the rest from :class:`Frozen`: what
``@dataclass(frozen=True)`` would give them, for the fields named in
``__match_args__``.
"""

from __future__ import annotations

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: object) -> Any:
        return lambda cls: cls


__all__ = ["Frozen"]


@dataclass_transform(frozen_default=True)  # type checkers see a frozen dataclass
class Frozen:
    """A base for immutable records: ``__repr__``, ``__eq__``, ``__hash__`` by field.

    A subclass lists its fields, in ``__init__``'s order, in
    ``__match_args__`` and sets them in ``__init__`` with
    ``object.__setattr__``; assigning or deleting an attribute afterwards
    raises ``AttributeError``, as on a frozen dataclass. As there, two
    records are equal when they are of the same class and their fields are
    equal, and a record hashes as the tuple of its fields (so it is
    unhashable if a field is).
    """

    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()

    def _astuple(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__match_args__])

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__ and isinstance(other, Frozen):
            return self._astuple() == other._astuple()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")
