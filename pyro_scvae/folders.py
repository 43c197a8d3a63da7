"""Output folders that never cost the user a file: checked first, written aside, swapped in.

Every folder pyro_scvae writes (a command's ``--out``, a saved model) carries a marker
file, :data:`MARKER`, listing what the program wrote there. An existing folder is
replaced only when it is empty, or when it carries the marker and holds nothing beyond
what the marker lists; the working directory, its parents, the home folder, ``/`` and
any folder that contains an input (``--adata``, ``--query``, ``--model``) are never
replaced. :func:`check_output_dir` says so in one line before any work starts, and
:func:`atomic_output_dir` checks again when it swaps the new folder in.

The module imports nothing heavy, so that the command lines run these checks at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pyro_scvae import signals
from pyro_scvae.errors import InputError

#: The file in every folder pyro_scvae writes: its version, the command, what it wrote.
MARKER = ".pyro_scvae"
#: File systems no output belongs on.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_dir(
    out: str | Path, inputs: Iterable[str | Path | None] = (), option: str = "--out"
) -> Path:
    """The resolved ``out``, or :class:`InputError` if writing it could lose a file or fail.

    Parameters
    ----------
    out
        The folder to (re)place.
    inputs
        Files or folders the run reads (None entries are skipped): ``out`` may be none
        of them and may not contain any.
    option
        How the message names ``out``.

    Raises
    ------
    InputError
        If ``out`` is empty text, a file, a protected folder (``/``, home, the working
        directory or one of its parents), contains or is an input, lies under a file
        or on a system file system, cannot be written, or is a non-empty folder that
        pyro_scvae did not write (or that holds files it did not write).
    """
    if str(out).strip() == "":
        raise InputError(f"{option} is empty; name the folder to write (e.g. {option} results)")
    path = Path(out).expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == Path(path.anchor) or path == home or path in (cwd, *cwd.parents):
        raise InputError(
            f"{option} {out} is {_protected_name(path, cwd, home)}; "
            "name a new folder for the outputs"
        )
    for given in inputs:
        if given is None:
            continue
        item = Path(given).expanduser().resolve()
        if item == path or path in item.parents:
            raise InputError(
                f"{option} {out} contains the input {given}, which replacing it would delete; "
                "choose another folder"
            )
    if any(path == system or system in path.parents for system in SYSTEM_FOLDERS):
        raise InputError(f"{option} {out} is on a system file system; choose a folder of yours")
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {out} is a file, not a folder; choose another name")
    check_writable_parent(path, out, option)
    refuse_foreign_contents(path, f"{option} {out}")
    return path


def check_writable_parent(path: Path, out: str | Path, option: str = "--out") -> None:
    """:class:`InputError` unless the folder ``path`` can be created (or replaced)."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {out} lies under {existing}, which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: no permission to write in {existing}")


def refuse_foreign_contents(path: Path, name: str) -> None:
    """:class:`InputError` if the folder ``path`` holds anything pyro_scvae did not write."""
    if not path.is_dir() or not any(path.iterdir()):
        return
    written = read_marker(path)
    if written is None:
        raise InputError(
            f"{name} exists, is not empty and was not written by pyro_scvae "
            f"(no {MARKER} file); it is left alone: choose a new or empty folder"
        )
    foreign = sorted(set(entries(path)) - set(written) - {MARKER})
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(
            f"{name} holds files pyro_scvae did not write ({foreign[0]}{more}); "
            "move them away or choose another folder"
        )


def entries(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, as relative POSIX paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in dirs + files]
    return found


def read_marker(folder: Path) -> list[str] | None:
    """What the marker of ``folder`` says was written there, or None without a valid marker."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        written = marker["written"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(written, list) or not all(isinstance(w, str) for w in written):
        return None
    return written


def write_marker(folder: Path, command: str) -> None:
    """Mark ``folder`` as pyro_scvae's, listing everything now in it."""
    from pyro_scvae import __version__

    marker = {"pyro_scvae": __version__, "command": command, "written": sorted(entries(folder))}
    write_atomically(folder / MARKER, (json.dumps(marker, indent=1) + "\n").encode())


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file beside it (umask applies)."""
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output_dir(
    out: str | Path,
    command: str = "fit",
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
) -> Iterator[Path]:
    """A new folder beside ``out`` that replaces ``out`` only if the block finishes.

    ``out`` is checked first (:func:`check_output_dir`, with ``inputs``). The folder is
    created with the umask's permissions, gets the marker (listing what the block wrote)
    and is swapped in with two renames while SIGINT and SIGTERM wait (:func:`swap_in`).
    On an error or an interruption it is removed and ``out`` stays as it was.
    """
    out = check_output_dir(out, inputs, option)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
    staging.mkdir()  # mode 0777 less the umask
    _open.append(staging)
    try:
        yield staging
        signals.raise_if_pending()  # an interruption swallowed by third-party code
        write_marker(staging, command)
        refuse_foreign_contents(out, f"{option} {out}")  # files may have appeared since the check
        with signals.deferred():
            swap_in(staging, out, outermost=len(_open) == 1)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _open.pop()


#: The folders of :func:`atomic_output_dir` being written (one inside another: a model).
_open: list[Path] = []


def swap_in(staging: Path, out: Path, outermost: bool = True) -> None:
    """Rename ``staging`` to ``out``; an earlier ``out`` is deleted once the new one is there.

    ``outermost``: ``out`` is not inside another folder being written, so the run's
    outputs are now in place (:func:`pyro_scvae.signals.committed`).
    """
    previous = out.with_name(f".{out.name}.previous-{secrets.token_hex(4)}")
    had_previous = out.exists()
    if had_previous:
        out.rename(previous)
    try:
        staging.rename(out)
    except BaseException:
        if had_previous:
            previous.rename(out)
        raise
    if outermost:
        signals.committed(out)
    if had_previous:
        shutil.rmtree(previous, ignore_errors=True)


def _protected_name(path: Path, cwd: Path, home: Path) -> str:
    if path == cwd:
        return "the working directory"
    if path == home:
        return "the home folder"
    if path == Path(path.anchor):
        return "the root folder"
    return "a parent of the working directory"
