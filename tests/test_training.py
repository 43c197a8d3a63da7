"""Training on data simulated from the model recovers the cell types, and is repeatable."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch

from pyro_scvae import PyroSCVAE
from pyro_scvae.data import class_prior_and_weights, library_prior, minibatches
from pyro_scvae.model import HierarchicalVAE, ModelConfig
from pyro_scvae.simulate import simulate_counts
from pyro_scvae.training import Stepper


def test_learns_types_of_unlabelled_cells():
    adata = simulate_counts(n_cells=2000, n_classes=5, labelled_fraction=0.1, seed=0)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, seed=0).fit(epochs=20, progress=False)

    unlabelled = adata.obs["label"].isna().to_numpy()
    assert unlabelled.mean() > 0.85
    predicted = model.predict()[unlabelled]
    accuracy = (predicted == adata.obs["cell_type"].astype(str)[unlabelled]).mean()
    assert accuracy >= 0.9, accuracy

    elbo = model.history.elbo
    assert len(elbo) == 20
    assert np.mean(elbo[-3:]) > elbo[0] + 100  # the objective rises, by a lot
    assert np.mean(elbo[-3:]) > np.mean(elbo[5:8])  # and is still rising late


def test_same_seed_same_losses_and_other_seed_differs(simulated):
    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")

    def losses(seed):
        return PyroSCVAE(simulated, seed=seed).fit(epochs=3, progress=False).history.elbo

    first, again, other = losses(0), losses(0), losses(1)
    assert first == again
    assert first != other


def test_minibatches_cover_each_cell_once_and_never_mix_labelled():
    labels = np.array([-1] * 23 + [0, 1, 2] * 5)
    rng = np.random.default_rng(0)
    seen = []
    for index, labelled in minibatches(labels, batch_size=4, rng=rng):
        assert len(index) <= 4
        assert np.all((labels[index] >= 0) == labelled)
        seen.extend(index)
    assert sorted(seen) == list(range(len(labels)))
    dropped = [i for i, _ in minibatches(labels, batch_size=4, rng=rng, drop_last=True)]
    assert all(len(i) == 4 for i in dropped) and len(dropped) == 5 + 3


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")  # labelled: no enum
@pytest.mark.parametrize(
    "n_batches, kl_weight", [(0, 1.0), (2, 0.3)], ids=["no-batch", "batch-kl-warmup"]
)
def test_compiled_elbo_gives_the_same_loss_as_uncompiled(n_batches, kl_weight):
    """JitTraceEnum_ELBO (full-size minibatches) and TraceEnum_ELBO estimate the same loss.

    The compiled graph draws its random numbers differently, so the two agree in
    expectation: with the learning rate at 0, repeated steps are independent estimates.
    β (KL warm-up) reaches the compiled trace as an argument, not a constant: both
    traces are compiled at β = 0, as in the first epoch of training, and then compared
    at another β.
    """
    torch.manual_seed(0)
    n_library = max(n_batches, 1)
    config = ModelConfig(n_genes=30, n_classes=3, n_batches=n_batches, dropout=0.0)
    vae = HierarchicalVAE(config, torch.full((n_library,), 5.0), torch.ones(n_library))
    gen = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.rand(16, 30, generator=gen) * 6).repeat(10, 1)  # [160, 30]
    y = torch.randint(3, (16,), generator=gen).repeat(10)  # [160]
    batch = torch.randint(2, (16,), generator=gen).repeat(10) if n_batches else None
    with pyro.get_param_store().scope():
        compiled = Stepper(vae, lr=0.0, jit_batch_size=160)
        plain = Stepper(vae, lr=0.0)
        compiled.set_kl_weight(0.0)
        for labels in (None, y):
            compiled.step(x, labels, batch)  # compiles the unlabelled and labelled traces
        for stepper in (compiled, plain):
            stepper.set_kl_weight(kl_weight)
        for labels in (None, y):
            jit_losses = torch.tensor([compiled.step(x, labels, batch) for _ in range(20)])
            plain_losses = torch.tensor([plain.step(x, labels, batch) for _ in range(20)])
            error = (jit_losses.var() / 20 + plain_losses.var() / 20).sqrt()
            assert error < 1e-2 * plain_losses.mean().abs()  # sharp enough to catch a bug
            assert (jit_losses.mean() - plain_losses.mean()).abs() < 4 * error
        assert len(compiled.compiled_elbo._differentiable_loss.compiled) == 2  # one trace each
        # a ragged minibatch is not compiled (its size differs from the traced one)
        pyro.set_rng_seed(7)
        ragged = compiled.step(x[:10], y[:10], None if batch is None else batch[:10])
        pyro.set_rng_seed(7)
        assert ragged == plain.step(x[:10], y[:10], None if batch is None else batch[:10])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_compiled_step_gives_the_same_mean_gradient_as_uncompiled(monkeypatch):
    """Every parameter gets the same gradient, in expectation, from both ELBOs.

    With dropout on and counts sparse enough for the sparse ZINB: the gradients of 80
    steps at learning rate 0 are independent estimates, so each element's mean differs
    between the two by a standard normal multiple of its standard error (mean |z| 0.80).
    A gradient the compiled graph dropped, froze or scaled moves that mean up: a dropout
    mask without its 1 / (1 - p) under tracing, tried on purpose, gave 1.14.
    """
    from pyro_scvae.distributions import SPARSE_DENSITY
    from pyro_scvae.training import JointAdam

    torch.manual_seed(0)
    config = ModelConfig(n_genes=40, n_classes=3, n_latent=4, n_hidden=16)  # dropout 0.1
    vae = HierarchicalVAE(config, torch.full((1,), 4.0), torch.ones(1))
    gen = torch.Generator().manual_seed(2)
    x = torch.poisson(torch.rand(64, 40, generator=gen) * 3) * (torch.rand(64, 40) < 0.15)
    assert 0 < (x > 0).float().mean() < SPARSE_DENSITY  # the sparse ZINB's path
    y = torch.randint(3, (64,), generator=gen)
    recorded: list[torch.Tensor] = []
    step = JointAdam.__call__

    def record_gradient(self, params, *args, **kwargs):
        recorded.append(torch.cat([p.grad.reshape(-1) for p in vae.parameters()]))
        return step(self, params, *args, **kwargs)

    monkeypatch.setattr(JointAdam, "__call__", record_gradient)
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        compiled = Stepper(vae, lr=0.0, jit_batch_size=64)
        plain = Stepper(vae, lr=0.0)
        for labels in (None, y):
            compiled.step(x, labels, None)  # compiles
            recorded.clear()
            for stepper in (compiled, plain):
                for _ in range(80):
                    stepper.step(x, labels, None)
            jit, eager = torch.stack(recorded[:80]), torch.stack(recorded[80:])  # [30, P] each
            error = (jit.var(0) / 80 + eager.var(0) / 80).sqrt()  # [P]
            varies = error > 1e-6 * eager.abs().mean()  # elements with Monte Carlo noise
            z = (jit.mean(0) - eager.mean(0))[varies] / error[varies]
            assert varies.float().mean() > 0.9
            assert z.abs().mean() < 1.0  # 0.80 for standard normal z
            assert (z.abs() > 5).float().mean() < 0.01


def test_joint_adam_makes_clipped_adams_update():
    """One foreach update of all parameters = Pyro's ClippedAdam, parameter by parameter."""
    from pyro.optim.clipped_adam import ClippedAdam

    from pyro_scvae.training import JointAdam

    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(5)]
    grads = [[torch.randn(4, 3) * 50, torch.randn(5) * 300] for _ in range(3)]  # some clipped
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    joint, reference = (
        JointAdam(lr=0.01, clip_value=100.0),
        ClippedAdam(theirs, lr=0.01, clip_norm=100.0),
    )
    for step in grads:
        for p, q, g in zip(ours, theirs, step):
            p.grad, q.grad = g.clone(), g.clone()
        joint(ours)
        reference.step()
    for p, q, p0 in zip(ours, theirs, start):
        assert not torch.equal(p, p0)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_diverging_training_stops_with_a_clear_error(simulated, monkeypatch):
    from pyro_scvae.data import InputError

    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    model = PyroSCVAE(simulated, seed=0)
    monkeypatch.setattr(Stepper, "step", lambda self, x, y, batch: float("nan"))
    with pytest.raises(InputError, match="diverged in epoch 1.*learning rate"):
        model.fit(epochs=2, progress=False)


def test_cosine_schedule_lowers_the_learning_rate_epoch_by_epoch(simulated, monkeypatch):
    from pyro_scvae.data import InputError
    from pyro_scvae.training import JointAdam, lr_factor

    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert 0.0 < lr_factor("cosine", 9, 10) < 0.03
    with pytest.raises(InputError, match="unknown learning-rate schedule"):
        lr_factor("linear", 0, 10)

    seen = []
    original = JointAdam.set_lr
    monkeypatch.setattr(JointAdam, "set_lr", lambda self, lr: (seen.append(lr), original(self, lr)))
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    model = PyroSCVAE(simulated, seed=0).fit(
        epochs=4, lr=0.01, lr_schedule="cosine", progress=False
    )
    # The first fit (labels held out) follows the schedule; the continued fit with every
    # label trains ``patience`` (here 4) epochs more at the schedule's last value.
    schedule = [0.01 * lr_factor("cosine", e, 4) for e in range(4)]
    np.testing.assert_allclose(seen, schedule + schedule[-1:] * 4)
    assert model.training_config.lr_schedule == "cosine"
    assert np.isfinite(model.history.elbo).all()
    with pytest.raises(InputError, match="unknown learning-rate schedule"):
        PyroSCVAE(simulated).fit(epochs=1, lr_schedule="step", progress=False)


def test_kl_warmup_rises_linearly_then_stays_at_one(simulated, monkeypatch):
    from pyro_scvae.data import InputError
    from pyro_scvae.training import kl_weight

    assert [kl_weight(0.5, e, 10) for e in range(7)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert kl_weight(0.0, 0, 10) == 1.0 == kl_weight(1.0, 9, 10) + 0.1
    with pytest.raises(InputError, match="kl_warmup must be a fraction"):
        kl_weight(1.5, 0, 10)

    seen = []
    original = Stepper.set_kl_weight
    monkeypatch.setattr(
        Stepper, "set_kl_weight", lambda self, beta: (seen.append(beta), original(self, beta))
    )
    PyroSCVAE.setup_anndata(simulated, labels_key="label")
    PyroSCVAE(simulated, seed=0).fit(epochs=4, kl_warmup=0.5, progress=False)
    assert seen == [0.0, 0.5, 1.0, 1.0] + [1.0] * 4  # then 4 epochs (patience) past the end
    with pytest.raises(InputError, match="kl_warmup"):
        PyroSCVAE(simulated, seed=0).fit(epochs=4, kl_warmup=-0.1, progress=False)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_compiled_step_draws_new_noise_every_step(monkeypatch):
    """No random draw is frozen into the compiled trace (the suspect for its lower F1).

    A draw traced as a constant (a dropout mask, the noise of z₁, l or z₂) would give the
    same gradient contribution on every step: with the learning rate at 0 and the same
    minibatch, some parameter's gradient would repeat exactly from one step to the next.
    None does, the global generator advances at every step, and a seed repeats a step.
    """
    from pyro_scvae.training import JointAdam

    torch.manual_seed(0)
    config = ModelConfig(n_genes=40, n_classes=3, n_latent=4, n_hidden=16)  # dropout 0.1
    vae = HierarchicalVAE(config, torch.full((1,), 4.0), torch.ones(1))
    x = torch.poisson(torch.rand(64, 40) * 3)
    y = torch.randint(3, (64,))
    recorded: list[list[torch.Tensor]] = []
    step = JointAdam.__call__

    def record_gradient(self, params, *args, **kwargs):
        recorded.append([p.grad.clone() for p in vae.parameters()])
        return step(self, params, *args, **kwargs)

    monkeypatch.setattr(JointAdam, "__call__", record_gradient)
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        compiled = Stepper(vae, lr=0.0, jit_batch_size=64)
        for labels in (None, y):
            compiled.step(x, labels, None)  # compiles
            recorded.clear()
            before = torch.get_rng_state()
            compiled.step(x, labels, None)
            assert not torch.equal(before, torch.get_rng_state())
            compiled.step(x, labels, None)
            for name, first, second in zip(
                [n for n, _ in vae.named_parameters()], recorded[0], recorded[1]
            ):
                assert not torch.equal(first, second), f"{name}: the same gradient twice"
            losses = []
            for _ in range(2):
                torch.manual_seed(5)
                losses.append(compiled.step(x, labels, None))
            assert losses[0] == losses[1]


def test_library_prior_is_per_batch_log_totals_without_empty_cells():
    counts = sp.csr_matrix(np.array([[1, 3], [0, 0], [10, 0], [5, 5], [0, 0]], dtype=np.float32))
    batches = np.array([0, 0, 0, 1, 1])
    totals = np.asarray(counts.sum(axis=1)).ravel()
    loc, scale = library_prior(totals, batches, 2)
    expected = np.log([4.0, 10.0])  # batch 0 without its empty cell
    np.testing.assert_allclose(loc.numpy(), [expected.mean(), np.log(10.0)], rtol=1e-6)
    np.testing.assert_allclose(scale[0].item(), expected.std(), rtol=1e-6)
    assert scale[1].item() == 1.0  # one cell with counts: no spread to measure
    assert np.isfinite(library_prior(totals, None, 0)[0].numpy()).all()


def test_class_weights_are_inverse_counts_with_mean_one_over_labelled_cells():
    labels = np.array([0, 0, 0, 1, -1, -1])
    prior, weights = class_prior_and_weights(labels, 3, "frequencies", True)
    np.testing.assert_allclose(prior.numpy(), np.array([4.0, 2.0, 1.0]) / 7, rtol=1e-6)
    w = weights.numpy()
    np.testing.assert_allclose(w[0] * 3, w[1], rtol=1e-6)  # 1 / n_y
    np.testing.assert_allclose((w[labels[labels >= 0]]).mean(), 1.0, rtol=1e-6)
    assert class_prior_and_weights(labels, 3, "uniform", False) == (None, None)
    with pytest.raises(Exception, match="class_prior"):
        class_prior_and_weights(labels, 3, "flat", True)
