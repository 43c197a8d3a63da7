"""Semi-supervised training with ``SVI`` and ``TraceEnum_ELBO``.

Labelled minibatches call ``svi.step(x, y, batch)`` and unlabelled ones
``svi.step(x, None, batch)``; y is enumerated in the second case. The loss of a
minibatch is minus its summed ELBO, so every cell weighs the same whichever kind of
minibatch it falls in; the history reports the ELBO per cell.

With ``jit=True``, full-size minibatches go through ``JitTraceEnum_ELBO``, which
compiles the loss once per call signature. Its cache is keyed on the number of
arguments and freezes the minibatch size into the trace, so labelled minibatches are
called as ``(x, batch, y)`` and unlabelled ones as ``(x, batch)``, and the ragged last
minibatch of an epoch goes through the uncompiled ``TraceEnum_ELBO`` (same objective,
same optimiser state) instead of being dropped. The compiled step is the same stochastic
gradient: no random draw is frozen into the trace (every parameter's gradient changes
from step to step at a fixed minibatch, ``tests/test_training.py``), and at trained
weights of a real task the mean and spread of every gradient element match the
uncompiled step's (``benchmarks/speed.md``). Its lower macro-F1 on small tasks is that of
any other random stream: the uncompiled step with its stream shifted by one draw loses as
much on the same seeds. It is faster only on a GPU at small minibatches; on the CPU it is
not, and neither is ``torch.compile`` of the networks or of the ZINB.

KL warm-up (``kl_warmup``, as scvi-tools' ``n_epochs_kl_warmup``) multiplies the
terms of y, z₂ and l (terms 3, 5 and 4 of MODEL.md's ELBO) by a weight β that rises
linearly from 0 to 1 over the first part of training; the reconstruction, the z₁ term
and the classification term keep weight 1. It is a schedule of the optimiser's
objective, applied from outside the model (:class:`ScaleKL`); from the epoch where
β = 1 on, training maximises MODEL.md's ELBO exactly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro.infer import SVI, JitTraceEnum_ELBO, TraceEnum_ELBO
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from tqdm import tqdm  # a text bar: works in terminals and notebooks alike

from pyro_scvae.config import (  # noqa: F401 (re-exported: schedules live in config)
    LR_SCHEDULES,
    TrainingConfig,
    kl_weight,
    lr_factor,
    warmup_epochs,
)
from pyro_scvae.data import CellData, InputError, minibatches
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.threads import ThreadPolicy


@dataclass
class History:
    """What training recorded, one entry per epoch."""

    # mean ELBO per cell (incl. α term); in the KL warm-up, the objective with β < 1
    elbo: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    # CPU seconds of this process (all its threads) in each epoch: on a busy machine, the
    # work done, where wall time also counts the waits for a core
    epoch_cpu_seconds: list[float] = field(default_factory=list)
    # torch threads of each epoch, and what chose them (pyro_scvae.threads.ThreadPolicy)
    threads: list[int] = field(default_factory=list)
    threads_summary: dict = field(default_factory=dict)


class ScaleKL(Messenger):
    """Multiplies the log-densities of y, z₂ and l, in the model and in the guide, by β.

    Used as a wrapper (``ScaleKL(β)(vae.model)``), it scales terms 3, 4 and 5 of the ELBO
    (tested against :func:`pyro_scvae.elbo.elbo_terms`); ``weight`` may change between
    calls. β = 1 leaves the objective unchanged.
    """

    SITES = ("y", "z2", "l")

    def __init__(self, weight: float | torch.Tensor = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg: dict) -> None:
        if msg["name"] in self.SITES:
            msg["scale"] = msg["scale"] * self.weight


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available")
    return torch.device(device)


class JointAdam(PyroOptim):
    """Adam over all parameters in one multi-tensor update, for ``SVI``.

    Pyro's optimisers keep one torch optimiser per parameter and step them one by one in
    Python, which costs a tenth of a training step of this model on a CPU. This one keeps
    SVI's interface (it is called with the parameters of the step's trace) but updates
    them together with ``torch.optim.Adam(fused=True)``, after clipping every gradient
    element to ±``clip_value`` as Pyro's ``ClippedAdam`` does, and then clears their
    gradients. Its parameters are ``params`` where given (the module's: then the step's
    trace need not name them, see :class:`KnownParams`), else those of its first call;
    the parameter set never changes.

    Parameters
    ----------
    lr
        Learning rate.
    clip_value
        Largest absolute value of a gradient element.
    params
        The parameters to update (None: those SVI passes on the first step).
    """

    def __init__(
        self, lr: float, clip_value: float = 100.0, params: list[torch.Tensor] | None = None
    ) -> None:
        super().__init__(torch.optim.Adam, {"lr": lr})
        self.lr, self.clip_value = lr, clip_value
        self.params = None if params is None else list(params)
        self.optimiser: torch.optim.Adam | None = None

    def set_lr(self, lr: float) -> None:
        """Learning rate of the following steps."""
        self.lr = lr
        if self.optimiser is not None:
            for group in self.optimiser.param_groups:
                group["lr"] = lr

    def __call__(self, params, *args, **kwargs) -> None:
        if self.params is None:
            self.params = list(params)
        if self.optimiser is None:
            self.optimiser = torch.optim.Adam(self.params, lr=self.lr, fused=True)
        torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)


class KnownParams(Messenger):
    """Answers ``pyro.param`` for a module's parameters at once, unseen by the rest of Pyro.

    ``pyro.module`` in the model and the guide registers each of the module's parameters
    through Pyro's whole effect stack on every step (the trace of the ELBO, the
    enumeration, SVI's parameter capture): a fifth of a step at batch size 128 on a CPU
    (``benchmarks/speed.md``). Innermost of the stack, this messenger returns such a
    parameter as it is, which is what the parameter store returns for it too, so values
    and gradients are unchanged. One parameter, the first, still goes through the stack:
    ``TraceEnum_ELBO`` differentiates the loss only when its traces hold a parameter.
    SVI then passes only that one to :class:`JointAdam`, which, given all of the module's,
    updates and clears them itself.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.witness = next(module.parameters())  # registered as usual

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "param" and len(msg["args"]) > 1:
            value = msg["args"][1]
            if isinstance(value, torch.nn.Parameter) and value is not self.witness:
                msg["value"], msg["done"], msg["stop"] = value, True, True


class Stepper:
    """One SVI step per minibatch: SVI with TraceEnum_ELBO (exact sum over y), compiled or not.

    Parameters
    ----------
    vae
        The model and guide.
    lr
        Learning rate of Adam (with element-wise gradient clipping).
    jit_batch_size
        Minibatches of exactly this size use the compiled ELBO; None disables compilation.
    """

    def __init__(self, vae: HierarchicalVAE, lr: float, jit_batch_size: int | None = None):
        # shared by both objectives; it knows the parameters, so the uncompiled steps need
        # not register them (KnownParams). The compiled trace takes the parameters it
        # finds registered as its inputs, so there they are registered as usual.
        self.optimiser = optimiser = JointAdam(lr, params=list(vae.parameters()))
        self.scale_kl = ScaleKL()  # β, set by set_kl_weight
        known = KnownParams(vae)
        self.svi = SVI(
            self.scale_kl(known(vae.model)),
            self.scale_kl(known(vae.guide)),
            optimiser,
            loss=TraceEnum_ELBO(max_plate_nesting=1),
        )
        self.jit_batch_size = jit_batch_size
        if jit_batch_size is not None:
            has_batches = vae.config.n_batches > 0

            # Every argument a tensor (β too, or the trace would freeze it), y last and only
            # when observed: one compiled trace each.
            def model(x, batch, beta, *y):
                with ScaleKL(beta):
                    vae.model(x, y[0] if y else None, batch if has_batches else None)

            def guide(x, batch, beta, *y):
                with ScaleKL(beta):
                    vae.guide(x, y[0] if y else None, batch if has_batches else None)

            self.compiled_elbo = JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
            self.compiled = SVI(model, guide, optimiser, loss=self.compiled_elbo)

    def set_kl_weight(self, beta: float) -> None:
        """β of the following steps (see :class:`ScaleKL`)."""
        self.scale_kl.weight = beta

    def step(self, x: torch.Tensor, y: torch.Tensor | None, batch: torch.Tensor | None) -> float:
        """One gradient step on a minibatch; returns its loss (minus the summed ELBO)."""
        if self.jit_batch_size is None or x.shape[0] != self.jit_batch_size:
            return self.svi.step(x, y, batch)
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # unused
        beta = torch.tensor(float(self.scale_kl.weight), device=x.device)
        args = (x, batch, beta) if y is None else (x, batch, beta, y)
        return self.compiled.step(*args)


def train(
    vae: HierarchicalVAE,
    data: CellData,
    config: TrainingConfig,
    on_epoch_end: Callable[[int, History], bool] | None = None,
    description: str = "training",
    threads: int | str = "auto",
) -> History:
    """Fit ``vae`` to ``data`` in place; returns the per-epoch history.

    Parameters live in a private Pyro parameter store for the duration of the run, so
    training one model never disturbs another.

    Parameters
    ----------
    on_epoch_end
        Called with the 0-based epoch and the history so far after each epoch (with the
        module in eval mode, so that evaluating it draws no random numbers and leaves the
        training trajectory unchanged); training stops when it returns True (see
        :mod:`pyro_scvae.selection`).
    threads
        torch's thread count for the run, or ``"auto"`` (:mod:`pyro_scvae.threads`: chosen
        from the free cores and the size of a minibatch, and revisited as training goes);
        torch's own setting is restored afterwards.
    """
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    vae.to(device).train()
    history = History()
    work = min(config.batch_size, data.n_cells) * data.counts.shape[1]  # [batch, G] per step
    # Pyro's per-site argument and support checks cost a tenth of a step; the counts are
    # checked once when loaded, and a non-finite ELBO is caught below at each epoch's end.
    with (
        pyro.get_param_store().scope(),
        pyro.validation_enabled(False),
        warnings.catch_warnings(),
        ThreadPolicy(threads, work) as thread_policy,
    ):
        # Labelled minibatches observe y, so they have nothing to enumerate: expected.
        warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites", UserWarning)
        stepper = Stepper(vae, config.lr, config.batch_size if config.jit else None)
        epochs = tqdm(
            range(config.start_epoch, config.epochs_to_train),
            desc=description,
            unit="epoch",
            disable=not config.progress,
        )
        for epoch in epochs:
            stepper.optimiser.set_lr(
                config.lr
                * lr_factor(config.lr_schedule, min(epoch, config.epochs - 1), config.epochs)
            )
            stepper.set_kl_weight(kl_weight(config.kl_warmup, epoch, config.epochs))
            start, start_cpu = time.perf_counter(), time.process_time()
            total_loss = 0.0
            for index, labelled in minibatches(
                data.labels, config.batch_size, rng, labelled_share=config.labelled_share
            ):
                total_loss += stepper.step(*data.tensors(index, device, labelled))
            history.epoch_seconds.append(time.perf_counter() - start)
            history.epoch_cpu_seconds.append(time.process_time() - start_cpu)
            history.elbo.append(-total_loss / data.n_cells)  # per cell (labelled re-passes incl.)
            history.threads.append(thread_policy.current)
            if not np.isfinite(total_loss):
                raise InputError(
                    f"training diverged in epoch {len(history.elbo)} (the ELBO is not finite); "
                    "try a lower learning rate (--lr)"
                )
            thread_policy.recheck()  # the machine may have got busier or freer
            epochs.set_postfix(elbo=f"{history.elbo[-1]:.1f}", threads=thread_policy.current)
            if on_epoch_end is not None:
                vae.eval()
                stop = on_epoch_end(epoch, history)
                vae.train()
                if stop:
                    break
        history.threads_summary = thread_policy.summary()
    vae.eval()
    return history
