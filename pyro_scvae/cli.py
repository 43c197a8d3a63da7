"""What the two commands share: one-line errors, reading files, atomic output folders.

A command's ``main`` runs its work inside :func:`run_cli`, which turns an
:class:`~pyro_scvae.data.InputError` (or an unreadable file) into ``error: ...`` on
stderr and exit status 2, without a traceback. Outputs are written into a temporary
folder beside ``--out`` and renamed into place only when everything succeeded, so a
failed or interrupted run never leaves half-written results or clobbers earlier ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pyro_scvae.data import InputError, PyroSCVAEWarning

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_INPUT_ERROR)


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
    if not np.isfinite(value) or value <= 0:
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


def read_adata(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file, or raise :class:`InputError` saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # h5py and anndata raise many kinds
        raise InputError(f"cannot read {path} as an .h5ad file ({type(error).__name__})") from None


def check_backed_layer(backed: bool, layer: str | None) -> None:
    """``--backed`` reads ``.X`` from disk: with ``--layer`` it is an :class:`InputError`."""
    if backed and layer is not None:
        raise InputError(
            "--backed reads the counts from .X on disk, and anndata loads layers into memory; "
            "write the counts to .X to use --backed, or leave out --backed"
        )


@contextlib.contextmanager
def atomic_output_dir(out: str | Path) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` only if the block finishes without error."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out.with_name(f".{out.name}.previous")
    if out.exists():
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def write_predictions(probabilities: pd.DataFrame, calls: pd.Series, path: Path) -> pd.DataFrame:
    """``predictions.csv``: cell id, predicted, confidence and one ``prob:<class>`` per class."""
    table = pd.DataFrame(
        {"predicted": calls.to_numpy(), "confidence": probabilities.max(axis=1).to_numpy()},
        index=probabilities.index.rename("cell"),
    )
    table = table.join(probabilities.add_prefix("prob:"))
    table.to_csv(path)
    return table


def json_ready(settings: dict) -> dict:
    """Settings without None values (h5ad cannot store None) and with plain types."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if v is not None}))
