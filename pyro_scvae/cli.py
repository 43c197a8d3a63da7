"""What the two commands share: argument types, one-line errors, exit statuses.

A command's ``main`` parses its arguments first (this module and the parsers import
nothing heavy, so ``--help`` and option errors come back at once) and then runs its
work inside :func:`run_cli`, which turns an :class:`~pyro_scvae.errors.InputError` into
``error: ...`` on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable

from pyro_scvae.errors import InputError, PyroSCVAEWarning

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_INPUT_ERROR)


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the package's version, printed at once (nothing heavy is imported)."""
    from pyro_scvae import __version__

    parser.add_argument("--version", action="version", version=f"pyro_scvae {__version__}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


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
    """Run ``work``; map bad input to exit 2 and an interruption to exit 130."""
    warnings.simplefilter("ignore")  # third-party chatter; our own warnings are shown:
    warnings.simplefilter("always", PyroSCVAEWarning)
    warnings.showwarning = _show_warning
    try:
        work()
    except InputError as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: no output was written\n")
        return EXIT_INTERRUPTED
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"warning: {message}\n")
