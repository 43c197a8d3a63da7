"""Seed ensembles: fit(ensemble=N), the mean of the members' probabilities, save and load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax as scipy_softmax

from pyro_scvae import PyroSCVAE
from pyro_scvae.calibration import fit_temperature, negative_log_likelihood, softmax
from pyro_scvae.config import TrainingConfig
from pyro_scvae.errors import InputError
from pyro_scvae.fitting import cross_fitted_ece, member_seed
from pyro_scvae.persistence import member_file
from tests.test_fitting import recording_runner

FIT = {"epochs": 6, "patience": 2, "progress": False}


def test_an_ensembles_probabilities_are_the_mean_of_its_members():
    logits = np.random.default_rng(0).normal(size=(3, 50, 4)) * 3  # [members, cells, K]
    expected = np.mean([scipy_softmax(m / 1.7, axis=1) for m in logits], axis=0)
    np.testing.assert_allclose(softmax(logits, 1.7), expected, rtol=1e-12)
    labels = np.random.default_rng(1).integers(0, 4, size=50)
    nll = -np.log(expected[np.arange(50), labels]).mean()
    assert negative_log_likelihood(logits, labels, 1.7) == pytest.approx(nll, rel=1e-12)
    # a single member's stacked logits are that member's own
    np.testing.assert_allclose(softmax(logits[:1], 2.0), softmax(logits[0], 2.0), rtol=1e-12)


def test_the_ensembles_temperature_minimises_the_nll_of_its_mean():
    rng = np.random.default_rng(2)
    signal = rng.integers(0, 3, size=400)
    logits = rng.normal(size=(2, 400, 3)) + 6 * np.eye(3)[signal]
    labels = np.where(rng.random(400) < 0.25, rng.integers(0, 3, size=400), signal)
    # a quarter of the labels are random: both members are over-confident
    best = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 400))
    by_grid = grid[np.argmin([negative_log_likelihood(logits, labels, t) for t in grid])]
    assert best == pytest.approx(by_grid, rel=0.02) and best > 1
    assert 0 <= cross_fitted_ece(logits, labels, seed=0) < 1


def test_ensemble_must_be_a_whole_number_of_members():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="ensemble"):
            TrainingConfig(ensemble=bad)
    assert TrainingConfig(ensemble=np.int64(3)).ensemble == 3
    assert member_seed(2**32 - 1, 1) == 0


@pytest.fixture()
def adata(simulated):
    adata = simulated.copy()
    PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
    return adata


@pytest.fixture()
def ensemble(adata):
    return PyroSCVAE(adata, n_latent=6, seed=3).fit(ensemble=3, **FIT)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_member_0_is_the_single_fit_and_the_others_differ(adata, ensemble):
    single = PyroSCVAE(adata, n_latent=6, seed=3).fit(**FIT)
    assert states_equal(single.module, ensemble.module)  # bit-identical
    assert len(ensemble.extra_members) == 2
    assert not any(states_equal(ensemble.module, m) for m in ensemble.extra_members)
    np.testing.assert_array_equal(
        single.get_latent_representation(), ensemble.get_latent_representation()
    )
    assert ensemble.ensemble_summary["seeds"] == [3, 4, 5]
    assert len(ensemble.ensemble_summary["member_macro_f1"]) == 3
    assert ensemble.epochs_trained == sum(ensemble.ensemble_summary["epochs_trained"])


def test_predictions_average_the_calibrated_members(ensemble):
    counts, batches = ensemble.data.counts, ensemble.data.batches
    members = [ensemble.module, *ensemble.extra_members]
    means = []
    for module in members:
        module.eval()
        with torch.no_grad():
            logits = module.encode(torch.from_numpy(counts.toarray()), torch.from_numpy(batches))
        means.append(scipy_softmax(logits[1].numpy().astype(np.float64) / ensemble.temperature, 1))
    probabilities = ensemble.predict(soft=True)
    np.testing.assert_allclose(probabilities.to_numpy(), np.mean(means, axis=0), atol=1e-6)
    calls = ensemble.predict()
    assert (calls.to_numpy() == probabilities.idxmax(axis=1).to_numpy()).all()


def test_every_member_learns_every_label_and_the_metrics_stay_honest(adata, monkeypatch):
    """Members share the held-out cells: each hides them first, then learns them."""
    import pyro_scvae.api as api

    calls: list = []
    monkeypatch.setattr(api, "train", recording_runner(calls))
    model = PyroSCVAE(adata, n_latent=6, seed=0).fit(ensemble=2, **FIT)
    held = model.validation_cells
    every_label = model.data.labels[model.training_cells]
    assert [c["description"] for c in calls] == [
        "training (labels held out, member 1 of 2)",
        "training (all labels, member 1 of 2)",
        "training (labels held out, member 2 of 2)",
        "training (all labels, member 2 of 2)",
    ]
    for first, last in (calls[0:2], calls[2:4]):
        assert (first["labels"][held] == -1).all()
        np.testing.assert_array_equal(last["labels"], every_label)
    # the ensemble's held-out metrics come from the members' selection fits
    logits = model.selection.logits
    assert logits.shape == (2, len(held), len(model.classes))
    truth = model.data.labels[held]
    assert model.temperature == pytest.approx(fit_temperature(logits, truth))
    calls_held = softmax(logits, model.temperature).argmax(1)
    assert model.validation_metrics["accuracy"] == pytest.approx((calls_held == truth).mean())


def test_an_ensemble_saves_and_loads_every_member(ensemble, adata, tmp_path):
    ensemble.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir() if p.suffix == ".safetensors")
    assert files == ["member_1.safetensors", "member_2.safetensors", "weights.safetensors"]
    loaded = PyroSCVAE.load(tmp_path / "model")
    np.testing.assert_allclose(
        loaded.predict(adata, soft=True).to_numpy(), ensemble.predict(soft=True).to_numpy()
    )
    assert loaded.ensemble_summary == json.loads(json.dumps(ensemble.ensemble_summary))
    # a member's file missing is named, not a traceback
    (tmp_path / "model" / member_file(2)).unlink()
    with pytest.raises(InputError, match="member_2.safetensors is missing"):
        PyroSCVAE.load(tmp_path / "model")


def test_a_config_asking_for_impossible_members_is_refused(ensemble, tmp_path):
    ensemble.save(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    config["ensemble"]["members"] = 10**6
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="'ensemble' must give its number of members"):
        PyroSCVAE.load(tmp_path / "model")


def test_mapping_an_ensemble_fine_tunes_every_member(ensemble, adata):
    query = adata[adata.obs["batch"] == adata.obs["batch"].cat.categories[0]].copy()
    query.obs["batch"] = "new lab"
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in ensemble.extra_members]
    mapped = ensemble.map_query(query, epochs=2, progress=False)
    assert len(mapped.extra_members) == 2
    assert mapped.batch_categories[-1] == "new lab"
    for member, state in zip(ensemble.extra_members, before):  # the reference is unchanged
        assert all(torch.equal(member.state_dict()[k], v) for k, v in state.items())
    probabilities = mapped.predict(query, soft=True)
    assert np.allclose(probabilities.sum(axis=1), 1)
    assert mapped.mapping["new_batches"] == ["new lab"]
    assert mapped.epochs_trained == 3 * 2  # two epochs for each member


def test_the_command_line_fits_saves_and_applies_an_ensemble(simulated, tmp_path, capsys):
    from pyro_scvae import fit, predict
    from tests.test_cli import fails_with

    simulated.write_h5ad(tmp_path / "cells.h5ad")
    data = ["--adata", str(tmp_path / "cells.h5ad"), "--labels-key", "label"]
    args = [*data, "--epochs", "4", "--no-ppc", "--no-markers", "--ensemble", "2"]
    assert fit.main([*args, "--out", str(tmp_path / "fit")]) == 0
    out = capsys.readouterr().out
    assert "a seed ensemble of 2 models (seeds [0, 1])" in out
    assert "each member alone: " in out
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert metrics["ensemble"]["members"] == 2
    assert (tmp_path / "fit" / "model" / "member_1.safetensors").is_file()
    model = ["--model", str(tmp_path / "fit" / "model")]
    assert predict.main([*model, *data[:2], "--out", str(tmp_path / "p")]) == 0
    fitted = pd.read_csv(tmp_path / "fit" / "predictions.csv", index_col="cell")
    applied = pd.read_csv(tmp_path / "p" / "predictions.csv", index_col="cell")
    np.testing.assert_allclose(applied["confidence"], fitted["confidence"], rtol=1e-5)
    fails_with(capsys, fit.main, [*data, "--ensemble", "0"], "--ensemble: must be a positive")
