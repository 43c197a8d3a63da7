"""Training on several devices or machines with PyTorch Lightning and DDP.

Nothing here is a home-made distributed engine: Pyro's ELBO is used as a torch module
(``TraceEnum_ELBO(max_plate_nesting=1)(vae.model, vae.guide)`` is an ``ELBOModule``
whose ``forward(x, y, batch)`` returns the differentiable loss), it is wrapped in a
:class:`lightning.LightningModule`, and ``lightning.Trainer`` with a DDP strategy runs
one process per device, averages the gradients across processes after every backward
pass and keeps the replicas identical.

The ``ELBOModule`` is given the bound methods ``vae.model`` and ``vae.guide``, which are
not modules, so it has no parameters of its own; the LightningModule holds the VAE as
a sub-module and its parameters are the VAE's. The model and the guide register the
same tensors in Pyro's parameter store (``pyro.module``); training runs inside a fresh
scope of that store so that it never disturbs, or is disturbed by, another model.

Minibatches are those of :func:`pyro_scvae.data.minibatches`: each epoch every process
draws the same shuffled list (the generator is seeded identically on every rank) and
rank ``r`` of ``W`` takes minibatches ``r, r + W, r + 2W, ...``; the last
``len(list) % W`` minibatches of the epoch are dropped so that every rank makes the
same number of steps. One optimiser step therefore averages the gradients of ``W``
minibatches, each still all labelled or all unlabelled.

Processes are started with ``ddp_spawn`` (works from a notebook and under pytest; the
trained weights come back to the calling process), or with ``ddp`` when the processes
were started outside (``torchrun``, SLURM) or span several nodes: then every process
runs the calling script, and only global rank 0 should write outputs
(:attr:`DistributedRun.is_global_zero`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import pyro
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from pyro.infer import TraceEnum_ELBO
from pyro.optim.clipped_adam import ClippedAdam
from torch.utils.data import DataLoader, Dataset, Sampler

from pyro_scvae.data import CellData, InputError, minibatches
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.training import History, ScaleKL, TrainingConfig, kl_weight, lr_factor

#: Element-wise gradient clipping of Pyro's ClippedAdam, as in single-process training.
CLIP_NORM = 100.0
#: Labelled minibatches observe y and have nothing to enumerate: expected, not a problem.
NO_SAMPLE_SITES = "TraceEnum_ELBO found no sample sites"
#: Lightning's hint to use DataLoader workers: minibatches are cut from the sparse matrix
#: in the training process on purpose (it is cheap beside a training step).
FEW_WORKERS = r".*does not have many workers.*"


@dataclass
class DistributedRun:
    """What a Lightning run gives back to the calling process.

    Attributes
    ----------
    history
        ELBO per cell (over the cells of all ranks) and seconds, one entry per epoch.
    world_size
        Number of processes that trained.
    replica_max_abs_difference
        Largest difference between any weight of any rank and the same weight of rank 0
        after training; DDP keeps the replicas identical, so this is 0.
    is_global_zero
        False in processes other than global rank 0 (only with ``ddp``, where every
        process runs the calling script); those should not write outputs.
    """

    history: History
    world_size: int
    replica_max_abs_difference: float
    is_global_zero: bool = True


def n_minibatches(labels: np.ndarray, batch_size: int) -> int:
    """Number of minibatches :func:`~pyro_scvae.data.minibatches` makes in one epoch."""
    n_labelled = int((labels >= 0).sum())
    n_unlabelled = len(labels) - n_labelled
    return -(-n_labelled // batch_size) + -(-n_unlabelled // batch_size)


class ShardedMinibatches(Sampler):
    """Each epoch's minibatches, shared out between ranks.

    Every rank holds the same generator, so every rank draws the same list of
    minibatches each epoch; rank ``rank`` yields every ``world_size``-th of them,
    starting at its own position, and the remainder is dropped.

    Parameters
    ----------
    labels
        Class codes of the training cells ``[cells]``, ``-1`` where unlabelled.
    batch_size
        Cells per minibatch.
    seed
        Seeds the minibatch order; must be the same on every rank.
    rank, world_size
        This process's global rank and the number of processes.
    multiple
        Each rank's count is made a multiple of this (gradient accumulation over
        ``multiple`` minibatches, so that every optimiser step sees as many).
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        multiple: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.labels = labels
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.rng = np.random.default_rng(seed)
        group = world_size * multiple
        self.per_rank = n_minibatches(labels, batch_size) // group * multiple
        if self.per_rank == 0:
            raise InputError(
                f"{n_minibatches(labels, batch_size)} minibatches per epoch cannot be shared "
                f"between {world_size} processes; use a smaller batch size or fewer devices"
            )

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[np.ndarray, bool]]:
        epoch = list(minibatches(self.labels, self.batch_size, self.rng))
        used = epoch[: self.per_rank * self.world_size]
        return iter(used[self.rank :: self.world_size])


class MinibatchDataset(Dataset):
    """Turns ``(cell indices, is_labelled)`` into the model's ``(x, y, batch)`` tensors."""

    def __init__(self, data: CellData) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.n_cells

    def __getitem__(
        self, item: tuple[np.ndarray, bool]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        index, labelled = item
        return self.data.tensors(index, "cpu", labelled)  # [batch, G], [batch] | None, ...


class ELBOLightningModule(L.LightningModule):
    """The VAE trained by minimising ``TraceEnum_ELBO`` through Lightning.

    Parameters
    ----------
    vae
        The model; its parameters are this module's parameters.
    data
        Training cells.
    config
        Epochs, batch size, learning rate and seed. ``device`` is not used (the
        Trainer's accelerator decides), nor ``jit``: Lightning runs the uncompiled
        ``TraceEnum_ELBO``.
    accumulate_grad_batches
        The Trainer's setting of the same name (the sampler needs it).
    """

    def __init__(
        self,
        vae: HierarchicalVAE,
        data: CellData,
        config: TrainingConfig,
        accumulate_grad_batches: int = 1,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.data = data
        self.config = config
        self.accumulate_grad_batches = accumulate_grad_batches
        self.elbo: torch.nn.Module | None = None  # built in each process, see setup()
        # Persistent buffers travel back to the calling process with the weights.
        n_epochs = config.epochs_to_train - config.start_epoch  # this run's epochs
        self.register_buffer("elbo_history", torch.full((n_epochs,), float("nan")))
        self.register_buffer("seconds_history", torch.full((n_epochs,), float("nan")))
        self.register_buffer("replica_difference", torch.tensor(float("nan")))
        self._loss_sum = 0.0
        self._cells = 0
        self._epoch_start = 0.0
        # Processes started by ddp_spawn get the caller's warning filters (in setup).
        self._caller_pid = os.getpid()
        self._caller_warning_filters = list(warnings.filters)
        self._quiet = not config.progress

    def setup(self, stage: str) -> None:
        if os.getpid() != self._caller_pid:
            warnings.filters[:] = self._caller_warning_filters
            if self._quiet:
                quiet_lightning_logs()
        # Built here, after the module reached its process: the guide wrapped by
        # config_enumerate cannot be pickled as a bound method (ddp_spawn pickles).
        self.scale_kl = ScaleKL()  # β of the KL warm-up, set each epoch
        self.elbo = TraceEnum_ELBO(max_plate_nesting=1)(
            self.scale_kl(self.vae.model), self.scale_kl(self.vae.guide)
        )

    def train_dataloader(self) -> DataLoader:
        sampler = ShardedMinibatches(
            self.data.labels,
            self.config.batch_size,
            self.config.seed,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
            multiple=self.accumulate_grad_batches,
        )
        return DataLoader(MinibatchDataset(self.data), sampler=sampler, batch_size=None)

    def on_train_start(self) -> None:
        # The same minibatch order everywhere, different Monte Carlo draws on each rank.
        pyro.set_rng_seed(self.config.seed + self.global_rank)

    def on_train_epoch_start(self) -> None:
        self.scale_kl.weight = kl_weight(  # the schedule's epoch: a refit may start later
            self.config.kl_warmup, self.config.start_epoch + self.current_epoch, self.config.epochs
        )
        self._loss_sum, self._cells = 0.0, 0
        self._epoch_start = time.perf_counter()

    def training_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
        batch_idx: int,
    ) -> torch.Tensor:
        x, y, b = batch  # [batch, G], [batch] or None, [batch] or None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", NO_SAMPLE_SITES, UserWarning)
            loss = self.elbo(x, y, b)  # [] minus the summed ELBO of the minibatch
        self._loss_sum += loss.item()
        self._cells += x.shape[0]
        return loss

    def on_train_epoch_end(self) -> None:
        totals = torch.tensor([self._loss_sum, float(self._cells)], device=self.device)  # [2]
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # [2] over all ranks
        epoch = self.current_epoch
        self.elbo_history[epoch] = -totals[0] / totals[1]
        self.seconds_history[epoch] = time.perf_counter() - self._epoch_start
        # Every rank holds the same reduced value: "max" over ranks is that value.
        elbo = self.elbo_history[epoch].clone()
        self.log("elbo", elbo, prog_bar=True, sync_dist=True, reduce_fx="max")

    def on_train_end(self) -> None:
        weights = torch.cat([p.detach().reshape(-1) for p in self.vae.parameters()])  # [P]
        gathered = self.all_gather(weights).reshape(-1, weights.numel())  # [W, P]
        self.replica_difference.fill_((gathered - gathered[:1]).abs().max())

    def configure_optimizers(self) -> dict:
        optimiser = ClippedAdam(self.vae.parameters(), lr=self.config.lr, clip_norm=CLIP_NORM)
        schedule = torch.optim.lr_scheduler.LambdaLR(  # per epoch, as in single-process training
            optimiser,
            lambda epoch: lr_factor(
                self.config.lr_schedule,
                min(self.config.start_epoch + epoch, self.config.epochs - 1),
                self.config.epochs,
            ),
        )
        return {
            "optimizer": optimiser,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }


def quiet_lightning_logs() -> dict[str, int]:
    """Lightning's information messages off (warnings stay); returns the previous levels."""
    previous = {}
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.setLevel(logging.WARNING)
    return previous


def launched_externally() -> bool:
    """Whether this process was started by torchrun, SLURM's srun or another launcher."""
    return (
        TorchElasticEnvironment.detect()
        or SLURMEnvironment.detect()
        or "LOCAL_RANK" in os.environ  # Lightning's own sign of processes started outside
    )


def choose_strategy(devices: int, num_nodes: int) -> str:
    """``ddp`` where processes are started outside or span nodes, else ``ddp_spawn``."""
    if num_nodes > 1 or launched_externally():
        return "ddp"
    return "ddp_spawn" if devices > 1 else "auto"


def train_distributed(
    vae: HierarchicalVAE,
    data: CellData,
    config: TrainingConfig,
    devices: int = 1,
    accelerator: str = "auto",
    num_nodes: int = 1,
    strategy: str | None = None,
    accumulate_grad_batches: int = 1,
) -> DistributedRun:
    """Fit ``vae`` to ``data`` with ``lightning.Trainer``; the weights are updated in place.

    Parameters
    ----------
    vae
        The model, trained in place.
    data
        Training cells.
    config
        Epochs, batch size, learning rate, seed and whether to show a progress bar
        (``device`` and ``jit`` are not used here).
    devices
        Processes per node (CPU processes or GPUs).
    accelerator
        ``"auto"``, ``"cpu"`` or ``"gpu"``.
    num_nodes
        Machines taking part; each runs ``devices`` processes.
    strategy
        A Lightning strategy; by default :func:`choose_strategy`.
    accumulate_grad_batches
        Minibatches whose gradients are averaged before each optimiser step. One
        process with ``accumulate_grad_batches=W`` takes the same steps, on the same
        minibatches, as ``W`` DDP processes (up to Monte Carlo noise).

    Returns
    -------
    DistributedRun
        The per-epoch history and a check that the replicas agree.
    """
    if accelerator not in ("auto", "cpu", "gpu"):
        raise InputError(f"accelerator must be auto, cpu or gpu, not {accelerator!r}")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise InputError("--accelerator gpu was requested but no CUDA GPU is available")
    if devices < 1 or num_nodes < 1:
        raise InputError("devices and num_nodes must be positive")
    previous_levels = quiet_lightning_logs() if not config.progress else {}
    try:
        with pyro.get_param_store().scope(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", NO_SAMPLE_SITES, UserWarning)
            warnings.filterwarnings("ignore", FEW_WORKERS)
            module = ELBOLightningModule(vae, data, config, accumulate_grad_batches)
            try:
                trainer = L.Trainer(
                    accelerator=accelerator,
                    devices=devices,
                    num_nodes=num_nodes,
                    strategy=strategy or choose_strategy(devices, num_nodes),
                    max_epochs=config.epochs_to_train - config.start_epoch,
                    accumulate_grad_batches=accumulate_grad_batches,
                    enable_checkpointing=False,
                    logger=False,
                    enable_progress_bar=config.progress,
                    enable_model_summary=False,
                    use_distributed_sampler=False,  # ShardedMinibatches shards minibatches
                    num_sanity_val_steps=0,
                )
            except MisconfigurationException as error:  # e.g. more devices than there are
                raise InputError(f"Lightning cannot use these devices: {error}") from None
            trainer.fit(module)
    finally:
        for name, level in previous_levels.items():
            logging.getLogger(name).setLevel(level)
    vae.cpu().eval()
    history = History(
        elbo=module.elbo_history.cpu().tolist(), epoch_seconds=module.seconds_history.cpu().tolist()
    )
    return DistributedRun(
        history=history,
        world_size=trainer.world_size,
        replica_max_abs_difference=float(module.replica_difference),
        is_global_zero=trainer.is_global_zero,
    )
