"""How unlike every reference cell type a cell is: a novelty score and its default threshold.

The score of a cell is the Mahalanobis distance of its posterior mean of z₁ to the
nearest class centre of the reference's labelled cells, under one within-class
covariance shared by the classes (Lee et al., NeurIPS 2018)::

    score(z) = min_y √((z − m_y)ᵀ Σ⁻¹ (z − m_y))

with m_y the mean of z₁ over the labelled reference cells of type y and Σ their pooled
within-class covariance, shrunk towards a multiple of the identity by Ledoit–Wolf
(scikit-learn), so that it is invertible even where a type has a handful of cells. The
classifier q(y | z₁) must put every cell in some type and is confident far from the
training cells; the distance grows there. It was chosen over the calibrated maximum
probability, the entropy of q(y | z₁), per-class covariances and the distance to the
nearest reference cells on leave-one-type-out experiments (``benchmarks/novelty.md``).

The threshold is a quantile (:data:`DEFAULT_QUANTILE`) of the scores of the reference's
own labelled cells, each scored out of fold: the centres and covariance that score a
cell are estimated without it (five folds). A cell above the threshold is ``novel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold

#: Share of the reference's labelled cells (scored out of fold) below the default threshold:
#: the lowest of 0.95, 0.975, 0.98 and 0.99 at which at most 5 % of the known query cells
#: were flagged, on average, in the transductive leave-one-type-out runs
#: (``benchmarks/novelty.md``).
DEFAULT_QUANTILE = 0.98
#: Folds of the out-of-fold scores that set the threshold.
FOLDS = 5


@dataclass
class NoveltyReference:
    """The class centres, shared precision and threshold that score novelty.

    Attributes
    ----------
    means
        Class centres of z₁, ``[K, d]`` (NaN rows for classes without labelled cells).
    precision
        Inverse of the shrunk pooled within-class covariance, ``[d, d]``.
    threshold
        Scores above it are ``novel``.
    quantile
        The quantile of the reference's out-of-fold scores that ``threshold`` is.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    def score(self, latent: np.ndarray) -> np.ndarray:
        """Distance of each cell (``[cells, d]``) to its nearest class centre, ``[cells]``."""
        return nearest_distance(latent, self.means, self.precision)

    def is_novel(self, scores: np.ndarray) -> np.ndarray:
        """``[cells]`` booleans: the score is above the threshold."""
        return scores > self.threshold

    def to_dict(self) -> dict:
        """Plain lists, for ``config.json`` (NaN rows written as None)."""
        means = [[None if np.isnan(v) else float(v) for v in row] for row in self.means]
        return {
            "means": means,
            "precision": self.precision.tolist(),
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    @classmethod
    def from_dict(cls, values: dict) -> NoveltyReference:
        means = np.array(
            [[np.nan if v is None else v for v in row] for row in values["means"]], dtype=float
        )
        return cls(
            means=means,
            precision=np.asarray(values["precision"], dtype=float),
            threshold=float(values["threshold"]),
            quantile=float(values["quantile"]),
        )


def class_statistics(
    latent: np.ndarray, labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class centres ``[K, d]`` and the precision ``[d, d]`` of the pooled shrunk covariance.

    Parameters
    ----------
    latent
        ``[cells, d]`` posterior means of z₁ of labelled cells.
    labels
        ``[cells]`` their class codes in ``0 … K − 1``.
    """
    means = np.full((n_classes, latent.shape[1]), np.nan)
    present = np.unique(labels)
    for k in present:
        means[k] = latent[labels == k].mean(0)
    centred = latent - means[labels]  # [cells, d], within-class deviations
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_  # [d, d]
    return means, np.linalg.inv(covariance)


def nearest_distance(latent: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of the Mahalanobis distance under ``precision``, ``[cells]``."""
    return nearest_centre(latent, means, precision)[0]


def nearest_centre(
    latent: np.ndarray, means: np.ndarray, precision: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Mahalanobis distance to the nearest class centre and that class, ``[cells]`` each."""
    present = np.flatnonzero(~np.isnan(means).any(1))  # [K'], classes with a centre
    # Whitened coordinates: with precision = L Lᵀ, (z − m)ᵀ P (z − m) = ‖Lᵀ(z − m)‖².
    root = np.linalg.cholesky(precision)  # [d, d]
    z, m = latent @ root, means[present] @ root  # [cells, d], [K', d]
    squared = (z**2).sum(1)[:, None] - 2 * z @ m.T + (m**2).sum(1)[None, :]  # [cells, K']
    best = squared.argmin(1)  # [cells]
    distance = np.sqrt(np.clip(squared[np.arange(len(z)), best], 0.0, None))
    return distance, present[best]


def out_of_fold_scores(
    latent: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0
) -> np.ndarray:
    """Scores of labelled cells, each from statistics estimated without its fold, ``[cells]``.

    A class absent from the other folds keeps its centre from all cells.
    """
    return out_of_fold_nearest(latent, labels, n_classes, seed)[0]


def out_of_fold_nearest(
    latent: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`out_of_fold_scores` and the class of each cell's nearest centre, ``[cells]`` each."""
    everyone, _ = class_statistics(latent, labels, n_classes)
    scores, nearest = np.empty(len(labels)), np.empty(len(labels), dtype=int)
    folds = KFold(n_splits=min(FOLDS, len(labels)), shuffle=True, random_state=seed)
    for fit_on, apply_to in folds.split(latent):
        means, precision = class_statistics(latent[fit_on], labels[fit_on], n_classes)
        means = np.where(np.isnan(means), everyone, means)
        scores[apply_to], nearest[apply_to] = nearest_centre(latent[apply_to], means, precision)
    return scores, nearest


def fit_novelty(
    latent: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
) -> NoveltyReference:
    """The :class:`NoveltyReference` of a reference's labelled cells.

    Parameters
    ----------
    latent
        ``[cells, d]`` posterior means of z₁ of the labelled reference cells.
    labels
        ``[cells]`` their class codes.
    quantile
        Share of those cells, scored out of fold, that the threshold leaves un-flagged.
    """
    means, precision = class_statistics(latent, labels, n_classes)
    threshold = float(np.quantile(out_of_fold_scores(latent, labels, n_classes, seed), quantile))
    return NoveltyReference(means, precision, threshold, quantile)
