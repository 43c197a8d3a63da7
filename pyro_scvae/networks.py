"""The neural networks of the model and the guide.

Each network is named for the distribution it parameterises (see MODEL.md):

=================== ===========================  =========================
network             distribution                 inputs
=================== ===========================  =========================
``x_encoder``       q(z₁ | x)       (Normal)      log1p(x) [, batch when
                                                  ``encode_batch``]
``library_encoder`` q(l | x)        (LogNormal)   the same as ``x_encoder``
``classifier``      q(y | z₁)       (logits)      z₁
``z2_encoder``      q(z₂ | z₁, y)   (Normal)      z₁, one-hot y
``z1_decoder``      p(z₁ | z₂, y)   (Normal)      z₂, one-hot y
``x_decoder``       p(x | z₁, l)    (ZINB)        z₁ [, batch]
=================== ===========================  =========================

q(l|x) has an encoder of its own, as in scvi-tools. With
``separate_library_encoder=False`` there is no ``library_encoder``: q(z₁|x) and q(l|x)
share the hidden layers of ``x_encoder`` (as in Pyro's scANVI example), whose last layer
then gives d + 1 locations and scales, d for z₁ and one for log l.
Hidden layers are Linear → LayerNorm → ReLU → Dropout. LayerNorm acts on each cell
alone, so the networks behave identically whether or not Pyro has added a leading
enumeration dimension, and no flattening around batch statistics is needed. Dropout
(:class:`CellDropout`) likewise draws one mask per cell, shared by its K enumerated copies.

A network with several inputs (z₁ and one-hot y, say) is a network on their
concatenation, but the concatenation is never built: its first layer multiplies each
input by its own block of weight columns and sums the broadcast products
(:class:`ConcatLinear`). Under enumeration z₁ is ``[batch, d]`` and y ``[K, 1, K]``, so
z₁ is multiplied once rather than copied and multiplied K times.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear, softplus

#: Added to every standard deviation so that no Normal collapses to a point.
MIN_SCALE = 1e-4


class ConcatLinear(nn.Linear):
    """``Linear`` applied to the concatenation of its inputs, computed block by block.

    W [x₁; x₂] + b = W₁ x₁ + W₂ x₂ + b, where W₁, W₂ are the column blocks of W that
    meet each input. The products are broadcast against each other, so inputs may
    differ in their leading dimensions (``[batch, d]`` and ``[K, 1, K]`` give
    ``[K, batch, out]``). Weights and bias are those of one ``nn.Linear(sum(in_dims), out)``.
    """

    def __init__(self, in_dims: list[int], out_dim: int) -> None:
        super().__init__(sum(in_dims), out_dim)
        self.in_dims = list(in_dims)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        blocks = self.weight.split(self.in_dims, dim=1)  # [out, in_i] each
        out = linear(inputs[0], blocks[0], self.bias)
        for x, block in zip(inputs[1:], blocks[1:]):
            out = out + linear(x, block)  # broadcasts the leading dimensions
        return out


class CellDropout(nn.Dropout):
    """Dropout whose mask is drawn once per cell and unit, shared by the leading dimensions.

    On a ``[batch, H]`` input it is ``nn.Dropout``. On ``[K, batch, H]`` (a network under
    Pyro's enumeration of y) one ``[batch, H]`` mask serves all K values of y, so the
    K copies of a cell see the same thinned network. Each copy's mask has the law of
    ``nn.Dropout``'s, so the expected loss is unchanged; K times fewer random numbers
    are drawn.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or input.dim() < 3:
            return super().forward(input)
        keep = 1.0 - self.p
        mask = input.new_empty(input.shape[-2:]).bernoulli_(keep).div_(keep)  # [batch, H]
        return input * mask  # [..., batch, H]


class MLP(nn.Sequential):
    """A fully connected network on one or more inputs, whose last layer is linear.

    Parameters
    ----------
    in_dims
        Widths of the inputs (their concatenation is the network's input).
    hidden_dims
        Widths of the hidden layers (may be empty: then one linear layer).
    out_dim
        Output width.
    dropout
        Dropout rate after each hidden layer.
    """

    def __init__(
        self, in_dims: list[int], hidden_dims: list[int], out_dim: int, dropout: float
    ) -> None:
        widths = [*hidden_dims, out_dim]
        layers: list[nn.Module] = [ConcatLinear(in_dims, widths[0])]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.LayerNorm(width_in), nn.ReLU(), CellDropout(dropout)]
            layers.append(nn.Linear(width_in, width_out))
        super().__init__(*layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        first, *rest = self.children()
        out = first(*inputs)
        for layer in rest:
            out = layer(out)
        return out


class GaussianNet(nn.Module):
    """Maps its inputs (broadcast against each other) to the loc and scale of a diagonal Normal."""

    def __init__(
        self, in_dims: list[int], out_dim: int, hidden_dims: list[int], dropout: float
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_dims, hidden_dims, 2 * out_dim, dropout)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.mlp(*inputs).chunk(2, dim=-1)  # [..., out] each
        return loc, softplus(raw_scale) + MIN_SCALE


class Classifier(nn.Module):
    """q(y | z₁): returns logits over the K cell types."""

    def __init__(self, latent_dim: int, n_classes: int, hidden_dims: list[int], dropout: float):
        super().__init__()
        self.mlp = MLP([latent_dim], hidden_dims, n_classes, dropout)

    def forward(self, z1: torch.Tensor) -> torch.Tensor:
        return self.mlp(z1)  # [batch, K] logits


class XDecoder(nn.Module):
    """p(x | z₁, l): the gene proportions ρ (a softmax over genes) and the zero-inflation logits."""

    def __init__(
        self, in_dims: list[int], n_genes: int, hidden_dims: list[int], dropout: float
    ) -> None:
        super().__init__()
        self.hidden = MLP(in_dims, hidden_dims[:-1], hidden_dims[-1], dropout)
        self.hidden_activation = nn.Sequential(nn.LayerNorm(hidden_dims[-1]), nn.ReLU())
        self.rho_logits = nn.Linear(hidden_dims[-1], n_genes)
        self.zi_logits = nn.Linear(hidden_dims[-1], n_genes)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_activation(self.hidden(*inputs))  # [batch, H]
        rho = torch.softmax(self.rho_logits(hidden), dim=-1)  # [batch, G], rows sum to 1
        return rho, self.zi_logits(hidden)  # [batch, G] each
