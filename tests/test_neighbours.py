"""The latent kNN graph: what scanpy's neighbours would give, without umap-learn's compile."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from pyro_scvae.neighbours import latent_neighbours, smooth_knn_dist


def clustered_latent(n_cells: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 5, n_cells)[:, None] * 3.0
    return (rng.normal(size=(n_cells, 10)) + centres).astype(np.float32)


def scanpy_neighbours(latent: np.ndarray, n_neighbors: int) -> ad.AnnData:
    reference = ad.AnnData(obs=pd.DataFrame(index=np.arange(len(latent)).astype(str)))
    reference.obsm["X_latent"] = latent
    sc.pp.neighbors(reference, use_rep="X_latent", n_neighbors=n_neighbors, transformer="sklearn")
    return reference


@pytest.mark.parametrize("n_cells", [6, 400])
def test_graph_equals_scanpys_umap_neighbours(n_cells):
    """Distances exactly, connectivities to float32 rounding, and the same uns entries."""
    latent = clustered_latent(n_cells)
    k = min(15, n_cells - 1)
    ours, theirs = latent_neighbours(latent, 15), scanpy_neighbours(latent, k)
    assert ours.uns["neighbors"]["params"] == {
        key: theirs.uns["neighbors"]["params"][key] for key in ours.uns["neighbors"]["params"]
    }
    assert abs(ours.obsp["distances"] - theirs.obsp["distances"]).max() == pytest.approx(
        0, abs=1e-6
    )
    ours_graph, their_graph = ours.obsp["connectivities"], theirs.obsp["connectivities"]
    assert (ours_graph != 0).toarray().tolist() == (their_graph != 0).toarray().tolist()
    assert abs(ours_graph - their_graph).max() < 1e-5
    assert ours_graph.max() <= 1.0 and abs(ours_graph - ours_graph.T).max() == 0  # a fuzzy union


def test_bandwidth_solves_the_membership_equation():
    """Σ_{j≥1} exp(−max(d_ij − ρ_i, 0)/σ_i) = log₂ k, with ρ_i the nearest positive distance."""
    rng = np.random.default_rng(1)
    dists = np.sort(rng.gamma(2.0, 1.0, size=(50, 15)), axis=1)
    dists[:, 0] = 0.0  # the cell itself
    sigma, rho = smooth_knn_dist(dists)
    assert rho == pytest.approx(dists[:, 1].astype(np.float32))
    excess = np.maximum(dists[:, 1:] - rho[:, None], 0)
    assert np.exp(-excess / sigma[:, None]).sum(1) == pytest.approx(np.log2(15), abs=1e-3)


def test_duplicate_cells_keep_themselves_first_and_the_graph_is_used_by_scanpy():
    """Cells at distance 0 from another: each row still has the cell itself first."""
    latent = clustered_latent(300)
    latent[1] = latent[0]
    holder = latent_neighbours(latent, 15)
    distances = holder.obsp["distances"]
    assert (distances.getnnz(axis=1) == 14).all()
    assert all(i not in distances[i].indices for i in range(300))
    assert np.isfinite(holder.obsp["connectivities"].data).all()
    sc.tl.umap(holder, random_state=0)
    sc.tl.leiden(holder, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert holder.obsm["X_umap"].shape == (300, 2) and holder.obs["leiden"].nunique() > 1
