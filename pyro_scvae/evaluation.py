"""Metrics and plots of an annotation: F1 per class, calibration, ELBO, confusion, UMAP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, f1_score


def classification_metrics(
    truth: Sequence[str], predicted: Sequence[str], probabilities: np.ndarray | None = None
) -> dict:
    """Accuracy, macro- and weighted F1, F1 of each true class, and (given probabilities) ECE.

    Parameters
    ----------
    truth, predicted
        True and predicted labels of the same cells.
    probabilities
        ``[cells, classes]`` class probabilities, for the expected calibration error.
    """
    truth = np.asarray(truth, dtype=object)
    predicted = np.asarray(predicted, dtype=object)
    classes = sorted(set(truth))
    per_class = f1_score(truth, predicted, labels=classes, average=None, zero_division=0)
    metrics = {
        "n_cells": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(truth, predicted, labels=classes, average="weighted", zero_division=0)
        ),
        "per_class_f1": {c: float(f) for c, f in zip(classes, per_class)},
    }
    if probabilities is not None:
        metrics["ece"] = expected_calibration_error(truth == predicted, probabilities.max(axis=1))
    return metrics


def expected_calibration_error(
    correct: np.ndarray, confidence: np.ndarray, n_bins: int = 15
) -> float:
    """Σ_bins (cells in bin / cells) · |accuracy − mean confidence| over equal-width bins."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def plot_elbo(
    elbo: Sequence[float], path: str | Path | None = None, warmup_epochs: float = 0.0
) -> plt.Figure:
    """The training curve: ELBO per cell against epoch.

    During the first ``warmup_epochs`` (KL warm-up) the curve is the objective with the
    KL terms of y, z₂ and l weighted by β < 1, not yet the ELBO; that span is shaded.
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if warmup_epochs > 0:
        ax.axvspan(0.5, warmup_epochs + 0.5, color="0.9", label="KL warm-up (β < 1)")
    ax.plot(np.arange(1, len(elbo) + 1), elbo, label="training ELBO")
    ax.set(xlabel="epoch", ylabel="ELBO per cell (nats)", title="Training objective")
    if len(elbo) > 5:  # the first epochs dwarf the rest; show the part worth reading
        low, high = np.percentile(elbo[len(elbo) // 10 :], [0, 100])
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1))
    ax.legend()
    return _finish(fig, path)


def plot_confusion(
    truth: Sequence[str], predicted: Sequence[str], path: str | Path | None = None, title: str = ""
) -> plt.Figure:
    """Row-normalised confusion matrix (rows: true type, columns: predicted type)."""
    labels = sorted(set(truth) | set(predicted))
    fig, ax = plt.subplots(figsize=(0.55 * len(labels) + 3, 0.55 * len(labels) + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        truth,
        predicted,
        labels=labels,
        normalize="true",
        ax=ax,
        values_format=".2f",
        xticks_rotation=90,
        colorbar=False,
        cmap="Blues",
    )
    ax.set(title=title or "Confusion matrix (fraction of each true type)")
    ax.set_xlabel("predicted type")
    ax.set_ylabel("true type")
    return _finish(fig, path)


def plot_embedding(
    coordinates: np.ndarray,
    colour_by: Sequence[str],
    path: str | Path | None = None,
    title: str = "UMAP of the latent z₁",
) -> plt.Figure:
    """A 2-D embedding of the cells coloured by a categorical annotation, with a legend."""
    colour_by = np.asarray(colour_by, dtype=object)
    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(sorted(set(colour_by))):
        keep = colour_by == name
        ax.scatter(*coordinates[keep].T, s=6, color=cmap(i % 20), label=f"{name} ({keep.sum()})")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=title)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _finish(fig, path)


def umap_coordinates(latent: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP of a latent representation, with scanpy's neighbours graph."""
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(np.zeros((latent.shape[0], 0), dtype=np.float32))
    holder.obsm["X_latent"] = latent
    sc.pp.neighbors(holder, use_rep="X_latent", n_neighbors=min(15, latent.shape[0] - 1))
    sc.tl.umap(holder, random_state=seed)
    return holder.obsm["X_umap"]


def _finish(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def risk_coverage(truth: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]):
    """Accuracy of the calls kept against the fraction of cells left unassigned.

    Cells are ranked by confidence (largest probability); leaving the ``k`` least
    confident unassigned, for every ``k``, gives one point per threshold.

    Returns
    -------
    tuple of numpy.ndarray
        ``(unassigned fraction, accuracy of the calls kept, threshold)``, one entry per
        number of cells kept, from all cells kept to one.
    """
    truth = np.asarray(truth, dtype=object)
    confidence = probabilities.max(1)  # [cells]
    correct = np.asarray(classes, dtype=object)[probabilities.argmax(1)] == truth
    order = np.argsort(-confidence, kind="stable")  # most confident first
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / kept
    unassigned = 1 - kept / len(order)
    return unassigned[::-1], accuracy[::-1], confidence[order][::-1]


def plot_risk_coverage(
    truth: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    path: str | Path | None = None,
) -> plt.Figure:
    """How accurate the calls that are kept are, for every ``--min-confidence`` threshold.

    The x axis is the fraction of cells a threshold leaves ``Unassigned``; marked points
    give the thresholds 0.5, 0.7 and 0.9.
    """
    unassigned, accuracy, threshold = risk_coverage(truth, probabilities, classes)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(unassigned, accuracy, color="C0")
    for value, marker in ((0.5, "o"), (0.7, "s"), (0.9, "^")):
        below = threshold < value
        index = int(below.sum()) if below.any() else 0
        index = min(index, len(accuracy) - 1)
        ax.plot(unassigned[index], accuracy[index], marker, color="C1", label=f"≥ {value}")
    ax.set(
        xlabel="fraction of cells left Unassigned",
        ylabel="accuracy of the calls kept",
        title=f"Risk–coverage on held-out labelled cells (n={len(accuracy)})",
        xlim=(-0.02, 1.0),
    )
    ax.legend(title="min. confidence", fontsize=8)
    return _finish(fig, path)
