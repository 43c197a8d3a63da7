"""SIGINT and SIGTERM in the command lines: one clean exit, never a half-replaced ``--out``.

Inside :func:`handled` both signals raise an interruption in the main thread
(:class:`KeyboardInterrupt`, or its subclass :class:`Terminated` for SIGTERM), once: a
second signal is only remembered, so that the clean-up the first one started runs to its
end. Third-party code can swallow the exception (one raised inside a ``__del__`` or a
callback is dropped, and would be printed as "Exception ignored"); the signal is
remembered instead, and :func:`raise_if_pending` raises it again where it matters:
after the UMAP and before outputs are swapped in. While :func:`deferred` runs (the
swap itself) a signal waits until it is done.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

#: The signals handled, and the exit status each gives (128 + the signal's number).
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every clean-up for an interruption runs."""


class _State:
    received: int | None = None  # the first signal received
    deferring = False
    committed: Path | None = None  # the last output folder swapped in


_state = _State()


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame) -> None:
    if _state.received is not None:
        return  # a second signal: the first one's clean-up is running
    _state.received = signum
    if not _state.deferring:
        raise _exception(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise inside the block; the earlier handlers come back after it."""
    previous = {signum: signal.getsignal(signum) for signum in EXIT_STATUS}
    _state.received, _state.deferring, _state.committed = None, False, None
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a signal the parent ignores (nohup, `&`) stays so
            signal.signal(signum, _handler)
    unraisable_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_about_interruptions(unraisable_hook)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _quiet_about_interruptions(hook):
    """``hook`` silent on a dropped KeyboardInterrupt ("Exception ignored"): it is re-raised."""

    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    return quiet


def received() -> int | None:
    """The signal received inside :func:`handled` (None if none)."""
    return _state.received


def raise_if_pending() -> None:
    """Raise the interruption of a signal received earlier (one third-party code swallowed)."""
    if _state.received is not None:
        raise _exception(_state.received)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a signal does not interrupt; it is raised once the block is done."""
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = False
    raise_if_pending()


def committed(path: Path) -> None:
    """Note that ``path`` now holds the complete outputs of this run."""
    _state.committed = path


def last_committed() -> Path | None:
    """The output folder swapped in during :func:`handled` (None if none)."""
    return _state.committed
