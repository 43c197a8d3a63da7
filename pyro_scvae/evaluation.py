"""Metrics of an annotation: accuracy, F1 per class, calibration error, risk–coverage.

The figures made from them are in :mod:`pyro_scvae.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


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
    """``Σ_bins (cells in bin / cells) · |accuracy − mean confidence|`` over equal-width bins."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


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
