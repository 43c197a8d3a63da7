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
import scipy.sparse as sp

from pyro_scvae.api import SETUP_KEY, PyroSCVAE
from pyro_scvae.config import MARKER_SHARE
from pyro_scvae.data import (
    BackedCounts,
    cell_totals,
    gene_selection,
    load_pbmc68k_counts,
    seurat_v3_ranks,
)
from pyro_scvae.errors import InputError, PyroSCVAEWarning
from pyro_scvae.panel import gene_panel, label_codes, markers_per_type, type_markers

#: The labels of the embedded pbmc68k_reduced data, used when ``--adata`` is not given.
DEFAULT_LABELS_KEY = "bulk_labels"


def read_adata(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file, or raise :class:`InputError` saying why it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an .h5ad file")
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # h5py and anndata raise many kinds
        raise InputError(f"cannot read {path} as an .h5ad file ({type(error).__name__})") from None
    make_names_unique(adata, path)
    return adata


def make_names_unique(adata: ad.AnnData, path: str | Path) -> None:
    """Give repeated cell and gene names a suffix (``-1``, ``-2`` …), with a warning each.

    anndata's ``obs_names_make_unique`` / ``var_names_make_unique``: the outputs then
    have one row per cell, in order, and genes are matched by name without ambiguity.
    A backed file is changed in memory only; its matrix is found by the same names
    (:meth:`~pyro_scvae.data.BackedCounts.from_adata`).
    """
    for names, make_unique, what in (
        (adata.obs_names, adata.obs_names_make_unique, "cell names (obs_names)"),
        (adata.var_names, adata.var_names_make_unique, "gene names (var_names)"),
    ):
        function = make_unique.__name__
        if names.is_unique:
            continue
        repeated = int(names.duplicated().sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's own note on the repeated names
            make_unique()
        warnings.warn(
            f"{path}: {repeated} {what} repeat an earlier one; they were made unique by "
            f"appending -1, -2, … (anndata's {function})",
            PyroSCVAEWarning,
            stacklevel=3,
        )


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


def keeps_all_genes(n_top_genes: int, n_genes: int) -> bool:
    """Whether ``n_top_genes`` asks for every gene: 0, or at least the number of genes."""
    return n_top_genes == 0 or n_top_genes >= n_genes


def markers_added(n_top_genes: int, n_genes: int, n_training_genes: int) -> int:
    """How many training genes are markers beyond the ``n_top_genes`` variable ones."""
    variable = n_genes if keeps_all_genes(n_top_genes, n_genes) else n_top_genes
    return n_training_genes - variable


def backed_training_subset(
    adata: ad.AnnData, n_top_genes: int, cells_with_counts: np.ndarray, marker_share: float = 0.0
) -> ad.AnnData:
    """The cells and genes to train on, as one view of a backed AnnData (kept on disk).

    The same choice as :func:`select_genes` then :func:`drop_empty_cells` in memory,
    with the variability ranks from :func:`~pyro_scvae.data.seurat_v3_ranks` (the
    seurat_v3 computation in chunks) and markers from labelled cells read from disk.
    ``cells_with_counts`` is :func:`nonempty_cells` of ``adata``, computed once by the
    caller, which also leaves the other cells out of the outputs. anndata allows only one
    level of view of a backed AnnData, so cells and genes are chosen first and the view
    taken once.
    """
    counts = BackedCounts.from_adata(adata)  # checked by nonempty_cells already
    cells = cells_with_counts.copy()  # [cells]
    genes = np.ones(adata.n_vars, dtype=bool)  # [genes]
    if not keeps_all_genes(n_top_genes, adata.n_vars):
        subset = counts.subset(cells)
        ranks = with_wider_spans(lambda span: seurat_v3_ranks(subset, span), n_top_genes)
        genes = training_genes(subset, label_codes(adata)[cells], ranks, n_top_genes, marker_share)
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


def select_genes(
    adata: ad.AnnData,
    n_top_genes: int = 2000,
    layer: str | None = None,
    marker_share: float = MARKER_SHARE,
) -> ad.AnnData:
    """The genes to train on, as ``python -m pyro_scvae.fit`` chooses them.

    Returns a copy of ``adata`` with those genes, or ``adata`` itself when all are kept.

    The ``n_top_genes`` most variable genes (scanpy's seurat_v3 on the counts) and the
    best markers of each labelled type (:func:`training_genes`); all genes when
    ``n_top_genes`` is 0 or at least the number of genes. The labels and the counts'
    layer are those registered by ``PyroSCVAE.setup_anndata`` (without it: no markers,
    and ``layer`` or ``.X``)::

        PyroSCVAE.setup_anndata(adata, labels_key="cell_type")
        adata = pyro_scvae.select_genes(adata)  # then PyroSCVAE(adata)
    """
    setup = adata.uns.get(SETUP_KEY) or {}
    layer = layer if layer is not None else setup.get("layer")
    if keeps_all_genes(n_top_genes, adata.n_vars):
        return adata

    def ranks(span: float) -> np.ndarray:
        ranking = sc.pp.highly_variable_genes(
            adata,
            n_top_genes=n_top_genes,
            flavor="seurat_v3",
            layer=layer,
            span=span,
            inplace=False,
        )
        rank = ranking["highly_variable_rank"].to_numpy(dtype=np.float64)  # NaN past the top
        return np.where(np.isnan(rank), np.inf, rank)

    variability = with_wider_spans(ranks, n_top_genes)
    counts = adata.X if layer is None else adata.layers[layer]
    genes = training_genes(counts, label_codes(adata), variability, n_top_genes, marker_share)
    return adata[:, genes].copy()


def training_genes(
    counts: sp.spmatrix | np.ndarray | BackedCounts,
    labels: np.ndarray,
    variability_ranks: np.ndarray,
    n_top_genes: int,
    marker_share: float,
) -> np.ndarray:
    """Mask ``[genes]``: the ``n_top_genes`` most variable genes and the types' markers.

    ``ceil(marker_share · n_top_genes / types)`` markers of each labelled type
    (:func:`~pyro_scvae.panel.type_markers`) join the most variable genes
    (:func:`~pyro_scvae.panel.gene_panel`), so at most ``marker_share · n_top_genes``
    genes (plus one per type) are added. ``marker_share`` 0, or fewer than two labelled
    types, gives the ``n_top_genes`` most variable genes.
    """
    n_types = len(np.unique(labels[labels >= 0]))
    per_type = markers_per_type(n_top_genes, n_types, marker_share)
    markers = type_markers(counts, labels, per_type)  # none when per_type is 0
    return gene_panel(variability_ranks, markers, n_top_genes)


#: Spans of seurat_v3's loess trend tried in turn: scanpy's default, then wider ones.
LOESS_SPANS = (0.3, 0.5, 1.0)


def with_wider_spans(choose, n_top_genes: int) -> np.ndarray:
    """``choose(span)`` (a gene mask) at the first span of :data:`LOESS_SPANS` that fits.

    seurat_v3 fits a loess trend of log variance on log mean; on a few hundred cells it
    can be singular (skmisc: "reciprocal condition number ..."). A wider span smooths
    over more genes and fits; a warning says so.
    """
    for span in LOESS_SPANS:
        try:
            genes = choose(span)
        except ValueError:  # the loess fit is singular
            continue
        if span != LOESS_SPANS[0]:
            warnings.warn(
                f"scanpy's seurat_v3 trend (loess, span {LOESS_SPANS[0]}) cannot be fitted on "
                f"these cells; the {n_top_genes} highly variable genes were chosen with "
                f"span {span}",
                PyroSCVAEWarning,
                stacklevel=3,
            )
        return genes
    raise InputError(
        f"cannot choose {n_top_genes} highly variable genes: scanpy's seurat_v3 trend (loess) "
        f"cannot be fitted on these cells with spans {', '.join(map(str, LOESS_SPANS))}; "
        "pass --n-top-genes 0 to keep every gene"
    )


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
