"""What the two commands share: argument types, one-line errors, exit statuses.

A command's ``main`` parses its arguments and runs its work inside :func:`run_cli`
(this module and the parsers import nothing heavy, so ``--help`` and option errors come
back at once), which turns an :class:`~pyro_scvae.errors.InputError` into ``error: ...``
on stderr and exit status 2, and SIGINT / SIGTERM into one line and exit status 130 /
143 (:mod:`pyro_scvae.signals`), without a traceback. Integer options have bounds
(:func:`integer`), so that an absurd value is an option error, not a failed allocation.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from pyro_scvae import signals
from pyro_scvae.errors import InputError, PyroSCVAEWarning

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = signals.EXIT_STATUS[signal.SIGINT]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_INPUT_ERROR)


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the package's version, printed at once (nothing heavy is imported)."""
    from pyro_scvae import __version__

    parser.add_argument("--version", action="version", version=f"pyro_scvae {__version__}")


def integer(low: int, high: int, name: str) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (its ``name`` in messages)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            kind = "a positive integer" if low == 1 else f"{low} or a positive integer"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = name
    return parse


#: A count of anything (cells, genes, epochs): far above any real use, below overflow.
MAX_COUNT = 10**9
positive_int = integer(1, MAX_COUNT, "positive_int")
non_negative_int = integer(0, MAX_COUNT, "non_negative_int")
#: The seeds numpy, torch and Python's random all accept.
seed = integer(0, 2**32 - 1, "seed")


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def run_cli(work: Callable[[], None]) -> int:
    """Run ``work``; map bad input to exit 2 and SIGINT / SIGTERM to exit 130 / 143.

    The signals are handled from the start (:func:`pyro_scvae.signals.handled`), so
    ``work`` should parse the arguments itself: an interruption at any point, the
    imports of torch included, ends with one line on stderr.
    """
    warnings.simplefilter("ignore")  # third-party chatter; our own warnings are shown:
    warnings.simplefilter("always", PyroSCVAEWarning)
    warnings.showwarning = _show_warning
    with signals.handled():
        try:
            work()
            signals.raise_if_pending()  # a signal third-party code swallowed
        except InputError as error:
            sys.stderr.write(f"error: {error}\n")
            return EXIT_INPUT_ERROR
        except KeyboardInterrupt:
            signum = signals.received() or signal.SIGINT
            sys.stderr.write(interrupted_message(signum, signals.last_committed()))
            return signals.EXIT_STATUS[signum]
    return 0


def import_heavy(*modules: str) -> None:
    """Import ``modules`` (torch, scanpy … through them) with SIGINT and SIGTERM held.

    A signal raised inside an extension's own import (torch runs Python from C++) was seen
    to end the process by SIGABRT instead of unwinding; held, it is raised as soon as the
    imports are done (a few seconds at most), and the run ends with one line.
    """
    with signals.deferred():
        for name in modules:
            importlib.import_module(name)


def exit_process(status: int) -> None:
    """End the command's process with ``status`` (what ``python -m`` calls with ``main()``).

    After an interruption (130, 143), the clean-up done, the process ends at once with
    ``os._exit`` once stdout and stderr are flushed: a handled Ctrl-C during the imports of
    torch was seen (rarely, on a loaded machine) to end the interpreter by SIGINT at exit
    nonetheless, status -2 instead of 130.
    """
    if status in signals.EXIT_STATUS.values():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def interrupted_message(signum: int, committed: Path | None) -> str:
    """The one line an interruption prints: what happened to the outputs."""
    name = signal.Signals(signum).name
    if committed is not None:
        return f"interrupted ({name}) after the outputs were written to {committed}/\n"
    return f"interrupted ({name}): nothing was written, an earlier output folder is unchanged\n"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"warning: {message}\n")
