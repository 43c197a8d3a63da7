"""Annotation metrics over query cells: accuracy, F1 scores and calibration error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """Expected calibration error with equal-width confidence bins.

    The standard definition (Naeini et al. 2015; Guo et al. 2017):
    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``, with bin ``b``
    holding the cells whose confidence lies in ``((b - 1) / n_bins, b / n_bins]``
    (a confidence of exactly 0 falls into the first bin).

    Parameters
    ----------
    confidence
        Probability of the predicted class, one per cell, in [0, 1].
    correct
        Whether each prediction is right.
    n_bins
        Number of equal-width bins on [0, 1].

    Returns
    -------
    float
        The ECE, in [0, 1].
    """
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / max(confidence.size, 1))


def ece_floor(confidence: np.ndarray, n_bins: int = 15, draws: int = 200) -> float:
    """The ECE that a perfectly calibrated predictor would show on these cells, on average.

    Each cell is drawn right with probability equal to its confidence (so the predictor
    is calibrated by construction) and the ECE of the draw is measured; the mean over
    ``draws`` draws (seeded, so repeatable) is the floor that sampling noise alone sets
    on few cells: an ECE near it cannot be told from perfect calibration.
    """
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    rng = np.random.default_rng(0)
    return float(
        np.mean(
            [
                expected_calibration_error(
                    confidence, rng.random(confidence.size) < confidence, n_bins
                )
                for _ in range(draws)
            ]
        )
    )


def score(
    truth: Sequence[str] | pd.Series, proba: pd.DataFrame, n_bins: int = 15
) -> dict[str, object]:
    """Score predicted class probabilities against the true labels.

    The prediction of a cell is the column of its largest probability. F1 scores are taken
    over the classes present in ``truth``; a prediction of a class that the truth lacks is
    simply an error (a false negative of the cell's true class).

    Parameters
    ----------
    truth
        True labels of the query cells, aligned with the rows of ``proba``.
    proba
        Cells x classes probabilities (column names are class labels).
    n_bins
        Number of bins of the expected calibration error.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``weighted_f1``, ``ece``, ``ece_floor``
        (:func:`ece_floor`; floats) and ``per_class_f1`` (dict class -> F1).
    """
    truth = np.asarray(truth, dtype=object).astype(str)
    values = proba.to_numpy(dtype=np.float64)
    columns = np.asarray(proba.columns.astype(str), dtype=object)
    predicted = columns[values.argmax(axis=1)]
    confidence = values.max(axis=1)
    classes = np.unique(truth)
    per_class = f1_score(truth, predicted, labels=classes, average=None, zero_division=0.0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=classes, average="macro", zero_division=0.0)
        ),
        "weighted_f1": float(
            f1_score(truth, predicted, labels=classes, average="weighted", zero_division=0.0)
        ),
        "ece": expected_calibration_error(confidence, predicted == truth, n_bins=n_bins),
        "ece_floor": ece_floor(confidence, n_bins=n_bins),
        "per_class_f1": {str(c): float(f) for c, f in zip(classes, per_class, strict=True)},
    }
