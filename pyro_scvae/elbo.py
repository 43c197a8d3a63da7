"""The ELBO of MODEL.md derived by hand, in plain torch, with the sum over y written out.

This is the reference that Pyro's ``TraceEnum_ELBO`` is held against (see
``tests/test_elbo.py``) and a readable statement of the objective. Given the sampled
values z₁ ``[batch, d]``, l ``[batch]`` and z₂ ``[K, batch, d]`` (one draw per cell and
per value of y; ``[batch, d]`` for labelled cells), it returns the five terms per cell:

1. ``reconstruction``  log p(x | z₁, l)
2. ``z1``              Σ_y q(y|z₁) log p(z₁ | z₂, y) − log q(z₁ | x)
3. ``y``               Σ_y q(y|z₁) log [p(y) / q(y|z₁)]       (labelled: log p(y))
4. ``library``         log p(l) − log q(l | x)
5. ``z2``              Σ_y q(y|z₁) log [p(z₂) / q(z₂ | z₁, y)]

and, for labelled cells, ``classification`` = α_y · log q(y | z₁) (α_y = α unless the
classes are balanced, see :class:`~pyro_scvae.model.HierarchicalVAE`).
"""

from __future__ import annotations

import torch
from torch.distributions import LogNormal, Normal

from pyro_scvae.distributions import ZINB
from pyro_scvae.model import HierarchicalVAE


def elbo_terms(
    vae: HierarchicalVAE,
    x: torch.Tensor,
    z1: torch.Tensor,
    l: torch.Tensor,
    z2: torch.Tensor,
    y: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-cell terms 1–5 of the ELBO (and the classification term) at the given samples.

    Parameters
    ----------
    vae
        The model whose networks define every distribution.
    x
        Counts ``[batch, G]``.
    z1, l, z2
        Samples from the guide: ``[batch, d]``, ``[batch]``, and ``[K, batch, d]``
        (unlabelled) or ``[batch, d]`` (labelled).
    y
        Observed classes ``[batch]``, or None to sum over all K classes.
    batch
        Batch indices ``[batch]`` where the model has a batch covariate.

    Returns
    -------
    dict
        Tensors of shape ``[batch]``; their sum is the per-cell objective that
        ``TraceEnum_ELBO`` maximises (its loss is minus the sum over cells).
    """
    k = vae.config.n_classes
    batch_onehot = vae.batch_inputs(x, batch)

    # q(z₁|x), q(l|x) and p(l)
    z1_loc, z1_scale, l_loc, l_scale = vae.encode_x(x, batch_onehot)
    log_q_z1 = Normal(z1_loc, z1_scale).log_prob(z1).sum(-1)  # [batch]
    log_q_l = LogNormal(l_loc, l_scale).log_prob(l)  # [batch]
    log_p_l = LogNormal(*vae.library_prior(batch)).log_prob(l)  # [batch]

    # p(x | z₁, l) with scvi's ZINB
    rho, zi_logits = vae.x_decoder(z1, *batch_onehot)  # [batch, G]
    theta = vae.log_theta.exp()  # [G]
    reconstruction = ZINB(l.unsqueeze(-1) * rho, theta, zi_logits).log_prob(x).sum(-1)  # [batch]

    # q(y | z₁): weights of the explicit sum over y (a single observed y for labelled cells)
    log_q_y_all = torch.log_softmax(vae.classifier(z1), dim=-1)  # [batch, K]
    if y is None:
        ys = torch.arange(k, device=x.device).unsqueeze(-1)  # [K, 1]
        log_q_y = log_q_y_all.T  # [K, batch]
        weight = log_q_y.exp()  # [K, batch], q(y|z₁)
    else:
        ys = y.unsqueeze(0)  # [1, batch]
        log_q_y = log_q_y_all.gather(-1, y.unsqueeze(-1)).T  # [1, batch]
        weight = torch.ones_like(log_q_y)  # [1, batch]: the sum collapses to the observed y
        z2 = z2.unsqueeze(0)  # [1, batch, d]
    y_onehot = vae.one_hot_y(ys, x)  # [K, 1, K] or [1, batch, K]
    log_p_y = vae.class_log_prior[ys]  # [K, 1] or [1, batch]

    # p(z₁ | z₂, y), p(z₂), q(z₂ | z₁, y), one value per y
    log_p_z1 = Normal(*vae.z1_decoder(z2, y_onehot)).log_prob(z1).sum(-1)  # [K, batch]
    log_p_z2 = Normal(torch.zeros_like(z2), torch.ones_like(z2)).log_prob(z2).sum(-1)  # [K, b]
    log_q_z2 = Normal(*vae.z2_encoder(z1, y_onehot)).log_prob(z2).sum(-1)  # [K, batch]

    terms = {
        "reconstruction": reconstruction,
        "z1": (weight * log_p_z1).sum(0) - log_q_z1,
        "y": (weight * (log_p_y - log_q_y)).sum(0) if y is None else log_p_y.squeeze(0),
        "library": log_p_l - log_q_l,
        "z2": (weight * (log_p_z2 - log_q_z2)).sum(0),
    }
    if y is not None:
        terms["classification"] = vae.classification_weight[y] * log_q_y.squeeze(0)
    return terms


def hand_derived_elbo(*args, **kwargs) -> torch.Tensor:
    """The objective summed over cells: Σ of :func:`elbo_terms` (same arguments)."""
    return sum(term.sum() for term in elbo_terms(*args, **kwargs).values())
