"""The k-nearest-neighbour graph of a latent representation, for UMAP and over-clustering.

:func:`latent_neighbours` returns what ``scanpy.pp.neighbors`` would (exact neighbours
from scikit-learn, UMAP's fuzzy connectivities, the same ``uns`` and ``obsp`` keys), so
that ``sc.tl.umap`` and ``sc.tl.leiden`` read it as their own. It is written here rather
than taken from scanpy because of two measured costs:

- scanpy hands the connectivities to umap-learn's ``fuzzy_simplicial_set``, whose two
  numba functions (``smooth_knn_dist`` and ``compute_membership_strengths``, both
  ``parallel=True`` and not cached) are compiled anew in every process: a UMAP of 700
  cells took 12–13.5 s in a fresh process, 4 s with this module (``benchmarks/speed.md``),
  for a graph that takes milliseconds. :func:`fuzzy_connectivities` computes the same
  graph with numpy (the same binary search, vectorised over cells; equal to umap-learn's
  to float32 rounding, ``tests/test_neighbours.py``);
- from 4,096 cells scanpy 1.11 would search with pynndescent, whose graph (a csr_array)
  it then cannot read with scipy 1.17 (AttributeError: no getnnz) once the search is
  approximate, at about 8,000 cells; exact neighbours serve every size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: umap-learn's constants: the binary search's tolerance on Σ exp(−(d − ρ)/σ) − log₂ k,
#: and the least σ as a fraction of the mean distance to the neighbours.
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
#: Steps of the binary search for σ (umap-learn's ``n_iter``).
SEARCH_STEPS = 64


def smooth_knn_dist(knn_dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """σ and ρ of each cell: umap-learn's ``smooth_knn_dist`` (local connectivity 1).

    ρ_i is the distance to the nearest neighbour at a positive distance; σ_i is found by
    bisection so that Σ_{j≥1} exp(−max(d_ij − ρ_i, 0)/σ_i) = log₂ k, where k is the
    number of columns of ``knn_dists [cells, k]`` (each row sorted, the cell itself
    first), and is at least :data:`MIN_K_DIST_SCALE` times the row's mean distance (the
    mean of all distances where ρ_i = 0). All cells are searched at once; a cell stops
    where umap-learn's loop would break.
    """
    dists = knn_dists.astype(np.float32)  # [cells, k]
    n_cells, k = dists.shape
    target = np.float32(np.log2(k))
    positive = np.where(dists > 0, dists, np.inf)
    rho = positive.min(axis=1)  # [cells], the first positive distance
    rho[~np.isfinite(rho)] = 0.0
    floatmax = np.finfo(np.float32).max
    lo = np.zeros(n_cells, np.float32)
    hi = np.full(n_cells, floatmax, np.float32)
    mid = np.ones(n_cells, np.float32)
    active = np.ones(n_cells, bool)
    excess = dists[:, 1:] - rho[:, None]  # [cells, k - 1], d_ij − ρ_i
    for _ in range(SEARCH_STEPS):
        if not active.any():
            break
        rows = np.flatnonzero(active)
        d = excess[rows]
        with np.errstate(over="ignore"):  # exp of the discarded branch (d ≤ 0) may overflow
            terms = np.where(d > 0, np.exp(-(d / mid[rows, None])), np.float32(1.0))
        psum = terms.sum(axis=1, dtype=np.float32)  # [active cells]
        done = np.abs(psum - target) < SMOOTH_K_TOLERANCE
        rows, psum = rows[~done], psum[~done]
        active[np.flatnonzero(active)[done]] = False
        above = psum > target
        hi[rows[above]] = mid[rows[above]]
        lo[rows[~above]] = mid[rows[~above]]
        unbounded = hi[rows] >= floatmax
        mid[rows] = np.where(~above & unbounded, mid[rows] * 2, (lo[rows] + hi[rows]) / 2)
    floor = np.where(rho > 0, dists.mean(axis=1), dists.mean()) * MIN_K_DIST_SCALE
    return np.maximum(mid, floor.astype(np.float32)), rho


def fuzzy_connectivities(knn_indices: np.ndarray, knn_dists: np.ndarray) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph (umap-learn's ``fuzzy_simplicial_set``).

    Each cell i gives its neighbours j the membership exp(−max(d_ij − ρ_i, 0)/σ_i) (0 to
    itself); the graph is the fuzzy union W + Wᵀ − W ∘ Wᵀ, ``[cells, cells]``.
    """
    n_cells, k = knn_indices.shape
    sigma, rho = smooth_knn_dist(knn_dists)
    dists = knn_dists.astype(np.float32)
    excess = dists - rho[:, None]  # [cells, k]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # where σ = 0 or
        strength = np.exp(-(excess / sigma[:, None]))  # d ≤ ρ: overwritten by 1 just below
    strength = np.where((excess <= 0) | (sigma[:, None] == 0), 1.0, strength)
    rows = np.repeat(np.arange(n_cells), k)
    strength[knn_indices == np.arange(n_cells)[:, None]] = 0.0  # not a neighbour of itself
    weights = sp.coo_matrix(
        (strength.astype(np.float32).ravel(), (rows, knn_indices.ravel())),
        shape=(n_cells, n_cells),
    ).tocsr()
    weights.eliminate_zeros()
    transpose = weights.T.tocsr()
    union = weights + transpose - weights.multiply(transpose)
    union.eliminate_zeros()
    return union.tocsr()


def latent_neighbours(latent: np.ndarray, n_neighbors: int, seed: int = 0):
    """An AnnData holding the neighbours graph of ``latent [cells, d]``, as scanpy writes it.

    ``obsm["X_latent"]``, ``obsp["distances"]`` (the ``n_neighbors − 1`` nearest other
    cells of each cell), ``obsp["connectivities"]`` (:func:`fuzzy_connectivities`) and
    ``uns["neighbors"]``: what ``sc.pp.neighbors(use_rep="X_latent", method="umap",
    transformer="sklearn")`` leaves, ready for ``sc.tl.umap`` and ``sc.tl.leiden``.
    """
    import anndata as ad
    from sklearn.neighbors import NearestNeighbors

    latent = np.asarray(latent, dtype=np.float32)
    n_cells = len(latent)
    k = min(n_neighbors, n_cells - 1)
    holder = ad.AnnData(obs=pd.DataFrame(index=np.arange(n_cells).astype(str)))
    holder.obsm["X_latent"] = latent
    knn_dists, knn_indices = NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(latent)
    knn_indices, knn_dists = with_self_first(knn_indices, knn_dists)
    holder.obsp["distances"] = sp.csr_matrix(
        (knn_dists[:, 1:].ravel(), knn_indices[:, 1:].ravel(), np.arange(n_cells + 1) * (k - 1)),
        shape=(n_cells, n_cells),
    )
    holder.obsp["connectivities"] = fuzzy_connectivities(knn_indices, knn_dists)
    holder.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {
            "n_neighbors": k,
            "method": "umap",
            "random_state": seed,
            "metric": "euclidean",
            "use_rep": "X_latent",
        },
    }
    return holder


def with_self_first(indices: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each cell itself in the first column of its neighbours (as scanpy does).

    Exact search returns a cell first unless another cell lies at distance 0; then the
    cell is moved to the front (or, when missing, put there in place of the farthest).
    """
    indices, dists = indices.copy(), dists.astype(np.float32)
    k = indices.shape[1]
    for row in np.flatnonzero(indices[:, 0] != np.arange(len(indices))):
        others = indices[row] != row  # [k], at most one False
        indices[row] = np.concatenate([[row], indices[row][others][: k - 1]])
        dists[row] = np.concatenate([[0.0], dists[row][others][: k - 1]])
    return indices, dists
