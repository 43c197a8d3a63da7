"""pyro_scvae: cell-type annotation of single-cell RNA-seq with a hierarchical VAE in Pyro."""

from pyro_scvae.api import PyroSCVAE
from pyro_scvae.data import InputError, load_pbmc68k_counts

__all__ = ["InputError", "PyroSCVAE", "load_pbmc68k_counts"]
__version__ = "0.1.0"
