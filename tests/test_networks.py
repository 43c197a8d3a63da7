"""The networks compute what their concatenated-input definitions say."""

from __future__ import annotations

import torch
from torch.nn.functional import one_hot

from pyro_scvae.networks import MLP, CellDropout, ConcatLinear


def test_concat_linear_is_a_linear_layer_on_the_broadcast_concatenation():
    torch.manual_seed(0)
    n_cells, d, k = 7, 5, 4
    layer = ConcatLinear([d, k], 6)
    z1 = torch.randn(n_cells, d)  # [batch, d]
    y = one_hot(torch.arange(k).reshape(k, 1), k).float()  # [K, 1, K], as under enumeration
    joined = torch.cat([z1.expand(k, n_cells, d), y.expand(k, n_cells, k)], dim=-1)

    expected = torch.nn.functional.linear(joined, layer.weight, layer.bias)  # [K, batch, 6]
    got = layer(z1, y)
    assert got.shape == (k, n_cells, 6)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # Cell i under class j sees z1[i] and class j only.
    torch.testing.assert_close(got[2, 3], layer(z1[3], y[2, 0]), rtol=1e-6, atol=1e-6)


def test_mlp_layers_in_order_and_one_input_like_several():
    torch.manual_seed(1)
    mlp = MLP([3, 2], [8, 8], 4, dropout=0.0).eval()
    names = [type(layer).__name__ for layer in mlp]
    assert names == ["ConcatLinear", "LayerNorm", "ReLU", "CellDropout", "Linear"] + [
        "LayerNorm",
        "ReLU",
        "CellDropout",
        "Linear",
    ]
    a, b = torch.randn(5, 3), torch.randn(5, 2)
    single = MLP([5], [8, 8], 4, dropout=0.0).eval()
    single.load_state_dict(mlp.state_dict())  # same weights: a Linear on [a, b]
    torch.testing.assert_close(mlp(a, b), single(torch.cat([a, b], -1)), rtol=1e-6, atol=1e-6)


def test_cell_dropout_shares_one_mask_across_enumerated_copies():
    torch.manual_seed(2)
    dropout = CellDropout(0.5)
    copies = torch.ones(4, 300, 16).cumsum(0)  # [K, cells, H]: copy k holds the value k + 1
    out = dropout(copies)  # [K, cells, H]
    kept = out != 0
    # One mask for all K copies of a cell, scaled by 1 / (1 - p) where kept.
    assert torch.equal(kept, kept[:1].expand_as(kept))
    torch.testing.assert_close(out[kept], 2.0 * copies[kept])
    assert 0.45 < kept[0].float().mean() < 0.55  # each unit kept with probability 1 - p
    # On a [cells, H] input, and in evaluation, it is nn.Dropout.
    torch.manual_seed(3)
    plain = torch.nn.Dropout(0.5)(torch.ones(300, 16))
    torch.manual_seed(3)
    assert torch.equal(dropout(torch.ones(300, 16)), plain)
    assert torch.equal(dropout.eval()(copies), copies)
