"""From AnnData to the arrays the model trains on: counts, labels, batches, minibatches.

Counts stay in a sparse CSR matrix; only the rows of one minibatch are densified.
Every check on user input raises :class:`InputError` with a message that says what is
wrong and what to do; the command line turns it into a one-line error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch


class InputError(ValueError):
    """The input data or an option is unusable; the message tells the user what to do."""


class PyroSCVAEWarning(UserWarning):
    """Something about the input the user should know (dropped cells, missing genes)."""


def load_pbmc68k_counts() -> ad.AnnData:
    """scanpy's ``pbmc68k_reduced`` (700 cells × 765 genes) with its exact integer counts.

    Its ``.raw.X`` stores ``round(log1p(counts / n_counts · 1e4), 3)``; inverting that and
    rounding recovers the counts exactly (see ``../shared/data/README.md``). Labels are
    in ``obs['bulk_labels']``. Nothing is downloaded: the file ships with scanpy.
    """
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    log_normalised = reduced.raw.X.toarray()  # [cells, genes]
    n_counts = reduced.obs["n_counts"].to_numpy()[:, None]  # [cells, 1]
    counts = np.round(np.expm1(log_normalised) * n_counts / 1e4).astype(np.float32)
    obs = reduced.obs[["bulk_labels", "n_counts"]].copy()
    var = pd.DataFrame(index=reduced.raw.var_names.copy())
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def count_matrix(adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix:
    """The raw counts of ``adata`` (``.X`` or a layer) as float32 CSR, checked.

    Raises
    ------
    InputError
        If the layer does not exist or the values are not finite non-negative integers.
    """
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"layer '{layer}' not found; available layers: {sorted(adata.layers) or 'none'}"
        )
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise InputError("the AnnData has no .X; pass --layer with the name of the counts layer")
    if getattr(adata, "isbacked", False) and not sp.issparse(matrix) and layer is None:
        matrix = matrix[:]
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    check_counts(matrix.data, where=".X" if layer is None else f"layer '{layer}'")
    return matrix


def check_counts(values: np.ndarray, where: str = ".X") -> None:
    """Raise :class:`InputError` unless ``values`` are finite non-negative integers."""
    if not np.all(np.isfinite(values)):
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(f"{where} contains {n_bad} NaN or infinite values; counts must be finite")
    if values.size and values.min() < 0:
        raise InputError(f"{where} contains negative values; raw counts are non-negative")
    if values.size and not np.all(values == np.round(values)):
        raise InputError(
            f"{where} is not integer counts (the data look log-normalised); "
            "use --layer (or layer=) to point to the raw counts"
        )


def encode_labels(
    labels: pd.Series, unlabeled_category: str | None, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Integer codes for cell-type labels, ``-1`` for unlabelled cells.

    Missing values always mean "no label"; so does ``unlabeled_category`` where given.
    ``classes`` fixes the code order (when applying a trained model).
    """
    as_text = labels.astype(object).where(labels.notna(), None)
    is_labelled = as_text.notna().to_numpy()
    if unlabeled_category is not None:
        is_labelled &= (as_text != unlabeled_category).to_numpy()
    if classes is None:
        classes = sorted({str(v) for v in as_text[is_labelled]})
    index = {name: i for i, name in enumerate(classes)}
    codes = np.full(len(labels), -1, dtype=np.int64)
    codes[is_labelled] = [index.get(str(v), -1) for v in as_text[is_labelled]]
    return codes, classes


@dataclass
class CellData:
    """The training arrays of one AnnData.

    Attributes
    ----------
    counts
        Raw counts, CSR ``[cells, genes]``.
    labels
        Class codes ``[cells]``, ``-1`` where unlabelled.
    batches
        Batch codes ``[cells]``, or None without a batch covariate.
    """

    counts: sp.csr_matrix
    labels: np.ndarray
    batches: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def tensors(
        self, index: np.ndarray, device: torch.device | str = "cpu", labelled: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x, y, batch)`` for the cells in ``index``; y is None unless ``labelled``."""
        x = torch.from_numpy(self.counts[index].toarray()).to(device)  # [batch, G]
        y = torch.from_numpy(self.labels[index]).to(device) if labelled else None  # [batch]
        b = None if self.batches is None else torch.from_numpy(self.batches[index]).to(device)
        return x, y, b


def library_prior(
    counts: sp.csr_matrix, batches: np.ndarray | None, n_batches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of log total counts, per batch: the prior p(l)."""
    log_totals = np.log(np.asarray(counts.sum(axis=1)).ravel())  # [cells]
    if batches is None:
        groups = [np.ones(len(log_totals), dtype=bool)]
    else:
        groups = [batches == b for b in range(n_batches)]
    loc = [log_totals[g].mean() if g.any() else log_totals.mean() for g in groups]
    scale = [max(log_totals[g].std(), 1e-2) if g.sum() > 1 else 1.0 for g in groups]
    return torch.tensor(loc, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def minibatches(
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, bool]]:
    """One epoch of shuffled minibatches, each either all labelled or all unlabelled.

    Labelled and unlabelled cells never share a minibatch (labelled minibatches call
    the model with y, unlabelled ones without), and the two kinds are interleaved at
    random. Yields ``(cell indices, is_labelled)``.
    """
    chunks: list[tuple[np.ndarray, bool]] = []
    for is_labelled in (True, False):
        cells = rng.permutation(np.flatnonzero((labels >= 0) == is_labelled))
        stop = len(cells) - len(cells) % batch_size if drop_last else len(cells)
        chunks += [(cells[i : i + batch_size], is_labelled) for i in range(0, stop, batch_size)]
    for i in rng.permutation(len(chunks)):
        yield chunks[i]
