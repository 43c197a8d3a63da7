"""Class probabilities that mean what they say: temperature scaling of q(y | z₁).

A trained classifier is often over-confident: its wrong calls carry probabilities near
1. Temperature scaling (Guo et al., ICML 2017) divides the logits by one number T,
fitted on held-out labelled cells to minimise their negative log-likelihood; T > 1
softens every cell's probabilities alike, so the calls (the argmax) do not change. It is
one parameter fitted by a bounded scalar search (scipy), which cannot over-fit a few
hundred held-out cells the way a per-class calibration could.

A seed ensemble's logits are stacked ``[members, cells, classes]``: its probabilities are
the mean of the members' (a deep ensemble, Lakshminarayanan et al. 2017), each member's
logits divided by the one temperature fitted for the ensemble.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

#: Range searched for the temperature (log scale): from 20 times sharper to 20 times softer.
TEMPERATURE_BOUNDS = (1 / 20, 20.0)


def log_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log class probabilities ``[cells, classes]`` of ``logits / temperature``.

    ``logits`` ``[cells, classes]``, or ``[members, cells, classes]`` for an ensemble:
    then the log of the members' mean probabilities.
    """
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
    if log_p.ndim == 3:
        log_p = logsumexp(log_p, axis=0) - np.log(len(log_p))
    return log_p


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``[cells, classes]`` of ``logits / temperature``, rows summing to 1.

    For stacked logits ``[members, cells, classes]``, the members' mean probabilities.
    """
    return np.exp(log_probabilities(logits, temperature))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean −log p(label) under ``softmax(logits, temperature)``."""
    log_p = log_probabilities(logits, temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the held-out negative log-likelihood.

    Parameters
    ----------
    logits
        ``[cells, classes]`` logits of held-out labelled cells (``[members, cells,
        classes]`` for an ensemble).
    labels
        ``[cells]`` their class codes.

    Returns
    -------
    float
        T in :data:`TEMPERATURE_BOUNDS`; 1.0 when there are no cells.
    """
    if len(labels) == 0:
        return 1.0
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
    )
    return float(np.exp(result.x))
