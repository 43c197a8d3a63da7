"""Data left on disk (``backed="r"``, ``fit --backed``): the same numbers as in memory.

Reading the rows of a minibatch from the file, in chunks for every full pass, must
change nothing but memory: the same counts, the same genes chosen, the same training
run for the same seed, the same predictions.
"""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from pyro_scvae import PyroSCVAE, data, fit
from pyro_scvae.data import (
    BackedCounts,
    InputError,
    count_matrix,
    seurat_v3_genes,
    take_rows,
)
from pyro_scvae.simulate import simulate_counts

N_CELLS, N_GENES, EMPTY_CELL = 300, 50, 7


@pytest.fixture(scope="module")
def h5ad_file(tmp_path_factory):
    """300 cells × 50 genes, half labelled, two batches, one cell without counts."""
    adata = simulate_counts(
        n_cells=N_CELLS, n_genes=N_GENES, n_classes=3, labelled_fraction=0.5, n_batches=2, seed=5
    )
    keep = np.ones(N_CELLS, dtype=np.float32)
    keep[EMPTY_CELL] = 0.0
    matrix = sp.csr_matrix(sp.diags(keep) @ adata.X, dtype=np.float32)
    matrix.eliminate_zeros()
    adata.X = matrix
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    """Full passes in chunks of 64 rows, so that every pass spans several chunks."""
    monkeypatch.setattr(data, "CHUNK_ROWS", 64)


def same(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and (a != b).nnz == 0


def test_backed_counts_read_any_rows_like_memory(h5ad_file, small_chunks):
    reference = count_matrix(ad.read_h5ad(h5ad_file))
    backed_adata = ad.read_h5ad(h5ad_file, backed="r")
    counts = count_matrix(backed_adata)
    assert isinstance(counts, BackedCounts) and counts.shape == (N_CELLS, N_GENES)

    rng = np.random.default_rng(0)
    shuffled = rng.permutation(N_CELLS)[:40]
    for index in (
        shuffled,  # random order: read sorted, returned in the order asked
        np.sort(shuffled),
        np.arange(0, N_CELLS, 2),  # dense enough for one contiguous read
        np.array([5, 5, 2]),  # repeated rows
        np.array([], dtype=np.int64),
        slice(10, 100),
    ):
        assert same(counts[index], reference[index])
    chunks = list(counts.chunks())
    assert [c.shape[0] for c in chunks] == [64, 64, 64, 64, 44]
    assert same(sp.vstack(chunks).tocsr(), reference)
    np.testing.assert_allclose(counts.sum(axis=1), reference.sum(axis=1))
    np.testing.assert_allclose(counts.sum(axis=0), reference.sum(axis=0))

    # Subsets stay on disk, compose, and travel to other processes as the file path.
    rows, genes = np.sort(shuffled), np.arange(0, N_GENES, 3)
    view = count_matrix(backed_adata[rows, genes])
    assert isinstance(view, BackedCounts) and view.rows is not None
    assert same(view[:], reference[rows][:, genes])
    assert same(take_rows(view, np.array([3, 0]))[:], reference[rows[[3, 0]]][:, genes])
    assert take_rows(counts, np.arange(N_CELLS)) is counts
    travelled = pickle.loads(pickle.dumps(view))
    assert travelled._x is None and same(travelled[[1, 4]], reference[rows[[1, 4]]][:, genes])


def test_backed_checks_run_over_every_chunk(tmp_path, small_chunks):
    adata = simulate_counts(n_cells=200, n_genes=20, seed=0)
    matrix = adata.X.tocsr(copy=True)
    matrix.data[-1] = 0.5  # the last row, in the last chunk: not an integer
    ad.AnnData(X=matrix, obs=adata.obs).write_h5ad(tmp_path / "fractional.h5ad")
    with pytest.raises(InputError, match="not integer counts"):
        count_matrix(ad.read_h5ad(tmp_path / "fractional.h5ad", backed="r"))

    ad.AnnData(X=adata.X.toarray(), obs=adata.obs).write_h5ad(tmp_path / "dense.h5ad")
    dense = count_matrix(ad.read_h5ad(tmp_path / "dense.h5ad", backed="r"))
    assert same(dense[np.array([150, 3, 4])], adata.X[[150, 3, 4]])  # dense .X is read too

    ad.AnnData(X=sp.csc_matrix(adata.X), obs=adata.obs).write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(InputError, match="needs CSR"):
        count_matrix(ad.read_h5ad(tmp_path / "csc.h5ad", backed="r"))


@pytest.mark.parametrize("n_top_genes", [10, 25])
def test_chunked_seurat_v3_is_scanpys(h5ad_file, small_chunks, n_top_genes):
    adata = ad.read_h5ad(h5ad_file)
    adata = adata[adata.X.sum(axis=1).A1 > 0].copy()
    expected = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat_v3", inplace=False
    )["highly_variable"].to_numpy()
    assert expected.sum() == n_top_genes
    np.testing.assert_array_equal(seurat_v3_genes(count_matrix(adata), n_top_genes), expected)
    backed = ad.read_h5ad(h5ad_file, backed="r")
    on_disk = count_matrix(backed).subset(np.flatnonzero(count_matrix(backed).sum(axis=1) > 0))
    np.testing.assert_array_equal(seurat_v3_genes(on_disk, n_top_genes), expected)


def test_backed_training_gives_the_in_memory_results(h5ad_file, small_chunks):
    models = {}
    for mode in ("memory", "backed"):
        adata = ad.read_h5ad(h5ad_file, backed="r" if mode == "backed" else None)
        PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
        with pytest.warns(UserWarning, match="1 cells have zero counts"):
            model = PyroSCVAE(adata, seed=0)
        models[mode] = model.fit(epochs=2, batch_size=64, validation_fraction=0.2, progress=False)
    memory, backed = models["memory"], models["backed"]
    assert isinstance(backed.data.counts, BackedCounts)
    assert EMPTY_CELL not in backed.training_cells
    # Same rows, same order, same seed: the very same run.
    assert backed.history.elbo == memory.history.elbo
    assert backed.validation_metrics == memory.validation_metrics
    pd.testing.assert_frame_equal(backed.predict(soft=True), memory.predict(soft=True))
    np.testing.assert_array_equal(
        backed.get_latent_representation(), memory.get_latent_representation()
    )

    # A query on disk with the genes in another order, and some missing.
    query = ad.read_h5ad(h5ad_file)
    query = query[:, query.var_names[::-1][:40]].copy()
    query_path = h5ad_file.with_name("query.h5ad")
    query.write_h5ad(query_path)
    backed_query = ad.read_h5ad(query_path, backed="r")
    with pytest.warns(UserWarning, match="10 of the model's 50 genes are missing"):
        on_disk = backed.predict(backed_query, soft=True)
    with pytest.warns(UserWarning, match="10 of the model's 50 genes are missing"):
        in_memory = memory.predict(query, soft=True)
    pd.testing.assert_frame_equal(on_disk, in_memory)


def fit_cli(*args: str) -> int:
    return fit.main(["--labels-key", "label", "--epochs", "2", "--quiet", *args])


def test_fit_backed_flag_matches_in_memory(h5ad_file, tmp_path, small_chunks):
    common = ["--adata", str(h5ad_file), "--batch-key", "batch", "--n-top-genes", "30"]
    assert fit_cli(*common, "--out", str(tmp_path / "memory")) == 0
    assert fit_cli(*common, "--backed", "--out", str(tmp_path / "backed")) == 0

    metrics = {
        m: json.loads((tmp_path / m / "metrics.json").read_text()) for m in ("memory", "backed")
    }
    assert metrics["backed"]["n_genes"] == metrics["memory"]["n_genes"] == 30
    assert metrics["backed"]["n_cells"] == metrics["memory"]["n_cells"]
    assert metrics["backed"]["final_elbo_per_cell"] == metrics["memory"]["final_elbo_per_cell"]
    assert metrics["backed"]["validation"] == metrics["memory"]["validation"]
    predictions = {
        m: pd.read_csv(tmp_path / m / "predictions.csv", index_col="cell")
        for m in ("memory", "backed")
    }
    # In memory the cell without counts is dropped; backed, it is annotated but not trained on.
    assert len(predictions["backed"]) == N_CELLS == len(predictions["memory"]) + 1
    pd.testing.assert_frame_equal(
        predictions["backed"].drop(index=f"cell_{EMPTY_CELL}"), predictions["memory"]
    )
    annotated = ad.read_h5ad(tmp_path / "backed" / "annotated.h5ad")
    assert annotated.shape == (N_CELLS, N_GENES) and "X_pyro_scvae" in annotated.obsm


def test_fit_backed_needs_a_file_and_counts_in_x(h5ad_file, capsys):
    assert fit_cli("--backed") == 2
    assert "--backed needs --adata" in capsys.readouterr().err
    assert fit_cli("--adata", str(h5ad_file), "--backed", "--layer", "counts") == 2
    assert "write the counts to .X" in capsys.readouterr().err
