"""Annotation methods under one signature.

Every method is a function ``fit_predict(adata, seed, *, epochs=None) -> (proba, info)``:

``adata``
    A task's raw counts with ``obs['label']`` and ``obs['is_query']`` (and maybe
    ``obs['batch']``). A method may read ``label`` for training cells only.
``seed``
    Seed of every random choice of the method.
``epochs``
    Training epochs of the neural methods; ``None`` keeps the method's own default. The
    other methods ignore it.

``proba`` is a cells x classes :class:`pandas.DataFrame` of predicted probabilities for the
query cells (index = their ``obs_names``); ``info`` holds ``train_s`` (wall seconds from
raw counts to a fitted model, preprocessing included), ``predict_s`` (wall seconds from
fitted model and raw query counts to probabilities) and settings worth recording.

Query cells are present, unlabelled, during training for every method that can use
unlabelled cells: SCANVI (both variants) and pyro_scvae train on them, kNN computes its PCA
on all cells. Logistic regression and CellTypist are purely supervised.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

Info = dict[str, object]
MethodResult = tuple[pd.DataFrame, Info]
Method = Callable[..., MethodResult]

#: Unlabelled category of SCANVI; must not collide with a real label (T3 has "Unknown").
UNLABELLED = "__unlabelled__"
#: Training-label column handed to the semi-supervised models.
TRAIN_LABEL_KEY = "label_for_training"
#: Environment variable naming where the neural methods train: ``cpu`` (default) or ``gpu``.
#: ``benchmarks/run.py --accelerator`` sets it; the child processes inherit it.
ACCELERATOR_ENV = "PYRO_SCVAE_BENCHMARK_ACCELERATOR"


def accelerator() -> str:
    """Where SCANVI and pyro_scvae train in this benchmark: ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    str
        The value of :data:`ACCELERATOR_ENV`, ``"cpu"`` when unset.
    """
    return os.environ.get(ACCELERATOR_ENV, "cpu")


def pyro_device() -> str:
    """pyro_scvae's ``device`` argument matching :func:`accelerator`.

    Returns
    -------
    str
        ``"cuda"`` for the GPU, else ``"cpu"``.
    """
    return "cuda" if accelerator() == "gpu" else "cpu"


def _split(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    is_query = adata.obs["is_query"].to_numpy(dtype=bool)
    return ~is_query, is_query


def _batch_key(adata: ad.AnnData) -> str | None:
    return "batch" if "batch" in adata.obs else None


def log_cp10k(adata: ad.AnnData) -> ad.AnnData:
    """Return ``log1p`` of counts scaled to 10,000 per cell (a new AnnData).

    Parameters
    ----------
    adata
        Raw counts.

    Returns
    -------
    anndata.AnnData
        A copy whose ``.X`` is ``log1p(counts / total * 1e4)``.
    """
    import scanpy as sc

    out = ad.AnnData(X=adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


@contextmanager
def _timer(info: Info, key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    info[key] = time.perf_counter() - start


def quiet_scvi(seed: int) -> None:
    """Seed scvi-tools and silence its and Lightning's logging.

    Parameters
    ----------
    seed
        Seed for ``scvi.settings.seed`` (Python, NumPy and torch).
    """
    import scvi

    scvi.settings.verbosity = logging.WARNING
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="scvi")
    scvi.settings.seed = seed


def _scvi_train_kwargs(max_epochs: int | None, n_cells: int) -> dict[str, object]:
    """Keyword arguments of scvi's ``train``; ``max_epochs == -1`` means pyro_scvae's default."""
    if max_epochs == -1:
        from pyro_scvae.api import default_epochs

        max_epochs = default_epochs(n_cells)
    return {"max_epochs": max_epochs, "accelerator": accelerator(), "enable_progress_bar": False}


def with_training_labels(adata: ad.AnnData, unlabelled: object) -> ad.AnnData:
    """Copy ``adata`` adding ``obs[TRAIN_LABEL_KEY]``: the label, hidden for query cells.

    Parameters
    ----------
    adata
        A task's cells.
    unlabelled
        Value standing for "no label" (NaN for pyro_scvae, :data:`UNLABELLED` for SCANVI).

    Returns
    -------
    anndata.AnnData
        The copy.
    """
    out = adata.copy()
    labels = out.obs["label"].astype(object).to_numpy().copy()
    labels[out.obs["is_query"].to_numpy(dtype=bool)] = unlabelled
    out.obs[TRAIN_LABEL_KEY] = labels
    return out


def fit_predict_logreg(adata: ad.AnnData, seed: int, *, epochs: int | None = None) -> MethodResult:
    """Logistic regression on log-CP10k counts (scikit-learn, ``max_iter=1000``).

    Parameters
    ----------
    adata, seed, epochs
        See the module docstring; ``epochs`` is ignored.

    Returns
    -------
    tuple
        Query-cell probabilities (``predict_proba``) and timings.
    """
    train, query = _split(adata)
    info: Info = {"model": "LogisticRegression(max_iter=1000)"}
    with _timer(info, "train_s"):
        x_train = log_cp10k(adata[train]).X
        model = LogisticRegression(max_iter=1000, random_state=seed)
        model.fit(x_train, adata.obs["label"].to_numpy()[train])
    with _timer(info, "predict_s"):
        proba = model.predict_proba(log_cp10k(adata[query]).X)
    return pd.DataFrame(proba, index=adata.obs_names[query], columns=model.classes_), info


def fit_predict_knn(
    adata: ad.AnnData,
    seed: int,
    *,
    epochs: int | None = None,
    n_comps: int = 50,
    n_neighbors: int = 15,
) -> MethodResult:
    """k-nearest-neighbour vote on a PCA of log-CP10k counts.

    The PCA (scanpy, ``n_comps`` components, unscaled log-CP10k) is computed on all cells,
    query cells included (they are present without labels); the classifier votes among the
    ``n_neighbors`` nearest training cells, Euclidean in PC space.

    Parameters
    ----------
    adata, seed, epochs
        See the module docstring; ``epochs`` is ignored.
    n_comps
        Principal components (capped by the data's size).
    n_neighbors
        Neighbours that vote.

    Returns
    -------
    tuple
        Query-cell probabilities (vote fractions) and timings.
    """
    import scanpy as sc
    from sklearn.neighbors import KNeighborsClassifier

    train, query = _split(adata)
    n_comps = min(n_comps, adata.n_obs - 1, adata.n_vars - 1)
    info: Info = {"n_comps": n_comps, "n_neighbors": n_neighbors}
    with _timer(info, "train_s"):
        normed = log_cp10k(adata)
        sc.pp.pca(normed, n_comps=n_comps, random_state=seed)
        pcs = normed.obsm["X_pca"]
        model = KNeighborsClassifier(n_neighbors=min(n_neighbors, int(train.sum())))
        model.fit(pcs[train], adata.obs["label"].to_numpy()[train])
    with _timer(info, "predict_s"):
        proba = model.predict_proba(pcs[query])
    return pd.DataFrame(proba, index=adata.obs_names[query], columns=model.classes_), info


class OvRLogisticRegression(LogisticRegression):
    """``LogisticRegression(multi_class="ovr")``, which scikit-learn 1.8 removed.

    CellTypist 1.7.1 (the newest release) trains ``LogisticRegression(..., multi_class="ovr")``,
    which scikit-learn >= 1.8 rejects. This stand-in fits that same model, one binary
    logistic regression per class against the rest
    (:class:`~sklearn.multiclass.OneVsRestClassifier`), and stacks their coefficients, so
    ``decision_function``, ``coef_``, ``intercept_`` and ``classes_`` behave as CellTypist
    expects.

    Parameters
    ----------
    multi_class
        Must be ``"ovr"``.
    C, solver, max_iter, n_jobs
        As in :class:`~sklearn.linear_model.LogisticRegression`.
    """

    def __init__(
        self,
        *,
        multi_class: str = "ovr",
        C: float = 1.0,  # noqa: N803 (scikit-learn's name)
        solver: str = "lbfgs",
        max_iter: int = 100,
        n_jobs: int | None = None,
    ) -> None:
        super().__init__(C=C, solver=solver, max_iter=max_iter, n_jobs=n_jobs)
        self.multi_class = multi_class

    def fit(self, X: object, y: object) -> OvRLogisticRegression:  # noqa: N803
        """Fit one binary logistic regression per class.

        Parameters
        ----------
        X
            Cells x features.
        y
            Labels.

        Returns
        -------
        OvRLogisticRegression
            The fitted model.
        """
        if self.multi_class != "ovr":
            raise ValueError(f"only multi_class='ovr' is supported, not {self.multi_class!r}")
        binary = LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter)
        ovr = OneVsRestClassifier(binary, n_jobs=self.n_jobs).fit(X, y)
        self.classes_ = ovr.classes_
        self.coef_ = np.vstack([e.coef_ for e in ovr.estimators_])
        self.intercept_ = np.concatenate([e.intercept_ for e in ovr.estimators_])
        self.n_features_in_ = ovr.n_features_in_
        self.n_iter_ = np.concatenate([e.n_iter_ for e in ovr.estimators_])
        return self


@contextmanager
def _celltypist_compatible() -> Iterator[None]:
    """Let CellTypist's default training run on scikit-learn without ``multi_class``."""
    module = importlib.import_module("celltypist.train")
    if "multi_class" in inspect.signature(LogisticRegression).parameters:
        yield
        return
    module.LogisticRegression = OvRLogisticRegression
    try:
        yield
    finally:
        module.LogisticRegression = LogisticRegression


@contextmanager
def _no_celltypist_downloads() -> Iterator[None]:
    """Make every CellTypist download function raise while the block runs."""
    from celltypist import models

    names = ("download_if_required", "download_models", "download_model_index")
    saved = {name: getattr(models, name) for name in names}

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the benchmark forbids CellTypist downloads")

    try:
        for name in names:
            setattr(models, name, refuse)
        yield
    finally:
        for name, function in saved.items():
            setattr(models, name, function)


def fit_predict_celltypist(
    adata: ad.AnnData, seed: int, *, epochs: int | None = None
) -> MethodResult:
    """CellTypist with its default training, on log1p CP10k training cells.

    ``celltypist.train`` with default settings (scaled features, sklearn logistic
    regression), then ``celltypist.annotate`` without majority voting. The probabilities are
    CellTypist's own ``probability_matrix``: the sigmoid of each class's decision score, so
    its rows need not sum to one; the confidence of a cell is its largest entry, as in
    CellTypist's ``conf_score``. Nothing is downloaded (the download functions are disabled
    while it runs).

    Parameters
    ----------
    adata, seed, epochs
        See the module docstring; ``epochs`` is ignored.

    Returns
    -------
    tuple
        Query-cell probability matrix and timings.
    """
    import celltypist

    logging.getLogger("celltypist").setLevel(logging.ERROR)
    train, query = _split(adata)
    info: Info = {"model": "celltypist.train defaults; annotate(majority_voting=False)"}
    with _no_celltypist_downloads(), _celltypist_compatible():
        with _timer(info, "train_s"):
            model = celltypist.train(
                log_cp10k(adata[train]), labels=adata.obs["label"].to_numpy()[train]
            )
        with _timer(info, "predict_s"):
            result = celltypist.annotate(
                log_cp10k(adata[query]), model=model, majority_voting=False
            )
    proba = result.probability_matrix.loc[adata.obs_names[query]]
    return proba, info


def _scanvi_data(adata: ad.AnnData, seed: int) -> tuple[ad.AnnData, np.ndarray]:
    """What both SCANVI variants start from: scvi-tools seeded and quiet (:func:`quiet_scvi`),
    a copy of ``adata`` whose query cells have the :data:`UNLABELLED` training label, and
    the boolean mask of its query cells.
    """
    quiet_scvi(seed)
    data = with_training_labels(adata, UNLABELLED)
    _, query = _split(data)
    return data, query


def fit_predict_scanvi_recipe(
    adata: ad.AnnData,
    seed: int,
    *,
    epochs: int | None = None,
    scanvi_epochs: int | None = None,
) -> MethodResult:
    """scvi-tools' documented recipe: train SCVI, then ``SCANVI.from_scvi_model``.

    Default architecture (``n_hidden=128, n_latent=10, n_layers=1``) and scvi's own epoch
    heuristics: SCVI ``min(400, round(20000 / n_cells * 400))`` epochs; SCANVI fine-tuning
    ``min(10, max(2, round(that / 3)))`` epochs. Query cells take part as the unlabelled
    category; ``batch`` is the batch key where the task has one.

    Parameters
    ----------
    adata, seed
        See the module docstring.
    epochs
        SCVI epochs (``None``: scvi's heuristic).
    scanvi_epochs
        SCANVI fine-tuning epochs (``None``: scvi's heuristic for a pretrained model).

    Returns
    -------
    tuple
        Query-cell probabilities of ``predict(soft=True)`` and timings.
    """
    import scvi

    data, query = _scanvi_data(adata, seed)
    info: Info = {"scvi_epochs": epochs, "scanvi_epochs": scanvi_epochs}
    with _timer(info, "train_s"):
        scvi.model.SCVI.setup_anndata(data, batch_key=_batch_key(data))
        vae = scvi.model.SCVI(data)
        vae.train(**_scvi_train_kwargs(epochs, data.n_obs))
        model = scvi.model.SCANVI.from_scvi_model(
            vae, unlabeled_category=UNLABELLED, labels_key=TRAIN_LABEL_KEY
        )
        model.train(**_scvi_train_kwargs(scanvi_epochs, data.n_obs))
    info["scvi_epochs"] = int(vae.history["elbo_train"].shape[0])
    info["scanvi_epochs"] = int(model.history["elbo_train"].shape[0])
    with _timer(info, "predict_s"):
        proba = model.predict(indices=np.flatnonzero(query), soft=True)
    return proba, info


def fit_predict_scanvi_direct(
    adata: ad.AnnData, seed: int, *, epochs: int | None = None
) -> MethodResult:
    """SCANVI trained directly (``SCANVI.setup_anndata``, ``SCANVI(adata)``, ``train``).

    Default architecture and scvi's epoch heuristic ``min(400, round(20000 / n_cells * 400))``.

    Parameters
    ----------
    adata, seed
        See the module docstring.
    epochs
        Training epochs (``None``: scvi's heuristic).

    Returns
    -------
    tuple
        Query-cell probabilities of ``predict(soft=True)`` and timings.
    """
    import scvi

    data, query = _scanvi_data(adata, seed)
    info: Info = {}
    with _timer(info, "train_s"):
        scvi.model.SCANVI.setup_anndata(
            data,
            labels_key=TRAIN_LABEL_KEY,
            unlabeled_category=UNLABELLED,
            batch_key=_batch_key(data),
        )
        model = scvi.model.SCANVI(data)
        model.train(**_scvi_train_kwargs(epochs, data.n_obs))
    info["epochs"] = int(model.history["elbo_train"].shape[0])
    with _timer(info, "predict_s"):
        proba = model.predict(indices=np.flatnonzero(query), soft=True)
    return proba, info


def setup_pyro_scvae(data: ad.AnnData) -> None:
    """``PyroSCVAE.setup_anndata`` for a task's cells, as every pyro_scvae run here does it.

    Labels from :data:`TRAIN_LABEL_KEY` (NaN, as :func:`with_training_labels` sets it with
    ``np.nan``, for the cells to annotate); ``batch`` as batch key where the task has one.
    """
    from pyro_scvae import PyroSCVAE

    PyroSCVAE.setup_anndata(
        data, labels_key=TRAIN_LABEL_KEY, unlabeled_category=None, batch_key=_batch_key(data)
    )


def fit_predict_pyro_scvae(
    adata: ad.AnnData, seed: int, *, epochs: int | None = None
) -> MethodResult:
    """pyro_scvae with its defaults, through its Python API.

    Query cells are unlabelled (NaN training label); ``batch`` is the batch key where the
    task has one.

    Parameters
    ----------
    adata, seed
        See the module docstring.
    epochs
        Training epochs (``None``: the package default).

    Returns
    -------
    tuple
        Query-cell probabilities of ``predict(soft=True)`` and timings.
    """
    from pyro_scvae import PyroSCVAE

    data = with_training_labels(adata, np.nan)
    _, query = _split(data)
    fit_kwargs: dict[str, object] = {"seed": seed, "progress": False, "device": pyro_device()}
    if epochs is not None:
        fit_kwargs["epochs"] = epochs
    info: Info = {"epochs": epochs}
    with _timer(info, "train_s"):
        setup_pyro_scvae(data)
        model = PyroSCVAE(data)
        model.fit(**fit_kwargs)
    seconds = epoch_seconds(model)
    if seconds is not None:
        info["epochs"] = len(seconds)
    with _timer(info, "predict_s"):
        if "adata" in inspect.signature(model.predict).parameters:
            proba = model.predict(data[query].copy(), soft=True)
        else:
            proba = model.predict(soft=True)
    proba = pd.DataFrame(proba).loc[data.obs_names[query]]
    return proba, info


def fit_predict_pyro_scvae_cli(
    adata: ad.AnnData, seed: int, *, epochs: int | None = None, extra_args: Sequence[str] = ()
) -> MethodResult:
    """pyro_scvae as a user of the command line gets it: ``python -m pyro_scvae.fit``.

    The task's cells are written to an ``.h5ad`` file whose training-label column is
    empty for the query cells, and the command runs with its own defaults (``--seed``,
    ``--batch-key batch`` where the task has batches, ``--quiet``), in a fresh process,
    so ``train_s`` includes starting Python and importing the libraries, as a user waits
    for them. Probabilities are read from its ``predictions.csv``.

    Parameters
    ----------
    adata, seed
        See the module docstring.
    epochs
        ``--epochs`` (``None``: the command's default).
    extra_args
        More options of the command (studies of a default: ``benchmarks/cli_study.py``).

    Returns
    -------
    tuple
        Query-cell probabilities (the ``prob:<class>`` columns) and timings.
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    data = with_training_labels(adata, np.nan)
    data.obs[TRAIN_LABEL_KEY] = pd.Categorical(data.obs[TRAIN_LABEL_KEY])
    _, query = _split(data)
    info: Info = {"epochs": epochs}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cells.h5ad"
        columns = [TRAIN_LABEL_KEY] + (["batch"] if _batch_key(data) else [])
        var = pd.DataFrame(index=data.var_names)
        ad.AnnData(X=data.X, obs=data.obs[columns], var=var).write_h5ad(path)
        out = Path(folder) / "out"
        command = [sys.executable, "-m", "pyro_scvae.fit", "--adata", str(path)]
        command += ["--labels-key", TRAIN_LABEL_KEY, "--seed", str(seed), "--out", str(out)]
        command += ["--quiet", "--device", pyro_device()]
        if _batch_key(data) is not None:
            command += ["--batch-key", "batch"]
        if epochs is not None:
            command += ["--epochs", str(epochs)]
        command += list(extra_args)
        info["command"] = " ".join(command[1:])
        with _timer(info, "train_s"):
            result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pyro_scvae.fit failed: {result.stderr.strip()[-2000:]}")
        with _timer(info, "predict_s"):  # reading the written calls; the command did the rest
            table = pd.read_csv(out / "predictions.csv", index_col=0)
        metrics = json.loads((out / "metrics.json").read_text())
    proba = table.filter(like="prob:").rename(columns=lambda c: c[len("prob:") :])
    proba.index = proba.index.astype(str)
    info["epochs"] = metrics.get("epochs")
    kept = ("train_seconds", "n_genes", "temperature")
    info["fit_metrics"] = {k: metrics[k] for k in kept if k in metrics}
    return proba.loc[data.obs_names[query]], info


def epoch_seconds(model: object) -> list[float] | None:
    """Seconds per training epoch that a pyro_scvae model recorded, if it did.

    Parameters
    ----------
    model
        A fitted ``PyroSCVAE``; its ``history`` may be a mapping or an object.

    Returns
    -------
    list of float or None
        ``history["epoch_seconds"]`` (or ``history.epoch_seconds``), else None.
    """
    history = getattr(model, "history", None)
    if isinstance(history, dict):
        seconds = history.get("epoch_seconds")
    else:
        seconds = getattr(history, "epoch_seconds", None)
    return None if seconds is None else [float(s) for s in seconds]


def fit_predict_pyro_scvae_cli_ensemble3(
    adata: ad.AnnData, seed: int, *, epochs: int | None = None
) -> MethodResult:
    """The command line with ``--ensemble 3``: a seed ensemble, otherwise its defaults."""
    return fit_predict_pyro_scvae_cli(adata, seed, epochs=epochs, extra_args=("--ensemble", "3"))


#: Every method, keyed by its name in the results.
METHODS: dict[str, Method] = {
    "pyro_scvae": fit_predict_pyro_scvae,
    "pyro_scvae_cli": fit_predict_pyro_scvae_cli,
    "pyro_scvae_cli_ensemble3": fit_predict_pyro_scvae_cli_ensemble3,
    "scanvi_recipe": fit_predict_scanvi_recipe,
    "scanvi_direct": fit_predict_scanvi_direct,
    "celltypist": fit_predict_celltypist,
    "logreg": fit_predict_logreg,
    "knn": fit_predict_knn,
}

#: Methods with a number of training epochs.
NEURAL_METHODS = frozenset(
    {"pyro_scvae", "pyro_scvae_cli", "pyro_scvae_cli_ensemble3", "scanvi_recipe", "scanvi_direct"}
)
#: Methods that measure an option rather than a default: run only when named.
OPTION_METHODS = frozenset({"pyro_scvae_cli_ensemble3"})
