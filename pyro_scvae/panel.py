"""The genes the model trains on: the most variable ones and the labelled types' markers.

Highly variable genes (scanpy's seurat_v3) are chosen without the labels, so the genes
that tell two close types apart (naive from memory CD4 T cells) are often not among
them. Adding the best markers of each labelled type (a t-test of each type against the
others, scanpy's ``rank_genes_groups``) to the 2,000 most variable of 8,846 genes lifted
macro-F1 on a within-study split of FACS-sorted PBMC from 0.92 to 0.96, with about 300
more genes (``benchmarks/cli_study.md``).
"""

from __future__ import annotations

import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

#: Labelled cells per type that the marker test reads at most (a random subset beyond).
MAX_CELLS_PER_TYPE = 1000


def markers_per_type(n_top_genes: int, n_types: int, share: float) -> int:
    """Markers taken from each labelled type: ``ceil(share · n_top_genes / n_types)``."""
    if share <= 0 or n_types == 0:
        return 0
    return math.ceil(share * n_top_genes / n_types)


def type_markers(counts, labels: np.ndarray, per_type: int, seed: int = 0) -> np.ndarray:
    """Boolean mask ``[genes]`` of the ``per_type`` best markers of every labelled type.

    ``counts`` are raw counts ``[cells, genes]`` (sparse, dense, or a
    :class:`~pyro_scvae.data.BackedCounts` on disk) and ``labels`` their class codes
    ``[cells]``, -1 where unlabelled. Each type with at least two labelled cells is tested
    against all other labelled cells (Welch's t-test on log1p of counts per 10,000, scanpy's
    ``rank_genes_groups``), on at most :data:`MAX_CELLS_PER_TYPE` cells of each type; its
    ``per_type`` highest-scoring genes are markers. Fewer than two such types: no markers.
    """
    mask = np.zeros(counts.shape[1], dtype=bool)
    if per_type <= 0:
        return mask
    rng = np.random.default_rng(seed)
    rows = []
    for code in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == code)
        if len(members) > MAX_CELLS_PER_TYPE:
            members = np.sort(rng.choice(members, MAX_CELLS_PER_TYPE, replace=False))
        rows.append(members)
    chosen = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)  # [cells tested]
    codes = labels[chosen]  # [cells tested]
    sizes = pd.Series(codes).value_counts()
    tested = sorted(str(c) for c in sizes.index[sizes >= 2])
    if len(tested) < 2:
        return mask
    cells = ad.AnnData(
        X=sp.csr_matrix(counts[chosen], dtype=np.float32),
        obs=pd.DataFrame({"type": pd.Categorical(codes.astype(str))}, index=chosen.astype(str)),
        var=pd.DataFrame(index=np.arange(counts.shape[1]).astype(str)),
    )
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's notes on genes without counts in a type
        sc.tl.rank_genes_groups(
            cells,
            "type",
            groups=tested,
            reference="rest",
            method="t-test",
            n_genes=min(per_type, counts.shape[1]),
        )
    names = cells.uns["rank_genes_groups"]["names"]  # [per_type] records, a field per type
    for group in names.dtype.names:
        mask[np.asarray(names[group], dtype=int)] = True  # var_names are column numbers
    return mask


def label_codes(adata: ad.AnnData) -> np.ndarray:
    """Codes of the labelled types ``[cells]`` as registered by ``setup_anndata``; -1 unlabelled.

    All -1 where ``adata`` was not set up (then there are no markers to choose).
    """
    from pyro_scvae.api import SETUP_KEY
    from pyro_scvae.data import encode_labels
    from pyro_scvae.errors import PyroSCVAEWarning

    setup = adata.uns.get(SETUP_KEY)
    if not setup:
        return np.full(adata.n_obs, -1, dtype=np.int64)
    with warnings.catch_warnings():  # a placeholder label is PyroSCVAE's to warn of, once
        warnings.simplefilter("ignore", PyroSCVAEWarning)
        codes, _ = encode_labels(adata.obs[setup["labels_key"]], setup.get("unlabeled_category"))
    return codes


def gene_panel(variability_ranks: np.ndarray, markers: np.ndarray, n_top_genes: int) -> np.ndarray:
    """The genes to train on, as a boolean mask ``[genes]``.

    The ``n_top_genes`` most variable genes (``variability_ranks`` below ``n_top_genes``,
    0 = most variable, ``inf`` for genes not ranked) and every marker. The markers join
    the variable genes rather than replace the least variable of them: on the
    cross-technology task (T6, 500 of 1,000 genes) replacing them lowered accuracy on
    both seeds tried (0.671 → 0.614, 0.679 → 0.579); joining them raised it on two seeds
    of three (``benchmarks/cli_study.md``).
    """
    return (variability_ranks < n_top_genes) | markers
