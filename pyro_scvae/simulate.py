"""Counts simulated from the generative model itself, for tests and demonstrations.

The factorisation is MODEL.md's, p(y) p(z₂) p(z₁|z₂,y) p(l) p(x|z₁,l), with simple
known maps in place of the networks: μ(z₂, y) = c_y + W z₂ (a centre per cell type
plus a basal shift), ρ(z₁) = softmax(B z₁ + b), and scvi's ZINB for x.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pyro_scvae.distributions import ZINB


def simulate_counts(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_classes: int = 5,
    n_latent: int = 5,
    labelled_fraction: float = 0.1,
    n_batches: int = 0,
    seed: int = 0,
) -> ad.AnnData:
    """An AnnData of ZINB counts with true types in ``obs['cell_type']``.

    ``obs['label']`` holds the type for a random ``labelled_fraction`` of the cells
    and NaN for the others; ``obs['batch']`` is set when ``n_batches > 0`` (each batch
    scales expression of a random tenth of the genes).
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    y = torch.randint(n_classes, (n_cells,), generator=gen)  # [N], p(y) uniform
    z2 = normal(n_cells, n_latent)  # [N, d], p(z₂) = N(0, I)
    centres = 2.5 * normal(n_classes, n_latent)  # [K, d]
    basal = 0.3 * normal(n_latent, n_latent)  # [d, d]
    z1 = centres[y] + z2 @ basal + 0.3 * normal(n_cells, n_latent)  # [N, d]
    library = torch.exp(np.log(1500.0) + 0.3 * normal(n_cells))  # [N], p(l) log-normal
    loadings = 0.5 * normal(n_latent, n_genes)  # [d, G]
    rho_logits = z1 @ loadings + normal(n_genes)  # [N, G]
    if n_batches:
        batch = torch.randint(n_batches, (n_cells,), generator=gen)  # [N]
        batch_effect = (torch.rand(n_batches, n_genes, generator=gen) < 0.1) * normal(n_batches, 1)
        rho_logits = rho_logits + batch_effect[batch]
    rho = torch.softmax(rho_logits, dim=-1)  # [N, G]
    theta = torch.full((n_genes,), 5.0)  # [G]
    zi_logits = torch.full((n_cells, n_genes), -2.0)  # [N, G]
    torch.manual_seed(seed)  # scvi's sampler draws from the global generator
    counts = ZINB(library[:, None] * rho, theta, zi_logits).sample()  # [N, G]

    cell_type = pd.Categorical([f"type_{k}" for k in y.tolist()])
    labelled = rng.random(n_cells) < labelled_fraction
    obs = pd.DataFrame(
        {"cell_type": cell_type, "label": pd.Series(cell_type).where(labelled).to_numpy()},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    if n_batches:
        obs["batch"] = pd.Categorical([f"batch_{b}" for b in batch.tolist()])
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(counts.numpy().astype(np.float32)), obs=obs, var=var)
