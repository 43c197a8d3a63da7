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
2. **fine-tunes** on the query's ELBO, every cell unlabelled (y enumerated), with the
   reference's weights frozen (:func:`freeze_reference`: only the new columns get a
   gradient, so Adam leaves every other weight exactly unchanged), or everything with
   ``freeze_reference=False``.

With the default ``encode_batch=False`` the encoder does not see the batch, so a
frozen reference maps every query cell to the same z₁ and the same calls with or without
fine-tuning; the new columns then model only the new batches' expression in the decoder.
Fine-tuning moves z₁ only for a reference trained with ``encode_batch=True``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from pyro_scvae.model import HierarchicalVAE

#: Gradient steps that :func:`fine_tune_epochs` aims at.
FINE_TUNE_STEPS = 300
#: Bounds of :func:`fine_tune_epochs`.
FINE_TUNE_EPOCH_BOUNDS = (5, 200)


def fine_tune_epochs(n_cells: int, batch_size: int) -> int:
    """Epochs of fine-tuning: about :data:`FINE_TUNE_STEPS` steps, within the bounds.

    ``ceil(300 / ceil(n_cells / batch_size))``, between 5 and 200: a query of 400 cells
    (one minibatch of 512) gets 200 epochs, 20,000 cells 8, a million 5.
    """
    steps_per_epoch = math.ceil(max(n_cells, 1) / batch_size)
    low, high = FINE_TUNE_EPOCH_BOUNDS
    return int(min(max(math.ceil(FINE_TUNE_STEPS / steps_per_epoch), low), high))


def batch_layers(vae: HierarchicalVAE) -> dict[str, torch.nn.Parameter]:
    """The weight matrices ``[out, inputs + n_batches]`` whose last columns meet the batch."""
    layers = {"x_decoder.hidden.0.weight": vae.x_decoder.hidden[0].weight}
    if vae.config.encode_batch:
        layers["x_encoder.mlp.0.weight"] = vae.x_encoder.mlp[0].weight
        if vae.config.separate_library_encoder:
            layers["library_encoder.mlp.0.weight"] = vae.library_encoder.mlp[0].weight
    return layers


def extend_batches(
    vae: HierarchicalVAE, library_loc: torch.Tensor, library_scale: torch.Tensor
) -> HierarchicalVAE:
    """A copy of ``vae`` with ``len(library_loc)`` more batches.

    Parameters
    ----------
    library_loc, library_scale
        ``[new batches]``: p(l) of the new batches (mean and standard deviation of their
        cells' log total counts).

    Returns
    -------
    HierarchicalVAE
        Every weight and buffer of ``vae``; each batch layer (:func:`batch_layers`) has
        one more column per new batch, equal to the mean of the reference batches' columns.
    """
    n_new, n_old = len(library_loc), vae.config.n_batches
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    for name in batch_layers(vae):
        weight = state[name]  # [out, inputs + B]
        mean_column = weight[:, -n_old:].mean(1, keepdim=True)  # [out, 1]
        state[name] = torch.cat([weight, mean_column.expand(-1, n_new)], dim=1)
    state["library_loc"] = torch.cat([state["library_loc"], library_loc.to(torch.float32)])
    state["library_scale"] = torch.cat([state["library_scale"], library_scale.to(torch.float32)])
    config = replace(vae.config, n_batches=n_old + n_new)
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


def freeze_reference(vae: HierarchicalVAE, n_reference_batches: int) -> list:
    """Freeze every weight but the new batches' columns; returns handles to undo it.

    Call ``handle.remove()`` on each after training. The batch layers get a gradient hook
    that zeroes the reference columns' gradient; Adam's update of an element whose
    gradient was always zero is exactly zero, so they do not change at all. The other
    weights stop requiring gradients (none is computed), but the first: Pyro's parameter
    store registers it, which makes it require a gradient again, so a hook zeroes it.
    """
    layers = {id(p): p for p in batch_layers(vae).values()}
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
