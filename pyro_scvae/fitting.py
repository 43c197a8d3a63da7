"""How ``PyroSCVAE.fit`` uses its labels: honest metrics, a stopping epoch, calibration, refit.

With ``validation_fraction`` f > 0 (the default) a fit has two phases:

1. **Selection fit.** The labels of a stratified fraction f of the labelled cells are
   hidden (:func:`~pyro_scvae.selection.validation_split`); those cells still train, as
   unlabelled cells. After every epoch the held-out cells' negative log-likelihood under
   q(y | z₁), at the temperature that is best for them, is measured; training stops
   when it has not improved for ``patience`` epochs (never before the KL warm-up ends)
   and the weights of the best epoch are put back (:class:`~pyro_scvae.selection.EarlyStopping`).
   The metrics on the held-out cells (``validation_metrics``) are honest: the model never
   saw their labels. A temperature for q(y | z₁) is fitted on them
   (:mod:`pyro_scvae.calibration`); the calibration error reported for them is
   cross-fitted (the temperature used for each half of them is fitted on the other half).
2. **Refit** (``refit``). The held-out labels join: ``"continue"`` trains on from the
   best epoch with every label for ``patience`` more epochs of the schedule; ``"full"``
   trains again from the same initial weights, on every label, for the number of epochs
   the selection fit chose. So no labelled cell is left out of the model that annotates.
   The model keeps the fitted temperature.

With f = 0 the model trains once, on every label, for ``epochs``, uncalibrated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pyro_scvae.calibration import fit_temperature, negative_log_likelihood, softmax
from pyro_scvae.config import TrainingConfig
from pyro_scvae.data import CellData, take_rows
from pyro_scvae.evaluation import classification_metrics, expected_calibration_error
from pyro_scvae.selection import EarlyStopping, validation_split
from pyro_scvae.training import History, train

if TYPE_CHECKING:
    from pyro_scvae.api import PyroSCVAE


@dataclass
class Selection:
    """What the selection fit found (``PyroSCVAE.selection``).

    Attributes
    ----------
    best_epoch
        Epochs of the selection fit at its best held-out score (the refit's length).
    stopped_epoch
        Epochs the selection fit ran (None: it ran the whole schedule).
    temperature
        Fitted temperature of q(y | z₁) (1.0 uncalibrated).
    scores
        ``(epoch, held-out calibrated NLL)`` of each evaluation.
    history
        The selection fit's training history.
    seconds
        Wall time of the selection fit.
    probabilities
        Calibrated class probabilities ``[held-out cells, K]`` from the selection fit
        (the honest calls behind ``validation_metrics``).
    """

    best_epoch: int
    stopped_epoch: int | None
    temperature: float
    scores: list[tuple[int, float]] = field(default_factory=list)
    history: History | None = None
    seconds: float = 0.0
    probabilities: np.ndarray | None = None


def training_data(model: PyroSCVAE, hidden: np.ndarray) -> CellData:
    """The model's training cells (those with counts), with the labels of ``hidden`` removed."""
    labels = model.data.labels.copy()
    labels[hidden] = -1
    cells = model.training_cells
    batches = None if model.data.batches is None else model.data.batches[cells]
    return CellData(take_rows(model.data.counts, cells), labels[cells], batches)


def held_out_logits(model: PyroSCVAE, cells: np.ndarray) -> np.ndarray:
    """The classifier's logits ``[cells, K]`` for cells of the model's data."""
    batches = None if model.data.batches is None else model.data.batches[cells]
    return model._encode_chunks(model.data.counts[cells], batches, 4096)[1]  # threads as set


def calibrated_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Negative log-likelihood at the temperature that is best for these cells."""
    return negative_log_likelihood(logits, labels, fit_temperature(logits, labels))


def cross_fitted_ece(logits: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ECE of temperature-scaled probabilities, each half scaled by the other's temperature."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    if min(map(len, halves)) == 0:
        return float("nan")
    correct, confidence = [], []
    for fit_on, apply_to in (halves, halves[::-1]):
        probabilities = softmax(logits[apply_to], fit_temperature(logits[fit_on], labels[fit_on]))
        correct.append(probabilities.argmax(1) == labels[apply_to])
        confidence.append(probabilities.max(1))
    return expected_calibration_error(np.concatenate(correct), np.concatenate(confidence))


def joined(first: History, epochs: int, rest: History) -> History:
    """The first ``epochs`` epochs of ``first`` followed by ``rest``: one model's history."""
    return History(
        elbo=first.elbo[:epochs] + rest.elbo,
        epoch_seconds=first.epoch_seconds[:epochs] + rest.epoch_seconds,
        epoch_cpu_seconds=first.epoch_cpu_seconds[:epochs] + rest.epoch_cpu_seconds,
        threads=first.threads[:epochs] + rest.threads,
        threads_summary=rest.threads_summary or first.threads_summary,
    )


def select_and_refit(model: PyroSCVAE, config: TrainingConfig, run=train) -> History:
    """Train ``model`` as the module docstring says; returns the final model's history.

    Sets ``model.validation_cells``, ``validation_metrics``, ``temperature``,
    ``selection`` and ``epochs_trained`` (both fits together).
    ``run(module, data, config, on_epoch_end, description)`` trains one module
    (:func:`~pyro_scvae.training.train`; another runner may ignore ``on_epoch_end``
    and so not stop early).
    """
    labels = np.full(len(model.data.labels), -1)
    labels[model.training_cells] = model.data.labels[model.training_cells]
    model.validation_cells = validation_split(
        labels, len(model.classes), config.validation_fraction, config.seed
    )
    model.validation_metrics, model.selection, model.temperature = None, None, 1.0
    if len(model.validation_cells) == 0:
        history = run(model.module, training_data(model, model.validation_cells), config, None)
        model.epochs_trained = len(history.elbo)
        return history

    held = model.validation_cells
    truth = model.data.labels[held]
    monitor = None
    if config.early_stopping:
        monitor = EarlyStopping(
            lambda: calibrated_nll(held_out_logits(model, held), truth),
            module=model.module,
            patience=config.patience_epochs(),
            min_epochs=int(np.ceil(config.kl_warmup * config.epochs)),
        )
    start = time.perf_counter()
    first = run(
        model.module, training_data(model, held), config, monitor, "training (labels held out)"
    )
    best_epoch = len(first.elbo)
    if monitor is not None and monitor.best_state is not None:
        monitor.restore_best()
        best_epoch = monitor.best_epoch
    logits = held_out_logits(model, held)
    temperature = fit_temperature(logits, truth) if config.calibrate else 1.0
    classes = np.array(model.classes)
    probabilities = softmax(logits, temperature)
    model.validation_metrics = classification_metrics(
        classes[truth], classes[probabilities.argmax(1)], probabilities
    )
    if config.calibrate:
        model.validation_metrics["ece_uncalibrated"] = expected_calibration_error(
            probabilities.argmax(1) == truth, softmax(logits).max(1)
        )
        model.validation_metrics["ece"] = cross_fitted_ece(logits, truth, config.seed)
    model.validation_metrics["epoch"] = best_epoch
    model.selection = Selection(
        best_epoch=best_epoch,
        stopped_epoch=None if monitor is None else monitor.stopped_epoch,
        temperature=temperature,
        scores=[] if monitor is None else monitor.scores,
        history=first,
        seconds=time.perf_counter() - start,
        probabilities=probabilities,
    )
    model.temperature = temperature
    every_label = training_data(model, held[:0])
    model.epochs_trained = len(first.elbo)
    if config.refit == "none":
        return first
    if config.refit == "continue":
        stop = best_epoch + config.patience_epochs()  # past the schedule's end if need be
        more = TrainingConfig(**{**config.to_dict(), "start_epoch": best_epoch, "stop_epoch": stop})
        rest = run(model.module, every_label, more, None, "training (all labels)")
        model.epochs_trained += len(rest.elbo)
        return joined(first, best_epoch, rest)
    model.module = model.new_module()
    refit = TrainingConfig(**{**config.to_dict(), "stop_epoch": best_epoch})
    history = run(model.module, every_label, refit, None, "training (all labels)")
    model.epochs_trained += len(history.elbo)
    return history
