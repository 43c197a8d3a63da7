"""The Python API: set-up, predictions, latent space, save/load, gene matching, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyro_scvae import InputError, PyroSCVAE
from pyro_scvae.api import UNASSIGNED, match_genes
from pyro_scvae.data import PyroSCVAEWarning, encode_labels


@pytest.fixture(scope="module")
def trained(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    return PyroSCVAE(simulated, n_latent=6, seed=0).fit(epochs=4, progress=False)


def test_outputs_have_the_right_shape_and_meaning(trained, simulated):
    probabilities = trained.predict(soft=True)
    assert probabilities.shape == (simulated.n_obs, 3)
    assert list(probabilities.index) == list(simulated.obs_names)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    calls = trained.predict()
    assert (calls == probabilities.idxmax(axis=1)).all()
    strict = trained.predict(min_confidence=0.9)
    unsure = probabilities.max(1) < 0.9
    assert (strict[unsure] == UNASSIGNED).all() and (strict[~unsure] == calls[~unsure]).all()
    assert trained.get_latent_representation().shape == (simulated.n_obs, 6)


def test_validation_fraction_hides_labels_and_reports_metrics(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    model = PyroSCVAE(simulated).fit(epochs=2, validation_fraction=0.25, progress=False)
    labelled = simulated.obs["label"].notna().sum()
    assert abs(len(model.validation_cells) - 0.25 * labelled) <= 3
    assert model.data.labels[model.validation_cells].min() >= 0
    metrics = model.validation_metrics
    assert metrics["n_cells"] == len(model.validation_cells)
    assert set(metrics["per_class_f1"]) == {"type_0", "type_1", "type_2"}
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0


def test_save_load_gives_identical_probabilities(trained, simulated, tmp_path):
    trained.save(tmp_path / "model")
    loaded = PyroSCVAE.load(tmp_path / "model", device="cpu")
    pd.testing.assert_frame_equal(loaded.predict(simulated, soft=True), trained.predict(soft=True))
    np.testing.assert_array_equal(
        loaded.get_latent_representation(simulated), trained.get_latent_representation()
    )
    assert loaded.history.elbo == trained.history.elbo
    with pytest.raises(InputError, match="pass the AnnData to annotate"):
        loaded.predict()
    with pytest.raises(InputError, match="not empty"):
        trained.save(tmp_path / "model")
    with pytest.raises(InputError, match="not a saved pyro_scvae model"):
        PyroSCVAE.load(tmp_path)


def test_models_saved_before_the_encoder_options_load_with_the_old_encoder(simulated, tmp_path):
    import json

    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    old_style = PyroSCVAE(
        simulated, n_latent=4, encode_batch=True, separate_library_encoder=False, seed=0
    )
    assert not hasattr(old_style.module, "library_encoder")
    old_style.fit(epochs=1, progress=False).save(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config = json.loads(config_file.read_text())
    del config["model"]["encode_batch"]  # as written before the options existed
    del config["model"]["separate_library_encoder"]
    config_file.write_text(json.dumps(config))
    loaded = PyroSCVAE.load(tmp_path / "model", device="cpu")
    assert loaded.config.encode_batch and not loaded.config.separate_library_encoder
    pd.testing.assert_frame_equal(
        loaded.predict(simulated, soft=True), old_style.predict(soft=True)
    )


def test_query_with_shuffled_subset_of_genes(trained, simulated):
    rng = np.random.default_rng(0)
    kept = rng.permutation(simulated.n_vars)[:50]  # 10 of 60 genes missing, order shuffled
    query = simulated[:, kept].copy()
    with pytest.warns(PyroSCVAEWarning, match="10 of the model's 60 genes are missing"):
        probabilities = trained.predict(query, soft=True)
    zeroed = simulated.copy()
    missing = np.setdiff1d(np.arange(simulated.n_vars), kept)
    dense = zeroed.X.toarray()
    dense[:, missing] = 0
    zeroed.X = sp.csr_matrix(dense)
    expected = trained.predict(zeroed, soft=True)
    np.testing.assert_allclose(probabilities.to_numpy(), expected.to_numpy(), rtol=1e-5)


def test_too_few_shared_genes_is_an_error(simulated):
    counts = simulated.X[:, :10]
    with pytest.raises(InputError, match="only 10 of the model's 60 genes"):
        match_genes(counts, simulated.var_names[:10], list(simulated.var_names))


def test_bad_setup_and_labels(simulated):
    with pytest.raises(InputError, match="labels column 'nope' not found.*cell_type"):
        PyroSCVAE.setup_anndata(simulated, labels_key="nope")
    single = simulated.copy()
    single.obs["one"] = "T cell"
    PyroSCVAE.setup_anndata(single, labels_key="one")
    with pytest.raises(InputError, match="single class"):
        PyroSCVAE(single)
    single.obs["none"] = np.nan
    PyroSCVAE.setup_anndata(single, labels_key="none")
    with pytest.raises(InputError, match="no cell has a label"):
        PyroSCVAE(single)


def test_encode_labels_treats_missing_and_unlabelled_category_alike():
    labels = pd.Series(["B", None, "T", "unknown", np.nan, "B"])
    codes, classes = encode_labels(labels, "unknown")
    assert classes == ["B", "T"]
    assert codes.tolist() == [0, -1, 1, -1, -1, 0]


@pytest.mark.parametrize("power", [True, 0.5, 1.0])
def test_balanced_classification_weights(simulated, power):
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    model = PyroSCVAE(simulated, alpha=10.0, balance_classes=power)
    labels = model.data.labels[model.data.labels >= 0]
    n = np.bincount(labels, minlength=len(model.classes)).astype(float)  # [K]
    weights = model.module.classification_weight.numpy() / 10.0  # α_y / α
    np.testing.assert_allclose((n * weights).sum() / n.sum(), 1.0, rtol=1e-5)  # mean 1
    p = float(power)
    np.testing.assert_allclose(weights * n**p, (weights * n**p)[0], rtol=1e-5)  # ∝ n^-p
    if p == 1.0:
        np.testing.assert_allclose(weights, n.sum() / (len(n) * n), rtol=1e-5)
    unbalanced = PyroSCVAE(simulated, alpha=10.0, balance_classes=False).module
    unbalanced = unbalanced.classification_weight.numpy()
    np.testing.assert_allclose(unbalanced, 10.0)
    with pytest.raises(InputError, match="balance_classes"):
        PyroSCVAE(simulated, balance_classes=1.5)


def test_annotating_with_a_saved_model_does_not_import_scvi(simulated, tmp_path):
    """scvi-tools (and lightning, ~7 s) is imported only to evaluate the ZINB in training:
    loading a model and annotating, with latents and novelty, skip it."""
    import subprocess
    import sys

    adata = simulated.copy()
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    PyroSCVAE(adata, n_latent=3, n_hidden=16).fit(epochs=1, progress=False).save(tmp_path / "model")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    script = (
        "import sys, anndata\n"
        "from pyro_scvae import PyroSCVAE\n"
        f"model = PyroSCVAE.load({str(tmp_path / 'model')!r}, device='cpu')\n"
        f"cells = anndata.read_h5ad({str(tmp_path / 'cells.h5ad')!r})\n"
        "calls = model.predict(cells, novelty=True)\n"
        "model.get_latent_representation(cells); model.novelty_scores(cells)\n"
        "print(len(calls), 'scvi' in sys.modules, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(adata.n_obs), "False", "False"]
