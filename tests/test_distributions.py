"""The ZINB adapter gives scvi's log-probabilities and works inside Pyro plates."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from pyro_scvae import distributions
from pyro_scvae.distributions import ZINB, LogGamma, digamma_positive, log_zinb_sparse


def random_parameters(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(shape, generator=gen, dtype=torch.float64) * 20 + 0.01
    theta = torch.rand(shape[-1:], generator=gen, dtype=torch.float64) * 5 + 0.1
    zi_logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    x = torch.poisson(mu * torch.rand(shape, generator=gen, dtype=torch.float64) * 2)
    return mu, theta, zi_logits, x


def test_log_prob_equals_scvi():
    mu, theta, zi_logits, x = random_parameters((50, 30))
    ours = ZINB(mu, theta, zi_logits).log_prob(x)
    scvi = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi_logits).log_prob(x)
    assert ours.shape == (50, 30)
    assert torch.equal(ours, scvi)


def test_digamma_positive_matches_torch_digamma():
    z = torch.logspace(-4, 5, 20_000, dtype=torch.float64)  # from 1e-4 to 1e5
    exact = torch.digamma(z)
    torch.testing.assert_close(digamma_positive(z), exact, rtol=1e-11, atol=1e-11)
    # In float32 it is as accurate as torch.digamma in float32 (relative to max(1, |ψ|)).
    scale = exact.abs().clamp_min(1.0)
    ours = (digamma_positive(z.float()).double() - exact).abs() / scale
    theirs = (torch.digamma(z.float()).double() - exact).abs() / scale
    assert ours.max() < 1e-6 and ours.max() <= 2 * theirs.max()


def test_log_gamma_value_and_gradient_are_torch_lgamma_s():
    z = (torch.rand(40, 7, dtype=torch.float64) * 50 + 1e-3).requires_grad_()
    ours = LogGamma.apply(z)
    assert torch.equal(ours, torch.lgamma(z))
    (grad,) = torch.autograd.grad(ours.sum(), z)
    torch.testing.assert_close(grad, torch.digamma(z.detach()), rtol=1e-11, atol=1e-11)


def test_log_prob_gradients_equal_scvi_s():
    mu, theta, zi_logits, x = random_parameters((50, 30), seed=4)
    params = [p.clone().requires_grad_() for p in (mu, theta, zi_logits)]
    ours = torch.autograd.grad(ZINB(*params).log_prob(x).sum(), params)
    reference = ZeroInflatedNegativeBinomial(mu=params[0], theta=params[1], zi_logits=params[2])
    theirs = torch.autograd.grad(reference.log_prob(x).sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def sparse_counts(shape, density, seed=5):
    """Parameters as above, with counts zeroed outside a random ``density`` of entries."""
    mu, theta, zi_logits, x = random_parameters(shape, seed=seed)
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < density
    return mu, theta, zi_logits, x * keep


def test_sparse_log_prob_and_gradients_equal_scvi_s():
    mu, theta, zi_logits, x = sparse_counts((60, 40), density=0.1)
    assert 0 < torch.count_nonzero(x) < 0.1 * x.numel()
    params = [p.clone().requires_grad_() for p in (mu, theta, zi_logits)]
    ours = log_zinb_sparse(x, *params)
    reference = ZeroInflatedNegativeBinomial(mu=params[0], theta=params[1], zi_logits=params[2])
    theirs = reference.log_prob(x)
    assert ours.shape == (60, 40)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # An upstream gradient that differs by entry, so each derivative is checked entrywise.
    weights = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(9))
    our_grads = torch.autograd.grad((weights * ours).sum(), params)
    for a, b in zip(our_grads, torch.autograd.grad((weights * theirs).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # no derivatives computed, same values
        torch.testing.assert_close(log_zinb_sparse(x, *params), theirs, rtol=1e-12, atol=1e-12)


def test_sparse_log_prob_passes_gradcheck():
    """The written-out derivatives against finite differences, in float64."""
    mu, theta, zi_logits, x = sparse_counts((6, 5), density=0.4, seed=11)
    assert 0 < torch.count_nonzero(x) < x.numel()
    params = tuple(p.clone().requires_grad_() for p in (mu, theta, zi_logits))
    assert torch.autograd.gradcheck(lambda *p: log_zinb_sparse(x, *p), params)


@pytest.mark.parametrize(("density", "sparse_path"), [(0.1, True), (0.5, False)])
def test_log_prob_takes_the_sparse_path_only_for_sparse_counts(monkeypatch, density, sparse_path):
    calls = []

    def recording(*args, **kwargs):
        calls.append(args[0].shape)
        return log_zinb_sparse(*args, **kwargs)

    monkeypatch.setattr(distributions, "log_zinb_sparse", recording)
    mu, theta, zi_logits, x = sparse_counts((60, 40), density=density)
    ours = ZINB(mu, theta, zi_logits).log_prob(x)
    scvi = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi_logits).log_prob(x)
    torch.testing.assert_close(ours, scvi, rtol=1e-12, atol=1e-12)
    assert calls == ([(60, 40)] if sparse_path else [])


def test_gate_to_zero_is_negative_binomial():
    mu, theta, _, x = random_parameters((20, 10), seed=1)
    closed_gate = torch.full_like(mu, -40.0)  # sigmoid(-40) ≈ 4e-18
    zinb = ZINB(mu, theta, closed_gate).log_prob(x)
    nb = NegativeBinomial(mu=mu, theta=theta).log_prob(x)
    torch_nb = dist.NegativeBinomial(total_count=theta, logits=(mu / theta).log()).log_prob(x)
    torch.testing.assert_close(zinb, nb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(zinb, torch_nb, rtol=1e-6, atol=1e-6)


def test_gate_to_one_puts_all_mass_at_zero():
    mu, theta, _, _ = random_parameters((20, 10), seed=2)
    open_gate = torch.full_like(mu, 40.0)
    d = ZINB(mu, theta, open_gate)
    assert torch.allclose(d.log_prob(torch.zeros_like(mu)).exp(), torch.ones_like(mu))
    assert (d.log_prob(torch.ones_like(mu)) < -30).all()
    assert (d.log_prob(torch.full_like(mu, 7.0)) < -30).all()


def test_probabilities_sum_to_one():
    mu, theta, zi_logits, _ = random_parameters((4, 3), seed=3)
    support = torch.arange(2000, dtype=torch.float64).reshape(-1, 1, 1)
    total = ZINB(mu, theta, zi_logits).log_prob(support).exp().sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-6, atol=1e-6)


def test_batch_shape_expand_and_to_event():
    mu, theta, zi_logits, x = random_parameters((8, 5))
    d = ZINB(mu, theta, zi_logits)
    assert d.batch_shape == (8, 5) and d.event_shape == ()
    assert d.to_event(1).batch_shape == (8,) and d.to_event(1).event_shape == (5,)
    expanded = d.expand((3, 8, 5))
    assert expanded.batch_shape == (3, 8, 5)
    torch.testing.assert_close(expanded.log_prob(x)[2], d.log_prob(x))
    assert ZINB(mu[0], theta, zi_logits[0]).expand((8, 5)).log_prob(x).shape == (8, 5)


def test_shapes_under_plate_and_enumeration():
    """x depends on an enumerated variable: its log_prob gains the leading K dimension."""
    mu, theta, zi_logits, x = random_parameters((6, 4))
    k = 3
    scales = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def model():
        with pyro.plate("cells", 6):
            c = pyro.sample(
                "c", dist.Categorical(torch.ones(k, dtype=torch.float64) / k)
            )  # [K, 1] enumerated
            mean = scales[c].unsqueeze(-1) * mu  # [K, 6, 4]
            pyro.sample("x", ZINB(mean, theta, zi_logits).to_event(1), obs=x)

    trace = poutine.trace(poutine.enum(config_enumerate(model), first_available_dim=-2)).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["c"]["value"].shape == (k, 1)
    assert trace.nodes["x"]["log_prob"].shape == (k, 6)
    # and TraceEnum_ELBO sums c out exactly: loss = -Σ_cells log Σ_c p(c) p(x|c)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(model), lambda: None)
    per_c = torch.stack([ZINB(s * mu, theta, zi_logits).log_prob(x).sum(-1) for s in scales])
    expected = -(torch.logsumexp(per_c, 0) - torch.log(torch.tensor(k / 1.0))).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-7)
