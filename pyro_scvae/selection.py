"""Held-out labelled cells: honest metrics, the stopping epoch and the calibration.

``PyroSCVAE.fit`` hides the labels of a stratified fraction of the labelled cells
(:func:`validation_split`); those cells still train, as unlabelled cells do. What the
model says of them along training decides when to stop (:class:`EarlyStopping`), their
labels calibrate the probabilities (:mod:`pyro_scvae.calibration`), and the metrics on
them are honest because the model never saw those labels.
"""

from __future__ import annotations

import numpy as np

from pyro_scvae.errors import InputError


def validation_split(labels: np.ndarray, n_classes: int, fraction: float, seed: int) -> np.ndarray:
    """A stratified random ``fraction`` of the labelled cells, sorted positions.

    Every class keeps at least one labelled cell for training; a class with a single
    labelled cell has none held out.

    Parameters
    ----------
    labels
        ``[cells]`` class codes, ``-1`` for unlabelled cells.
    n_classes
        Number of classes (codes ``0 … n_classes - 1``).
    fraction
        Fraction of each class's labelled cells to hold out (rounded).
    seed
        Seed of the draw.
    """
    if fraction == 0.0:
        return np.array([], dtype=np.int64)
    rng = np.random.default_rng(seed)
    held_out = []
    for code in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == code))
        n_held = int(round(fraction * len(members)))
        held_out.append(members[: min(n_held, len(members) - 1)])
    held_out = np.sort(np.concatenate(held_out)).astype(np.int64)
    if len(held_out) == 0:
        raise InputError("validation_fraction leaves no labelled cell to validate on")
    return held_out


class EarlyStopping:
    """Stop training when a held-out score has not improved for ``patience`` epochs.

    Used as :func:`pyro_scvae.training.train`'s ``on_epoch_end``. Every ``every``
    epochs it calls ``evaluate()`` (lower is better), remembers the best value, its
    epoch and a copy of the module's weights at that epoch, and asks training to stop
    once ``patience`` epochs have passed without an improvement of more than
    ``min_delta``. Epochs before ``min_epochs`` (e.g. the end of the KL warm-up, before
    which training does not yet maximise the ELBO) are scored but never chosen.

    Parameters
    ----------
    evaluate
        The held-out score of the module as it is now (in eval mode).
    module
        The module whose best weights are kept (None: keep none).
    patience, min_epochs, every, min_delta
        As above, in epochs (``min_delta`` in the score's units).
    """

    def __init__(
        self,
        evaluate,
        module=None,
        patience: int = 20,
        min_epochs: int = 0,
        every: int = 1,
        min_delta: float = 0.0,
    ) -> None:
        self.evaluate = evaluate
        self.module = module
        self.patience, self.min_epochs, self.every = patience, min_epochs, every
        self.min_delta = min_delta
        self.best = np.inf
        self.best_epoch = 0  # epochs trained at the best score (1-based count)
        self.best_state: dict | None = None
        self.scores: list[tuple[int, float]] = []  # (epochs trained, score)
        self.stopped_epoch: int | None = None

    def __call__(self, epoch: int, history=None) -> bool:
        trained = epoch + 1
        if trained % self.every:
            return False
        score = float(self.evaluate())
        self.scores.append((trained, score))
        if trained >= self.min_epochs and score < self.best - self.min_delta:
            self.best, self.best_epoch = score, trained
            if self.module is not None:
                self.best_state = {
                    k: v.detach().clone() for k, v in self.module.state_dict().items()
                }
        stop = self.best_epoch > 0 and trained - self.best_epoch >= self.patience
        if stop and self.stopped_epoch is None:
            self.stopped_epoch = trained
        return stop

    def restore_best(self) -> None:
        """Put the weights of the best epoch back into the module."""
        if self.module is not None and self.best_state is not None:
            self.module.load_state_dict(self.best_state)
