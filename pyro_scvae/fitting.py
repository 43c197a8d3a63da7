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

**Seed ensembles** (``ensemble`` N > 1, :func:`fit_ensemble`): N members go through the
two phases, each from its own initial weights and training seed, all with the same
held-out cells. The ensemble's probabilities are the mean of the members'; its one
temperature and its held-out metrics come from the members' selection fits on those
cells, so they stay honest. On the benchmark tasks a mean of three seeds lifted
macro-F1 where single seeds disagree (``benchmarks/ensemble_study.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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
    logits
        The classifier's logits of the held-out cells ``[held-out cells, K]`` at the best
        epoch (``[members, held-out cells, K]`` for an ensemble).
    """

    best_epoch: int
    stopped_epoch: int | None
    temperature: float
    scores: list[tuple[int, float]] = field(default_factory=list)
    history: History | None = None
    seconds: float = 0.0
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None


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
    """ECE of temperature-scaled probabilities, each half scaled by the other's temperature.

    ``logits`` ``[cells, K]``, or ``[members, cells, K]`` for an ensemble.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    if min(map(len, halves)) == 0:
        return float("nan")
    correct, confidence = [], []
    for fit_on, apply_to in (halves, halves[::-1]):
        temperature = fit_temperature(logits[..., fit_on, :], labels[fit_on])
        probabilities = softmax(logits[..., apply_to, :], temperature)
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


def held_out_metrics(
    logits: np.ndarray, truth: np.ndarray, classes: list[str], calibrate: bool, seed: int
) -> tuple[float, np.ndarray, dict]:
    """Temperature, calibrated probabilities ``[cells, K]`` and metrics of held-out cells.

    ``logits`` ``[cells, K]`` (``[members, cells, K]`` for an ensemble); ``truth`` their
    class codes. With ``calibrate`` the metrics' ``ece`` is cross-fitted and
    ``ece_uncalibrated`` is that of temperature 1.
    """
    temperature = fit_temperature(logits, truth) if calibrate else 1.0
    names = np.array(classes)
    probabilities = softmax(logits, temperature)
    metrics = classification_metrics(names[truth], names[probabilities.argmax(1)], probabilities)
    if calibrate:
        metrics["ece_uncalibrated"] = expected_calibration_error(
            probabilities.argmax(1) == truth, softmax(logits).max(1)
        )
        metrics["ece"] = cross_fitted_ece(logits, truth, seed)
    return temperature, probabilities, metrics


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member ``member`` (0 is ``seed`` itself), in [0, 2³²)."""
    return (seed + member) % 2**32


def select_and_refit(
    model: PyroSCVAE, config: TrainingConfig, run=train, member: int = 0
) -> History:
    """Train ``model`` as the module docstring says; returns the final model's history.

    Sets ``model.validation_cells``, ``validation_metrics``, ``temperature``,
    ``selection`` and ``epochs_trained`` (both fits together).
    ``run(module, data, config, on_epoch_end, description)`` trains one module
    (:func:`~pyro_scvae.training.train`; another runner may ignore ``on_epoch_end``
    and so not stop early). ``member`` > 0 trains ``model.module`` (member ``member``
    of an ensemble, initialised from its own seed) with the training seed
    :func:`member_seed`, on the held-out cells of ``config.seed``.
    """
    split_seed = config.seed
    config = replace(config, seed=member_seed(config.seed, member))
    who = f", member {member + 1} of {config.ensemble}" if config.ensemble > 1 else ""
    labels = np.full(len(model.data.labels), -1)
    labels[model.training_cells] = model.data.labels[model.training_cells]
    model.validation_cells = validation_split(
        labels, len(model.classes), config.validation_fraction, split_seed
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
        model.module,
        training_data(model, held),
        config,
        monitor,
        f"training (labels held out{who})",
    )
    best_epoch = len(first.elbo)
    if monitor is not None and monitor.best_state is not None:
        monitor.restore_best()
        best_epoch = monitor.best_epoch
    logits = held_out_logits(model, held)
    temperature, probabilities, model.validation_metrics = held_out_metrics(
        logits, truth, model.classes, config.calibrate, split_seed
    )
    model.validation_metrics["epoch"] = best_epoch
    model.selection = Selection(
        best_epoch=best_epoch,
        stopped_epoch=None if monitor is None else monitor.stopped_epoch,
        temperature=temperature,
        scores=[] if monitor is None else monitor.scores,
        history=first,
        seconds=time.perf_counter() - start,
        probabilities=probabilities,
        logits=logits,
    )
    model.temperature = temperature
    every_label = training_data(model, held[:0])
    model.epochs_trained = len(first.elbo)
    if config.refit == "none":
        return first
    if config.refit == "continue":
        stop = best_epoch + config.patience_epochs()  # past the schedule's end if need be
        more = TrainingConfig(**{**config.to_dict(), "start_epoch": best_epoch, "stop_epoch": stop})
        rest = run(model.module, every_label, more, None, f"training (all labels{who})")
        model.epochs_trained += len(rest.elbo)
        return joined(first, best_epoch, rest)
    model.module = model.new_module(member)
    refit = TrainingConfig(**{**config.to_dict(), "stop_epoch": best_epoch})
    history = run(model.module, every_label, refit, None, f"training (all labels{who})")
    model.epochs_trained += len(history.elbo)
    return history


@dataclass
class Member:
    """One fitted member of a seed ensemble, as :func:`select_and_refit` left it."""

    module: object  # HierarchicalVAE
    history: History
    selection: Selection | None
    validation_metrics: dict | None
    epochs_trained: int


def fit_ensemble(model: PyroSCVAE, config: TrainingConfig, run=train) -> History:
    """Fit ``config.ensemble`` members with :func:`select_and_refit`; returns member 0's history.

    Member 0 is the model a single fit gives (same seed, same weights). The others start
    from the initial weights of seed ``model.seed + m`` and train with
    :func:`member_seed`. ``model.module`` is member 0 (its z₁ is the latent
    representation, novelty reference and decoder of the model) and
    ``model.extra_members`` the others. The ensemble's temperature and
    ``validation_metrics`` are fitted anew on the stacked held-out logits of the
    members' selection fits; ``model.ensemble_summary`` keeps each member's held-out
    macro-F1 and stopping epoch.
    """
    model.extra_members = []
    members = []
    for index in range(config.ensemble):
        if index:
            model.module = model.new_module(index)
        history = select_and_refit(model, config, run, member=index)
        members.append(
            Member(
                model.module,
                history,
                model.selection,
                model.validation_metrics,
                model.epochs_trained,
            )
        )
    first = members[0]
    model.module, model.extra_members = first.module, [m.module for m in members[1:]]
    model.epochs_trained = sum(m.epochs_trained for m in members)
    model.ensemble_summary = None
    if len(members) == 1:
        return first.history
    model.ensemble_summary = {
        "members": len(members),
        "seeds": [member_seed(config.seed, m) for m in range(len(members))],
        "epochs_trained": [m.epochs_trained for m in members],
    }
    if first.selection is not None:
        logits = np.stack([m.selection.logits for m in members])  # [members, held-out, K]
        truth = model.data.labels[model.validation_cells]
        temperature, probabilities, metrics = held_out_metrics(
            logits, truth, model.classes, config.calibrate, config.seed
        )
        metrics["epoch"] = first.selection.best_epoch
        model.validation_metrics, model.temperature = metrics, temperature
        model.selection = replace(
            first.selection, temperature=temperature, probabilities=probabilities, logits=logits
        )
        model.ensemble_summary["member_macro_f1"] = [
            m.validation_metrics["macro_f1"] for m in members
        ]
        model.ensemble_summary["member_best_epochs"] = [m.selection.best_epoch for m in members]
    return first.history
