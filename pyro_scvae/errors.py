"""The two kinds of message the package gives its user: an error and a warning.

Kept apart from every heavy import, so that the command lines can report a bad option
before torch, scanpy or scvi-tools are loaded.
"""

from __future__ import annotations


class InputError(ValueError):
    """The input data or an option is unusable; the message tells the user what to do."""


class PyroSCVAEWarning(UserWarning):
    """Something about the input the user should know (dropped cells, missing genes)."""
