"""How fit() uses the labels: held-out cells, early stopping, calibration, every label learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_scvae import PyroSCVAE
from pyro_scvae.calibration import fit_temperature, negative_log_likelihood, softmax
from pyro_scvae.config import TrainingConfig
from pyro_scvae.evaluation import expected_calibration_error
from pyro_scvae.fitting import cross_fitted_ece
from pyro_scvae.selection import EarlyStopping, validation_split
from pyro_scvae.training import train


def recording_runner(calls: list):
    """A runner for select_and_refit that trains as fit() does and records each call."""

    def run(module, data, config, on_epoch_end=None, description="", **kwargs):
        calls.append(
            {
                "labels": data.labels.copy(),
                "start": config.start_epoch,
                "stop": config.epochs_to_train,
                "description": description,
            }
        )
        return train(module, data, config, on_epoch_end, description, **kwargs)

    return run


@pytest.fixture()
def model(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    return PyroSCVAE(simulated, n_latent=6, seed=0)


@pytest.mark.parametrize("refit", ["continue", "full"])
def test_the_model_that_annotates_learnt_every_label(model, refit, monkeypatch):
    """The first fit hides the held-out labels; the last training call sees all of them."""
    import pyro_scvae.api as api

    calls: list = []
    monkeypatch.setattr(api, "train", recording_runner(calls))
    model.fit(epochs=8, patience=2, refit=refit, progress=False)
    every_label = model.data.labels[model.training_cells]
    held = model.validation_cells
    assert len(held) > 0 and (model.data.labels[held] >= 0).all()
    first, last = calls[0]["labels"], calls[-1]["labels"]
    assert (first[held] == -1).all()  # (every cell has counts here: positions agree)
    assert (first >= 0).sum() == (every_label >= 0).sum() - len(held)
    np.testing.assert_array_equal(last, every_label)  # no labelled cell left out
    best = model.selection.best_epoch
    if refit == "continue":  # on from the best epoch of the first fit, with every label
        assert calls[-1]["start"] == best and calls[-1]["stop"] == best + 2
        assert model.epochs_trained == len(model.selection.history.elbo) + 2
    else:  # again from the initial weights, for the epochs the first fit chose
        assert calls[-1]["start"] == 0 and calls[-1]["stop"] == best
    assert len(model.history.elbo) == (best + 2 if refit == "continue" else best)


def test_refit_none_and_no_validation(model, monkeypatch):
    import pyro_scvae.api as api

    calls: list = []
    monkeypatch.setattr(api, "train", recording_runner(calls))
    model.fit(epochs=3, validation_fraction=0.0, progress=False)
    assert len(calls) == 1 and model.selection is None and model.temperature == 1.0
    np.testing.assert_array_equal(calls[0]["labels"], model.data.labels)
    calls.clear()
    model.fit(epochs=3, refit="none", early_stopping=False, progress=False)
    assert len(calls) == 1 and (calls[0]["labels"][model.validation_cells] == -1).all()
    assert model.selection.best_epoch == 3


def test_validation_metrics_come_from_the_first_fit(model):
    model.fit(epochs=6, patience=2, progress=False)
    metrics, selection = model.validation_metrics, model.selection
    assert metrics["n_cells"] == len(model.validation_cells) == len(selection.probabilities)
    calls = np.array(model.classes)[selection.probabilities.argmax(1)]
    truth = np.array(model.classes)[model.data.labels[model.validation_cells]]
    assert metrics["accuracy"] == pytest.approx(np.mean(calls == truth))
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    assert model.temperature == selection.temperature > 0
    assert metrics["epoch"] == selection.best_epoch >= int(np.ceil(0.5 * 6))  # after warm-up


def test_validation_split_is_stratified_and_keeps_a_cell_of_every_class():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 1 + [-1] * 20)
    held = validation_split(labels, 3, 0.2, seed=0)
    assert list(np.bincount(labels[held], minlength=3)) == [10, 2, 0]
    assert validation_split(labels, 3, 0.0, seed=0).size == 0


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    module = torch.nn.Linear(2, 1)
    scores = iter([5.0, 1.0, 4.0, 3.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    weights = []

    def evaluate():
        weights.append(module.weight.detach().clone())
        with torch.no_grad():
            module.weight.add_(1.0)  # training moves the weights on
        return next(scores)

    monitor = EarlyStopping(evaluate, module=module, patience=3, min_epochs=3)
    stops = [monitor(epoch) for epoch in range(9)]
    # epoch 2's score (1.0) is before min_epochs: scored, never chosen; epoch 5 (0.5) is.
    assert monitor.best_epoch == 5 and stops.index(True) == 7 and monitor.stopped_epoch == 8
    monitor.restore_best()
    torch.testing.assert_close(module.weight, weights[4] + 1.0)  # as evaluated at epoch 5


def test_a_monitor_that_never_stops_leaves_training_unchanged(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    config = TrainingConfig(epochs=3, seed=0, progress=False)
    models = [PyroSCVAE(simulated, n_latent=4, seed=1) for _ in range(2)]
    train(models[0].module, models[0].data, config)
    seen = []
    train(models[1].module, models[1].data, config, lambda e, h: seen.append(e) and False)
    assert seen == [0, 1, 2]
    for a, b in zip(models[0].module.parameters(), models[1].module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def overconfident_logits(n: int, seed: int, sharpness: float = 4.0):
    """Logits that are ``sharpness`` times too sharp for labels drawn from their softmax."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 5)) * 1.5
    probabilities = softmax(true_logits)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    return sharpness * true_logits, labels


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_ece():
    logits, labels = overconfident_logits(4000, seed=0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.1)
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(
        logits, labels, 1.0
    )
    # On cells the temperature was not fitted on, the calibration error falls.
    test_logits, test_labels = overconfident_logits(4000, seed=1)
    before = softmax(test_logits)
    after = softmax(test_logits, temperature)
    ece = [
        expected_calibration_error(p.argmax(1) == test_labels, p.max(1)) for p in (before, after)
    ]
    assert ece[1] < 0.03 < 0.1 < ece[0]
    assert cross_fitted_ece(test_logits, test_labels, seed=0) < 0.03
    assert softmax(test_logits, temperature).argmax(1).tolist() == before.argmax(1).tolist()
    assert fit_temperature(logits[:0], labels[:0]) == 1.0


@pytest.mark.slow
def test_calibrated_probabilities_of_a_real_model_mean_what_they_say(tmp_path):
    """On the embedded data, cells whose labels the model never saw: calibration lowers ECE."""
    from pyro_scvae import load_pbmc68k_counts

    adata = load_pbmc68k_counts()
    test = np.random.default_rng(0).random(adata.n_obs) < 0.3
    truth = adata.obs["bulk_labels"].astype(str).to_numpy()[test]
    adata.obs["training_label"] = adata.obs["bulk_labels"].astype(object)
    adata.obs.loc[test, "training_label"] = np.nan
    PyroSCVAE.setup_anndata(adata, labels_key="training_label")
    model = PyroSCVAE(adata, seed=0).fit(progress=False)
    assert model.temperature > 1.2  # the classifier was over-confident
    calibrated = model.predict(soft=True).to_numpy()[test]
    model.temperature, temperature = 1.0, model.temperature
    raw = model.predict(soft=True).to_numpy()[test]
    classes = np.array(model.classes)
    ece = [
        expected_calibration_error(classes[p.argmax(1)] == truth, p.max(1))
        for p in (raw, calibrated)
    ]
    assert ece[1] < ece[0] - 0.02, ece
    model.temperature = temperature
    model.save(tmp_path / "model")
    assert PyroSCVAE.load(tmp_path / "model").temperature == temperature
