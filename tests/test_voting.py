"""Majority voting: CellTypist's resolutions, and votes that correct scattered wrong calls."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_scvae import PyroSCVAE
from pyro_scvae.simulate import simulate_counts
from pyro_scvae.voting import (
    HETEROGENEOUS,
    majority_vote,
    majority_voting,
    over_clustering_resolution,
)


def test_resolution_grows_with_the_cells_as_in_celltypist():
    values = [over_clustering_resolution(n) for n in (100, 4999, 5000, 19999, 20000, 10**6)]
    assert values == [5, 5, 10, 10, 15, 30]
    assert over_clustering_resolution(150_000) == 25


def test_majority_vote_by_hand():
    calls = np.array(["a", "a", "b", "b", "b", "c", "a"])
    clusters = np.array(["0", "0", "0", "1", "1", "1", "2"])
    assert list(majority_vote(calls, clusters)) == ["a", "a", "a", "b", "b", "b", "a"]
    voted = majority_vote(calls, clusters, min_prop=0.7)  # shares 2/3, 2/3, 1
    assert list(voted) == [HETEROGENEOUS] * 6 + ["a"]


def test_voting_corrects_scattered_wrong_calls():
    """Three well separated groups of points; a tenth of the calls are flipped at random."""
    rng = np.random.default_rng(0)
    truth = np.repeat(["x", "y", "z"], 200)
    centres = {"x": [0, 0], "y": [10, 0], "z": [0, 10]}
    latent = np.array([centres[t] for t in truth]) + rng.normal(size=(600, 2))
    calls = truth.copy()
    wrong = rng.random(600) < 0.1
    calls[wrong] = rng.choice(["x", "y", "z"], wrong.sum())
    calls[wrong & (calls == truth)] = "w"  # every flipped call is wrong
    voted = majority_voting(latent, calls, seed=0)
    n_clusters = voted["over_clustering"].nunique()
    assert n_clusters >= 10  # over-clustered: resolution 5 for 600 cells
    assert (voted["majority_voting"] == truth).mean() > 0.99
    assert (calls == truth).mean() < 0.92


@pytest.mark.parametrize("resolution", [None, 1.0])
def test_annotate_with_majority_voting(resolution):
    adata = simulate_counts(n_cells=300, n_genes=50, n_classes=3, labelled_fraction=0.5, seed=2)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, n_latent=4, n_hidden=32).fit(
        epochs=5, progress=False, validation_fraction=0
    )
    model.annotate(majority_voting=True, over_clustering_resolution=resolution)
    clusters = adata.obs["pyro_scvae_over_clustering"].astype(str)
    voted = adata.obs["pyro_scvae_majority_voting"].astype(str)
    calls = adata.obs["pyro_scvae_prediction"].astype(str)
    for cluster in clusters.unique():  # each cluster carries its most frequent call
        in_cluster = clusters == cluster
        assert voted[in_cluster].nunique() == 1
        assert voted[in_cluster].iloc[0] == calls[in_cluster].value_counts().index[0]


def test_over_clustering_of_more_cells_than_scanpy_takes_exact_neighbours_for():
    """From about 8,000 cells scanpy 1.11 builds a pynndescent graph it cannot read with
    scipy 1.17 (AttributeError: no getnnz); the vote then failed on every such query."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(3, 10))
    groups = np.repeat(np.arange(3), 2900)  # 8,700 cells
    latent = (centres[groups] + rng.normal(size=(8700, 10))).astype(np.float32)
    calls = np.array(["a", "b", "c"])[groups]
    wrong = rng.choice(8700, size=300, replace=False)
    calls[wrong] = np.array(["a", "b", "c"])[(groups[wrong] + 1) % 3]  # scattered errors
    voted = majority_voting(latent, calls, seed=0)
    assert (voted["majority_voting"].to_numpy() == np.array(["a", "b", "c"])[groups]).mean() > 0.99
