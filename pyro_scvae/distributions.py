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
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from scvi.distributions import ZeroInflatedNegativeBinomial
from scvi.distributions._negative_binomial import log_zinb_positive


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
        """scvi's log-probability, elementwise: shape ``broadcast(value, batch_shape)``."""
        return log_zinb_positive(value, self.mu, self.theta_given, self.zi_logits, eps=1e-08)

    def expand(self, batch_shape: torch.Size, _instance: ZINB | None = None) -> ZINB:
        """Broadcast the parameters to ``batch_shape`` (as Pyro's plates and enumeration need)."""
        batch_shape = torch.Size(batch_shape)
        return ZINB(
            self.mu.expand(batch_shape),
            self.theta_given,  # broadcasts against the expanded mean
            self.zi_logits.expand(batch_shape),
        )
