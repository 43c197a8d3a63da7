"""The command lines: every option, every output, every bad input, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyro_scvae import PyroSCVAE, fit, predict
from pyro_scvae.simulate import simulate_counts

FAST = ["--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    """A small count file with labels (40 % missing), batches and a counts layer."""
    adata = simulate_counts(
        n_cells=300, n_genes=80, n_classes=3, labelled_fraction=0.6, n_batches=2, seed=3
    )
    adata.obs["label"] = adata.obs["label"].astype(object).fillna("unassigned")
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def run_fit(*args: str, capsys=None) -> int:
    return fit.main(list(args))


def fails_with(capsys, main, args, pattern: str) -> None:
    """The command exits with status 2 and a one-line message matching ``pattern``."""
    with pytest.raises(SystemExit) as raised:
        status = main(args)
        raise SystemExit(status)
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    assert pytest.importorskip("re").search(pattern, err[0]), err[0]


def test_every_training_option_and_output(h5ad, tmp_path, capsys):
    out = tmp_path / "out"
    query = tmp_path / "query.h5ad"
    full = ad.read_h5ad(h5ad)
    full[:50, ::-1].copy().write_h5ad(query)  # genes in reverse order
    status = fit.main(
        [
            "--adata",
            str(h5ad),
            "--labels-key",
            "label",
            "--unlabeled-category",
            "unassigned",
            "--batch-key",
            "batch",
            "--layer",
            "counts",
            "--n-top-genes",
            "40",
            "--marker-share",
            "0.25",
            "--n-latent",
            "8",
            "--n-hidden",
            "32",
            "--n-layers",
            "2",
            "--dropout",
            "0.2",
            "--alpha",
            "20",
            "--balance-classes",
            "0.5",
            "--class-prior",
            "uniform",
            "--encode-batch",
            "--no-separate-library-encoder",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--lr",
            "0.005",
            "--lr-schedule",
            "cosine",
            "--kl-warmup",
            "0.25",
            "--seed",
            "7",
            "--device",
            "cpu",
            "--validation-fraction",
            "0.3",
            "--min-confidence",
            "0.6",
            "--novelty-quantile",
            "0.5",
            "--query",
            str(query),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    stdout = capsys.readouterr().out
    assert "held-out labelled cells" in stdout and "accuracy" in stdout

    predictions = pd.read_csv(out / "predictions.csv", index_col="cell")
    classes = ["type_0", "type_1", "type_2"]
    first = ["predicted", "confidence", "novelty", "novel"]
    assert list(predictions.columns) == first + [f"prob:{c}" for c in classes]
    assert (predictions["novelty"] >= 0).all() and predictions["novel"].dtype == bool
    assert len(predictions) == 300
    probs = predictions[[f"prob:{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predictions["confidence"], probs.max(1), rtol=1e-6)
    unsure = predictions["confidence"] < 0.6
    assert (predictions.loc[unsure, "predicted"] == "Unassigned").all()
    assert (predictions.loc[~unsure, "predicted"].isin(classes)).all()

    annotated = ad.read_h5ad(out / "annotated.h5ad")
    assert annotated.n_vars == 80  # the input, every gene
    assert annotated.obsm["X_pyro_scvae"].shape == (300, 8)
    stored = annotated.obsm["pyro_scvae_probabilities"]
    assert list(stored.columns) == classes
    np.testing.assert_allclose(stored.to_numpy(), probs, rtol=1e-6)
    assert (annotated.obs["pyro_scvae_prediction"].astype(str) == predictions["predicted"]).all()
    assert annotated.uns["pyro_scvae"]["seed"] == 7
    assert annotated.uns["pyro_scvae"]["lr_schedule"] == "cosine"
    assert annotated.uns["pyro_scvae"]["kl_warmup"] == 0.25
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model"] | {"n_latent": 8, "n_hidden": 32, "n_layers": 2} == saved["model"]
    assert saved["model"]["dropout"] == 0.2 and saved["model"]["alpha"] == 20.0
    assert saved["model"]["encode_batch"] is True  # the default is False
    assert saved["model"]["separate_library_encoder"] is False  # the default is True
    assert saved["model"]["balance_classes"] == 0.5
    assert saved["model"]["class_prior"] == "uniform"  # the default is "frequencies"
    assert saved["training"]["kl_warmup"] == 0.25 and saved["training"]["epochs"] == 3
    # the 40 most variable genes and up to ceil(0.25 · 40 / 3) = 4 markers of each type
    n_genes_used = annotated.uns["pyro_scvae"]["n_genes_used"]
    assert annotated.uns["pyro_scvae"]["marker_share"] == 0.25 and 40 < n_genes_used <= 52
    assert annotated.uns["pyro_scvae"]["n_marker_genes_added"] == n_genes_used - 40
    assert f"× {n_genes_used} genes ({n_genes_used - 40} of them markers" in stdout
    # the threshold is the median of the reference cells' out-of-fold scores (default 0.98)
    assert saved["novelty"]["quantile"] == 0.5
    assert 0.2 < predictions["novel"].mean() < 0.9

    metrics = json.loads((out / "metrics.json").read_text())
    # 3 epochs with 30 % of the labels held out, then from the best of them 3 more (the
    # patience) with every label
    assert metrics["epochs_trained"] == 6 and metrics["n_genes"] == n_genes_used
    assert metrics["epochs"] == metrics["selection"]["best_epoch"] + 3
    assert metrics["cells_per_second"] > 0 and metrics["train_seconds"] > 0
    assert np.isfinite(metrics["final_elbo_per_cell"])
    validation = metrics["validation"]
    assert validation["n_cells"] == pytest.approx(0.3 * 180, abs=3)
    assert set(validation["per_class_f1"]) == set(classes)
    for name in ("accuracy", "macro_f1", "weighted_f1", "ece"):
        assert 0.0 <= validation[name] <= 1.0

    config = json.loads((out / "model" / "config.json").read_text())
    assert config["training"]["batch_size"] == 64 and config["training"]["lr"] == 0.005
    assert config["setup"]["layer"] == "counts" and config["batch_categories"] == [
        "batch_0",
        "batch_1",
    ]
    assert len(config["genes"]) == n_genes_used
    for png in ("elbo.png", "confusion.png", "umap.png"):
        assert (out / png).stat().st_size > 10_000
    query_predictions = pd.read_csv(out / "query" / "predictions.csv", index_col="cell")
    assert list(query_predictions.index) == list(full.obs_names[:50])
    assert (out / "query" / "annotated.h5ad").exists()


def test_quiet_and_seed(h5ad, tmp_path, capsys):
    def predictions(seed: str, name: str) -> pd.DataFrame:
        assert (
            fit.main(
                [
                    "--adata",
                    str(h5ad),
                    "--labels-key",
                    "label",
                    "--seed",
                    seed,
                    "--out",
                    str(tmp_path / name),
                    *FAST,
                ]
            )
            == 0
        )
        return pd.read_csv(tmp_path / name / "predictions.csv", index_col="cell")

    first, again, other = predictions("1", "a"), predictions("1", "b"), predictions("2", "c")
    assert capsys.readouterr().out == ""  # --quiet prints nothing
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["confidence"], other["confidence"])


def test_predict_command_applies_a_saved_model(h5ad, tmp_path, capsys):
    assert (
        fit.main(
            [
                "--adata",
                str(h5ad),
                "--labels-key",
                "label",
                "--out",
                str(tmp_path / "trained"),
                *FAST,
            ]
        )
        == 0
    )
    adata = ad.read_h5ad(h5ad)
    rng = np.random.default_rng(0)
    subset = adata[:, rng.permutation(adata.n_vars)[:70]].copy()  # shuffled subset of genes
    subset.write_h5ad(tmp_path / "new.h5ad")
    status = predict.main(
        [
            "--model",
            str(tmp_path / "trained" / "model"),
            "--adata",
            str(tmp_path / "new.h5ad"),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "warning: 10 of the model's 80 genes are missing" in captured.err
    assert "annotated 300 cells" in captured.out
    table = pd.read_csv(tmp_path / "p" / "predictions.csv", index_col="cell")
    assert len(table) == 300 and table["confidence"].between(0, 1).all()
    fails_with(
        capsys,
        predict.main,
        ["--model", str(tmp_path), "--adata", str(h5ad)],
        "not a saved pyro_scvae model",
    )


def test_empty_cells_are_dropped_with_a_warning(h5ad, tmp_path, capsys):
    adata = ad.read_h5ad(h5ad)
    dense = adata.X.toarray()
    dense[:5] = 0
    adata.X = sp.csr_matrix(dense)
    adata.write_h5ad(tmp_path / "empty.h5ad")
    assert (
        fit.main(
            [
                "--adata",
                str(tmp_path / "empty.h5ad"),
                "--labels-key",
                "label",
                "--out",
                str(tmp_path / "o"),
                *FAST,
            ]
        )
        == 0
    )
    assert "warning: 5 cells with zero counts were dropped" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "o" / "predictions.csv")) == 295


def write_variant(tmp_path, h5ad, name, change) -> str:
    adata = ad.read_h5ad(h5ad)
    change(adata)
    path = tmp_path / f"{name}.h5ad"
    adata.write_h5ad(path)
    return str(path)


def set_x(adata, values):
    adata.X = sp.csr_matrix(values)


BAD_DATA = {
    "log-normalised": (lambda a: set_x(a, np.log1p(a.X.toarray())), "look log-normalised.*--layer"),
    "nan": (lambda a: set_x(a, np.where(a.X.toarray() > 3, np.nan, a.X.toarray())), "NaN"),
    "infinite": (
        lambda a: set_x(a, np.where(a.X.toarray() > 3, np.inf, a.X.toarray())),
        "infinite",
    ),
    "negative": (lambda a: set_x(a, -a.X.toarray()), "negative"),
    "a-fraction": (  # one estimated count among integers: named, not called log-normalised
        lambda a: set_x(a, np.where(np.arange(a.n_vars) == 0, 0.5, a.X.toarray())),
        r"\d+ of its values are not whole numbers \(the first: 0\.5\).*round",
    ),
    "no-labels": (lambda a: a.obs.__setitem__("label", np.nan), "no cell has a label"),
    "single-class": (lambda a: a.obs.__setitem__("label", "B"), "single class"),
}


@pytest.mark.parametrize("name", list(BAD_DATA))
def test_bad_data_gives_one_line_error(name, h5ad, tmp_path, capsys):
    change, pattern = BAD_DATA[name]
    path = write_variant(tmp_path, h5ad, name, change)
    fails_with(
        capsys,
        fit.main,
        ["--adata", path, "--labels-key", "label", "--out", str(tmp_path / "o"), *FAST],
        pattern,
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["log-normalised", "nan", "negative"])
def test_bad_counts_on_disk_give_the_same_error(name, h5ad, tmp_path, capsys):
    """``--backed`` checks the counts (in the pass that finds the empty cells) before training."""
    change, pattern = BAD_DATA[name]
    path = write_variant(tmp_path, h5ad, name, change)
    argv = ["--adata", path, "--labels-key", "label", "--out", str(tmp_path / "o"), *FAST]
    fails_with(capsys, fit.main, [*argv, "--backed"], pattern)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_bad_query_counts_stop_before_training(backed, h5ad, tmp_path, capsys, monkeypatch):
    change, pattern = BAD_DATA["log-normalised"]
    query = write_variant(tmp_path, h5ad, "query", change)
    trained = []
    monkeypatch.setattr(PyroSCVAE, "fit", lambda *a, **k: trained.append(1))
    argv = ["--adata", str(h5ad), "--labels-key", "label", "--query", query]
    argv += ["--out", str(tmp_path / "o"), *FAST] + (["--backed"] if backed else [])
    fails_with(capsys, fit.main, argv, pattern)
    assert not trained and not (tmp_path / "o").exists()


def test_bad_files_keys_and_options(h5ad, tmp_path, capsys):
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"this is not hdf5")
    base = ["--adata", str(h5ad), "--labels-key", "label", "--out", str(tmp_path / "o"), *FAST]
    base += ["--unlabeled-category", "unassigned"]
    cases = [
        (["--adata", str(tmp_path / "missing.h5ad"), "--labels-key", "x"], "file not found"),
        (["--adata", str(garbage), "--labels-key", "x"], "cannot read .* as an .h5ad"),
        (["--adata", str(h5ad)], "--labels-key is required"),
        (["--adata", str(h5ad), "--labels-key", "celltype"], "'celltype' not found.*cell_type"),
        ([*base, "--batch-key", "donor"], "batch column 'donor' not found"),
        ([*base, "--layer", "raw"], "layer 'raw' not found"),
        ([*base, "--epochs", "0"], "--epochs: must be a positive integer"),
        ([*base, "--batch-size", "-5"], "--batch-size: must be a positive integer"),
        ([*base, "--lr", "-1"], "--lr: must be a positive number"),
        ([*base, "--validation-fraction", "1.5"], "--validation-fraction: must be at least 0"),
        ([*base, "--min-confidence", "2"], "--min-confidence: must be between 0 and 1"),
        ([*base, "--device", "tpu"], "--device: invalid choice"),
        ([*base, "--n-top-genes", "lots"], "--n-top-genes: invalid non_negative_int value"),
    ]
    for args, pattern in cases:
        fails_with(capsys, fit.main, args, pattern)
    if not __import__("torch").cuda.is_available():
        fails_with(capsys, fit.main, [*base, "--device", "cuda"], "no CUDA GPU")


def test_query_without_shared_genes_fails_and_keeps_earlier_results(h5ad, tmp_path, capsys):
    from pyro_scvae.folders import write_marker

    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("results of an earlier run")
    write_marker(out, "fit")  # an earlier run's outputs: the only kind --out may replace
    query = write_variant(
        tmp_path,
        h5ad,
        "renamed",
        lambda a: setattr(a, "var_names", [f"other_{g}" for g in a.var_names]),
    )
    fails_with(
        capsys,
        fit.main,
        [
            "--adata",
            str(h5ad),
            "--labels-key",
            "label",
            "--unlabeled-category",
            "unassigned",
            "--query",
            query,
            "--out",
            str(out),
            *FAST,
        ],
        "only 0 of the model's 80 genes",
    )
    assert (out / "earlier.txt").read_text() == "results of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "renamed.h5ad"]  # no debris
    assert sorted(p.name for p in out.iterdir()) == [".pyro_scvae", "earlier.txt"]


def test_interrupted_run_writes_nothing(h5ad, tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    from pyro_scvae import outputs

    monkeypatch.setattr(outputs, "plot_elbo", interrupt)  # interrupt half-way through the writing
    status = fit.main(
        ["--adata", str(h5ad), "--labels-key", "label", "--out", str(tmp_path / "o"), *FAST]
    )
    assert status == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_default_run_on_embedded_data(tmp_path):
    """`python -m pyro_scvae.fit` with no arguments, exactly as `make demo` runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "pyro_scvae.fit"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "700 cells × 765 genes, 10 classes" in result.stdout
    metrics = json.loads((tmp_path / "pyro_scvae_out" / "metrics.json").read_text())
    assert metrics["validation"]["n_cells"] == pytest.approx(0.1 * 700, abs=10)
    assert metrics["validation"]["accuracy"] > 0.7  # logistic regression reaches about 0.84
    assert metrics["temperature"] > 1.0  # the held-out cells calibrated an over-confident model
    assert metrics["epochs_trained"] > metrics["selection"]["best_epoch"] > 0
    for name in ("confusion.png", "risk_coverage.png", "elbo.png", "umap.png"):
        assert (tmp_path / "pyro_scvae_out" / name).stat().st_size > 0
    assert "training (labels held out):" in result.stderr  # the progress bars
    assert "training (all labels):" in result.stderr


def test_bad_option_from_the_shell_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyro_scvae.fit", "--adata", "nowhere.h5ad", "--labels-key", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: file not found: nowhere.h5ad"


def test_novelty_quantile_help_gives_the_package_default():
    from pyro_scvae.novelty import DEFAULT_QUANTILE

    assert f"(default: {DEFAULT_QUANTILE}," in fit.build_parser().format_help().replace("\n", " ")
