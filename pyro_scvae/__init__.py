"""pyro_scvae: cell-type annotation of single-cell RNA-seq with a hierarchical VAE in Pyro.

``PyroSCVAE``, ``load_pbmc68k_counts`` and ``select_genes`` are imported on first use, so
that the command lines (``python -m pyro_scvae.fit``) can parse their options before torch
is loaded.
"""

from __future__ import annotations

from pyro_scvae.errors import InputError, PyroSCVAEWarning

__all__ = ["InputError", "PyroSCVAE", "PyroSCVAEWarning", "load_pbmc68k_counts", "select_genes"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "PyroSCVAE":
        from pyro_scvae.api import PyroSCVAE

        return PyroSCVAE
    if name == "load_pbmc68k_counts":
        from pyro_scvae.data import load_pbmc68k_counts

        return load_pbmc68k_counts
    if name == "select_genes":
        from pyro_scvae.preprocess import select_genes

        return select_genes
    raise AttributeError(f"module 'pyro_scvae' has no attribute {name!r}")
