"""Marker genes from the decoded expression: planted markers are found, the statistics are
scvi's change mode, and on real PBMCs the textbook genes come out on top."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from pyro_scvae import PyroSCVAE
from pyro_scvae.markers import change_mode, plot_markers, pseudocount, top_markers
from pyro_scvae.simulate import simulate_counts
from tests.conftest import shared_file

PLANTED = 3  # marker genes planted per type


@pytest.fixture(scope="module")
def planted():
    """Simulated counts where type k alone expresses genes 3k … 3k+2 (Poisson, mean 30),
    chosen among the least expressed genes, plus a model fitted on them."""
    adata = simulate_counts(n_cells=600, n_genes=100, n_classes=3, labelled_fraction=0.5, seed=3)
    x = adata.X.toarray()
    quiet = np.argsort(x.mean(0))[: 3 * PLANTED]  # the 9 least expressed genes
    types = adata.obs["cell_type"].to_numpy()
    rng = np.random.default_rng(0)
    markers = {}
    for k in range(3):
        genes = quiet[PLANTED * k : PLANTED * (k + 1)]
        cells = types == f"type_{k}"
        x[np.ix_(cells, genes)] += rng.poisson(30, size=(cells.sum(), PLANTED))
        markers[f"type_{k}"] = [f"gene_{g}" for g in genes]
    adata.X = sp.csr_matrix(x.astype(np.float32))
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, n_latent=5, n_hidden=64)
    model.fit(epochs=60, progress=False, validation_fraction=0)
    return model, markers


def test_planted_markers_are_found(planted, tmp_path):
    model, markers = planted
    table = model.marker_genes(n_samples=1000, m_permutation=2000)
    assert set(table["type"]) == set(markers)
    for name, genes in markers.items():
        own = table[table["type"] == name].set_index("gene")
        assert sorted(own["rank"]) == list(range(1, 101))
        assert (own.loc[genes, "rank"] <= 10).all(), own.loc[genes]
        assert (own.loc[genes, "lfc_mean"] > 2).all() and (own.loc[genes, "proba_de"] > 0.95).all()
        assert (own.loc[genes, "bayes_factor"] > 3).all()
        for other in set(markers) - {name}:  # another type's planted genes are down here
            assert (own.loc[markers[other], "lfc_mean"] < 0).all()
    assert all(len(v) == 4 for v in top_markers(table, 4).values())
    calls = model.predict().to_numpy()
    plot_markers(model.data.counts, calls, model.genes, table, tmp_path / "markers.png")
    assert (tmp_path / "markers.png").stat().st_size > 10_000


def test_change_mode_statistics():
    """Two groups whose ρ differ by a known factor on gene 0 and not on gene 1."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, size=(4000, 2))
    first = base * [4.0, 1.0]  # gene 0 four times higher: LFC = 2
    result = change_mode(first, base[::-1].copy(), offset=1e-10, delta=0.25, m_permutation=4000)
    lfc = np.log2(first[:, 0]).mean() - np.log2(base[:, 0]).mean()
    assert abs(result["lfc_mean"][0] - lfc) < 0.02 and abs(lfc - 2) < 0.05
    assert result["proba_de"][0] == 1.0 and result["proba_up"][0] == 1.0
    # gene 1: LFC = log2 of the ratio of two independent U(0.1, 0.2) draws
    ratio = np.log2(rng.uniform(0.1, 0.2, 10**6) / rng.uniform(0.1, 0.2, 10**6))
    assert abs(result["proba_de"][1] - np.mean(np.abs(ratio) >= 0.25)) < 0.03
    p = result["proba_de"][1]
    assert np.isclose(result["bayes_factor"][1], np.log(p + 1e-8) - np.log(1 - p + 1e-8))
    # scvi's pseudocount: 90 % quantile of the largest ρ among genes a group never expresses
    rho = np.array([[0.1, 0.5, 0.2], [0.3, 0.1, 0.4]])
    assert pseudocount(rho, rho, np.array([True, False, True]), np.zeros(3, bool)) == pytest.approx(
        np.quantile([0.3, 0.4], 0.9)
    )


@pytest.mark.slow
def test_textbook_markers_of_blood_cells():
    """Symphony PBMCs (the data of T1), broad types, 30 epochs: the ten best markers of B, NK,
    monocytes and T cells contain MS4A1/CD79A, NKG7/GNLY, LYZ/CD14 and CD3E."""
    adata = ad.read_h5ad(shared_file("symphony_pbmc_3chem.h5ad"))
    PyroSCVAE.setup_anndata(adata, labels_key="cell_type_broad", batch_key="donor")
    model = PyroSCVAE(adata).fit(epochs=30, progress=False, validation_fraction=0)
    top = top_markers(model.marker_genes(n_samples=2000, m_permutation=4000), 10)
    expected = {"B": {"MS4A1", "CD79A"}, "NK": {"NKG7", "GNLY"}, "Mono": {"LYZ", "CD14"}}
    expected["T"] = {"CD3E"}
    for name, genes in expected.items():
        assert genes & set(top[name]), (name, top[name])
