"""Reading the user's data and preparing what the model trains on.

Reading an ``.h5ad`` file (one-line errors for what cannot be read), checking counts,
dropping cells without counts, choosing highly variable genes, in memory or with the
matrix left on disk (``--backed``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

from pyro_scvae.api import PyroSCVAE
from pyro_scvae.data import (
    BackedCounts,
    cell_totals,
    gene_selection,
    load_pbmc68k_counts,
    seurat_v3_genes,
)
from pyro_scvae.errors import InputError, PyroSCVAEWarning

#: The labels of the embedded pbmc68k_reduced data, used when ``--adata`` is not given.
DEFAULT_LABELS_KEY = "bulk_labels"


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


def load_training_data(args) -> tuple[ad.AnnData, str]:
    """The AnnData to train on and its labels key.

    In memory its counts are checked and its empty cells dropped. A backed AnnData is
    returned as opened: :func:`nonempty_cells` checks its counts in the same pass over
    the file that finds the empty cells.
    """
    if args.backed and args.adata is None:
        raise InputError("--backed needs --adata (the .h5ad file to read from disk)")
    check_backed_layer(args.backed, args.layer)
    if args.adata is None:
        adata, labels_key = load_pbmc68k_counts(), args.labels_key or DEFAULT_LABELS_KEY
    else:
        if args.labels_key is None:
            raise InputError("--labels-key is required with --adata (the obs column of cell types)")
        adata, labels_key = read_adata(args.adata, backed=args.backed), args.labels_key
    PyroSCVAE.setup_anndata(adata, labels_key, args.unlabeled_category, args.batch_key, args.layer)
    if adata.isbacked:
        return adata, labels_key  # a subset is taken once, in backed_training_subset
    return drop_empty_cells(adata, args.layer), labels_key  # checks the counts


def backed_training_subset(
    adata: ad.AnnData, n_top_genes: int, cells_with_counts: np.ndarray
) -> ad.AnnData:
    """The cells and genes to train on, as one view of a backed AnnData (kept on disk).

    The same choice as :func:`select_genes` then :func:`drop_empty_cells` in memory,
    with the highly variable genes from :func:`~pyro_scvae.data.seurat_v3_genes` (the
    seurat_v3 computation in chunks). ``cells_with_counts`` is :func:`nonempty_cells`
    of ``adata``, computed once by the caller, which also leaves the other cells out of
    the outputs. anndata allows only one level of view of a backed AnnData, so cells and
    genes are chosen first and the view taken once.
    """
    counts = BackedCounts.from_adata(adata)  # checked by nonempty_cells already
    cells = cells_with_counts.copy()  # [cells]
    genes = np.ones(adata.n_vars, dtype=bool)  # [genes]
    if 0 < n_top_genes < adata.n_vars:
        genes = seurat_v3_genes(counts.subset(cells), n_top_genes)
        selected = counts.select_genes(gene_selection(adata.var_names, adata.var_names[genes]))
        cells &= np.asarray(selected.sum(axis=1)).ravel() > 0
    emptied = int((cells != cells_with_counts).sum())  # cells with counts, none in these genes
    if emptied:
        warnings.warn(
            f"{emptied} cells have zero counts over the genes used: they are left out of "
            "training but still annotated",
            PyroSCVAEWarning,
            stacklevel=2,
        )
    if cells.all() and genes.all():
        return adata
    return adata[np.flatnonzero(cells), np.flatnonzero(genes)]


def select_genes(adata: ad.AnnData, n_top_genes: int, layer: str | None) -> ad.AnnData:
    """The ``n_top_genes`` most variable genes (scanpy's seurat_v3 on counts), or all."""
    if n_top_genes == 0 or n_top_genes >= adata.n_vars:
        return adata
    ranking = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer=layer, inplace=False
    )
    return adata[:, ranking["highly_variable"].to_numpy()].copy()


def drop_empty_cells(adata: ad.AnnData, layer: str | None) -> ad.AnnData:
    """Remove cells without a single count, with a warning that says how many."""
    cells = nonempty_cells(adata, layer)
    return adata if cells.all() else adata[cells].copy()


def nonempty_cells(adata: ad.AnnData, layer: str | None) -> np.ndarray:
    """Boolean mask ``[cells]`` of the cells with counts; a warning says how many have none.

    The counts are checked on the way (:func:`~pyro_scvae.data.cell_totals`: one pass
    in chunks over a backed AnnData).
    """
    totals = cell_totals(adata, layer)  # [cells]
    if (totals == 0).all():
        raise InputError("every cell has zero counts")
    if (totals == 0).any():
        warnings.warn(
            f"{int((totals == 0).sum())} cells with zero counts were dropped",
            PyroSCVAEWarning,
            stacklevel=3,
        )
    return totals > 0


def backed_cells(adata: ad.AnnData) -> np.ndarray | None:
    """The cells with counts of a backed AnnData (written out row by row), else None.

    In memory the cells without counts were dropped from ``adata`` itself already.
    """
    return nonempty_cells(adata, None) if adata.isbacked else None
