"""pyro_scvae: cell-type annotation of single-cell RNA-seq with a hierarchical VAE in Pyro.

``PyroSCVAE`` and ``load_pbmc68k_counts`` are imported on first use, so that the command
lines (``python -m pyro_scvae.fit``) can parse their options before torch is loaded.
"""

from __future__ import annotations

from pyro_scvae.errors import InputError, PyroSCVAEWarning

__all__ = ["InputError", "PyroSCVAE", "PyroSCVAEWarning", "load_pbmc68k_counts"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "PyroSCVAE":
        from pyro_scvae.api import PyroSCVAE

        return PyroSCVAE
    if name == "load_pbmc68k_counts":
        from pyro_scvae.data import load_pbmc68k_counts

        return load_pbmc68k_counts
    raise AttributeError(f"module 'pyro_scvae' has no attribute {name!r}")
