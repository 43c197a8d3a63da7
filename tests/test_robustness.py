"""Issue 23: every bad input, option and interruption ends cleanly through the real commands.

Each case runs ``pyro_scvae.fit.main`` / ``pyro_scvae.predict.main`` (signals: a real
``python -m pyro_scvae.fit`` process) and checks the exit status, one line on stderr
without a traceback, and that the user's files (an earlier ``--out`` among them) are
exactly as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from anndata.utils import make_index_unique
from conftest import REPO, shared_file
from safetensors.torch import load_file, save_file

from pyro_scvae import (
    InputError,
    PyroSCVAE,
    PyroSCVAEWarning,
    cli,
    fit,
    folders,
    predict,
    preprocess,
    signals,
)
from pyro_scvae.simulate import simulate_counts

FAST = ["--epochs", "2", "--quiet"]


# ---------------------------------------------------------------------- helpers
def run(main, args: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of a command run in this process."""
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


def fails(main, args: list[str], capsys, pattern: str) -> None:
    """Exit 2 and exactly one line, ``error: ...`` matching ``pattern``, no traceback."""
    status, err = run(main, args, capsys)
    assert status == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and re.search(pattern, err[0]), err[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*")):
        found[path.relative_to(folder).as_posix()] = path.read_bytes() if path.is_file() else None
    return found


def earlier_output(folder: Path) -> Path:
    """A folder as an earlier run of pyro_scvae left it (marker included)."""
    folder.mkdir(parents=True)
    (folder / "predictions.csv").write_text("cell,predicted\nc1,T\n")
    folders.write_marker(folder, "fit")
    return folder


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory) -> Path:
    adata = simulate_counts(n_cells=150, n_genes=40, n_classes=3, labelled_fraction=0.6, seed=5)
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained(h5ad, tmp_path_factory) -> Path:
    """The ``--out`` folder of one fit, run with umask 027."""
    out = tmp_path_factory.mktemp("trained") / "out"
    umask = os.umask(0o027)
    try:
        status = fit.main(["--adata", str(h5ad), "--labels-key", "label", "--out", str(out), *FAST])
    finally:
        os.umask(umask)
    assert status == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the data are read or a model trained."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data were read or a model trained")

    monkeypatch.setattr(preprocess, "load_training_data", forbidden)
    monkeypatch.setattr(preprocess, "read_adata", forbidden)
    monkeypatch.setattr(PyroSCVAE, "fit", forbidden)
    monkeypatch.setattr(PyroSCVAE, "load", forbidden)


# ---------------------------------------------------------------------- 1, 4: --out
OUT_CASES = {
    "dot": (lambda d: ".", "is the working directory"),
    "empty-text": (lambda d: "", "--out is empty"),
    "parent-of-cwd": (lambda d: "..", "a parent of the working directory"),
    "root": (lambda d: "/", "is a parent of the working directory|root"),
    "home": (lambda d: "~", "is the home folder"),
    "holds-the-input": (lambda d: str(d / "data"), "contains the input"),
    "is-the-input": (lambda d: str(d / "data" / "cells.h5ad"), "contains the input"),
    "not-ours": (lambda d: str(d / "mine"), "not written by pyro_scvae"),
    "ours-with-a-user-file": (lambda d: str(d / "old"), r"did not write \(notes.txt\)"),
    "a-file": (lambda d: str(d / "notes.txt"), "is a file, not a folder"),
    "under-a-file": (lambda d: str(d / "notes.txt" / "out"), "lies under .*notes.txt"),
    "under-proc": (lambda d: "/proc/pyro_scvae_out", "system file system"),
    "under-sys": (lambda d: "/sys/out", "system file system"),
}


@pytest.fixture
def user_folder(h5ad, tmp_path, monkeypatch) -> Path:
    """A working directory (and home) with the user's own files in it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").mkdir()
    shutil.copy(h5ad, work / "data" / "cells.h5ad")
    (work / "notes.txt").write_text("my notes")
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("chapter 1")
    old = earlier_output(work / "old")
    (old / "notes.txt").write_text("a note of mine beside an earlier output")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    return work


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_fit_refuses_an_out_that_could_lose_files(case, user_folder, capsys, no_work):
    out, pattern = OUT_CASES[case]
    if case == "home":
        os.chdir(user_folder / "mine")  # home is then not the working directory
    before = snapshot(user_folder)
    args = ["--adata", str(user_folder / "data" / "cells.h5ad"), "--labels-key", "label", *FAST]
    fails(fit.main, [*args, "--out", out(user_folder)], capsys, pattern)
    assert snapshot(user_folder) == before


def test_predict_refuses_the_model_folder_and_a_folder_holding_it(trained, h5ad, capsys, no_work):
    before = snapshot(trained)
    args = ["--model", str(trained / "model"), "--adata", str(h5ad), "--quiet"]
    fails(predict.main, [*args, "--out", str(trained / "model")], capsys, "contains the input")
    fails(predict.main, [*args, "--out", str(trained)], capsys, "contains the input .*model")
    fails(predict.main, [*args, "--out", str(h5ad.parent)], capsys, "contains the input")
    assert snapshot(trained) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_found_first(h5ad, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = ["--adata", str(h5ad), "--labels-key", "label", "--out", str(locked / "out"), *FAST]
    fails(fit.main, args, capsys, "no permission to write")


def test_outputs_carry_the_marker_and_follow_the_umask(trained):
    marker = json.loads((trained / folders.MARKER).read_text())
    assert marker["command"] == "fit"
    assert set(marker["written"]) == set(folders.entries(trained)) - {folders.MARKER}
    assert {"predictions.csv", "model/weights.safetensors", "umap.png"} <= set(marker["written"])
    assert folders.read_marker(trained / "model") == [
        "config.json",
        "weights.safetensors",
    ]
    for path in [trained, trained / "model"]:
        assert path.stat().st_mode & 0o777 == 0o750  # umask 027
    for name in ["model/weights.safetensors", "model/config.json", "predictions.csv"]:
        assert (trained / name).stat().st_mode & 0o777 == 0o640
    assert not list(trained.parent.glob(".*"))  # no partial or previous folder left


def test_an_own_or_empty_folder_is_replaced(h5ad, trained, tmp_path, capsys):
    own = tmp_path / "own"
    shutil.copytree(trained, own)
    (tmp_path / "empty").mkdir()
    for out in (own, tmp_path / "empty"):
        args = ["--model", str(trained / "model"), "--adata", str(h5ad), "--quiet"]
        assert predict.main([*args, "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            folders.MARKER,
            "annotated.h5ad",
            "predictions.csv",
        ]
        assert folders.read_marker(out) == ["annotated.h5ad", "predictions.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "own"]  # nothing left over


def test_save_replaces_only_a_model_folder_of_its_own(trained, tmp_path):
    model = PyroSCVAE.load(trained / "model")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.csv").write_text("1,2")
    with pytest.raises(InputError, match="not written by pyro_scvae"):
        model.save(theirs, overwrite=True)
    assert (theirs / "data.csv").read_text() == "1,2"
    with pytest.raises(InputError, match="not empty; pass overwrite=True"):
        model.save(trained / "model")
    copy = tmp_path / "copy"
    shutil.copytree(trained / "model", copy)
    model.save(copy, overwrite=True)
    assert load_file(copy / "weights.safetensors").keys() == model.module.state_dict().keys()
    (copy / "extra.txt").write_text("mine")
    with pytest.raises(InputError, match=r"did not write \(extra.txt\)"):
        model.save(copy, overwrite=True)


# ---------------------------------------------------------------------- 2: duplicate names
@pytest.fixture(scope="module")
def duplicated(tmp_path_factory) -> Path:
    """400 cells, every fifth named as the one before it; two genes share a name."""
    adata = simulate_counts(n_cells=400, n_genes=40, n_classes=3, labelled_fraction=0.6, seed=8)
    genes = list(adata.var_names)
    genes[7] = genes[3]
    path = tmp_path_factory.mktemp("dup") / "dup.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own notes on the repeated names
        adata.obs_names = [f"cell{i - (i % 5 == 4)}" for i in range(400)]
        adata.var_names = genes
        adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_duplicate_names_give_one_row_per_cell_and_agree_with_predict(
    backed, duplicated, tmp_path, capsys
):
    flag = ["--backed"] if backed else []
    out = tmp_path / "fit"
    args = ["--adata", str(duplicated), "--labels-key", "label", "--n-top-genes", "0"]
    status, err = run(fit.main, [*args, "--out", str(out), *FAST, *flag], capsys)
    assert status == 0, err
    assert len(err) == 2 and all(line.startswith("warning: ") for line in err), err
    assert "80 cell names (obs_names) repeat" in err[0] and "obs_names_make_unique" in err[0]
    assert "1 gene names (var_names)" in err[1] and "var_names_make_unique" in err[1]
    expected = make_index_unique(pd.Index([f"cell{i - (i % 5 == 4)}" for i in range(400)]))
    fitted = pd.read_csv(out / "predictions.csv", index_col="cell")
    assert list(fitted.index) == list(expected)  # one row per cell, in order
    model_genes = json.loads((out / "model" / "config.json").read_text())["genes"]
    assert len(set(model_genes)) == 40
    for predict_flag in ([], ["--backed"]):
        again = tmp_path / f"predict{len(predict_flag)}"
        args = ["--model", str(out / "model"), "--adata", str(duplicated), "--out", str(again)]
        assert predict.main([*args, "--quiet", *predict_flag]) == 0
        predicted = pd.read_csv(again / "predictions.csv", index_col="cell")
        pd.testing.assert_index_equal(predicted.index, fitted.index)
        assert (predicted["predicted"] == fitted["predicted"]).all()
        numbers = fitted.select_dtypes("number").columns  # confidence, prob:<class>, ...
        np.testing.assert_allclose(predicted[numbers], fitted[numbers], rtol=1e-4, atol=1e-6)
    capsys.readouterr()


# ---------------------------------------------------------------------- 3: model folders
def _config(change):
    def apply(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        change(config)
        (model / "config.json").write_text(json.dumps(config))

    return apply


def _weights(change):
    def apply(model: Path) -> None:
        state = load_file(model / "weights.safetensors")
        change(state)
        save_file(state, model / "weights.safetensors")

    return apply


def _first_tensor(state):
    return sorted(state)[0]


MODEL_DAMAGE = {
    "weights-truncated": (
        lambda m: (m / "weights.safetensors").write_bytes(
            (m / "weights.safetensors").read_bytes()[:5000]
        ),
        "weights.safetensors cannot be read as safetensors",
    ),
    "weights-garbage": (
        lambda m: (m / "weights.safetensors").write_bytes(b"\x00garbage" * 100),
        "weights.safetensors cannot be read as safetensors",
    ),
    "weights-a-pickle": (
        lambda m: torch.save({"a": torch.zeros(2)}, m / "weights.safetensors"),
        "weights.safetensors cannot be read as safetensors",
    ),
    "weights-missing": (
        lambda m: (m / "weights.safetensors").unlink(),
        "weights.safetensors is missing",
    ),
    "config-missing": (lambda m: (m / "config.json").unlink(), "config.json is missing"),
    "config-invalid-json": (
        lambda m: (m / "config.json").write_text('{"model": {'),
        "config.json is not valid JSON",
    ),
    "config-a-list": (
        lambda m: (m / "config.json").write_text("[1, 2]"),
        "config.json holds a list",
    ),
    "config-missing-key": (_config(lambda c: c.pop("genes")), "config.json: missing 'genes'"),
    "config-unknown-key": (
        _config(lambda c: c.__setitem__("surprise", 1)),
        "config.json: unknown 'surprise'",
    ),
    "model-unknown-setting": (
        _config(lambda c: c["model"].__setitem__("n_heads", 4)),
        "config.json: 'model' has unknown 'n_heads'",
    ),
    "model-missing-setting": (
        _config(lambda c: c["model"].pop("n_genes")),
        "config.json: 'model' has missing 'n_genes'",
    ),
    "wrong-n-genes": (
        _config(lambda c: c["model"].__setitem__("n_genes", 41)),
        "config.json: 'genes' lists 40 names but n_genes is 41",
    ),
    "wrong-n-genes-and-genes": (
        _config(lambda c: (c["model"].__setitem__("n_genes", 41), c["genes"].append("extra"))),
        "weights.safetensors: tensor .* has shape .*40.*config.json needs .*41",
    ),
    "genes-too-short": (
        _config(lambda c: c["genes"].pop()),
        "'genes' lists 39 names but n_genes is 40",
    ),
    "classes-too-long": (
        _config(lambda c: c["classes"].append("type_9")),
        "'classes' lists 4 names but n_classes is 3",
    ),
    "bad-n-hidden": (
        _config(lambda c: c["model"].__setitem__("n_hidden", -3)),
        "model setting n_hidden must be an integer",
    ),
    "training-unknown-setting": (
        _config(lambda c: c["training"].__setitem__("warp", True)),
        "config.json: 'training' has unknown 'warp'",
    ),
    "setup-wrong": (
        _config(lambda c: c.__setitem__("setup", {"labels_key": "x"})),
        "'setup' must have exactly the keys",
    ),
    "tensor-missing": (
        _weights(lambda s: s.pop(_first_tensor(s))),
        "weights.safetensors lacks '",
    ),
    "tensor-extra": (
        _weights(lambda s: s.__setitem__("extra.weight", torch.zeros(3))),
        "weights.safetensors has unknown 'extra.weight'",
    ),
    "tensor-nan": (
        _weights(lambda s: s["log_theta"].fill_(float("nan"))),
        "tensor log_theta holds NaN",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_a_malformed_model_folder_is_one_line_naming_the_file(
    case, trained, h5ad, tmp_path, capsys
):
    damage, pattern = MODEL_DAMAGE[case]
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    damage(model)
    args = ["--model", str(model), "--adata", str(h5ad), "--out", str(tmp_path / "p"), "--quiet"]
    fails(predict.main, args, capsys, pattern)
    with pytest.raises(InputError, match=pattern):
        PyroSCVAE.load(model)
    assert not (tmp_path / "p").exists()


def test_a_missing_model_folder(h5ad, tmp_path, capsys):
    args = [
        "--model",
        str(tmp_path / "nowhere"),
        "--adata",
        str(h5ad),
        "--out",
        str(tmp_path / "p"),
    ]
    fails(predict.main, args, capsys, "model folder not found")


# ---------------------------------------------------------------------- 6: valid data
@pytest.fixture(scope="module")
def pbmc_subset():
    """400 random cells of symphony_pbmc_3chem, on which seurat_v3's loess is singular."""
    adata = ad.read_h5ad(shared_file("symphony_pbmc_3chem.h5ad"))
    cells = np.random.default_rng(0).choice(adata.n_obs, 400, replace=False)
    return adata[np.sort(cells)].copy()


def test_singular_loess_falls_back_to_a_wider_span(pbmc_subset, tmp_path):
    with pytest.raises(ValueError, match="reciprocal condition number"):
        sc.pp.highly_variable_genes(pbmc_subset, n_top_genes=1000, flavor="seurat_v3")
    with pytest.warns(PyroSCVAEWarning, match="chosen with span 0.5"):
        chosen = preprocess.select_genes(pbmc_subset, 1000, None)
    expected = sc.pp.highly_variable_genes(
        pbmc_subset, n_top_genes=1000, flavor="seurat_v3", span=0.5, inplace=False
    )
    assert list(chosen.var_names) == list(pbmc_subset.var_names[expected["highly_variable"]])
    path = tmp_path / "subset.h5ad"
    pbmc_subset.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.warns(PyroSCVAEWarning, match="chosen with span 0.5"):
        view = preprocess.backed_training_subset(backed, 1000, np.ones(400, dtype=bool))
    assert list(view.var_names) == list(chosen.var_names)  # the chunked seurat_v3 agrees


def test_loess_failing_at_every_span_is_an_input_error():
    def singular(span):
        raise ValueError("reciprocal condition number 1e-16")

    with pytest.raises(InputError, match="pass --n-top-genes 0"):
        preprocess.with_wider_spans(singular, 100)


def test_too_few_cells_for_a_umap(tmp_path, capsys):
    adata = simulate_counts(n_cells=6, n_genes=30, n_classes=2, labelled_fraction=1.0, seed=2)
    adata.obs["label"] = ["type_0", "type_1"] * 3
    path = tmp_path / "six.h5ad"
    adata.write_h5ad(path)
    args = ["--adata", str(path), "--labels-key", "label", "--validation-fraction", "0"]
    status, err = run(fit.main, [*args, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert status == 0, err
    assert err == [
        "warning: ppc.png is not drawn: 6 cells are too few for a posterior predictive check "
        "(it needs at least 10)",
        "warning: umap.png is not drawn: 6 cells are too few for a UMAP (it needs at least 10)",
    ]
    assert (tmp_path / "o" / "predictions.csv").exists() and not (
        tmp_path / "o" / "umap.png"
    ).exists()


# ---------------------------------------------------------------------- 7, 8: options, batches
@pytest.mark.parametrize(
    "option, value, pattern",
    [
        ("--seed", "-1", "--seed: must be 0 or a positive integer"),
        ("--seed", "18446744073709551616", "--seed: must be at most 4294967295"),
        ("--epochs", "1" + "0" * 30, "--epochs: must be at most 100000"),
        ("--epochs", "1e30", "--epochs: invalid positive_int value"),
        ("--n-hidden", "1000000000000", "--n-hidden: must be at most 16384"),
        ("--n-latent", "0", "--n-latent: must be a positive integer"),
        ("--n-layers", "100", "--n-layers: must be at most 32"),
        ("--patience", "0", "--patience: must be a positive integer"),
        ("--devices", "0", "--devices: must be a positive integer"),
        ("--batch-size", "0", "--batch-size: must be a positive integer"),
        ("--n-top-genes", "-2", "--n-top-genes: must be 0 or a positive integer"),
    ],
)
def test_option_bounds_before_the_data(option, value, pattern, h5ad, tmp_path, capsys, no_work):
    args = ["--adata", str(h5ad), "--labels-key", "label", "--out", str(tmp_path / "o")]
    fails(fit.main, [*args, option, value], capsys, pattern)


def test_a_folder_as_adata(tmp_path, capsys):
    args = ["--adata", str(tmp_path), "--labels-key", "label", "--out", str(tmp_path / "o")]
    fails(fit.main, args, capsys, "is a folder, not an .h5ad file")


def test_missing_batch_values_form_a_batch_of_their_own():
    adata = simulate_counts(n_cells=60, n_genes=20, n_classes=2, labelled_fraction=0.5, n_batches=2)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()  # no warning on empty cells
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[:7, adata.obs.columns.get_loc("batch")] = np.nan
    PyroSCVAE.setup_anndata(adata, "label", batch_key="batch")
    with pytest.warns(PyroSCVAEWarning, match="7 cells have no value in obs\\['batch'\\]"):
        model = PyroSCVAE(adata)
    assert model.batch_categories == ["batch_0", "batch_1", "nan"]
    codes = model.data.batches
    assert (codes[:7] == 2).all() and (codes[7:] < 2).all()
    new = adata[:10].copy()
    assert (model._batch_codes(new)[:7] == 2).all()  # the same batch in new data
    without = adata[7:].copy()
    PyroSCVAE.setup_anndata(without, "label", batch_key="batch")
    trained_without = PyroSCVAE(without)
    with pytest.warns(
        PyroSCVAEWarning, match="7 cells belong to batches .*7 of them have no batch value"
    ):
        trained_without._batch_codes(adata)


def test_a_batch_column_of_a_few_cells_per_value_is_questioned():
    adata = simulate_counts(n_cells=60, n_genes=20, n_classes=2, labelled_fraction=0.5, n_batches=2)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()  # no warning on empty cells
    adata.obs["barcode"] = adata.obs_names.astype(str)  # one value per cell
    PyroSCVAE.setup_anndata(adata, "label", batch_key="barcode")
    pattern = (
        f"obs\\['barcode'\\] has {adata.n_obs} batches .*median 1 cells per batch.*batch column"
    )
    with pytest.warns(PyroSCVAEWarning, match=pattern):
        PyroSCVAE(adata)
    PyroSCVAE.setup_anndata(adata, "label", batch_key="batch")  # 2 batches of ~30: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PyroSCVAE(adata)


# ---------------------------------------------------------------------- 5: signals
def start_fit(args: list[str], cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """``python -m pyro_scvae.fit`` in a process; its stderr is collected line by line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_scvae.fit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=heed_sigint,  # pytest may run as a background job, which ignores SIGINT
    )
    lines: list[str] = []

    def read():
        with process.stderr:
            for line in process.stderr:
                lines.extend(line.replace("\r", "\n").splitlines())

    process.reader = threading.Thread(target=read, daemon=True)
    process.reader.start()
    return process, lines


def heed_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_heeded():
    """SIGINT not ignored in this process (as it is in a job started with ``&``)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    start = time.monotonic()
    while not condition():
        assert process.poll() is None, "the run ended before the moment to interrupt it"
        assert time.monotonic() - start < timeout
        time.sleep(0.02)


def interrupted_cleanly(process, lines, signum, workdir: Path, before: dict) -> None:
    status = process.wait(timeout=120)
    process.reader.join(timeout=10)  # the last lines
    assert status == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], lines[-5:]
    assert not any("Traceback" in line or "Exception ignored" in line for line in lines), lines
    name = signal.Signals(signum).name
    assert (
        lines[-1]
        == f"interrupted ({name}): nothing was written, an earlier output folder is unchanged"
    )
    assert snapshot(workdir) == before  # the earlier --out intact, no partial folder left


@pytest.fixture
def signal_folder(h5ad, tmp_path) -> tuple[Path, dict]:
    shutil.copy(h5ad, tmp_path / "cells.h5ad")
    earlier_output(tmp_path / "o")
    return tmp_path, snapshot(tmp_path)


ARGS = ["--adata", "cells.h5ad", "--labels-key", "label", "--out", "o"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_imports(signum, signal_folder):
    workdir, before = signal_folder
    process, lines = start_fit([*ARGS, *FAST], workdir)
    time.sleep(1.5)  # past Python's own start; torch and scanpy are being imported
    process.send_signal(signum)
    interrupted_cleanly(process, lines, signum, workdir, before)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_training(signum, signal_folder):
    workdir, before = signal_folder
    process, lines = start_fit([*ARGS, "--epochs", "400"], workdir)
    wait_for(lambda: any("training" in line for line in lines), process)
    time.sleep(0.5)
    process.send_signal(signum)
    interrupted_cleanly(process, lines, signum, workdir, before)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, moment",
    [(signal.SIGTERM, "predictions.csv"), (signal.SIGINT, "risk_coverage.png")],
    ids=["SIGTERM-writing", "SIGINT-umap"],
)
def test_signal_while_the_outputs_are_written(signum, moment, signal_folder):
    """SIGTERM as the first files appear; SIGINT during the UMAP (numba once swallowed it)."""
    workdir, before = signal_folder
    process, lines = start_fit([*ARGS, *FAST], workdir)
    wait_for(lambda: any(workdir.glob(f".o.partial-*/{moment}")), process)
    process.send_signal(signum)
    interrupted_cleanly(process, lines, signum, workdir, before)


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_swallowed_interruption_still_stops_the_swap(tmp_path, sigint_heeded):
    """Ctrl-C caught by third-party code (as numba did in the UMAP): --out is not replaced."""
    out = earlier_output(tmp_path / "o")
    before = snapshot(tmp_path)
    with signals.handled():
        with pytest.raises(KeyboardInterrupt):
            with folders.atomic_output_dir(out) as staging:
                (staging / "predictions.csv").write_text("new")
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)  # the handler runs here
                except KeyboardInterrupt:
                    pass  # swallowed
    assert snapshot(tmp_path) == before


def test_a_signal_during_the_swap_waits_for_it(tmp_path, monkeypatch, capsys):
    """SIGTERM between the two renames: the new folder is put in place, then the run stops."""
    out = earlier_output(tmp_path / "o")
    swap_in = folders.swap_in

    def interrupted_swap(staging, target, outermost=True):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here and only notes the signal
        swap_in(staging, target, outermost)

    monkeypatch.setattr(folders, "swap_in", interrupted_swap)

    def work():
        with folders.atomic_output_dir(out) as staging:
            (staging / "predictions.csv").write_text("new")

    assert cli.run_cli(work) == 143
    assert (
        capsys.readouterr().err
        == f"interrupted (SIGTERM) after the outputs were written to {out}/\n"
    )
    assert (out / "predictions.csv").read_text() == "new"
    assert folders.read_marker(out) == ["predictions.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # the earlier folder is gone


@pytest.mark.slow
def test_fit_on_the_real_subset_where_loess_fails(pbmc_subset, tmp_path, capsys):
    path = tmp_path / "subset.h5ad"
    pbmc_subset.write_h5ad(path)
    args = ["--adata", str(path), "--labels-key", "cell_type", "--n-top-genes", "1000"]
    args += ["--marker-share", "0"]  # the 1000 variable genes only
    status, err = run(fit.main, [*args, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert status == 0, err
    assert err == [
        "warning: scanpy's seurat_v3 trend (loess, span 0.3) cannot be fitted on these cells; "
        "the 1000 highly variable genes were chosen with span 0.5"
    ]
    config = json.loads((tmp_path / "o" / "model" / "config.json").read_text())
    assert config["model"]["n_genes"] == 1000


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--seed", "-1"], "--seed: must be 0 or a positive integer"),
        (["--out", "."], "is the working directory"),
        (["--epochs", "1000000"], "--epochs: must be at most 100000"),
    ],
)
def test_option_and_out_errors_come_before_torch_is_imported(args, pattern, tmp_path):
    program = (
        "import sys\nfrom pyro_scvae import fit\n"
        "try:\n    status = fit.main(sys.argv[1:])\nexcept SystemExit as exit_:\n"
        "    status = exit_.code\nprint(status, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["2", "False"], result  # exit 2, torch not loaded
    assert re.search(pattern, result.stderr) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
