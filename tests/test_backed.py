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

from pyro_scvae import PyroSCVAE, data, fit, predict
from pyro_scvae.api import match_genes
from pyro_scvae.data import (
    BackedCounts,
    InputError,
    cell_totals,
    count_matrix,
    seurat_v3_genes,
    take_rows,
    write_h5ad_rows,
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
    for check in (count_matrix, cell_totals):
        with pytest.raises(InputError, match="not integer counts"):
            check(ad.read_h5ad(tmp_path / "fractional.h5ad", backed="r"))
    ad.AnnData(X=sp.csr_matrix(adata.X), obs=adata.obs).write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    np.testing.assert_array_equal(cell_totals(backed), np.asarray(adata.X.sum(axis=1)).ravel())

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
    # the 30 most variable genes and the labelled types' markers, the same in both modes
    assert metrics["backed"]["n_genes"] == metrics["memory"]["n_genes"] > 30
    genes = [
        json.loads((tmp_path / m / "model" / "config.json").read_text())["genes"] for m in metrics
    ]
    assert genes[0] == genes[1]
    assert metrics["backed"]["n_cells"] == metrics["memory"]["n_cells"]
    assert metrics["backed"]["final_elbo_per_cell"] == metrics["memory"]["final_elbo_per_cell"]
    assert metrics["backed"]["validation"] == metrics["memory"]["validation"]
    for key in ("genes", "cells", "count_frequencies"):  # the model checks read the file too
        assert metrics["backed"]["ppc"][key] == metrics["memory"]["ppc"][key]
    pd.testing.assert_frame_equal(
        *(pd.read_csv(tmp_path / m / "markers.csv") for m in ("backed", "memory"))
    )
    predictions = {
        m: pd.read_csv(tmp_path / m / "predictions.csv", index_col="cell")
        for m in ("memory", "backed")
    }
    # The cell without counts is left out in both modes (backed: when writing, row by row).
    assert len(predictions["backed"]) == N_CELLS - 1
    pd.testing.assert_frame_equal(predictions["backed"], predictions["memory"])
    annotated = {m: ad.read_h5ad(tmp_path / m / "annotated.h5ad") for m in ("memory", "backed")}
    assert annotated["backed"].shape == (N_CELLS - 1, N_GENES)
    assert f"cell_{EMPTY_CELL}" not in annotated["backed"].obs_names
    assert (annotated["backed"].X != annotated["memory"].X).nnz == 0
    np.testing.assert_allclose(
        annotated["backed"].obsm["X_pyro_scvae"], annotated["memory"].obsm["X_pyro_scvae"]
    )


def test_fit_backed_needs_a_file_and_counts_in_x(h5ad_file, capsys):
    assert fit_cli("--backed") == 2
    assert "--backed needs --adata" in capsys.readouterr().err
    assert fit_cli("--adata", str(h5ad_file), "--backed", "--layer", "counts") == 2
    assert "write the counts to .X" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_model(h5ad_file, tmp_path_factory):
    """A model trained for two epochs on ``h5ad_file`` in memory, saved to disk."""
    adata = ad.read_h5ad(h5ad_file)
    PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
    with pytest.warns(UserWarning, match="zero counts"):
        model = PyroSCVAE(adata, seed=0)
    model.fit(epochs=2, batch_size=64, progress=False)
    path = tmp_path_factory.mktemp("model") / "model"
    model.save(path)
    return path


def predict_cli(model, query, out, *args: str) -> int:
    return predict.main(["--model", str(model), "--adata", str(query), "--out", str(out), *args])


@pytest.mark.parametrize("genes", ["all", "shuffled subset"])
def test_predict_backed_flag_matches_in_memory(
    h5ad_file, saved_model, tmp_path, small_chunks, capsys, genes
):
    query = h5ad_file
    if genes == "shuffled subset":
        adata = ad.read_h5ad(h5ad_file)
        rng = np.random.default_rng(1)
        adata[:, rng.permutation(N_GENES)[:40]].copy().write_h5ad(tmp_path / "query.h5ad")
        query = tmp_path / "query.h5ad"
    assert predict_cli(saved_model, query, tmp_path / "memory") == 0
    printed = capsys.readouterr()
    assert predict_cli(saved_model, query, tmp_path / "backed", "--backed") == 0
    backed_printed = capsys.readouterr()  # the same warnings and summary in both modes
    assert backed_printed.err == printed.err
    assert backed_printed.out == printed.out.replace("memory", "backed")
    assert "warning: 1 cells with zero counts were dropped" in printed.err
    assert ("10 of the model's 50 genes are missing" in printed.err) == (genes != "all")
    assert f"annotated {N_CELLS - 1} cells" in printed.out

    tables = {
        m: pd.read_csv(tmp_path / m / "predictions.csv", index_col="cell")
        for m in ("memory", "backed")
    }
    assert f"cell_{EMPTY_CELL}" not in tables["backed"].index  # dropped, as in memory
    pd.testing.assert_frame_equal(tables["backed"], tables["memory"])

    annotated = {m: ad.read_h5ad(tmp_path / m / "annotated.h5ad") for m in ("memory", "backed")}
    memory, backed = annotated["memory"], annotated["backed"]
    assert backed.shape == memory.shape == (N_CELLS - 1, 40 if genes != "all" else N_GENES)
    assert same(backed.X, memory.X)
    pd.testing.assert_frame_equal(backed.obs, memory.obs)
    np.testing.assert_allclose(
        backed.obsm["X_pyro_scvae"], memory.obsm["X_pyro_scvae"], rtol=1e-5, atol=1e-6
    )
    settings = {m: dict(a.uns["pyro_scvae"]) for m, a in annotated.items()}
    assert settings["backed"].pop("backed") and not settings["memory"].pop("backed")
    assert settings["backed"].pop("out") != settings["memory"].pop("out")
    np.testing.assert_equal(settings["backed"], settings["memory"])


def test_predict_backed_needs_counts_in_x(h5ad_file, saved_model, tmp_path, capsys):
    status = predict_cli(saved_model, h5ad_file, tmp_path / "p", "--backed", "--layer", "c")
    assert status == 2 and "write the counts to .X" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_gene_matching_on_disk_is_the_in_memory_one(h5ad_file, tmp_path):
    """Shuffled, missing and repeated gene names: the same columns on disk as in memory."""
    adata = ad.read_h5ad(h5ad_file)
    others = np.random.default_rng(2).permutation(np.arange(4, N_GENES))[:34]
    columns = np.r_[3, others, 2]  # 35 of the 50 genes, shuffled, and the counts of gene 2 ...
    names = adata.var_names[np.r_[3, others, 3]]  # ... under the name of gene 3 as well
    with pytest.warns(UserWarning, match="names are not unique"):
        query = ad.AnnData(X=adata.X[:, columns], obs=adata.obs, var=pd.DataFrame(index=names))
        query.write_h5ad(tmp_path / "repeated.h5ad")
        backed = ad.read_h5ad(tmp_path / "repeated.h5ad", backed="r")
    model_genes = list(adata.var_names)
    matched = {}
    for mode, counts in (("memory", count_matrix(query)), ("backed", count_matrix(backed))):
        with pytest.warns(UserWarning, match="15 of the model's 50 genes are missing"):
            matched[mode] = match_genes(counts, query.var_names, model_genes)
    assert isinstance(matched["backed"], BackedCounts)
    assert same(matched["backed"][:], matched["memory"])


def test_write_h5ad_rows_writes_what_memory_writes(tmp_path, small_chunks):
    """Sparse or dense .X, raw, layers, obsm and a category only the left-out cells have."""
    adata = simulate_counts(n_cells=200, n_genes=20, n_classes=3, seed=4)
    adata.obs["group"] = pd.Categorical(np.where(np.arange(200) < 3, "first", "rest"))
    adata.obsm["coords"] = np.arange(400, dtype=np.float64).reshape(200, 2)
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata.copy()
    adata.uns["note"] = {"a": 1}
    rows = np.flatnonzero(np.arange(200) % 7 != 0)[3:]  # cells 0-2 ("first") left out
    for dense in (False, True):
        if dense:
            adata.X = adata.X.toarray()
        folder = tmp_path / ("dense" if dense else "sparse")
        folder.mkdir()
        adata.write_h5ad(folder / "in.h5ad")
        adata[rows].copy().write_h5ad(folder / "memory.h5ad")
        write_h5ad_rows(ad.read_h5ad(folder / "in.h5ad", backed="r"), rows, folder / "rows.h5ad")
        expected, written = (ad.read_h5ad(folder / f) for f in ("memory.h5ad", "rows.h5ad"))
        assert type(written.X) is type(expected.X) and written.X.dtype == expected.X.dtype
        assert (abs(written.X - expected.X)).sum() == 0 and written.shape == (len(rows), 20)
        assert same(written.raw.X, expected.raw.X)
        pd.testing.assert_frame_equal(written.raw.var, expected.raw.var)
        pd.testing.assert_frame_equal(written.obs, expected.obs)
        assert list(written.obs["group"].cat.categories) == ["rest"]
        pd.testing.assert_frame_equal(written.var, expected.var)
        np.testing.assert_array_equal(written.obsm["coords"], expected.obsm["coords"])
        assert same(written.layers["counts"], expected.layers["counts"])
        assert written.uns["note"] == expected.uns["note"] == {"a": 1}


def test_uncompressed_files_are_read_through_a_memory_map_with_h5pys_rows(h5ad_file, tmp_path):
    """The memory-mapped reader gives h5py's rows bit for bit; compressed files use h5py."""
    from pyro_scvae.data import MappedCSR, read_rows

    reference = count_matrix(ad.read_h5ad(h5ad_file))
    mapped = MappedCSR.open(str(h5ad_file))
    assert mapped is not None  # anndata writes .X uncompressed by default
    rows = np.sort(np.random.default_rng(1).choice(N_CELLS, 90, replace=False))
    with h5py_file(h5ad_file) as x:
        through_h5py = sp.csr_matrix(read_rows(x, rows), dtype=np.float32)
    assert same(mapped.rows(rows), through_h5py) and same(mapped.rows(rows), reference[rows])
    counts = count_matrix(ad.read_h5ad(h5ad_file, backed="r"))
    assert same(counts[rows[::-1]], reference[rows[::-1]])
    assert counts._mapped_csr() is not None

    compressed = tmp_path / "gzip.h5ad"
    ad.read_h5ad(h5ad_file).write_h5ad(compressed, compression="gzip")
    assert MappedCSR.open(str(compressed)) is None
    counts = count_matrix(ad.read_h5ad(compressed, backed="r"))
    assert counts._mapped_csr() is None and same(counts[rows], reference[rows])


def h5py_file(path):
    """anndata's backed CSR dataset of ``path``'s ``X``, in a context that closes the file."""
    import contextlib

    import h5py

    @contextlib.contextmanager
    def opened():
        with h5py.File(path, "r") as file:
            yield ad.io.sparse_dataset(file["X"])

    return opened()
