"""The command line's habits: --version, clearer option names, placeholder labels, scoring a
labelled query with predict, and fit's account of what it annotated."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from pyro_scvae import PyroSCVAE, __version__, fit, predict
from pyro_scvae.simulate import simulate_counts
from tests.conftest import REPO

FAST = ["--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """200 cells of 3 types, 40 % unlabelled (missing values)."""
    adata = simulate_counts(n_cells=200, n_genes=40, n_classes=3, labelled_fraction=0.6, seed=5)
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_version_answers_at_once_without_heavy_imports(command):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"pyro_scvae.{command}", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"pyro_scvae {__version__}"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {"torch", "scanpy", "pyro", "scvi"} & imported


def test_saved_model_records_the_package_version(cells, tmp_path):
    adata = ad.read_h5ad(cells)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, seed=0).fit(epochs=1, progress=False, validation_fraction=0.0)
    model.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["pyro_scvae_version"] == __version__
    assert PyroSCVAE.load(tmp_path / "model").classes == model.classes


def test_clearer_names_and_their_old_aliases_mean_the_same():
    parser = fit.build_parser()
    new = parser.parse_args(["--class-weight-power", "0.5", "--ddp-devices", "2"])
    old = parser.parse_args(["--balance-classes", "0.5", "--devices", "2"])
    assert new.balance_classes == old.balance_classes == 0.5
    assert new.devices == old.devices == 2
    new = parser.parse_args(["--ddp-accelerator", "cpu", "--ddp-nodes", "3"])
    old = parser.parse_args(["--accelerator", "cpu", "--num-nodes", "3"])
    assert (new.accelerator, new.num_nodes) == (old.accelerator, old.num_nodes) == ("cpu", 3)


@pytest.mark.parametrize("placeholder", ["Unknown", "unassigned", "NA"])
def test_a_placeholder_label_that_becomes_a_type_is_warned_about(placeholder, tmp_path, capsys):
    adata = simulate_counts(n_cells=150, n_genes=30, n_classes=2, labelled_fraction=0.6, seed=2)
    n_placeholder = int(adata.obs["label"].isna().sum())
    adata.obs["label"] = adata.obs["label"].astype(object).fillna(placeholder)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    common = ["--adata", str(path), "--labels-key", "label", *FAST]
    assert fit.main([*common, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert f"the label {placeholder!r} ({n_placeholder} cells) becomes a cell type" in err
    assert f"--unlabeled-category {placeholder!r}" in err
    classes = json.loads((tmp_path / "a" / "model" / "config.json").read_text())["classes"]
    assert placeholder in classes  # as warned: a type of its own

    # Named as "no label", it is not a type, and nothing is said.
    flag = ["--unlabeled-category", placeholder]
    assert fit.main([*common, *flag, "--out", str(tmp_path / "b")]) == 0
    assert "becomes a cell type" not in capsys.readouterr().err
    classes = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["classes"]
    assert classes == ["type_0", "type_1"]


def test_an_empty_label_means_no_label(tmp_path, capsys):
    adata = simulate_counts(n_cells=150, n_genes=30, n_classes=2, labelled_fraction=0.6, seed=2)
    n_missing = int(adata.obs["label"].isna().sum())
    adata.obs["label"] = adata.obs["label"].astype(object).fillna(" ")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    command = ["--adata", str(tmp_path / "cells.h5ad"), "--labels-key", "label", *FAST]
    assert fit.main([*command, "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sum(metrics["annotated"]["unlabelled_cells"].values()) == n_missing
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["classes"] == ["type_0", "type_1"]
    assert n_missing > 0 and "becomes a cell type" not in capsys.readouterr().err


def test_fit_reports_what_it_annotated(cells, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        fit.main(
            ["--adata", str(cells), "--labels-key", "label", "--epochs", "2"]
            + ["--out", str(out), "--min-confidence", "0.9"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    annotated = metrics["annotated"]
    adata = ad.read_h5ad(out / "annotated.h5ad")
    calls = adata.obs["pyro_scvae_prediction"].astype(str)
    unlabelled = adata.obs["label"].isna().to_numpy()
    assert annotated["all_cells"] == calls.value_counts().to_dict()
    assert annotated["unlabelled_cells"] == calls[unlabelled].value_counts().to_dict()
    n = int(unlabelled.sum())
    assert sum(annotated["unlabelled_cells"].values()) == n > 0
    counts = ", ".join(f"{name} {n}" for name, n in annotated["unlabelled_cells"].items())
    assert f"annotated {n} unlabelled cells: {counts}" in printed


def test_predict_scores_a_labelled_query(cells, tmp_path, capsys):
    trained = tmp_path / "trained"
    assert (
        fit.main(["--adata", str(cells), "--labels-key", "label", *FAST, "--out", str(trained)])
        == 0
    )
    query = simulate_counts(n_cells=120, n_genes=40, n_classes=3, labelled_fraction=1.0, seed=5)
    labels = query.obs["cell_type"].astype(object)
    labels.iloc[:30] = "a type the model never saw"
    labels.iloc[30:40] = None  # not scored
    query.obs["truth"] = labels
    query.write_h5ad(tmp_path / "query.h5ad")
    out = tmp_path / "scored"
    command = ["--model", str(trained / "model"), "--adata", str(tmp_path / "query.h5ad")]
    assert predict.main([*command, "--labels-key", "truth", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    table = ad.read_h5ad(out / "annotated.h5ad").obs
    scored = table["truth"].notna()
    right = (table["truth"][scored] == table["pyro_scvae_prediction"].astype(str)[scored]).mean()
    assert metrics["n_cells"] == 110
    assert metrics["accuracy"] == pytest.approx(right)
    assert metrics["accuracy"] <= 80 / 110  # the 30 cells of an unknown type are all wrong
    assert metrics["types_unknown_to_model"] == ["a type the model never saw"]
    assert (out / "confusion.png").stat().st_size > 0
    assert f"accuracy {metrics['accuracy']:.3f}" in printed
    assert "types the model does not know: a type the model never saw" in printed

    # A column that is not there fails at once, in one line, and writes nothing.
    with pytest.raises(SystemExit) as raised:
        raise SystemExit(
            predict.main([*command, "--labels-key", "nope", "--out", str(tmp_path / "x")])
        )
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope' is not a column of obs" in err[0]
    assert not (tmp_path / "x").exists()
    assert np.isfinite(metrics["macro_f1"])
