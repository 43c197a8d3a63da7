"""Query mapping: new batches extend the covariate; a frozen reference learns only their columns."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_scvae import InputError, PyroSCVAE, PyroSCVAEWarning
from pyro_scvae.mapping import batch_layers, fine_tune_epochs, phase_epochs
from pyro_scvae.simulate import simulate_counts

BATCH_LAYERS = {
    "x_decoder.hidden.0.weight",
    "x_encoder.mlp.0.weight",
    "library_encoder.mlp.0.weight",
}


@pytest.fixture(scope="module")
def cells():
    """600 cells in 3 batches: batch_0 and batch_1 are the reference, batch_2 the query."""
    adata = simulate_counts(
        n_cells=600, n_genes=50, n_classes=3, labelled_fraction=0.5, n_batches=3, seed=4
    )
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    return adata[~is_query].copy(), adata[is_query].copy()


@pytest.fixture(scope="module")
def reference(cells):
    adata, _ = cells
    PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
    model = PyroSCVAE(adata, n_latent=4, n_hidden=32, encode_batch=True, seed=0)
    return model.fit(epochs=3, progress=False, device="cpu")


def state(model: PyroSCVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}


def test_frozen_fine_tuning_changes_only_the_new_batch_columns(reference, cells):
    _, query = cells
    before = state(reference)
    mapped = reference.map_query(query, epochs=3, progress=False, device="cpu")
    after = state(mapped)
    assert state(reference).keys() == before.keys()
    for name, value in state(reference).items():  # the reference itself is untouched
        assert torch.equal(value, before[name]), name
    assert mapped.batch_categories == ["batch_0", "batch_1", "batch_2"]
    assert mapped.config.n_batches == 3 and reference.config.n_batches == 2
    assert set(batch_layers(mapped.module)) == BATCH_LAYERS
    for name, value in after.items():
        if name in BATCH_LAYERS:  # [out, inputs + 3]: the reference columns are exactly kept
            assert value.shape[1] == before[name].shape[1] + 1
            assert torch.equal(value[:, :-1], before[name]), name
            initial = before[name][:, -2:].mean(1)  # the new column starts at their mean
            assert not torch.allclose(value[:, -1], initial), f"{name}: new column did not learn"
        elif name in ("library_loc", "library_scale"):
            assert torch.equal(value[:2], before[name])
            log_totals = np.log(np.asarray(query.X.sum(1)).ravel())
            expected = log_totals.mean() if name == "library_loc" else log_totals.std()
            assert value[2].item() == pytest.approx(expected, rel=1e-5)
        else:
            assert torch.equal(value, before[name]), name
    assert mapped.temperature == reference.temperature
    assert mapped.mapping["new_batches"] == ["batch_2"] and mapped.mapping["epochs"] == 3


def test_fine_tuning_trains_the_decoder_first(reference, cells, monkeypatch):
    """Phase 1: only the decoder's new column learns, the query encoded as the reference
    encodes it; phase 2: the encoders' new columns learn as well."""
    import pyro_scvae.mapping as mapping

    _, query = cells
    initial = {  # a new column starts at the mean of the reference batches' columns
        name: weight.detach()[:, -2:].mean(1)
        for name, weight in batch_layers(reference.module).items()
    }
    new_columns, real_train = [], mapping.train

    def recording(module, *args, **kwargs):
        history = real_train(module, *args, **kwargs)
        new_columns.append({n: w.detach()[:, -1].clone() for n, w in batch_layers(module).items()})
        return history

    monkeypatch.setattr(mapping, "train", recording)
    mapped = reference.map_query(query, epochs=4, progress=False, device="cpu")
    after_decoder, after_all = new_columns
    for name, column in after_decoder.items():
        if name.startswith("x_decoder."):
            assert not torch.allclose(column, initial[name]), "decoder column did not learn"
        else:
            assert torch.equal(column, initial[name]), f"{name} learned in the decoder phase"
    for name in initial:
        assert not torch.equal(after_all[name], after_decoder[name]), name
    assert mapped.mapping["epochs"] == 4 and len(mapped.history.elbo) == 4


def test_unfrozen_fine_tuning_changes_the_reference_weights(reference, cells):
    _, query = cells
    before = state(reference)
    mapped = reference.map_query(
        query, epochs=2, freeze_reference=False, progress=False, device="cpu"
    )
    after = state(mapped)
    assert not torch.equal(after["classifier.mlp.0.weight"], before["classifier.mlp.0.weight"])
    assert not torch.equal(after["log_theta"], before["log_theta"])


def test_unseen_batch_is_the_average_of_the_reference_batches(reference, cells):
    """Without mapping, a new batch meets the mean batch input: what mapping starts from."""
    _, query = cells
    with pytest.warns(PyroSCVAEWarning, match=r"\('batch_2'\).*average of the training batches"):
        unseen = reference.predict(query, soft=True)
    untrained = reference.map_query(query, epochs=0, progress=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PyroSCVAEWarning)  # the mapped model knows batch_2
        mapped = untrained.predict(query, soft=True)
    np.testing.assert_allclose(mapped.to_numpy(), unseen.to_numpy(), rtol=1e-5, atol=1e-6)
    # and the average is not some training batch: calling it batch_0 changes the latent
    as_first = query.copy()
    as_first.obs["batch"] = "batch_0"
    with pytest.warns(PyroSCVAEWarning):
        average = reference.get_latent_representation(query)
    assert not np.allclose(reference.get_latent_representation(as_first), average, atol=1e-4)


def test_mapped_model_saves_loads_and_predicts_identically(reference, cells, tmp_path):
    _, query = cells
    mapped = reference.map_query(query, epochs=2, progress=False, device="cpu")
    mapped.save(tmp_path / "mapped")
    loaded = PyroSCVAE.load(tmp_path / "mapped", device="cpu")
    assert loaded.batch_categories == mapped.batch_categories
    assert loaded.mapping == mapped.mapping
    pd.testing.assert_frame_equal(
        loaded.predict(query, soft=True), mapped.predict(query, soft=True)
    )
    pd.testing.assert_frame_equal(loaded.novelty_scores(query), mapped.novelty_scores(query))
    for name, value in state(mapped).items():
        assert torch.equal(value, state(loaded)[name]), name


def test_mapping_needs_new_batches(reference, cells, simulated):
    adata, _ = cells
    with pytest.raises(InputError, match="every batch of the query is one the model"):
        reference.map_query(adata, epochs=1, progress=False)
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    plain = PyroSCVAE(simulated, n_latent=3, n_hidden=16).fit(epochs=1, progress=False)
    with pytest.raises(InputError, match="no batch covariate"):
        plain.map_query(simulated)


def test_fine_tune_epochs_follow_the_query_size():
    """Both phases together: each about 300 steps, 5 to 200 epochs."""
    assert fine_tune_epochs(400, 512) == 2 * 200  # one step an epoch: capped
    assert fine_tune_epochs(20_000, 512) == 2 * 8  # 40 steps an epoch: ~300 steps
    assert fine_tune_epochs(1_000_000, 512) == 2 * 5  # at least 5 passes
    for n in (2_500, 5_000, 7_000):  # between the bounds: 300 steps or one epoch more
        per_epoch = int(np.ceil(n / 128))
        assert 300 <= fine_tune_epochs(n, 128) // 2 * per_epoch < 300 + per_epoch
    assert phase_epochs(400) == [200, 200] and phase_epochs(3) == [1, 2]


def test_predict_command_fine_tunes_and_writes_the_model(reference, cells, tmp_path, capsys):
    from pyro_scvae import predict

    _, query = cells
    reference.save(tmp_path / "reference")
    query = query.copy()
    query.obs["chemistry"] = query.obs.pop("batch")  # another column name: --batch-key
    query.write_h5ad(tmp_path / "query.h5ad")
    common = ["--model", str(tmp_path / "reference"), "--adata", str(tmp_path / "query.h5ad")]
    common += ["--batch-key", "chemistry", "--device", "cpu"]
    assert predict.main([*common, "--out", str(tmp_path / "plain")]) == 0
    captured = capsys.readouterr()
    assert "('batch_2'); they are encoded and decoded with the average" in captured.err
    assert not (tmp_path / "plain" / "model").exists()

    out = tmp_path / "tuned"
    args = [*common, "--fine-tune", "--fine-tune-epochs", "2", "--out", str(out)]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert "fine-tuned on 208 cells of new batches batch_2 for 2 epochs" in captured.out
    assert "not trained on" not in captured.err
    table = pd.read_csv(out / "predictions.csv", index_col="cell")
    tuned = PyroSCVAE.load(out / "model", device="cpu")
    assert tuned.batch_categories == ["batch_0", "batch_1", "batch_2"]
    np.testing.assert_allclose(
        table.filter(like="prob:").to_numpy(),
        tuned.predict(query, soft=True).to_numpy(),
        rtol=1e-5,
    )
    scores = tuned.novelty_scores(query)
    np.testing.assert_allclose(table["novelty"], scores["novelty"], rtol=1e-5)
    assert (table["novel"] == scores["novel"]).all()
    annotated = __import__("anndata").read_h5ad(out / "annotated.h5ad")
    assert {"pyro_scvae_novelty", "pyro_scvae_novel"} <= set(annotated.obs)


def test_default_reference_gains_encoder_columns_that_move_only_the_query(cells):
    """encode_batch=False: the mapped encoders see the batch through new columns; a
    reference cell keeps its latent exactly, a query cell's latent moves."""
    adata, query = cells
    adata = adata.copy()
    PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
    plain = PyroSCVAE(adata, n_latent=4, n_hidden=32, seed=0).fit(
        epochs=3, progress=False, device="cpu"
    )
    assert not plain.config.encode_batch
    before = state(plain)
    mapped = plain.map_query(query, epochs=3, progress=False, device="cpu")
    after = state(mapped)
    assert mapped.config.encode_batch and set(batch_layers(mapped.module)) == BATCH_LAYERS
    for name in ("x_encoder.mlp.0.weight", "library_encoder.mlp.0.weight"):
        assert after[name].shape[1] == before[name].shape[1] + 3  # one column per batch
        assert torch.equal(after[name][:, :-3], before[name]), name
        assert torch.equal(after[name][:, -3:-1], torch.zeros(len(before[name]), 2)), name
        assert after[name][:, -1].abs().sum() > 0, f"{name}: the query's column did not learn"
    np.testing.assert_array_equal(
        mapped.get_latent_representation(adata), plain.get_latent_representation(adata)
    )
    with pytest.warns(PyroSCVAEWarning):  # batch_2 is unseen by the reference
        unmapped = plain.get_latent_representation(query)
    assert not np.allclose(mapped.get_latent_representation(query), unmapped, atol=1e-3)
