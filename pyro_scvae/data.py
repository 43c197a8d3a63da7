"""From AnnData to the arrays the model trains on: counts, labels, batches, minibatches.

Counts stay in a sparse CSR matrix; only the rows of one minibatch are densified.
Every check on user input raises :class:`InputError` with a message that says what is
wrong and what to do; the command line turns it into a one-line error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata.utils import make_index_unique

from pyro_scvae.errors import InputError, PyroSCVAEWarning  # noqa: F401 (re-exported)

#: Rows per chunk in full passes over a matrix on disk (count checks, totals, HVGs).
CHUNK_ROWS = 10_000


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


def count_matrix(adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix | BackedCounts:
    """The raw counts of ``adata`` (``.X`` or a layer) as float32 CSR, checked.

    For an AnnData opened with ``backed="r"`` (or a subset of one), ``.X`` stays on
    disk: the result is a :class:`BackedCounts` and the check reads it in chunks of
    :data:`CHUNK_ROWS` rows. (anndata's backed mode keeps only ``.X`` on disk; layers
    are in memory and are returned as CSR.)

    Raises
    ------
    InputError
        If the layer does not exist or the values are not finite non-negative integers.
    """
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"layer '{layer}' not found; available layers: {sorted(adata.layers) or 'none'}"
        )
    if getattr(adata, "isbacked", False) and layer is None:
        counts = BackedCounts.from_adata(adata)
        for chunk in counts.chunks():
            check_counts(chunk.data, where=".X")
        return counts
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise InputError("the AnnData has no .X; pass --layer with the name of the counts layer")
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    check_counts(matrix.data, where=".X" if layer is None else f"layer '{layer}'")
    return matrix


def cell_totals(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    """Total counts of each cell, ``[cells]``, with the counts checked as in :func:`count_matrix`.

    A backed ``.X`` is read once: each chunk is checked and summed in the same pass.

    Raises
    ------
    InputError
        As :func:`count_matrix`.
    """
    if getattr(adata, "isbacked", False) and layer is None:
        totals = []
        for chunk in BackedCounts.from_adata(adata).chunks():  # [CHUNK_ROWS, genes] each
            check_counts(chunk.data, where=".X")
            totals.append(np.asarray(chunk.sum(axis=1)).ravel())
        return np.concatenate(totals) if totals else np.zeros(0)
    return np.asarray(count_matrix(adata, layer).sum(axis=1)).ravel()


class BackedCounts:
    """The ``.X`` counts of an ``.h5ad`` file, read from disk a few rows at a time.

    It stands in for the in-memory CSR matrix wherever the package uses one:
    ``shape``, ``counts[rows]`` for an array of rows or a slice (a float32 CSR of
    those rows, in the order asked; the file is read in increasing row order),
    ``counts.sum(axis=...)`` and :meth:`chunks` (full passes in chunks of
    :data:`CHUNK_ROWS` rows). Memory holds only the rows of one read, never the
    matrix. It pickles as its file path and reopens the file where it is used (so
    that ``ddp_spawn`` can send it to other processes).

    Parameters
    ----------
    path
        The ``.h5ad`` file; its ``X`` must be CSR (as anndata writes a CSR matrix)
        or dense.
    rows
        The file rows that make up this matrix, in order (all rows when None).
    selection
        ``[file genes, genes]`` 0/1 matrix that picks and orders this matrix's genes
        from the file's (all genes when None); a column of zeros is a gene the file
        lacks.
    """

    def __init__(
        self,
        path: str | Path,
        rows: np.ndarray | None = None,
        selection: sp.csr_matrix | None = None,
    ) -> None:
        self.path = str(path)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.selection = selection
        self._file: h5py.File | None = None
        self._x = None
        x = self._dataset()
        self.file_shape: tuple[int, int] = tuple(int(n) for n in x.shape)
        n_rows = self.file_shape[0] if self.rows is None else len(self.rows)
        n_genes = self.file_shape[1] if selection is None else selection.shape[1]
        self.shape: tuple[int, int] = (n_rows, n_genes)

    @classmethod
    def from_adata(cls, adata: ad.AnnData) -> BackedCounts:
        """The ``.X`` of a backed AnnData, or of a subset (view) of one.

        A view's cells and genes are found in the file by name: names repeated in the
        file are made unique as anndata's ``obs_names_make_unique`` does (as
        :func:`~pyro_scvae.preprocess.read_adata` does to the AnnData).
        """
        counts = cls(adata.filename)
        if not adata.is_view:
            return counts
        with h5py.File(adata.filename, "r") as file:
            obs_names = pd.Index(ad.io.read_elem(file["obs"][file["obs"].attrs["_index"]]))
            var_names = pd.Index(ad.io.read_elem(file["var"][file["var"].attrs["_index"]]))
        obs_names, var_names = make_index_unique(obs_names), make_index_unique(var_names)
        rows = obs_names.get_indexer(adata.obs_names)
        if (rows < 0).any() or (var_names.get_indexer(adata.var_names) < 0).any():
            raise InputError(
                "a subset of a backed AnnData must keep the file's cell and gene names "
                "(or those obs_names_make_unique / var_names_make_unique give them)"
            )
        if adata.n_obs == len(obs_names) and np.array_equal(rows, np.arange(len(rows))):
            rows = None
        return counts.subset(rows).select_genes(gene_selection(var_names, adata.var_names))

    # ------------------------------------------------------------------ file access
    def _dataset(self):
        """``X`` of the open file: anndata's backed sparse dataset, or an h5py dataset."""
        if self._x is None:
            self._file = h5py.File(self.path, "r")
            element = self._file["X"]
            if isinstance(element, h5py.Dataset):
                self._x = element
            else:
                self._x = ad.io.sparse_dataset(element)
                if self._x.format != "csr":
                    raise InputError(
                        f"{self.path}: .X is stored as {self._x.format.upper()}; reading cells "
                        "from disk needs CSR (load it, convert with scipy.sparse.csr_matrix "
                        "and write it again)"
                    )
        return self._x

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_x"] = None  # h5py handles do not pickle; reopened on use
        state.pop("_mapped", None)  # nor do memory maps
        return state

    def _read_file_rows(self, sorted_rows: np.ndarray) -> sp.csr_matrix:
        """CSR of the file rows ``sorted_rows`` (increasing, unique), all file genes."""
        if len(sorted_rows) == 0:
            return sp.csr_matrix((0, self.file_shape[1]), dtype=np.float32)
        mapped = self._mapped_csr()
        if mapped is not None:
            return mapped.rows(sorted_rows)
        return sp.csr_matrix(read_rows(self._dataset(), sorted_rows), dtype=np.float32)

    def _mapped_csr(self) -> MappedCSR | None:
        """The file's CSR ``X`` memory-mapped, where it is stored uncompressed (else None)."""
        if not hasattr(self, "_mapped"):
            x = self._dataset()
            self._mapped = None if isinstance(x, h5py.Dataset) else MappedCSR.open(self.path)
        return self._mapped

    # ------------------------------------------------------------------ matrix-like
    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray | slice) -> sp.csr_matrix:
        """Rows ``index`` (array or slice) as float32 CSR ``[rows, genes]``, in that order."""
        if isinstance(index, slice):
            positions = np.arange(*index.indices(self.shape[0]))
        else:
            positions = np.asarray(index).reshape(-1)
            if positions.dtype == bool:
                positions = np.flatnonzero(positions)
            positions = positions.astype(np.int64, copy=False)
        file_rows = positions if self.rows is None else self.rows[positions]
        unique, inverse = np.unique(file_rows, return_inverse=True)
        block = self._read_file_rows(unique)  # [unique rows, G_file]
        if len(unique) != len(file_rows) or not np.array_equal(unique, file_rows):
            block = block[inverse]  # [rows, G_file] in the order asked
        if self.selection is not None:
            block = block @ self.selection  # [rows, genes]
        return sp.csr_matrix(block, dtype=np.float32)

    def chunks(self, size: int | None = None) -> Iterator[sp.csr_matrix]:
        """The matrix in consecutive blocks of ``size`` rows (:data:`CHUNK_ROWS`), CSR each."""
        size = size or CHUNK_ROWS
        for start in range(0, self.shape[0], size):
            yield self[start : start + size]

    def sum(self, axis: int | None = None) -> np.ndarray | float:
        """Totals as scipy gives them: ``axis=1`` ``[cells, 1]``, ``axis=0`` ``[1, genes]``."""
        if axis not in (None, 0, 1):
            raise ValueError(f"axis must be None, 0 or 1, not {axis}")
        if axis == 1:
            parts = [np.asarray(chunk.sum(axis=1)) for chunk in self.chunks()]
            return np.concatenate(parts) if parts else np.zeros((0, 1))  # [cells, 1]
        totals = np.zeros((1, self.shape[1]))
        for chunk in self.chunks():
            totals += chunk.sum(axis=0)  # [1, genes]
        return totals if axis == 0 else float(totals.sum())

    def subset(self, rows: np.ndarray | None) -> BackedCounts:
        """The rows ``rows`` of this matrix (positions or a boolean mask), still on disk."""
        if rows is None:
            return self
        rows = np.asarray(rows)
        positions = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        file_rows = positions if self.rows is None else self.rows[positions]
        return BackedCounts(self.path, file_rows, self.selection)

    def select_genes(self, selection: sp.csr_matrix | None) -> BackedCounts:
        """This matrix times ``selection`` ``[genes, new genes]`` (a 0/1 pick of genes)."""
        if selection is None:
            return self
        if self.selection is not None:
            selection = sp.csr_matrix(self.selection @ selection)
        return BackedCounts(self.path, self.rows, selection)


class MappedCSR:
    """A CSR matrix in an ``.h5ad`` file, read through a memory map instead of HDF5.

    Random rows through h5py cost two HDF5 reads per row, each of which copies a whole
    HDF5 chunk of ``data`` or ``indices`` (tens of kilobytes for a few hundred counts):
    about 10,000 cells/s, slower than training (``benchmarks/speed.md``). Where ``data``
    and ``indices`` are stored without compression or other filters (anndata's default),
    their bytes lie in the file as they are, chunk by chunk: this class finds where each
    chunk starts (``get_chunk_info``), maps the file into memory, and gathers the entries
    of the rows asked for with numpy. The operating system reads only the pages touched
    and keeps them cached. The rows are those h5py reads, bit for bit
    (``tests/test_backed.py``). ``indptr`` is read into memory once (8 bytes per cell).
    """

    def __init__(self, path: str, shape: tuple[int, int], indptr: np.ndarray, parts: dict):
        self.path, self.shape, self.indptr, self.parts = path, shape, indptr, parts

    @classmethod
    def open(cls, path: str) -> MappedCSR | None:
        """The mapping of ``path``'s ``X``, or None where it is compressed, filtered or odd."""
        import mmap

        with h5py.File(path, "r") as file:
            group = file["X"]
            shape = tuple(int(n) for n in group.attrs["shape"])
            layout = {name: _raw_layout(group[name]) for name in ("data", "indices")}
            if any(v is None for v in layout.values()):
                return None
            indptr = group["indptr"][:].astype(np.int64)
        with open(path, "rb") as handle:
            memory = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        parts = {}
        for name, (dtype, chunk, offsets) in layout.items():
            words = np.frombuffer(memory, dtype=dtype, count=len(memory) // dtype.itemsize)
            parts[name] = (words, chunk, offsets // dtype.itemsize)  # offsets in elements
        return cls(path, shape, indptr, parts)

    def _gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        words, chunk, starts = self.parts[name]
        if chunk is None:  # contiguous storage: one block
            return words[starts[0] + positions]
        return words[starts[positions // chunk] + positions % chunk]  # [n]

    def rows(self, sorted_rows: np.ndarray) -> sp.csr_matrix:
        """Float32 CSR of the rows ``sorted_rows``, all genes."""
        starts, stops = self.indptr[sorted_rows], self.indptr[sorted_rows + 1]  # [rows] each
        counts = stops - starts
        indptr = np.zeros(len(sorted_rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        positions = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])  # [nnz]
        data = self._gather("data", positions).astype(np.float32, copy=False)
        indices = self._gather("indices", positions)
        return sp.csr_matrix((data, indices, indptr), shape=(len(sorted_rows), self.shape[1]))


def _raw_layout(dataset: h5py.Dataset) -> tuple[np.dtype, int | None, np.ndarray] | None:
    """(dtype, chunk length or None, byte offset of each chunk in order) of an unfiltered,
    aligned, little-endian 1-D dataset; None where its bytes cannot be read directly."""
    dtype = dataset.dtype
    if dataset.ndim != 1 or dtype.kind not in "fiu" or dtype.byteorder == ">":
        return None
    if dataset.chunks is None:
        offset = dataset.id.get_offset()
        if offset is None:  # never written
            return None
        offsets = np.array([offset], dtype=np.int64)
        chunk = None
    else:
        if dataset.compression is not None or dataset.shuffle or dataset.fletcher32:
            return None
        chunk = dataset.chunks[0]
        infos = [dataset.id.get_chunk_info(k) for k in range(dataset.id.get_num_chunks())]
        if len(infos) * chunk < dataset.shape[0] or any(i.filter_mask for i in infos):
            return None
        infos.sort(key=lambda info: info.chunk_offset[0])
        offsets = np.array([info.byte_offset for info in infos], dtype=np.int64)
    if np.any(offsets % dtype.itemsize):
        return None
    return np.dtype(dtype).newbyteorder("="), chunk, offsets


def read_rows(x, sorted_rows: np.ndarray) -> sp.csr_matrix | np.ndarray:
    """The rows ``sorted_rows`` (increasing, unique, at least one) of a matrix in a file.

    ``x`` is anndata's backed sparse dataset or an h5py dataset; the rows come back in
    its own format and dtype. Rows dense enough are read in one contiguous block.
    """
    first, last = int(sorted_rows[0]), int(sorted_rows[-1]) + 1
    if last - first <= 2 * len(sorted_rows):
        # Dense enough: one contiguous read, then keep the rows asked for.
        block = x[first:last]  # [last - first, G_file]
        return block if last - first == len(sorted_rows) else block[sorted_rows - first]
    return x[sorted_rows]  # [rows, G_file]


def write_h5ad_rows(adata: ad.AnnData, rows: np.ndarray, path: str | Path) -> None:
    """Write the cells ``rows`` (increasing positions) of a backed AnnData to a new ``.h5ad``.

    The file is the one ``adata[rows].copy().write_h5ad(path)`` writes for an AnnData in
    memory (unused categories of ``obs`` columns removed as well), but ``.X`` and
    ``raw.X`` are copied from the file in chunks of :data:`CHUNK_ROWS` rows: memory holds
    one chunk of them, where anndata's own writer reads each array of a backed ``.X``
    whole. Everything else is in memory in backed mode already and is written by anndata.
    """
    rows = np.asarray(rows, dtype=np.int64)
    view = adata[rows]
    keys = ("obs", "var", "obsm", "varm", "obsp", "varp", "layers")
    without_x = ad.AnnData(
        **{key: getattr(view, key).copy() for key in keys}, uns=deepcopy(dict(view.uns))
    )
    without_x.write_h5ad(path)
    with h5py.File(adata.filename, "r") as source, h5py.File(path, "a") as target:
        _copy_rows(source["X"], target, "X", rows)
        if adata.raw is not None:
            raw = target.create_group("raw")
            raw.attrs.update({"encoding-type": "raw", "encoding-version": "0.1.0"})
            _copy_rows(source["raw/X"], raw, "X", rows)
            ad.io.write_elem(raw, "var", adata.raw.var)
            ad.io.write_elem(raw, "varm", dict(adata.raw.varm))


def _copy_rows(element: h5py.Dataset | h5py.Group, target: h5py.Group, key: str, rows) -> None:
    """The ``rows`` of a matrix stored in a file, written to ``target[key]`` chunk by chunk."""
    dense = isinstance(element, h5py.Dataset)
    x = element if dense else ad.io.sparse_dataset(element)
    starts = range(0, len(rows), CHUNK_ROWS)
    chunks = (read_rows(x, rows[start : start + CHUNK_ROWS]) for start in starts)
    if dense:
        written = target.create_dataset(key, shape=(len(rows), x.shape[1]), dtype=x.dtype)
        written.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for start, chunk in zip(starts, chunks):
            written[start : start + len(chunk)] = chunk
        return
    # indptr as wide as the file's: appending to a 32-bit one overflows past 2³¹ counts.
    first = next(chunks, x[0:0])
    indptr = {"indptr_dtype": element["indptr"].dtype}
    ad.io.write_elem(target, key, first, dataset_kwargs=indptr)
    written = ad.io.sparse_dataset(target[key])
    for chunk in chunks:
        written.append(chunk)


def gene_selection(genes: pd.Index, wanted: pd.Index | list[str]) -> sp.csr_matrix | None:
    """``[genes, wanted]`` 0/1 matrix that picks the ``wanted`` genes by name (None if same).

    A wanted gene missing from ``genes`` is a column of zeros.
    """
    genes = pd.Index(map(str, genes))
    wanted = pd.Index(map(str, wanted))
    if genes.equals(wanted):
        return None
    position = genes.get_indexer(wanted)  # [wanted], -1 where absent
    found = np.flatnonzero(position >= 0)
    return sp.csr_matrix(
        (np.ones(len(found), np.float32), (position[found], found)),
        shape=(len(genes), len(wanted)),
    )


def take_rows(
    counts: sp.csr_matrix | BackedCounts, rows: np.ndarray
) -> sp.csr_matrix | BackedCounts:
    """The rows ``rows`` of ``counts``: a copy in memory, a lazy subset on disk.

    Taking every row in order returns ``counts`` itself (no copy of a large matrix).
    """
    if len(rows) == counts.shape[0] and np.array_equal(rows, np.arange(counts.shape[0])):
        return counts
    if isinstance(counts, BackedCounts):
        return counts.subset(rows)
    return counts[rows]


def seurat_v3_genes(
    counts: sp.csr_matrix | BackedCounts, n_top_genes: int, span: float = 0.3
) -> np.ndarray:
    """Boolean mask ``[genes]`` of the ``n_top_genes`` most variable genes.

    The genes of :func:`seurat_v3_ranks` below ``n_top_genes``.
    """
    return seurat_v3_ranks(counts, span) < n_top_genes


def seurat_v3_ranks(counts: sp.csr_matrix | BackedCounts, span: float = 0.3) -> np.ndarray:
    """Rank of every gene by scanpy's ``flavor="seurat_v3"`` variability (one batch), in chunks.

    The same computation as ``scanpy.pp.highly_variable_genes(..., flavor="seurat_v3")``
    without a batch key: per-gene mean and variance of the counts, a loess fit of
    log variance on log mean, and the variance of the counts standardised by the
    fitted trend and clipped at √n; but it makes two passes over the rows in chunks
    of :data:`CHUNK_ROWS`, so it also works on a matrix on disk. Returns the ranks
    ``[genes]``, 0 for the gene with the largest standardised variance.
    """
    from skmisc.loess import loess

    n_cells, n_genes = counts.shape
    chunks = row_chunks(counts)
    sums, squares = np.zeros(n_genes), np.zeros(n_genes)  # [G] each
    for chunk in chunks:
        sums += np.bincount(chunk.indices, weights=chunk.data, minlength=n_genes)
        squares += np.bincount(
            chunk.indices, weights=np.square(chunk.data, dtype=np.float64), minlength=n_genes
        )
    mean = sums / n_cells  # [G]
    variance = (squares - n_cells * np.square(mean)) / (n_cells - 1)  # [G], ddof = 1
    not_const = variance > 0
    fitted = np.zeros(n_genes)  # [G] log10 of the trend variance
    model = loess(np.log10(mean[not_const]), np.log10(variance[not_const]), span=span, degree=2)
    model.fit()
    fitted[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**fitted)  # [G]
    clip = reg_std * np.sqrt(n_cells) + mean  # [G]
    clipped_sums, clipped_squares = np.zeros(n_genes), np.zeros(n_genes)
    for chunk in row_chunks(counts):
        values = np.minimum(chunk.data.astype(np.float64), clip[chunk.indices])  # [nnz]
        clipped_sums += np.bincount(chunk.indices, weights=values, minlength=n_genes)
        clipped_squares += np.bincount(chunk.indices, weights=values**2, minlength=n_genes)
    residual = n_cells * np.square(mean) + clipped_squares - 2 * clipped_sums * mean  # [G]
    norm_variance = residual / ((n_cells - 1) * np.square(reg_std))  # [G]
    return np.argsort(np.argsort(-norm_variance))  # [G], 0 = most variable


def row_chunks(counts: sp.csr_matrix | BackedCounts) -> Iterator[sp.csr_matrix]:
    """``counts`` in consecutive CSR blocks of :data:`CHUNK_ROWS` rows, in memory or on disk."""
    if isinstance(counts, BackedCounts):
        yield from counts.chunks()
        return
    for start in range(0, counts.shape[0], CHUNK_ROWS):
        yield counts[start : start + CHUNK_ROWS]


def check_counts(values: np.ndarray, where: str = ".X") -> None:
    """Raise :class:`InputError` unless ``values`` are finite non-negative integers."""
    if not np.all(np.isfinite(values)):
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(f"{where} contains {n_bad} NaN or infinite values; counts must be finite")
    if values.size and values.min() < 0:
        raise InputError(f"{where} contains negative values; raw counts are non-negative")
    fractional = values != np.round(values)  # [entries]
    if not fractional.any():
        return
    if fractional.mean() > 0.5:  # most values: a transform of the counts
        raise InputError(
            f"{where} is not integer counts (the data look log-normalised); "
            "use --layer (or layer=) to point to the raw counts"
        )
    first = values[np.flatnonzero(fractional)[0]]
    raise InputError(
        f"{where} is not integer counts: {int(fractional.sum())} of its values are not whole "
        f"numbers (the first: {first:g}); use --layer (or layer=) to point to the raw "
        "counts, or round estimated counts to integers"
    )


#: Label values that usually mean "no label" when they appear as a cell type (lower case).
PLACEHOLDER_LABELS = ("unknown", "na", "n/a", "nan", "none", "unassigned", "unlabeled")


def warn_placeholder_classes(labels: pd.Series) -> None:
    """Warn for each label value that looks like "no label" but is about to become a type."""
    counts = labels.value_counts()
    for name, n in counts.items():
        if name.strip().lower() in PLACEHOLDER_LABELS:
            warnings.warn(
                f"the label {name!r} ({n} cells) becomes a cell type of its own; if it means "
                f"'no label', pass --unlabeled-category {name!r} "
                "(Python: setup_anndata(..., unlabeled_category=...))",
                PyroSCVAEWarning,
                stacklevel=3,
            )


def unlabelled(labels: pd.Series, unlabeled_category: str | None) -> np.ndarray:
    """Which cells have no label ``[cells]``: missing, blank or ``unlabeled_category``."""
    as_text = labels.astype(object)
    missing = as_text.isna().to_numpy()
    blank = np.array([isinstance(v, str) and not v.strip() for v in as_text])  # no type's name
    missing |= blank.astype(bool)
    if unlabeled_category is not None:
        missing |= (as_text == unlabeled_category).to_numpy()
    return missing


def encode_labels(
    labels: pd.Series, unlabeled_category: str | None, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Integer codes for cell-type labels, ``-1`` for unlabelled cells.

    Missing values and empty strings always mean "no label"; so does
    ``unlabeled_category`` where given.
    ``classes`` fixes the code order (when applying a trained model).
    """
    as_text = labels.astype(object).where(labels.notna(), None)
    is_labelled = ~unlabelled(labels, unlabeled_category)
    if classes is None:
        classes = sorted({str(v) for v in as_text[is_labelled]})
        warn_placeholder_classes(as_text[is_labelled].astype(str))
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
        Raw counts, CSR ``[cells, genes]``, or a :class:`BackedCounts` on disk.
    labels
        Class codes ``[cells]``, ``-1`` where unlabelled.
    batches
        Batch codes ``[cells]``, or None without a batch covariate.
    """

    counts: sp.csr_matrix | BackedCounts
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
    totals: np.ndarray, batches: np.ndarray | None, n_batches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of log total counts, per batch: the prior p(l).

    ``totals`` are the cells' total counts ``[cells]`` (the caller has them already, so
    counts on disk are not read again); cells without counts are left out (they do not
    train).
    """
    kept = totals > 0
    log_totals = np.log(totals[kept])
    if batches is None:
        groups = [np.ones(len(log_totals), dtype=bool)]
    else:
        groups = [batches[kept] == b for b in range(n_batches)]
    loc = [log_totals[g].mean() if g.any() else log_totals.mean() for g in groups]
    scale = [max(log_totals[g].std(), 1e-2) if g.sum() > 1 else 1.0 for g in groups]
    return torch.tensor(loc, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def minibatches(
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    drop_last: bool = False,
    labelled_share: float = 0.0,
) -> Iterator[tuple[np.ndarray, bool]]:
    """One epoch of shuffled minibatches, each either all labelled or all unlabelled.

    Labelled and unlabelled cells never share a minibatch (labelled minibatches call
    the model with y, unlabelled ones without), and the two kinds are interleaved at
    random. Yields ``(cell indices, is_labelled)``.

    With ``labelled_share`` s > 0, the labelled cells are passed over again (each pass a
    new permutation) until labelled minibatches make up at least the share s of the
    epoch's minibatches, as scvi-tools draws a labelled minibatch beside every step of
    SCANVI: where few cells are labelled, the classifier then learns in a steady share of
    the steps instead of once an epoch. Every unlabelled cell is still seen once.
    """
    chunks: list[tuple[np.ndarray, bool]] = []
    n_unlabelled_chunks = 0
    for is_labelled in (True, False):
        cells = rng.permutation(np.flatnonzero((labels >= 0) == is_labelled))
        stop = len(cells) - len(cells) % batch_size if drop_last else len(cells)
        kind = [(cells[i : i + batch_size], is_labelled) for i in range(0, stop, batch_size)]
        chunks += kind
        if not is_labelled:
            n_unlabelled_chunks = len(kind)
    n_labelled = int((labels >= 0).sum())
    if labelled_share > 0 and n_labelled:
        wanted = int(np.ceil(labelled_share / (1 - labelled_share) * n_unlabelled_chunks))
        have = sum(1 for _, is_labelled in chunks if is_labelled)
        while have < wanted:
            cells = rng.permutation(np.flatnonzero(labels >= 0))
            for i in range(0, len(cells), batch_size):
                if have >= wanted:
                    break
                chunks.append((cells[i : i + batch_size], True))
                have += 1
    for i in rng.permutation(len(chunks)):
        yield chunks[i]


def class_prior_and_weights(
    labels: np.ndarray, n_classes: int, class_prior: str, balance_classes: bool | float
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """p(y) and the class-balancing weights of the classification term, from the labels.

    Parameters
    ----------
    labels
        ``[cells]`` class codes, -1 where unlabelled.
    class_prior
        ``"uniform"`` (returns None: the model's own uniform p(y)) or ``"frequencies"``
        (the labelled cells' frequencies, each count plus one).
    balance_classes
        Power p of the weights ``n_y ** -p`` (True is 1, False is 0: returns None),
        scaled to a mean of 1 over the labelled cells.

    Returns
    -------
    tuple
        ``(prior [K] or None, weights [K] or None)``.
    """
    if class_prior not in ("uniform", "frequencies"):
        raise InputError(f"class_prior must be 'uniform' or 'frequencies', not {class_prior!r}")
    power = float(balance_classes)
    if not 0.0 <= power <= 1.0:
        raise InputError(f"balance_classes must be True, False or in [0, 1], not {power}")
    counts_per_class = np.bincount(labels[labels >= 0], minlength=n_classes)  # [K]
    prior = None
    if class_prior == "frequencies":
        frequencies = counts_per_class + 1.0
        prior = torch.tensor(frequencies / frequencies.sum(), dtype=torch.float32)
    weights = None
    if power > 0:
        weights = counts_per_class.clip(1) ** -power  # [K]
        weights = weights * counts_per_class.sum() / (counts_per_class * weights).sum()  # mean 1
        weights = torch.tensor(weights, dtype=torch.float32)
    return prior, weights
