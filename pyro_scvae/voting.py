"""Majority voting over an over-clustering of the latent space, as CellTypist does it.

CellTypist (``celltypist.classifier.Classifier.over_cluster`` and ``majority_vote``,
version 1.7) builds a kNN graph (scanpy, 10 neighbours), clusters it with Leiden at a
resolution that grows with the number of cells (5 below 5,000 cells, 10 below 20,000,
15 below 40,000, 20 below 100,000, 25 below 200,000, 30 above), and gives every cell the
most frequent call of its cluster; a cluster whose most frequent call has a share below
``min_prop`` is called ``"Heterogeneous"``. Here the graph is built on the model's latent
z₁ (its posterior mean) instead of CellTypist's PCA of log-normalised expression.

CellTypist's own functions need its ``AnnotationResult`` and its preprocessing of the
expression matrix, so the three steps are re-written here with scanpy (a few lines).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HETEROGENEOUS = "Heterogeneous"
#: (upper bound on the number of cells, Leiden resolution), CellTypist's ``over_cluster``.
RESOLUTIONS = ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0))


def over_clustering_resolution(n_cells: int) -> float:
    """CellTypist's default Leiden resolution for ``n_cells`` cells (5 … 30)."""
    for bound, resolution in RESOLUTIONS:
        if n_cells < bound:
            return resolution
    return 30.0


def over_cluster(
    latent: np.ndarray,
    resolution: float | None = None,
    n_neighbors: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Leiden clusters (strings ``"0"``, ``"1"``, …) of a kNN graph of ``latent [cells, d]``."""
    import scanpy as sc

    from pyro_scvae.neighbours import latent_neighbours

    resolution = over_clustering_resolution(len(latent)) if resolution is None else resolution
    adata = latent_neighbours(latent, n_neighbors, seed=seed)
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return adata.obs["leiden"].astype(str).to_numpy()


def majority_vote(calls: np.ndarray, clusters: np.ndarray, min_prop: float = 0.0) -> np.ndarray:
    """The most frequent call of each cell's cluster (``"Heterogeneous"`` below ``min_prop``).

    Ties go to the call that comes first in sorted order (as ``pandas.crosstab`` orders it).
    """
    votes = pd.crosstab(np.asarray(calls).astype(str), np.asarray(clusters))  # calls × clusters
    majority = votes.idxmax(axis=0).astype(str)  # [clusters]
    share = (votes / votes.sum(axis=0)).max(axis=0)
    majority[share < min_prop] = HETEROGENEOUS
    return majority.loc[np.asarray(clusters)].to_numpy()


def majority_voting(
    latent: np.ndarray,
    calls: np.ndarray,
    resolution: float | None = None,
    min_prop: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Over-cluster ``latent`` and vote: columns ``over_clustering`` and ``majority_voting``."""
    if len(latent) < 3:  # too few cells for a graph: every cell keeps its call
        return pd.DataFrame({"over_clustering": "0", "majority_voting": np.asarray(calls)})
    clusters = over_cluster(latent, resolution, seed=seed)
    return pd.DataFrame(
        {"over_clustering": clusters, "majority_voting": majority_vote(calls, clusters, min_prop)}
    )
