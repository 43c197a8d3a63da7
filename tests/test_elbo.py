"""Pyro's TraceEnum_ELBO equals the hand-derived ELBO of MODEL.md: exactly and in expectation."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_scvae.elbo import elbo_terms, hand_derived_elbo
from pyro_scvae.model import HierarchicalVAE, ModelConfig

N_GENES, N_CLASSES, N_CELLS = 25, 4, 12
CLASS_WEIGHTS = torch.tensor([0.5, 1.0, 1.5, 2.0])  # α_y = α · weight of class y


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def make_vae(
    n_batches: int, seed: int = 0, encode_batch: bool = False, separate_library_encoder: bool = True
) -> HierarchicalVAE:
    torch.manual_seed(seed)
    config = ModelConfig(
        N_GENES,
        N_CLASSES,
        n_batches=n_batches,
        n_latent=4,
        n_hidden=16,
        dropout=0.0,
        alpha=7.5,
        encode_batch=encode_batch,
        separate_library_encoder=separate_library_encoder,
    )
    n_library = max(n_batches, 1)
    vae = HierarchicalVAE(
        config,
        library_loc=torch.linspace(4.0, 5.0, n_library),
        library_scale=torch.linspace(0.6, 0.9, n_library),
        class_prior=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        class_weights=CLASS_WEIGHTS,
    )
    # Perturb every parameter so no network is at a symmetric initial point.
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae


def make_batch(n_batches: int, labelled: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=gen) * 8)
    y = torch.randint(N_CLASSES, (N_CELLS,), generator=gen) if labelled else None
    batch = torch.randint(n_batches, (N_CELLS,), generator=gen) if n_batches else None
    return x, y, batch


def guide_samples(vae, x, y, batch) -> poutine.Trace:
    """One draw of z₁, l and z₂ from the enumerated guide (z₂ once per value of y)."""
    trace = poutine.trace(poutine.enum(vae.guide, first_available_dim=-2)).get_trace(x, y, batch)
    for name in list(trace.nodes):
        if name not in ("z1", "l", "z2"):
            trace.remove_node(name)
    return trace


def pyro_loss(vae, x, y, batch, wrap=lambda program: program):
    """TraceEnum_ELBO's loss on sampled z₁, l, z₂, and those samples.

    ``wrap`` is applied to the model and the (replayed) guide, e.g. a ``ScaleKL``.
    """
    trace = guide_samples(vae, x, y, batch)
    replayed_guide = poutine.replay(vae.guide, trace=trace)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        wrap(vae.model), wrap(replayed_guide), x, y, batch
    )
    return loss, [trace.nodes[name]["value"] for name in ("z1", "l", "z2")]


def pyro_and_hand(vae, x, y, batch):
    """TraceEnum_ELBO's loss and the hand-derived ELBO on the same sampled z₁, l, z₂."""
    loss, values = pyro_loss(vae, x, y, batch)
    return loss, hand_derived_elbo(vae, x, *values, y, batch), values


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
@pytest.mark.parametrize(
    "n_batches, encode_batch, separate",
    [(0, False, True), (3, False, True), (3, True, True), (0, False, False), (3, True, False)],
    ids=["no-batch", "batch", "batch-in-encoder", "shared-encoder", "batch-in-shared-encoder"],
)
def test_loss_and_gradients_equal_hand_derivation(labelled, n_batches, encode_batch, separate):
    vae = make_vae(n_batches, encode_batch=encode_batch, separate_library_encoder=separate)
    x, y, batch = make_batch(n_batches, labelled)
    loss, elbo, (z1, l, z2) = pyro_and_hand(vae, x, y, batch)

    assert z2.shape == ((N_CELLS, 4) if labelled else (N_CLASSES, N_CELLS, 4))
    assert abs(loss.item() + elbo.item()) <= 1e-5 * abs(elbo.item())

    params = list(vae.parameters())
    pyro_grads = torch.autograd.grad(loss, params, retain_graph=True)
    hand_grads = torch.autograd.grad(-elbo, params)
    for p_grad, h_grad in zip(pyro_grads, hand_grads):
        assert h_grad.abs().max() > 0 or p_grad.abs().max() == 0
        scale = h_grad.abs().max().clamp_min(1e-8)
        assert (p_grad - h_grad).abs().max() <= 1e-4 * scale
    # every network receives a gradient (nothing is silently disconnected)
    grads = dict(zip((n for n, _ in vae.named_parameters()), hand_grads))
    networks = ["x_encoder", "classifier", "z2_encoder", "z1_decoder", "x_decoder", "log_theta"]
    for prefix in networks + (["library_encoder"] if separate else []):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
def test_kl_warmup_scales_terms_of_y_z2_and_l(labelled):
    """ScaleKL(β) on model and guide = hand-derived ELBO with terms 3, 4 and 5 times β."""
    from pyro_scvae.training import ScaleKL

    beta = 0.3
    vae = make_vae(0)
    x, y, batch = make_batch(0, labelled)
    loss, values = pyro_loss(vae, x, y, batch, wrap=ScaleKL(beta))
    terms = elbo_terms(vae, x, *values, y, batch)
    annealed = {"y", "library", "z2"}
    elbo = sum((beta if name in annealed else 1.0) * t.sum() for name, t in terms.items())
    assert abs(loss.item() + elbo.item()) <= 1e-10 * abs(elbo.item())
    unscaled = sum(t.sum() for t in terms.values())
    assert abs(loss.item() + unscaled.item()) > 1e-3 * abs(elbo.item())  # β did something
    params = list(vae.parameters())
    pyro_grads = torch.autograd.grad(loss, params, retain_graph=True)
    hand_grads = torch.autograd.grad(-elbo, params)
    for p_grad, h_grad in zip(pyro_grads, hand_grads):
        assert (p_grad - h_grad).abs().max() <= 1e-8 * h_grad.abs().max().clamp_min(1e-8)


def test_only_an_encoder_given_the_batch_depends_on_it():
    x, _, batch = make_batch(3, labelled=False)
    other_batch = (batch + 1) % 3
    for encode_batch in (False, True):
        vae = make_vae(3, encode_batch=encode_batch)
        z1, _ = vae.encode(x, batch)
        z1_other, _ = vae.encode(x, other_batch)
        assert torch.equal(z1, z1_other) != encode_batch
        l_loc = vae.encode_x(x, vae.batch_inputs(x, batch))[2]  # [cells], of q(l | x)
        l_loc_other = vae.encode_x(x, vae.batch_inputs(x, other_batch))[2]
        assert torch.equal(l_loc, l_loc_other) != encode_batch
        rho, _ = vae.x_decoder(z1, *vae.batch_inputs(x, batch))
        rho_other, _ = vae.x_decoder(z1, *vae.batch_inputs(x, other_batch))
        assert not torch.allclose(rho, rho_other)  # the decoder always sees the batch


def test_classification_term_is_alpha_y_log_q_y():
    vae = make_vae(0)
    x, y, _ = make_batch(0, labelled=True)
    trace = guide_samples(vae, x, y, None)
    z1 = trace.nodes["z1"]["value"]
    terms = elbo_terms(vae, x, z1, trace.nodes["l"]["value"], trace.nodes["z2"]["value"], y)
    log_q = torch.log_softmax(vae.classifier(z1), -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(terms["classification"], 7.5 * CLASS_WEIGHTS[y] * log_q)
    torch.testing.assert_close(terms["y"], vae.class_log_prior[y])


def test_enumeration_shapes():
    vae = make_vae(0)
    x, _, _ = make_batch(0, labelled=False)
    guide_trace = poutine.trace(poutine.enum(vae.guide, first_available_dim=-2)).get_trace(x)
    assert guide_trace.nodes["y"]["value"].shape == (N_CLASSES, 1)
    assert guide_trace.nodes["z1"]["value"].shape == (N_CELLS, 4)
    assert guide_trace.nodes["z2"]["value"].shape == (N_CLASSES, N_CELLS, 4)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    assert model_trace.nodes["z1"]["log_prob"].shape == (N_CLASSES, N_CELLS)
    assert model_trace.nodes["x"]["log_prob"].shape == (N_CELLS,)


def test_agreement_in_expectation():
    """Independent Monte Carlo estimates of the ELBO agree within their standard error.

    The minibatch holds ``copies`` replicas of the same cells, so that one call draws
    ``copies`` independent samples per cell; ``calls`` calls give the spread of each estimate.
    """
    torch.manual_seed(3)
    vae = make_vae(0)
    x, _, _ = make_batch(0, labelled=False)
    copies, calls = 50, 40
    replicas = x.repeat(copies, 1)  # [copies · cells, G]
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        pyro_estimates = torch.tensor(
            [-elbo.loss(vae.model, vae.guide, replicas) / copies for _ in range(calls)]
        )
        hand_estimates = torch.stack(
            [
                hand_derived_elbo(vae, replicas, *guide_samples_values(vae, replicas)) / copies
                for _ in range(calls)
            ]
        )
    difference = pyro_estimates.mean() - hand_estimates.mean()
    standard_error = (pyro_estimates.var() / calls + hand_estimates.var() / calls).sqrt()
    assert 0 < standard_error < 0.002 * hand_estimates.mean().abs()  # the comparison is sharp
    assert difference.abs() < 4 * standard_error


def guide_samples_values(vae, x):
    trace = guide_samples(vae, x, None, None)
    return [trace.nodes[name]["value"] for name in ("z1", "l", "z2")]


def test_library_term_is_closed_form_lognormal_kl():
    """Term 4 in expectation is −KL(q(l|x) ‖ p(l)); KL of log-normals = KL of the normals."""
    torch.manual_seed(4)
    vae = make_vae(0)
    x, _, _ = make_batch(0, labelled=False)
    copies = 2000
    replicas = x.repeat(copies, 1)  # [copies · cells, G]
    with torch.no_grad():
        draws = elbo_terms(vae, replicas, *guide_samples_values(vae, replicas))["library"]
        draws = draws.reshape(copies, N_CELLS)  # [copies, cells]
        _, _, q_loc, q_scale = vae.encode_x(x, [])
        closed_form = kl_divergence(
            Normal(q_loc, q_scale), Normal(vae.library_loc[0], vae.library_scale[0])
        )  # [cells]
    standard_error = draws.std(0) / copies**0.5
    assert torch.all(standard_error < 0.05 * closed_form.abs().clamp_min(1.0))
    assert torch.all((draws.mean(0) + closed_form).abs() < 4 * standard_error)
