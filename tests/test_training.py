"""Training on data simulated from the model recovers the cell types, and is repeatable."""

from __future__ import annotations

import numpy as np

from pyro_scvae import PyroSCVAE
from pyro_scvae.data import minibatches
from pyro_scvae.simulate import simulate_counts


def test_learns_types_of_unlabelled_cells():
    adata = simulate_counts(n_cells=2000, n_classes=5, labelled_fraction=0.1, seed=0)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, seed=0).fit(epochs=20, progress=False)

    unlabelled = adata.obs["label"].isna().to_numpy()
    assert unlabelled.mean() > 0.85
    predicted = model.predict()[unlabelled]
    accuracy = (predicted == adata.obs["cell_type"].astype(str)[unlabelled]).mean()
    assert accuracy >= 0.9, accuracy

    elbo = model.history.elbo
    assert len(elbo) == 20
    assert np.mean(elbo[-3:]) > elbo[0] + 100  # the objective rises, by a lot
    assert np.mean(elbo[-3:]) > np.mean(elbo[5:8])  # and is still rising late


def test_same_seed_same_losses_and_other_seed_differs(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")

    def losses(seed):
        return PyroSCVAE(simulated, seed=seed).fit(epochs=3, progress=False).history.elbo

    first, again, other = losses(0), losses(0), losses(1)
    assert first == again
    assert first != other


def test_minibatches_cover_each_cell_once_and_never_mix_labelled():
    labels = np.array([-1] * 23 + [0, 1, 2] * 5)
    rng = np.random.default_rng(0)
    seen = []
    for index, labelled in minibatches(labels, batch_size=4, rng=rng):
        assert len(index) <= 4
        assert np.all((labels[index] >= 0) == labelled)
        seen.extend(index)
    assert sorted(seen) == list(range(len(labels)))
    dropped = [i for i, _ in minibatches(labels, batch_size=4, rng=rng, drop_last=True)]
    assert all(len(i) == 4 for i in dropped) and len(dropped) == 5 + 3
