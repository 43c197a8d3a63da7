"""What the command lines write: predictions, the annotated data, metrics, model and plots.

Everything goes into a temporary folder beside ``--out`` first, which replaces ``--out``
only when the whole run succeeded (:func:`pyro_scvae.folders.atomic_output_dir`).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pyro_scvae.api import PyroSCVAE
from pyro_scvae.data import unlabelled as data_unlabelled
from pyro_scvae.data import write_h5ad_rows
from pyro_scvae.errors import InputError, PyroSCVAEWarning
from pyro_scvae.evaluation import classification_metrics
from pyro_scvae.folders import atomic_output_dir  # noqa: F401 (where it used to be)
from pyro_scvae.persistence import selection_summary
from pyro_scvae.plots import (
    plot_confusion,
    plot_elbo,
    plot_risk_coverage,
    plot_umap,
    umap_coordinates,
)
from pyro_scvae.signals import raise_if_pending
from pyro_scvae.training import warmup_epochs

#: Largest number of cells drawn in the UMAP plot (a random subset beyond it).
MAX_UMAP_CELLS = 50_000
#: Fewest cells for which a UMAP (its neighbour graph fails on two cells) and the posterior
#: predictive check (its statistics and log axes fail on six) are drawn.
MIN_UMAP_CELLS = 10


def write_predictions(
    probabilities: pd.DataFrame,
    calls: pd.Series,
    path: Path,
    novelty: pd.DataFrame | None = None,
    voted: pd.Series | None = None,
) -> pd.DataFrame:
    """``predictions.csv``: cell id, predicted, [majority_voting,] confidence, [novelty,
    novel,] and one ``prob:<class>`` per class.

    ``novelty``: the score and flag columns of :meth:`~pyro_scvae.api.PyroSCVAE.novelty_scores`.
    ``voted``: the majority-voting calls, a ``majority_voting`` column after ``predicted``.
    """
    table = pd.DataFrame(
        {"predicted": calls.to_numpy(), "confidence": probabilities.max(axis=1).to_numpy()},
        index=probabilities.index.rename("cell"),
    )
    if novelty is not None:
        table["novelty"] = novelty["novelty"].to_numpy()
        table["novel"] = novelty["novel"].to_numpy()
    if voted is not None:
        table.insert(1, "majority_voting", voted.to_numpy())
    table = table.join(probabilities.add_prefix("prob:"))
    table.to_csv(path)
    return table


def json_ready(settings: dict) -> dict:
    """Settings without None values (h5ad cannot store None) and with plain types."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if v is not None}))


def annotate_and_write(
    model: PyroSCVAE,
    adata: ad.AnnData,
    settings: dict,
    out: Path,
    min_confidence: float,
    cells: np.ndarray | None = None,
    threads: int | str | None = None,
    majority_voting: bool = False,
) -> None:
    """``predictions.csv`` and ``annotated.h5ad`` for ``adata`` in ``out``.

    With ``cells`` (a boolean mask; ``adata`` must be backed) both files hold only those
    cells, and the rows of ``.X`` are copied from the file in chunks
    (:func:`~pyro_scvae.data.write_h5ad_rows`). ``threads``: torch's, as ``--threads``.
    ``majority_voting``: add CellTypist's majority voting (:mod:`pyro_scvae.voting`).
    """
    model.annotate(  # calls, probabilities, z₁ (and the votes)
        adata, min_confidence=min_confidence, threads=threads, majority_voting=majority_voting
    )
    probabilities = adata.obsm["pyro_scvae_probabilities"]
    calls = adata.obs["pyro_scvae_prediction"].astype(str)
    novelty = None
    if "pyro_scvae_novelty" in adata.obs:  # the model has a novelty reference
        novelty = adata.obs[["pyro_scvae_novelty", "pyro_scvae_novel"]]
        novelty.columns = ["novelty", "novel"]
    voted = adata.obs["pyro_scvae_majority_voting"].astype(str) if majority_voting else None
    adata.uns["pyro_scvae"] = settings
    if cells is None:
        write_predictions(probabilities, calls, out / "predictions.csv", novelty, voted)
        adata.write_h5ad(out / "annotated.h5ad")
    else:
        novelty = None if novelty is None else novelty[cells]
        voted = None if voted is None else voted[cells]
        write_predictions(
            probabilities[cells], calls[cells], out / "predictions.csv", novelty, voted
        )
        write_h5ad_rows(adata, np.flatnonzero(cells), out / "annotated.h5ad")


def annotation_counts(calls: pd.Series) -> dict[str, int]:
    """Cells per call, most frequent first (``Unassigned`` among them)."""
    return {str(k): int(v) for k, v in calls.astype(str).value_counts().items()}


def score_labelled_query(
    adata: ad.AnnData, labels_key: str, classes: list[str], out: Path, cells: np.ndarray | None
) -> dict:
    """``predict --labels-key``: the calls against the query's own labels.

    Returns the metrics of :func:`~pyro_scvae.evaluation.classification_metrics` over the
    labelled cells, plus ``types_unknown_to_model`` (labels the model cannot call: each of
    their cells counts as an error), and draws ``confusion.png``.
    """
    if labels_key not in adata.obs:
        raise InputError(f"--labels-key {labels_key!r} is not a column of obs")
    keep = adata.obs[labels_key].notna().to_numpy()
    if cells is not None:
        keep &= cells
    if not keep.any():
        raise InputError(f"obs[{labels_key!r}] holds no label to score the calls against")
    truth = adata.obs[labels_key].astype(str).to_numpy()[keep]
    calls = adata.obs["pyro_scvae_prediction"].astype(str).to_numpy()[keep]
    probabilities = adata.obsm["pyro_scvae_probabilities"].to_numpy()[keep]
    metrics = classification_metrics(truth, calls, probabilities)
    metrics["types_unknown_to_model"] = sorted(set(truth) - set(classes))
    plot_confusion(truth, calls, out / "confusion.png", title=f"Labelled cells (n={keep.sum()})")
    return metrics


def write_markers(
    model: PyroSCVAE, adata: ad.AnnData | None, out: Path, calls: np.ndarray | None = None
) -> float:
    """``markers.csv`` and ``markers.png`` of the cells of ``adata`` (the training data when
    None) by their calls; returns the seconds it took."""
    from pyro_scvae.markers import plot_markers

    start = time.perf_counter()
    if calls is None:
        calls = model.predict(adata).to_numpy()
    markers = model.marker_genes(adata, calls=calls)
    markers.to_csv(out / "markers.csv", index=False)
    counts, _ = model._query_arrays(adata)
    plot_markers(counts, calls, model.genes, markers, out / "markers.png")
    return time.perf_counter() - start


def write_ppc(model: PyroSCVAE, out: Path) -> dict:
    """The posterior predictive check of the training cells: ``ppc.png`` and its numbers."""
    from pyro_scvae.criticism import plot_ppc

    check = model.posterior_predictive_check()
    plot_ppc(check, out / "ppc.png")
    return check.summary


def write_outputs(
    model, adata, training_adata, settings, out: Path, args, cells: np.ndarray | None
) -> dict:
    """Predictions, annotated data, metrics, the model and the plots of the training run.

    ``cells``: for a backed ``adata``, the cells to write (see :func:`annotate_and_write`).
    """
    annotate_and_write(
        model, adata, settings, out, args.min_confidence, cells, args.threads, args.majority_voting
    )
    history = model.history
    metrics = {
        "epochs": len(history.elbo),
        "epochs_trained": model.epochs_trained,  # both fits together
        "final_elbo_per_cell": history.elbo[-1],
        "train_seconds": model.train_seconds,
        "cells_per_second": model.epochs_trained * training_adata.n_obs / model.train_seconds,
        "n_cells": training_adata.n_obs,
        "n_genes": training_adata.n_vars,
        "validation": model.validation_metrics,
        "temperature": model.temperature,
        "selection": selection_summary(model),
        "ensemble": model.ensemble_summary,  # None for a single model
        "threads": history.threads_summary or None,  # torch threads of training
        "annotated": annotated_summary(adata, model.setup, cells),
    }
    if model.distributed_run is not None:  # trained through Lightning
        metrics["distributed"] = {
            "world_size": model.distributed_run.world_size,
            "replica_max_abs_difference": model.distributed_run.replica_max_abs_difference,
        }
    if args.ppc and training_adata.n_obs < MIN_UMAP_CELLS:
        warnings.warn(
            f"ppc.png is not drawn: {training_adata.n_obs} cells are too few for a posterior "
            f"predictive check (it needs at least {MIN_UMAP_CELLS})",
            PyroSCVAEWarning,
            stacklevel=2,
        )
    elif args.ppc:
        metrics["ppc"] = write_ppc(model, out)
    if args.markers:
        metrics["markers_seconds"] = write_markers(model, None, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    model.save(out / "model")
    config = model.training_config
    warmup = warmup_epochs(config.kl_warmup, config.epochs)
    plot_elbo(history.elbo, out / "elbo.png", warmup_epochs=warmup)
    if model.selection is not None:  # the first fit's calls: it never saw these labels
        cells = model.validation_cells
        truth = np.array(model.classes)[model.data.labels[cells]]
        probabilities = model.selection.probabilities  # [held-out cells, K], calibrated
        plot_confusion(
            truth,
            np.array(model.classes)[probabilities.argmax(1)],
            out / "confusion.png",
            title=f"Held-out labelled cells (n={len(cells)}), first fit",
        )
        plot_risk_coverage(truth, probabilities, model.classes, out / "risk_coverage.png")
    if adata.n_obs < MIN_UMAP_CELLS:
        warnings.warn(
            f"umap.png is not drawn: {adata.n_obs} cells are too few for a UMAP "
            f"(it needs at least {MIN_UMAP_CELLS})",
            PyroSCVAEWarning,
            stacklevel=2,
        )
    else:
        plot_cells(model, adata, args.seed, out / "umap.png")
    return metrics


def plot_cells(model: PyroSCVAE, adata: ad.AnnData, seed: int, path: Path) -> None:
    """``umap.png``: a UMAP of z₁ of (at most :data:`MAX_UMAP_CELLS` of) the cells."""
    latent = adata.obsm["X_pyro_scvae"]
    shown = np.random.default_rng(seed).permutation(adata.n_obs)[:MAX_UMAP_CELLS]
    obs, setup = adata.obs.iloc[shown], model.setup
    coordinates = umap_coordinates(latent[shown], seed=seed)
    raise_if_pending()  # numba can swallow a Ctrl-C ("Exception ignored ...")
    plot_umap(
        coordinates,
        obs["pyro_scvae_prediction"].to_numpy(),
        confidence=obs["pyro_scvae_confidence"].to_numpy(),
        batch=obs[setup["batch_key"]].to_numpy() if setup["batch_key"] else None,
        labels=obs[setup["labels_key"]].to_numpy(),
        unlabeled_category=setup["unlabeled_category"],
        path=path,
    )


def annotated_summary(adata: ad.AnnData, setup: dict, cells: np.ndarray | None) -> dict:
    """Cells per call, over every cell and over the unlabelled ones (what was annotated)."""
    obs = adata.obs if cells is None else adata.obs[cells]
    calls = obs["pyro_scvae_prediction"]
    unlabelled = data_unlabelled(obs[setup["labels_key"]], setup.get("unlabeled_category"))
    return {
        "all_cells": annotation_counts(calls),
        "unlabelled_cells": annotation_counts(calls[unlabelled]),
    }


def threads_note(summary: dict | None) -> str:
    """``", 1 thread"`` from metrics.json's ``threads`` (nothing when unknown)."""
    if not summary:
        return ""
    counts = ", ".join(str(n) for n in dict.fromkeys(summary["used"]))
    return f", {counts} thread" + ("" if counts == "1" else "s")


def print_summary(
    model: PyroSCVAE, metrics: dict, adata: ad.AnnData, out: Path, markers_added: int = 0
) -> None:
    markers = f" ({markers_added} of them markers of the labelled types)" if markers_added else ""
    lines = [
        f"trained on {adata.n_obs} cells × {adata.n_vars} genes{markers}, "
        f"{len(model.classes)} classes, "
        f"{metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s "
        f"({metrics['cells_per_second']:.0f} cells/s{threads_note(metrics['threads'])})",
        f"final ELBO per cell: {metrics['final_elbo_per_cell']:.1f}",
    ]
    ensemble = metrics.get("ensemble")
    if ensemble:
        lines.append(f"a seed ensemble of {ensemble['members']} models (seeds {ensemble['seeds']})")
    validation = metrics["validation"]
    if validation:
        members = ""
        if ensemble and "member_macro_f1" in ensemble:
            singles = ", ".join(f"{f:.3f}" for f in ensemble["member_macro_f1"])
            members = f" (each member alone: {singles})"
        lines.append(
            f"held-out labelled cells (n={validation['n_cells']}): accuracy "
            f"{validation['accuracy']:.3f}, macro-F1 {validation['macro_f1']:.3f}{members}"
        )
    annotated = metrics["annotated"]["unlabelled_cells"]
    if annotated:
        counts = ", ".join(f"{name} {n}" for name, n in annotated.items())
        lines.append(f"annotated {sum(annotated.values())} unlabelled cells: {counts}")
    lines.append(f"outputs written to {out}/")
    print("\n".join(lines))
