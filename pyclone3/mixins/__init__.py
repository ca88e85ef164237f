"""The :class:`CommandExt` and :class:`ChildExt` mixins: ``subprocess.Popen`` on pidfds.

Compose the mixins onto any :class:`subprocess.Popen` subclass, in this
order, before the base::

    class MyPopen(pyclone3.CommandExt, pyclone3.ChildExt, subprocess.Popen): ...

A class that puts ``subprocess.Popen`` before a mixin raises ``TypeError``
when it is defined: the mixin's methods would never be reached.

:class:`CommandExt` routes the spawn through pyclone3's core (every child
gets its pidfd at creation) and adds spawn-time keywords; :class:`ChildExt`
makes ``wait``, ``poll``, ``send_signal``, ``terminate`` and ``kill`` act on
the pidfd: no polling loop, no PID race. Everything else is the standard
library's own ``Popen``. :class:`pyclone3.Popen` is the two composed onto
``subprocess.Popen`` (:mod:`pyclone3.popen`).
"""

from __future__ import annotations

from .child import ChildExt
from .command import CommandExt
from .shared import PidfdUnavailableError

__all__ = ["ChildExt", "CommandExt", "PidfdUnavailableError"]
