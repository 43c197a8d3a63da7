"""Matching the genes of new data to a trained model's, by name."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyro_scvae.data import BackedCounts
from pyro_scvae.errors import InputError, PyroSCVAEWarning


def match_genes(
    counts: sp.csr_matrix | BackedCounts,
    genes: pd.Index,
    model_genes: list[str],
    min_shared: float = 0.5,
) -> sp.csr_matrix | BackedCounts:
    """Reorder the columns of ``counts`` to the model's genes, by name.

    Genes the model needs but the data lack are zero (with a warning); fewer than
    ``min_shared`` of the model's genes present is an :class:`InputError`.
    """
    position = {str(g): i for i, g in enumerate(genes)}
    found = [(position[g], j) for j, g in enumerate(model_genes) if g in position]
    if len(found) < min_shared * len(model_genes):
        raise InputError(
            f"only {len(found)} of the model's {len(model_genes)} genes are in the data "
            f"(at least {min_shared:.0%} are needed); are the gene names of the same kind?"
        )
    if len(found) < len(model_genes):
        warnings.warn(
            f"{len(model_genes) - len(found)} of the model's {len(model_genes)} genes are "
            "missing from the data and are treated as zero counts",
            PyroSCVAEWarning,
            stacklevel=3,
        )
    rows, cols = zip(*found)
    selection = sp.csr_matrix(
        (np.ones(len(found), np.float32), (rows, cols)), shape=(len(genes), len(model_genes))
    )
    if isinstance(counts, BackedCounts):  # stays on disk: each chunk read is multiplied
        same = list(map(str, genes)) == list(model_genes)
        return counts.select_genes(None if same else selection)
    return sp.csr_matrix(counts @ selection)
