"""Signals held back while a blocking syscall updates its connection, delivered where it waits.

Python runs a signal's handler in the main thread between any two bytecodes, and a handler
that raises (Ctrl-C's KeyboardInterrupt, an alarm used as a timeout) interrupts whatever was
running there: between reading bytes and keeping them, between taking the reader's turn and the
``try`` that gives it back. A blocking client cannot be made safe at every bytecode, so it does
what trio does with checkpoints: while a call runs (``hold``), the handlers of the usual signals
are swapped for one that notes the signal, and the noted signals reach their handlers only
inside ``interruptible()`` blocks (where the call waits: nothing half done) or when the call
ends (``release``).

Only the main thread runs handlers, so only it holds; in other threads every function here is
a no-op. Holds nest (a handler may itself make a syscall). Signals whose handler was installed
outside Python (``getsignal`` is None) are left alone: theirs could not be put back.
"""

from __future__ import annotations

import _signal  # signal's C module: signal.py's wrappers convert to enums, 10x the cost here
import signal
import threading
from types import FrameType
from typing import Any

# The signals a program commonly handles in Python: Ctrl-C, termination, alarms used as
# timeouts, the user's own. Each is looked up per syscall, and swapped if it has a Python
# handler (two system calls), so the list stays short.
HELD_SIGNALS = tuple(int(getattr(signal, name)) for name in (
    "SIGINT", "SIGTERM", "SIGALRM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))
_MAIN_THREAD = threading.main_thread().ident


class _State:
    """The main thread's hold (module-level: signal handlers are process-wide)."""

    depth = 0  # nested holds
    pending: list[tuple[int, FrameType | None]] = []  # noted signals, in order
    interruptible = False  # inside an interruptible() block: deliver at once


# The handler each held signal had before a hold swapped ours in. Kept across holds: a handler
# that raises may cut a hold or a release between two swaps, leaving ours installed with nobody
# holding; it then finds the real one here (see _note), and so does the next hold.
_saved: dict[int, Any] = {}


def _note(signum: int, frame: FrameType | None) -> None:
    if _State.depth == 0:
        # Left installed by a hold or release that a raising handler cut short: heal.
        handler = _saved[signum]
        _signal.signal(signum, handler)
        handler(signum, frame)
    elif _State.interruptible:
        _State.interruptible = False  # one exception per block: the rest are noted
        _saved[signum](signum, frame)  # KeyboardInterrupt, for Ctrl-C by default
    else:
        _State.pending.append((signum, frame))


def hold() -> bool:
    """Hold the usual signals back until ``release``; False (nothing held) outside the main thread."""
    if threading.get_ident() != _MAIN_THREAD:
        return False
    if _State.depth == 0:
        _State.pending = []
        getsignal, swap, saved = _signal.getsignal, _signal.signal, _saved
        for signum in HELD_SIGNALS:
            handler = getsignal(signum)
            if handler is _note:
                continue  # left over from a cut hold: _saved has the real one
            if callable(handler):
                saved[signum] = handler  # before the swap: a cut here leaves nothing to heal
                swap(signum, _note)
            elif signum in saved:
                del saved[signum]
    _State.depth += 1
    return True


def release(held: bool) -> None:
    """End a ``hold``; the outermost puts the handlers back and delivers what was noted."""
    if not held:
        return
    _State.depth -= 1
    if _State.depth:
        return
    for signum, handler in list(_saved.items()):
        if _signal.getsignal(signum) is _note:  # not if the program installed another meanwhile
            _signal.signal(signum, handler)
    pending, _State.pending = _State.pending, []
    for signum, frame in pending:
        _saved[signum](signum, frame)


class interruptible:  # noqa: N801  (used as a context manager, like a function)
    """A block where held signals reach their handlers: a blocking wait with nothing half done.

    A signal noted earlier in the call is delivered on entry; one that arrives inside is
    delivered at once (its handler may raise, interrupting the wait). No-op unless held.
    """

    __slots__ = ("_held",)

    def __init__(self, held: bool) -> None:
        self._held = held

    def __enter__(self) -> None:
        if self._held:
            _State.interruptible = True
            while _State.pending and _State.interruptible:
                signum, frame = _State.pending.pop(0)
                _State.interruptible = False
                _saved[signum](signum, frame)
                _State.interruptible = True

    def __exit__(self, *exc: object) -> None:
        if self._held:
            _State.interruptible = False
