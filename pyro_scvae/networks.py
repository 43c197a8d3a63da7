"""The neural networks of the model and the guide.

Each network is named for the distribution it parameterises (see MODEL.md):

==================  ===========================  =========================
network             distribution                 inputs
==================  ===========================  =========================
``x_encoder``       q(z₁ | x) and    (Normal,      log1p(x) [, batch]
                    q(l | x)         LogNormal)
``classifier``      q(y | z₁)       (logits)      z₁
``z2_encoder``      q(z₂ | z₁, y)   (Normal)      z₁, one-hot y
``z1_decoder``      p(z₁ | z₂, y)   (Normal)      z₂, one-hot y
``x_decoder``       p(x | z₁, l)    (ZINB)        z₁ [, batch]
==================  ===========================  =========================

q(z₁|x) and q(l|x) share the hidden layers of one encoder (as in Pyro's scANVI
example): its last layer gives d + 1 locations and scales, d for z₁ and one for log l.
Hidden layers are Linear → LayerNorm → ReLU → Dropout. LayerNorm acts on each cell
alone, so the networks behave identically whether or not Pyro has added a leading
enumeration dimension, and no flattening around batch statistics is needed.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import broadcast_shape
from torch import nn
from torch.nn.functional import softplus

#: Added to every standard deviation so that no Normal collapses to a point.
MIN_SCALE = 1e-4


def make_mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    """A fully connected network whose last layer is linear.

    Parameters
    ----------
    in_dim, out_dim
        Input and output widths.
    hidden_dims
        Widths of the hidden layers (may be empty: then one linear layer).
    dropout
        Dropout rate after each hidden layer.
    """
    layers: list[nn.Module] = []
    for width_in, width_out in zip([in_dim, *hidden_dims], hidden_dims):
        layers += [
            nn.Linear(width_in, width_out),
            nn.LayerNorm(width_out),
            nn.ReLU(),
            nn.Dropout(dropout),
        ]
    layers.append(nn.Linear(([in_dim, *hidden_dims])[-1], out_dim))
    return nn.Sequential(*layers)


def broadcast_cat(*inputs: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting all leading dimensions.

    Under enumeration y is ``[K, 1, K]`` while z₁ is ``[batch, d]``: both become
    ``[K, batch, ·]`` before they are joined.
    """
    shape = broadcast_shape(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], dim=-1)


class GaussianNet(nn.Module):
    """Maps its (broadcast, concatenated) inputs to the loc and scale of a diagonal Normal."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: list[int], dropout: float) -> None:
        super().__init__()
        self.mlp = make_mlp(in_dim, hidden_dims, 2 * out_dim, dropout)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.mlp(broadcast_cat(*inputs)).chunk(2, dim=-1)  # [..., out] each
        return loc, softplus(raw_scale) + MIN_SCALE


class Classifier(nn.Module):
    """q(y | z₁): returns logits over the K cell types."""

    def __init__(self, latent_dim: int, n_classes: int, hidden_dims: list[int], dropout: float):
        super().__init__()
        self.mlp = make_mlp(latent_dim, hidden_dims, n_classes, dropout)

    def forward(self, z1: torch.Tensor) -> torch.Tensor:
        return self.mlp(z1)  # [batch, K] logits


class XDecoder(nn.Module):
    """p(x | z₁, l): the gene proportions ρ (a softmax over genes) and the zero-inflation logits."""

    def __init__(self, in_dim: int, n_genes: int, hidden_dims: list[int], dropout: float) -> None:
        super().__init__()
        self.hidden = make_mlp(in_dim, hidden_dims[:-1], hidden_dims[-1], dropout)
        self.hidden_activation = nn.Sequential(nn.LayerNorm(hidden_dims[-1]), nn.ReLU())
        self.rho_logits = nn.Linear(hidden_dims[-1], n_genes)
        self.zi_logits = nn.Linear(hidden_dims[-1], n_genes)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_activation(self.hidden(broadcast_cat(*inputs)))  # [batch, H]
        rho = torch.softmax(self.rho_logits(hidden), dim=-1)  # [batch, G], rows sum to 1
        return rho, self.zi_logits(hidden)  # [batch, G] each
