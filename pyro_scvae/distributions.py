"""scvi-tools' zero-inflated negative binomial, adapted to Pyro.

``scvi.distributions.ZeroInflatedNegativeBinomial`` is a plain
``torch.distributions.Distribution`` whose ``batch_shape`` is ``()``: it has no
``to_event``, ``expand`` raises, and Pyro rejects its log-probabilities inside a
plate. :class:`ZINB` is a thin subclass that declares the broadcast shape of its
parameters as ``batch_shape``, implements ``expand`` and mixes in Pyro's
``TorchDistributionMixin``. ``log_prob`` calls scvi's own ``log_zinb_positive``, so
every log-probability is exactly scvi's. It skips scvi's per-call check that the value
is an integer (a tenth of a training step), because the counts are checked once when
the data are loaded, and it hands ``log_zinb_positive`` the per-gene θ as given
(``[G]``) rather than broadcast to ``[cells, G]``, so that lgamma(θ), log θ and their
gradients are computed once per gene instead of once per cell and gene (the values are
the same, elementwise).

It also hands ``log_zinb_positive`` its own lgamma (scvi's ``lgamma_fn`` argument):
:class:`LogGamma` is ``torch.lgamma`` forward, and on the CPU its derivative, the digamma
function ψ, is computed by :func:`digamma_positive` in a few vectorised operations instead
of ``torch.digamma``, whose CPU kernel is not vectorised and took a sixth of a training
step at batch size 1,024. Log-probabilities are unchanged; gradients agree with
``torch.digamma``'s to float32 precision (``tests/test_distributions.py``).

Single-cell counts are mostly zeros (a tenth of the entries are non-zero in T1 of the
benchmarks), and scvi's function evaluates the non-zero case of the ZINB at every entry
before discarding it at the zeros. On the CPU, where the counts are sparse enough, ``log_prob``
uses :func:`log_zinb_sparse` instead: the same expressions, with the non-zero case
evaluated at the non-zero counts only and its derivatives written out
(:class:`SparseZINBLogProb`); values and gradients equal scvi's up to floating-point
rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistributionMixin
from scvi.distributions import ZeroInflatedNegativeBinomial
from scvi.distributions._negative_binomial import log_zinb_positive
from torch.autograd.function import once_differentiable


def digamma_positive(z: torch.Tensor) -> torch.Tensor:
    """The digamma function ψ(z) = d ln Γ(z) / dz, for z > 0.

    ψ(z) = ψ(z + 6) − Σ_{k=0}^{5} 1/(z + k) (the recurrence ψ(z + 1) = ψ(z) + 1/z), and
    ψ(w), w ≥ 6, by its asymptotic series
    ln w − 1/(2w) − 1/(12w²) + 1/(120w⁴) − 1/(252w⁶) + 1/(240w⁸) − 1/(132w¹⁰),
    whose next term is below 10⁻¹⁰ there. Works in place on four buffers, because on the
    CPU allocating a fresh large tensor per operation costs more than the arithmetic.
    """
    w = z + 6.0
    out = torch.log(w)  # [...], ln w
    inv = w.reciprocal_()  # [...], 1/w (w's buffer)
    inv2 = inv * inv  # [...], 1/w²
    series = inv2 * (-1.0 / 132.0)
    for coefficient in (1.0 / 240.0, -1.0 / 252.0, 1.0 / 120.0, -1.0 / 12.0):
        series.add_(coefficient).mul_(inv2)  # Horner's rule in 1/w²
    out.add_(series).sub_(inv, alpha=0.5)  # ψ(w)
    term = inv  # 1/w is no longer needed: reuse its buffer
    for k in range(6):
        torch.add(z, k, out=term)
        out.sub_(term.reciprocal_())  # − 1/(z + k)
    return out


class LogGamma(torch.autograd.Function):
    """``torch.lgamma`` whose backward uses :func:`digamma_positive` on the CPU.

    Only for positive arguments, which are all that ``log_zinb_positive`` passes:
    x + θ, θ and x + 1 with x ≥ 0 and θ > 0.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(z)
        return torch.lgamma(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (z,) = ctx.saved_tensors
        return grad * digamma(z)


def digamma(z: torch.Tensor) -> torch.Tensor:
    """ψ(z) for z > 0: :func:`digamma_positive` on the CPU, ``torch.digamma`` elsewhere."""
    return digamma_positive(z) if z.device.type == "cpu" else torch.digamma(z)


#: scvi's constant inside the ZINB's logarithms; counts above it are non-zero.
EPS = 1e-8

#: Below this fraction of non-zero counts, :func:`log_zinb_sparse` replaces scvi's function.
SPARSE_DENSITY = 0.2


class SparseZINBLogProb(torch.autograd.Function):
    """scvi's ZINB log-probability of sparse counts, with its derivatives written out.

    scvi's ``log_zinb_positive`` evaluates both cases of the ZINB at every count and keeps
    one. With s = −π + θ log((θ + ε)/(θ + μ + ε)) (scvi's ``pi_theta_log``)::

        x = 0:  f = softplus(s) − softplus(−π)
        x > 0:  f = s − softplus(−π) + x log((μ + ε)/(θ + μ + ε))
                    + lnΓ(x + θ) − lnΓ(θ) − lnΓ(x + 1)

    Here the first case is computed everywhere and the second only at the non-zero counts,
    then written over the first: single-cell counts are mostly zeros, so three of the five
    transcendental functions run on a tenth of the entries. The derivatives, with
    r = θ/(θ + μ + ε) and ∂s/∂θ = log((θ + ε)/(θ + μ + ε)) + θ/(θ + ε) − r, are::

        x = 0:  ∂f/∂π = σ(−π) − σ(s)   ∂f/∂μ = −σ(s) r
                ∂f/∂θ = σ(s) ∂s/∂θ
        x > 0:  ∂f/∂π = −σ(π)          ∂f/∂μ = x/(μ + ε) − x/(θ + μ + ε) − r
                ∂f/∂θ = ∂s/∂θ − x/(θ + μ + ε) + ψ(x + θ) − ψ(θ)

    The forward pass computes them beside f (they share its intermediate terms) and the
    backward pass multiplies them by the incoming gradient. Autograd would instead keep a
    dozen intermediate tensors of ``[cells, G]``, differentiate through each, and scatter
    the gradients of the gathered entries back into zero-filled tensors. On the CPU, where
    this work is bound by memory traffic, a training epoch on T1 of the benchmarks is 1.09–1.15
    times faster this way (``benchmarks/tuning.md``, eighth round). Values and gradients equal
    scvi's up to rounding (``tests/test_distributions.py``). Not twice differentiable, which
    SVI never needs.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx,
        x: torch.Tensor,
        mu: torch.Tensor,
        theta: torch.Tensor,
        pi: torch.Tensor,
        nonzero: torch.Tensor,
        eps: float,
        with_grad: bool,
    ) -> torch.Tensor:
        gene_nz = nonzero % x.shape[-1]  # [nnz], the gene of each non-zero count

        def at_nonzero(values: torch.Tensor) -> torch.Tensor:
            return values.reshape(-1)[nonzero]  # [nnz]

        minus_pi = -pi  # [cells, G]
        theta_mu = mu + (theta + eps)  # [cells, G], θ + μ + ε
        log_theta_mu = torch.log(theta_mu)  # [cells, G]
        log_ratio = torch.log(theta + eps) - log_theta_mu  # [cells, G]
        s = torch.addcmul(minus_pi, theta, log_ratio)  # [cells, G]
        softplus_minus_pi = F.softplus(minus_pi)  # [cells, G]
        log_prob = F.softplus(s).sub_(softplus_minus_pi)  # [cells, G], the case x = 0
        x_nz, theta_nz = at_nonzero(x), theta[gene_nz]  # [nnz] each
        mu_nz, theta_mu_nz = at_nonzero(mu), at_nonzero(theta_mu)  # [nnz] each
        log_prob.reshape(-1)[nonzero] = (
            at_nonzero(s)
            - at_nonzero(softplus_minus_pi)
            + x_nz * (torch.log(mu_nz + eps) - at_nonzero(log_theta_mu))
            + torch.lgamma(x_nz + theta_nz)
            - torch.lgamma(theta)[gene_nz]  # once per gene, then gathered
            - torch.lgamma(x_nz + 1)
        )  # the case x > 0
        if with_grad:
            minus_r = torch.div(-theta, theta_mu)  # [cells, G], −r = ∂s/∂μ
            ds_dtheta = log_ratio.add_(theta / (theta + eps)).add_(minus_r)  # [cells, G]
            sigmoid_s = torch.sigmoid(s)  # [cells, G]
            d_pi = torch.sigmoid(minus_pi).sub_(sigmoid_s)  # [cells, G]
            d_mu = sigmoid_s * minus_r  # [cells, G]
            d_theta = sigmoid_s.mul_(ds_dtheta)  # [cells, G]
            x_over_theta_mu = x_nz / theta_mu_nz  # [nnz]
            d_pi.reshape(-1)[nonzero] = torch.sigmoid(at_nonzero(pi)).neg_()
            d_mu.reshape(-1)[nonzero] = x_nz / (mu_nz + eps) - x_over_theta_mu + at_nonzero(minus_r)
            d_theta.reshape(-1)[nonzero] = (
                at_nonzero(ds_dtheta)
                - x_over_theta_mu
                + digamma(x_nz + theta_nz)
                - digamma(theta)[gene_nz]
            )
            ctx.save_for_backward(d_mu, d_theta, d_pi)
            ctx.theta_shape = theta.shape
        return log_prob

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: D102
        d_mu, d_theta, d_pi = ctx.saved_tensors
        d_theta = (grad * d_theta).sum_to_size(ctx.theta_shape)  # [G]
        return None, grad * d_mu, d_theta, grad * d_pi, None, None, None


def log_zinb_sparse(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi: torch.Tensor,
    eps: float = EPS,
    is_nonzero: torch.Tensor | None = None,
) -> torch.Tensor:
    """scvi's ``log_zinb_positive``, with the terms of non-zero counts computed on them alone.

    See :class:`SparseZINBLogProb`: the same expressions, and scvi's values up to rounding.

    Parameters
    ----------
    x, mu, pi
        Counts, means and gate logits, ``[cells, G]`` each.
    theta
        Inverse dispersion, ``[G]``.
    eps
        scvi's constant inside the logarithms; counts above it are non-zero.
    is_nonzero
        ``x > eps``, where the caller has it already.
    """
    if is_nonzero is None:
        is_nonzero = x > eps  # [cells, G]
    nonzero = torch.nonzero(is_nonzero.reshape(-1)).squeeze(-1)  # [nnz], flat positions
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (mu, theta, pi))
    return SparseZINBLogProb.apply(x, mu, theta, pi, nonzero, eps, with_grad)


class ZINB(ZeroInflatedNegativeBinomial, TorchDistributionMixin):
    """Zero-inflated negative binomial with scvi's (mean, inverse dispersion) parameters.

    Parameters
    ----------
    mu
        Mean of the negative binomial component, ``l * rho``.
    theta
        Inverse dispersion.
    zi_logits
        Logit of the zero-inflation probability (the gate).

    Examples
    --------
    >>> d = ZINB(torch.ones(3, 5), torch.ones(5), torch.zeros(3, 5))
    >>> d.batch_shape, d.to_event(1).event_shape
    (torch.Size([3, 5]), torch.Size([5]))
    """

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor) -> None:
        super().__init__(mu=mu, theta=theta, zi_logits=zi_logits, validate_args=False)
        self.theta_given = theta  # as passed, e.g. [G]; broadcasts against mu inside log_prob
        # scvi's constructor broadcast the three parameters; declare that shape to torch/Pyro.
        torch.distributions.Distribution.__init__(
            self, batch_shape=self.mu.shape, validate_args=False
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """scvi's log-probability, elementwise: shape ``broadcast(value, batch_shape)``.

        Sparse counts on the CPU (``[cells, G]``, under :data:`SPARSE_DENSITY` non-zero)
        go through :func:`log_zinb_sparse`, the same function computed at fewer entries.
        """
        if (
            value.device.type == "cpu"
            and value.shape == self.mu.shape == self.zi_logits.shape
            and value.dim() == 2
            and self.theta_given.shape == value.shape[-1:]
        ):
            is_nonzero = value > EPS  # [cells, G]
            if is_nonzero.sum() < SPARSE_DENSITY * value.numel():
                return log_zinb_sparse(
                    value, self.mu, self.theta_given, self.zi_logits, is_nonzero=is_nonzero
                )
        return log_zinb_positive(
            value, self.mu, self.theta_given, self.zi_logits, eps=EPS, lgamma_fn=LogGamma.apply
        )

    def expand(self, batch_shape: torch.Size, _instance: ZINB | None = None) -> ZINB:
        """Broadcast the parameters to ``batch_shape`` (as Pyro's plates and enumeration need)."""
        batch_shape = torch.Size(batch_shape)
        return ZINB(
            self.mu.expand(batch_shape),
            self.theta_given,  # broadcasts against the expanded mean
            self.zi_logits.expand(batch_shape),
        )
