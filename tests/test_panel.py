"""The genes the model trains on: the most variable ones and the labelled types' markers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from pyro_scvae import PyroSCVAE
from pyro_scvae.panel import gene_panel, markers_per_type, type_markers
from pyro_scvae.preprocess import backed_training_subset, markers_added, select_genes

N_CELLS, N_GENES = 600, 60
MARKER = 50  # a gene of steady expression, higher in type_1: a marker, but not variable
UNLABELLED_ONLY = 55  # higher in half of the unlabelled cells only: no labelled type's marker


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """Poisson counts; genes 0-9 vary a lot at random, gene 50 marks type_1."""
    rng = np.random.default_rng(0)
    types = np.array(["type_0", "type_1", "type_2"])[np.arange(N_CELLS) % 3]
    labelled = rng.random(N_CELLS) < 0.5
    mean = np.ones((N_CELLS, N_GENES))
    mean[:, :10] = rng.gamma(0.2, 20.0, size=(N_CELLS, 10))  # overdispersed, no type
    mean[types == "type_1", MARKER] = 1.8
    mean[~labelled & (np.arange(N_CELLS) % 2 == 0), UNLABELLED_ONLY] = 4.0
    counts = rng.poisson(mean).astype(np.float32)
    obs = pd.DataFrame({"label": np.where(labelled, types, None)})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    return adata


def codes(adata: ad.AnnData) -> np.ndarray:
    labels = adata.obs["label"]
    return np.where(labels.isna(), -1, pd.factorize(labels, sort=True)[0])


def test_markers_come_from_labelled_cells_only(cells):
    markers = type_markers(cells.X, codes(cells), per_type=1)
    assert markers[MARKER] and not markers[UNLABELLED_ONLY]
    assert 1 <= markers.sum() <= 3  # one per type, shared or not
    assert not type_markers(cells.X, np.full(N_CELLS, -1), per_type=5).any()  # no labels
    one_type = np.where(codes(cells) >= 0, 0, -1)
    assert not type_markers(cells.X, one_type, per_type=5).any()  # nothing to tell apart


def test_markers_join_the_most_variable_genes(cells):
    variable = sc.pp.highly_variable_genes(cells, n_top_genes=10, flavor="seurat_v3", inplace=False)
    expected = list(cells.var_names[variable["highly_variable"].to_numpy()])
    assert f"g{MARKER}" not in expected  # the marker is not among the variable genes
    assert list(select_genes(cells, 10, None, marker_share=0).var_names) == expected
    chosen = select_genes(cells, 10, None, marker_share=0.3)
    assert set(expected) < set(chosen.var_names) and f"g{MARKER}" in chosen.var_names
    per_type = markers_per_type(10, 3, 0.3)
    assert per_type == 1 and chosen.n_vars <= 10 + 3 * per_type


def test_markers_added_counts_only_genes_beyond_the_variable_ones(cells):
    chosen = select_genes(cells, 10, None, marker_share=0.3)
    assert markers_added(10, N_GENES, chosen.n_vars) == chosen.n_vars - 10 >= 1
    for every_gene in (0, N_GENES, N_GENES + 5):  # all genes kept: none added
        kept = select_genes(cells, every_gene, None, marker_share=0.3)
        assert kept.n_vars == N_GENES and markers_added(every_gene, N_GENES, kept.n_vars) == 0


def test_a_panel_keeps_every_variable_gene_and_marker():
    ranks = np.array([3, 0, np.inf, 1, 2, np.inf])
    markers = np.array([False, False, True, True, False, False])
    assert gene_panel(ranks, markers, 2).tolist() == [False, True, True, True, False, False]
    assert gene_panel(ranks, np.zeros(6, bool), 4).tolist() == [1, 1, 0, 1, 1, 0]


def test_without_labels_only_variable_genes(cells):
    unset = ad.AnnData(X=cells.X.copy(), var=cells.var.copy())
    plain = select_genes(unset, 10, None, marker_share=0.5)
    assert list(plain.var_names) == list(select_genes(cells, 10, None, marker_share=0).var_names)


def test_backed_choice_is_the_in_memory_choice(cells, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    PyroSCVAE.setup_anndata(backed, labels_key="label")
    view = backed_training_subset(backed, 10, np.ones(N_CELLS, bool), marker_share=0.3)
    in_memory = select_genes(cells, 10, None, marker_share=0.3)
    assert list(view.var_names) == list(in_memory.var_names)


def test_python_users_get_the_command_lines_choice(cells):
    import pyro_scvae

    chosen = pyro_scvae.select_genes(cells, n_top_genes=10)  # the default marker share
    assert list(chosen.var_names) == list(select_genes(cells, 10, None, 0.5).var_names)
    assert f"g{MARKER}" in chosen.var_names and chosen.n_vars > 10
    model = PyroSCVAE(chosen)  # the labels registered before the choice came along
    assert model.genes == list(chosen.var_names) and len(model.classes) == 3
