"""Posterior predictive checks: the replicated counts come from the ZINB of the fitted model,
counts simulated from the model pass, and counts the ZINB cannot produce fail."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pyro_scvae import PyroSCVAE
from pyro_scvae.criticism import log_scale, plot_ppc, replicate_counts
from pyro_scvae.simulate import simulate_counts

#: Small, quick fits: 600 cells × 100 genes, 60 epochs (about 5 s each).
SIZE = {"n_cells": 600, "n_genes": 100, "n_classes": 3, "labelled_fraction": 0.5, "seed": 3}


def fitted(adata) -> PyroSCVAE:
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, n_latent=5, n_hidden=64)
    return model.fit(epochs=60, progress=False, validation_fraction=0)


def underdispersed(adata):
    """Each cell's counts replaced by its type's mean profile scaled to its library, rounded.

    The cells of a type then differ only by library size: a gene's variance across cells is
    below its mean, which no negative binomial (variance ≥ mean) can produce, and its zeros
    are only where the expected count is below 1/2.
    """
    x = adata.X.toarray()
    types = adata.obs["cell_type"].to_numpy()
    library = x.sum(1, keepdims=True)  # [cells, 1]
    for name in np.unique(types):
        cells = types == name
        profile = x[cells].sum(0) / x[cells].sum()  # [G]
        x[cells] = np.round(library[cells] * profile)
    broken = adata.copy()
    broken.X = sp.csr_matrix(x.astype(np.float32))
    return broken


@pytest.fixture(scope="module")
def well_specified():
    return fitted(simulate_counts(**SIZE))


def test_replicated_counts_are_the_zinb_of_the_guides_draws(simulated):
    """The mean of the replicated counts is E[x | z₁, l] = l ρ(z₁) (1 − π(z₁)) averaged over
    draws of q(z₁, l | x): x is sampled from the model, not copied from the data."""
    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    module = PyroSCVAE(simulated, n_latent=4, n_hidden=16).module.eval()
    x = torch.from_numpy(simulated.X[:40].toarray())  # [40, G]
    batch = torch.from_numpy(np.arange(40) % 2)
    n_samples = 150
    torch.manual_seed(0)
    replicated = replicate_counts(module, x, batch, n_samples)  # [S, 40, G]
    assert replicated.shape == (n_samples, *x.shape)
    assert not torch.equal(replicated[0], x)
    assert torch.equal(replicated, replicated.round()) and replicated.min() >= 0

    with torch.no_grad():
        onehot = module.batch_inputs(x, batch)
        z1_loc, z1_scale, l_loc, l_scale = module.encode_x(x, onehot)
        z1 = torch.distributions.Normal(z1_loc, z1_scale).sample((n_samples,))  # [S, 40, d]
        library = torch.distributions.LogNormal(l_loc, l_scale).sample((n_samples,))  # [S, 40]
        rho, zi_logits = module.x_decoder(z1, onehot[0].expand(n_samples, -1, -1))
        expected = library[..., None] * rho * torch.sigmoid(-zi_logits)  # [S, 40, G]
    per_draw = replicated.mean(1), expected.mean(1)  # [S, G] each: the mean over cells
    difference = per_draw[0].mean(0) - per_draw[1].mean(0)  # [G]
    standard_error = ((per_draw[0].var(0) + per_draw[1].var(0)) / n_samples).sqrt()  # [G]
    assert (difference.abs() / standard_error).max() < 5


def test_counts_simulated_from_the_model_pass(well_specified, tmp_path):
    """Tolerance: at least 70 % of the cells have their zero fraction in the replicated 95 %
    interval, the zeros per gene are unbiased within 10 %, and the genes' means and zero
    fractions are ranked alike (Spearman ≥ 0.95). A 60-epoch fit is not converged, so the
    interval coverages of the other statistics (50-95 % here) are not required to be high."""
    check = well_specified.posterior_predictive_check(n_samples=20)
    summary = check.summary
    assert check.n_cells == 600 and summary["n_samples"] == 20
    assert summary["cells"]["zero_fraction"]["coverage"] >= 0.7
    assert abs(summary["genes"]["zero_fraction"]["ratio"] - 1) <= 0.1
    assert summary["genes"]["zero_fraction"]["spearman"] >= 0.95
    assert summary["genes"]["mean"]["spearman"] >= 0.95
    assert summary["genes"]["variance"]["coverage"] >= 0.4
    frequencies = summary["count_frequencies"]
    assert np.isclose(sum(frequencies["observed"]), 1) and np.isclose(
        sum(frequencies["replicated"]), 1
    )
    plot_ppc(check, tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 10_000


def test_underdispersed_counts_fail(well_specified):
    """Counts with variance below the mean and zeros only where the mean is below 1/2: the
    fitted ZINB replicates far too many zeros and too much variance (measured: coverage
    0-7 % against 58-93 % for the well-specified counts)."""
    broken = fitted(underdispersed(simulate_counts(**SIZE)))
    good = well_specified.posterior_predictive_check(n_samples=20).summary
    bad = broken.posterior_predictive_check(n_samples=20).summary
    assert bad["genes"]["zero_fraction"]["coverage"] <= 0.1
    assert bad["cells"]["zero_fraction"]["coverage"] <= 0.3
    assert bad["genes"]["zero_fraction"]["ratio"] <= 0.8  # observed zeros / replicated zeros
    assert bad["genes"]["variance"]["coverage"] <= 0.2
    for level, name in [("genes", "zero_fraction"), ("cells", "zero_fraction")]:
        assert bad[level][name]["coverage"] < good[level][name]["coverage"] - 0.4


def test_the_check_is_reproducible_and_leaves_the_random_state(well_specified):
    state = torch.random.get_rng_state()
    first = well_specified.posterior_predictive_check(n_samples=3, max_cells=50, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = well_specified.posterior_predictive_check(n_samples=3, max_cells=50, seed=1)
    assert first.n_cells == 50
    np.testing.assert_array_equal(first.genes["mean"][1], second.genes["mean"][1])


def test_log_axes_drop_minor_ticks_only_where_they_span_decades():
    """Wide log axes keep the powers of ten (hundreds of minor ticks slowed the PPC figure
    down); a narrow one keeps its few minor ticks; no minor tick is labelled."""
    import matplotlib.pyplot as plt

    fig, (wide, narrow) = plt.subplots(1, 2)
    wide.plot([1e-3, 1e3], [1e-3, 1e3])
    narrow.plot([300, 3000], [300, 3000])
    log_scale(wide, "x", "y")
    log_scale(narrow, "x")
    fig.canvas.draw()
    assert len(wide.xaxis.get_minorticklocs()) == len(wide.yaxis.get_minorticklocs()) == 0
    assert len(wide.xaxis.get_majorticklocs()) >= 6  # 10⁻³ … 10³
    minor = narrow.xaxis.get_minor_ticks()
    assert len(narrow.xaxis.get_minorticklocs()) > 0
    assert all(tick.label1.get_text() == "" for tick in minor)
    plt.close(fig)
