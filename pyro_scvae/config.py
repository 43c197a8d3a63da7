"""Settings as small dataclasses, mirrored one to one by the command-line flags.

This module imports nothing heavy (no torch, no scanpy), so that the command lines can
build their parsers, with these defaults, and check options in a fraction of a second.
It also holds the schedules of training that are plain arithmetic: the default number
of epochs, the learning-rate factor and the KL weight β of each epoch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from pyro_scvae.errors import InputError


@dataclass
class ModelConfig:
    """Architecture and objective settings; saved beside the weights as JSON.

    Parameters
    ----------
    n_genes, n_classes, n_batches
        Data dimensions (``n_batches = 0`` means no batch covariate).
    n_latent
        Dimension of z₁ and of z₂.
    n_hidden, n_layers
        Width and number of hidden layers of every network.
    dropout
        Dropout rate in the encoders and the classifier.
    alpha
        Weight of the classification term α · log q(y | z₁) of labelled cells.
    encode_batch
        Whether the encoders of q(z₁ | x) and q(l | x) also see the one-hot batch (the
        decoder always does where there are batches). False is MODEL.md's q(z₁ | x) and
        scvi-tools' default (``encode_covariates=False``).
    separate_library_encoder
        Whether q(l | x) has an encoder of its own (True, as scvi-tools' ``l_encoder``) or
        shares the hidden layers of the encoder of q(z₁ | x) (False, as Pyro's scANVI
        example; models saved before the option load with it). Both are MODEL.md's
        "LogNormal from an encoder of log1p(x)"; the separate one was chosen on the
        benchmark tasks (``benchmarks/tuning.md``, fifth round).
    class_prior
        p(y): ``"frequencies"`` (of the labelled cells' labels, each count plus one; the
        default, chosen on the benchmark tasks, ``benchmarks/tuning.md``, nineteenth round:
        it equals the uniform prior where the labels are balanced) or ``"uniform"``
        (MODEL.md's default). It weighs only the unlabelled cells' q(y | z₁).
    balance_classes
        Power p of the weights ``n_y ** -p`` on the classification term of labelled cells
        (``True`` is 1, ``False`` is 0), see :class:`~pyro_scvae.api.PyroSCVAE`.
    """

    n_genes: int
    n_classes: int
    n_batches: int = 0
    n_latent: int = 30
    n_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.1
    alpha: float = 50.0
    encode_batch: bool = False
    separate_library_encoder: bool = True
    class_prior: str = "frequencies"
    balance_classes: bool | float = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingConfig:
    """Settings of one training run (the CLI flags mirror them).

    Parameters
    ----------
    epochs
        Passes over the training cells.
    batch_size
        Cells per minibatch.
    lr
        Learning rate of Adam.
    seed
        Seeds minibatch order and every sample drawn in training.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    progress
        Show a progress bar with the current ELBO.
    jit
        Compile the loss of full-size minibatches with ``JitTraceEnum_ELBO``.
    lr_schedule
        ``"constant"``, or ``"cosine"``: the learning rate of epoch e (from 0) is
        ``lr · (1 + cos(π e / epochs)) / 2``, falling smoothly towards 0 by the last epoch.
    kl_warmup
        Fraction of the epochs over which the KL weight β rises linearly from 0 to 1
        (β of epoch e is ``min(1, e / (kl_warmup · epochs))``); 0 trains with β = 1 throughout.
        The default, half the epochs, was chosen on the benchmark tasks
        (``benchmarks/tuning.md``).
    labelled_share
        Least share of each epoch's minibatches that are labelled; the labelled cells are
        passed over again as often as needed (see :func:`pyro_scvae.data.minibatches`).
        0 passes over them once an epoch. The default, a half, acts only where labelled
        cells are fewer than unlabelled ones; with 10 labels per type it lifted macro-F1 on
        T3s by 0.077 and 0.090 (seeds 0, 1) and on T5s by 0.031, and left T1a and T2 as
        they were (``benchmarks/cli_study.md``). Training through Lightning passes over
        the labelled cells once an epoch.
    validation_fraction
        Fraction of the labelled cells whose labels are hidden in a first fit, to measure
        honest metrics, choose the stopping epoch and calibrate (see
        :mod:`pyro_scvae.fitting`); 0 trains once on every label for ``epochs``.
    early_stopping
        Stop the first fit when the held-out cells' calibrated negative log-likelihood
        has not improved for ``patience`` epochs (never before the KL warm-up ends).
    patience
        Epochs without improvement before stopping, and the epochs of the ``"continue"``
        refit; None: a tenth of ``epochs``, at least 10 (or ``epochs`` when fewer).
    refit
        How the labels held out in the first fit reach the model that annotates:
        ``"full"`` trains the model again from its initial weights on every label for the
        number of epochs the first fit chose; ``"continue"`` goes on from the first fit's
        best epoch with every label for ``patience`` more epochs of the schedule;
        ``"none"`` keeps the first fit at its best epoch (the held-out labels are then
        never learnt).
    calibrate
        Fit a temperature for q(y | z₁) on the held-out cells (temperature scaling).
    ensemble
        Members of a seed ensemble: each member is fitted as above, from seeds
        ``seed``, ``seed + 1`` …, on the same held-out cells; the model's probabilities
        are the mean of theirs, calibrated by one temperature (see
        :func:`pyro_scvae.fitting.fit_ensemble`). 1: a single model.
    start_epoch, stop_epoch
        Train epochs ``start_epoch … stop_epoch - 1`` only (defaults: 0 and ``epochs``;
        past ``epochs`` the schedule keeps its last values); set by the refit.
    """

    epochs: int = 100
    batch_size: int = 512
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    jit: bool = False
    lr_schedule: str = "constant"
    kl_warmup: float = 0.5
    labelled_share: float = 0.5
    validation_fraction: float = 0.1
    early_stopping: bool = True
    patience: int | None = None
    refit: str = "continue"
    calibrate: bool = True
    ensemble: int = 1
    start_epoch: int = 0
    stop_epoch: int | None = None

    def __post_init__(self) -> None:
        # An unknown schedule or a warm-up outside [0, 1] fails here, before any work.
        lr_factor(self.lr_schedule, 0, 1)
        kl_weight(self.kl_warmup, 0, 1)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InputError("validation_fraction must be in [0, 1)")
        if not 0.0 <= self.labelled_share < 1.0:
            raise InputError("labelled_share must be in [0, 1)")
        whole = isinstance(self.ensemble, numbers.Integral) and not isinstance(self.ensemble, bool)
        if not whole or self.ensemble < 1:
            raise InputError(
                f"ensemble must be a whole number of members ≥ 1, not {self.ensemble!r}"
            )
        self.ensemble = int(self.ensemble)
        if self.refit not in REFIT_MODES:
            raise InputError(f"refit must be one of {REFIT_MODES}, not {self.refit!r}")

    @property
    def epochs_to_train(self) -> int:
        """The last epoch (exclusive) to train: ``stop_epoch`` or ``epochs``.

        A ``stop_epoch`` beyond ``epochs`` continues the schedule at its last values.
        """
        return self.epochs if self.stop_epoch is None else self.stop_epoch

    def patience_epochs(self) -> int:
        """``patience``, or its default: a tenth of ``epochs``, at least 10 (or ``epochs``)."""
        if self.patience is not None:
            return self.patience
        return max(min(10, self.epochs), round(self.epochs / 10))

    def to_dict(self) -> dict:
        return asdict(self)


LR_SCHEDULES = ("constant", "cosine")
#: Markers of the labelled types kept beside the ``--n-top-genes`` most variable genes, as a
#: share of ``--n-top-genes``: ``ceil(share · N / types)`` per type (:mod:`pyro_scvae.panel`).
MARKER_SHARE = 0.5
#: The most members of a seed ensemble that the command line fits and a saved model may hold.
MAX_ENSEMBLE = 100
REFIT_MODES = ("full", "continue", "none")


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of the learning rate in ``epoch`` (0-based) of ``epochs``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise InputError(f"unknown learning-rate schedule {schedule!r}; choose from {LR_SCHEDULES}")


def warmup_epochs(kl_warmup: float, epochs: int) -> float:
    """Length of the KL warm-up in epochs: ``kl_warmup · epochs`` (β < 1 before it ends)."""
    if not 0.0 <= kl_warmup <= 1.0:
        raise InputError(f"kl_warmup must be a fraction of the epochs in [0, 1], got {kl_warmup}")
    return kl_warmup * epochs


def kl_weight(kl_warmup: float, epoch: int, epochs: int) -> float:
    """β of ``epoch`` (0-based) of ``epochs``: linear from 0 over :func:`warmup_epochs`."""
    length = warmup_epochs(kl_warmup, epochs)
    return 1.0 if epoch >= length else epoch / length


def defaults(config: type) -> dict:
    """The default value of every field of a settings dataclass, by name."""
    return {f.name: f.default for f in fields(config)}


def default_epochs(n_cells: int) -> int:
    """``6000 / √n_cells`` epochs, between 20 and 300.

    Larger data get fewer epochs but more gradient steps (≈ 12 √n_cells at the default
    batch size of 512; 47 √n_cells at 128, the size the rule was chosen at): on the
    benchmark tasks four times the epochs of a ``200,000 / n_cells`` rule raised macro-F1
    on 8,617 cells (0.83 → 0.87) and lowered it on 1,200 (0.83 → 0.79), see
    ``benchmarks/tuning.md``. 1,200 cells get 173 epochs, 8,617 cells 65.
    """
    return int(min(max(round(6000 / math.sqrt(max(n_cells, 1))), 20), 300))
