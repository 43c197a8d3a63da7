"""Query mapping: a trained reference learns the batches of a new query (the scArches idea).

The batch covariate enters the model as a one-hot input of the first layer of the
decoder p(x | z₁, l) (and of the encoders of q(z₁ | x) and q(l | x) with
``encode_batch=True``), and through the per-batch library-size prior p(l). Mapping a
query with new batch categories:

1. **extends** the covariate (:func:`extend_batches`): each of those first layers gains
   one weight column per new batch, initialised to the mean of the reference batches'
   columns, so that before any training a new batch is the average of the reference
   batches, exactly what an unseen batch gets without mapping
   (:meth:`~pyro_scvae.model.HierarchicalVAE.batch_inputs`); p(l) of a new batch is
   estimated from its cells, as for the reference batches;
2. gives the **encoders** the batch when the reference's did not (the default
   ``encode_batch=False``): their first layers gain a column per batch, zero for the
   reference batches and, at the start, for the new ones. A reference cell is encoded
   exactly as before; a query cell's first hidden layer gains a learned offset of its
   batch. That offset is what a batch effect on the encoder's input amounts to: a shift
   δ of each gene's log count moves the first layer's output by the constant W δ.
   Without it a frozen reference would map every query cell to the same z₁ and the same
   call with or without fine-tuning;
3. **fine-tunes** on the query's ELBO, every cell unlabelled (y enumerated), with the
   reference's weights frozen (:func:`freeze_reference`: only the new columns get a
   gradient, so Adam leaves every other weight exactly unchanged), or everything with
   ``freeze_reference=False``, in two phases of equal length (:data:`PHASES`): first only
   the decoder's new columns learn, the query encoded as the reference encodes it, so
   that the decoder takes up the new batch's effect on the counts; then the encoders'
   new columns (and, unfrozen, every weight) learn as well. Trained together from the
   start, the encoders' offsets move the query's z₁ to wherever a decoder that does not
   yet know the batch reconstructs it best, and the query mixed less well among the
   reference cells than without fine-tuning (``benchmarks/mapping.md``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyro_scvae.config import TrainingConfig
from pyro_scvae.data import CellData, count_matrix, library_prior, take_rows
from pyro_scvae.errors import InputError
from pyro_scvae.fitting import joined, member_seed
from pyro_scvae.genes import match_genes
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.training import train

if TYPE_CHECKING:
    import anndata as ad

    from pyro_scvae.api import PyroSCVAE

#: Gradient steps of each phase that :func:`fine_tune_epochs` aims at.
FINE_TUNE_STEPS = 300
#: Bounds of :func:`fine_tune_epochs` (each phase).
FINE_TUNE_EPOCH_BOUNDS = (5, 200)
#: The phases of fine-tuning, in order: which new columns learn in each (see the module).
PHASES = ("decoder", "all")
#: How the progress bar names them.
PHASE_NAMES = {"decoder": "1/2 decoder", "all": "2/2 decoder and encoders"}


def fine_tune_epochs(n_cells: int, batch_size: int) -> int:
    """Epochs of fine-tuning, both phases together: about 2 × :data:`FINE_TUNE_STEPS` steps.

    Each phase gets ``ceil(300 / ceil(n_cells / batch_size))`` epochs, between 5 and 200:
    a query of 400 cells (one minibatch of 512) gets 2 × 200 epochs, 20,000 cells 2 × 8,
    a million 2 × 5.
    """
    steps_per_epoch = math.ceil(max(n_cells, 1) / batch_size)
    low, high = FINE_TUNE_EPOCH_BOUNDS
    per_phase = min(max(math.ceil(FINE_TUNE_STEPS / steps_per_epoch), low), high)
    return int(len(PHASES) * per_phase)


def phase_epochs(epochs: int) -> list[int]:
    """``epochs`` split over :data:`PHASES`: the first phase gets the smaller half."""
    first = epochs // 2
    return [first, epochs - first]


def batch_layers(vae: HierarchicalVAE) -> dict[str, torch.nn.Parameter]:
    """The weight matrices ``[out, inputs + n_batches]`` whose last columns meet the batch."""
    layers = {"x_decoder.hidden.0.weight": vae.x_decoder.hidden[0].weight}
    if vae.config.encode_batch:
        layers.update(encoder_layers(vae))
    return layers


def encoder_layers(vae: HierarchicalVAE) -> dict[str, torch.nn.Parameter]:
    """The first weight matrices of the encoders of q(z₁ | x) and q(l | x)."""
    layers = {"x_encoder.mlp.0.weight": vae.x_encoder.mlp[0].weight}
    if vae.config.separate_library_encoder:
        layers["library_encoder.mlp.0.weight"] = vae.library_encoder.mlp[0].weight
    return layers


def extend_batches(
    vae: HierarchicalVAE, library_loc: torch.Tensor, library_scale: torch.Tensor
) -> HierarchicalVAE:
    """A copy of ``vae`` with ``len(library_loc)`` more batches, whose encoders see the batch.

    Parameters
    ----------
    library_loc, library_scale
        ``[new batches]``: p(l) of the new batches (mean and standard deviation of their
        cells' log total counts).

    Returns
    -------
    HierarchicalVAE
        Every weight and buffer of ``vae``; each batch layer (:func:`batch_layers`) has
        one more column per new batch, equal to the mean of the reference batches'
        columns. When ``vae``'s encoders do not see the batch, the copy's do
        (``encode_batch=True``) through zero columns, one per batch, old and new: every
        cell is encoded as ``vae`` encodes it until the new columns learn.
    """
    n_new, n_old = len(library_loc), vae.config.n_batches
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    for name in batch_layers(vae):
        weight = state[name]  # [out, inputs + B]
        mean_column = weight[:, -n_old:].mean(1, keepdim=True)  # [out, 1]
        state[name] = torch.cat([weight, mean_column.expand(-1, n_new)], dim=1)
    if not vae.config.encode_batch:
        for name in encoder_layers(vae):
            weight = state[name]  # [out, G]
            state[name] = torch.cat([weight, weight.new_zeros(len(weight), n_old + n_new)], 1)
    state["library_loc"] = torch.cat([state["library_loc"], library_loc.to(torch.float32)])
    state["library_scale"] = torch.cat([state["library_scale"], library_scale.to(torch.float32)])
    config = replace(vae.config, n_batches=n_old + n_new, encode_batch=True)
    n_library = n_old + n_new
    extended = HierarchicalVAE(config, torch.zeros(n_library), torch.ones(n_library))
    extended.load_state_dict(state)
    return extended


class _Thawed:
    """Undoes ``requires_grad_(False)`` on :meth:`remove`, as a hook's handle does."""

    def __init__(self, parameter: torch.nn.Parameter) -> None:
        self.parameter = parameter
        parameter.requires_grad_(False)

    def remove(self) -> None:
        self.parameter.requires_grad_(True)


def freeze_reference(vae: HierarchicalVAE, n_reference_batches: int, learning: str = "all") -> list:
    """Freeze every weight but the new batches' columns; returns handles to undo it.

    ``learning="decoder"`` freezes the encoders' new columns as well (the first phase of
    :data:`PHASES`). Call ``handle.remove()`` on each after training. The batch layers
    that learn get a gradient hook that zeroes the reference columns' gradient; Adam's
    update of an element whose gradient was always zero is exactly zero, so they do not
    change at all. The other weights stop requiring gradients (none is computed), but the
    first: Pyro's parameter store registers it, which makes it require a gradient again,
    so a hook zeroes it.
    """
    learn = batch_layers(vae)
    if learning == "decoder":
        learn = {name: p for name, p in learn.items() if name.startswith("x_decoder.")}
    layers = {id(p): p for p in learn.values()}
    witness = next(vae.parameters())  # see pyro_scvae.training.KnownParams
    handles = []
    for parameter in vae.parameters():
        if id(parameter) in layers:
            mask = torch.zeros_like(parameter)  # [out, inputs + B]
            n_batches = vae.config.n_batches
            mask[:, parameter.shape[1] - n_batches + n_reference_batches :] = 1.0
            handles.append(parameter.register_hook(lambda g, m=mask: g * m.to(g.device)))
        elif parameter is witness:
            handles.append(parameter.register_hook(torch.zeros_like))
        else:
            handles.append(_Thawed(parameter))
    return handles


def map_query(
    reference: PyroSCVAE,
    adata: ad.AnnData,
    epochs: int | None,
    freeze: bool,
    seed: int,
    batch_size: int,
    lr: float,
    device: str,
    progress: bool,
    threads: int | str | None,
) -> PyroSCVAE:
    """:meth:`PyroSCVAE.map_query <pyro_scvae.api.PyroSCVAE.map_query>`: a copy of
    ``reference`` that knows the new batches of ``adata``, fine-tuned on its cells."""
    key = reference.setup.get("batch_key")
    if key is None or not reference.batch_categories:
        raise InputError(
            "this model has no batch covariate, so there is no batch to map; "
            "fit the reference with a batch_key (--batch-key) to map queries"
        )
    if key not in adata.obs:
        raise InputError(f"batch column '{key}' not found in obs of the query")
    counts = match_genes(
        count_matrix(adata, reference.setup["layer"]), adata.var_names, reference.genes
    )
    values = adata.obs[key].astype(str).to_numpy()
    new = sorted(set(values) - set(reference.batch_categories))
    if not new:
        raise InputError(
            f"every batch of the query is one the model was trained on "
            f"({', '.join(sorted(set(values)))}); predict directly, without fine-tuning"
        )
    categories = [*reference.batch_categories, *new]
    index = {name: i for i, name in enumerate(categories)}
    batches = np.array([index[v] for v in values], dtype=np.int64)
    totals = np.asarray(counts.sum(axis=1)).ravel()  # [cells]
    cells = np.flatnonzero(totals > 0)
    loc, scale = library_prior(totals, batches, len(categories))
    n_reference = len(reference.batch_categories)
    epochs = fine_tune_epochs(len(cells), batch_size) if epochs is None else epochs
    config = TrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        kl_warmup=0.0,
        validation_fraction=0.0,
        early_stopping=False,
        calibrate=False,
    )
    data = CellData(take_rows(counts, cells), np.full(len(cells), -1), batches[cells])
    start = time.perf_counter()
    members, histories = [reference.module, *reference.extra_members], []
    for index, member in enumerate(members):  # each member of a seed ensemble alike
        module = extend_batches(member, loc[n_reference:], scale[n_reference:])
        who = f" (member {index + 1} of {len(members)})" if len(members) > 1 else ""
        phases = []
        for phase, phase_length in zip(PHASES, phase_epochs(epochs)):
            if phase == "decoder" or freeze:
                hooks = freeze_reference(module, n_reference, learning=phase)
            else:
                hooks = []
            phase_config = replace(config, epochs=phase_length, seed=member_seed(seed, index))
            name = f"fine-tuning{who}, {PHASE_NAMES[phase]}"
            try:
                with warnings.catch_warnings():  # frozen weights are not registered: as meant
                    warnings.filterwarnings("ignore", "(?s).*was not registered in the param store")
                    phases.append(train(module, data, phase_config, None, name, threads))
            finally:
                for hook in hooks:
                    hook.remove()
        first, rest = phases
        histories.append(joined(first, len(first.elbo), rest))
        members[index] = module
    history = histories[0]
    mapped = copy.copy(reference)
    mapped.module, mapped.extra_members = members[0], members[1:]
    mapped.config = mapped.module.config
    mapped.batch_categories = categories
    mapped.setup = dict(reference.setup)
    mapped.novelty = copy.deepcopy(reference.novelty)
    mapped.adata = mapped.data = None
    mapped.history, mapped.training_config = history, config
    mapped.train_seconds = time.perf_counter() - start
    mapped.epochs_trained = sum(len(h.elbo) for h in histories)
    mapped.selection, mapped.validation_metrics, mapped.distributed_run = None, None, None
    mapped.validation_cells = np.array([], dtype=np.int64)
    mapped.mapping = {
        "reference_batches": list(reference.batch_categories),
        "new_batches": new,
        "freeze_reference": bool(freeze),
        "epochs": len(history.elbo),  # of each member, both phases
        "n_cells": int(len(cells)),
    }
    return mapped
