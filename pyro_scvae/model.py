"""The generative model and the variational guide, line by line against MODEL.md.

Generative model (per cell)::

    y  ~ Categorical(π_y)
    z₂ ~ Normal(0, I)
    z₁ ~ Normal(μ(z₂, y), σ(z₂, y))                     z1_decoder
    l  ~ LogNormal(μ_l[batch], σ_l[batch])
    x  ~ ZINB(mean = l·ρ(z₁), θ, zero-inflation logits π(z₁))   x_decoder, scvi's ZINB

Guide::

    z₁ ~ q(z₁ | x)        x_encoder on log1p(x)
    l  ~ q(l | x)         library_encoder on log1p(x) (or x_encoder's hidden layers, shared)
    y  ~ q(y | z₁)        classifier (logits), enumerated in parallel when unobserved
    z₂ ~ q(z₂ | z₁, y)    z2_encoder, once per enumerated value of y

Labelled cells observe y and add α · log q(y | z₁) to the objective (Kingma et al.
2014, M2; scANVI). Under enumeration y has shape ``[K, 1]`` (dimension -2 is the
enumeration dimension because the cell plate is the only plate), so every site
that depends on y gains a leading dimension of size K.

References
----------
Xu et al., Mol Syst Biol 17:e9620 (2021); Lopez et al., Nat Methods 15:1053 (2018);
Kingma et al., NeurIPS (2014).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch import nn
from torch.nn.functional import one_hot

from pyro_scvae.config import ModelConfig
from pyro_scvae.networks import Classifier, GaussianNet, XDecoder


class HierarchicalVAE(nn.Module):
    """The scANVI model as a Pyro program: ``model(x, y, batch)`` and ``guide(x, y, batch)``.

    Parameters
    ----------
    config
        Dimensions and settings.
    library_loc, library_scale
        Mean and standard deviation of log total counts, one per batch
        (a single value where there is no batch covariate): the prior p(l).
    class_prior
        π_y; uniform when omitted.
    class_weights
        Per-class multipliers of α (``[K]``, mean 1 over labelled cells when balanced);
        ones when omitted, which is exactly MODEL.md's α · log q(y | z₁).
    """

    def __init__(
        self,
        config: ModelConfig,
        library_loc: torch.Tensor,
        library_scale: torch.Tensor,
        class_prior: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        d, k, b = config.n_latent, config.n_classes, config.n_batches
        hidden = [config.n_hidden] * config.n_layers
        p = config.dropout
        if class_prior is None:
            class_prior = torch.full((k,), 1.0 / k)
        # Priors are buffers: they are saved with the weights and follow .to(device).
        self.register_buffer("class_log_prior", class_prior.log())  # [K]
        if class_weights is None:
            class_weights = torch.ones(k)
        self.register_buffer("classification_weight", config.alpha * class_weights)  # [K], α_y
        self.register_buffer("library_loc", library_loc.reshape(-1))  # [max(1, n_batches)]
        self.register_buffer("library_scale", library_scale.reshape(-1))
        # θ, the per-gene inverse dispersion of p(x | z₁, l), kept positive through its log.
        self.log_theta = nn.Parameter(torch.zeros(config.n_genes))  # [G]

        with_batch = [b] if b else []  # the one-hot batch covariate, when there is one
        encoder_batch = with_batch if config.encode_batch else []
        x_inputs = [config.n_genes, *encoder_batch]
        if config.separate_library_encoder:
            self.x_encoder = GaussianNet(x_inputs, d, hidden, p)
            self.library_encoder = GaussianNet(x_inputs, 1, hidden, p)
        else:  # one encoder: d locations and scales for z₁, one for log l
            self.x_encoder = GaussianNet(x_inputs, d + 1, hidden, p)
        self.classifier = Classifier(d, k, hidden, p)
        self.z2_encoder = GaussianNet([d, k], d, hidden, p)
        self.z1_decoder = GaussianNet([d, k], d, hidden, 0.0)
        self.x_decoder = XDecoder([d, *with_batch], config.n_genes, hidden, 0.0)

    # ------------------------------------------------------------------ helpers
    def batch_inputs(self, x: torch.Tensor, batch: torch.Tensor | None) -> list[torch.Tensor]:
        """The one-hot batch covariate as an extra network input (nothing without batches).

        A code of -1 (a batch the model was not trained on) gets the mean of the one-hot
        rows, 1/B in every column: the first layer of each network that sees the batch is
        linear in it, so that cell meets the average of the training batches' effects.
        """
        b = self.config.n_batches
        if b == 0:
            return []
        onehot = one_hot(batch.clamp(min=0), b).to(x.dtype)  # [batch, n_batches]
        unseen = (batch < 0).unsqueeze(-1)  # [batch, 1]
        return [torch.where(unseen, torch.full_like(onehot, 1.0 / b), onehot)]

    def library_prior(self, batch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_l and σ_l of p(l) for each cell (the batches' average for a code of -1)."""
        if self.config.n_batches == 0:
            return self.library_loc[0], self.library_scale[0]
        unseen = batch < 0
        index = batch.clamp(min=0)
        loc = torch.where(unseen, self.library_loc.mean(), self.library_loc[index])
        scale = torch.where(unseen, self.library_scale.mean(), self.library_scale[index])
        return loc, scale  # [batch] each

    def encode_x(
        self, x: torch.Tensor, batch_onehot: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Parameters of q(z₁|x) (``[batch, d]`` each) and of q(l|x) (``[batch]`` each)."""
        inputs = [torch.log1p(x), *(batch_onehot if self.config.encode_batch else [])]
        loc, scale = self.x_encoder(*inputs)  # [batch, d] each ([batch, d + 1] when shared)
        if self.config.separate_library_encoder:
            l_loc, l_scale = self.library_encoder(*inputs)  # [batch, 1] each
            return loc, scale, l_loc[..., 0], l_scale[..., 0]
        d = self.config.n_latent
        return loc[..., :d], scale[..., :d], loc[..., d], scale[..., d]

    def one_hot_y(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return one_hot(y, self.config.n_classes).to(like.dtype)  # [batch, K] or [K, 1, K]

    # ------------------------------------------------------------------ model
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, batch: torch.Tensor | None = None
    ) -> None:
        """p(y) p(z₂) p(z₁ | z₂, y) p(l) p(x | z₁, l), with y observed where given."""
        # Imported here: scvi-tools' ZINB brings `import scvi` (about 7 s, mostly lightning),
        # which annotating with a saved model, never evaluating p(x | z₁, l), can skip.
        from pyro_scvae.distributions import ZINB

        pyro.module("pyro_scvae", self)
        n_cells = x.shape[0]
        d = self.config.n_latent
        theta = self.log_theta.exp()  # [G]
        batch_onehot = self.batch_inputs(x, batch)
        with pyro.plate("cells", n_cells):
            prior_y = dist.Categorical(logits=self.class_log_prior)
            y = pyro.sample("y", prior_y, obs=y)  # [batch] observed, [K, 1] enumerated
            z2 = pyro.sample(
                "z2", dist.Normal(x.new_zeros(d), x.new_ones(d)).to_event(1)
            )  # [batch, d]; the guide's value is [K, batch, d] when y is enumerated
            z1_loc, z1_scale = self.z1_decoder(z2, self.one_hot_y(y, x))  # [(K,) batch, d]
            z1 = pyro.sample("z1", dist.Normal(z1_loc, z1_scale).to_event(1))  # [batch, d]
            l_loc, l_scale = self.library_prior(batch)
            l = pyro.sample("l", dist.LogNormal(l_loc, l_scale).expand([n_cells]))  # [batch]
            rho, zi_logits = self.x_decoder(z1, *batch_onehot)  # [batch, G] each
            mean = l.unsqueeze(-1) * rho  # [batch, G]
            pyro.sample("x", ZINB(mean, theta, zi_logits).to_event(1), obs=x)
            if y is not None and y.dim() == 1:
                # Labelled cells: + α_y log q(y | z₁), so that the classifier learns from labels.
                log_q_y = dist.Categorical(logits=self.classifier(z1)).log_prob(y)  # [batch]
                pyro.factor("classification", self.classification_weight[y] * log_q_y)

    # ------------------------------------------------------------------ guide
    @config_enumerate(default="parallel")
    def guide(
        self, x: torch.Tensor, y: torch.Tensor | None = None, batch: torch.Tensor | None = None
    ) -> None:
        """q(z₁ | x) q(l | x) q(y | z₁) q(z₂ | z₁, y); y is enumerated when not given."""
        pyro.module("pyro_scvae", self)
        z1_loc, z1_scale, l_loc, l_scale = self.encode_x(x, self.batch_inputs(x, batch))
        with pyro.plate("cells", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(z1_loc, z1_scale).to_event(1))  # [batch, d]
            pyro.sample("l", dist.LogNormal(l_loc, l_scale))  # [batch]
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(z1)))  # [K, 1]
            z2_loc, z2_scale = self.z2_encoder(z1, self.one_hot_y(y, x))  # [(K,) batch, d]
            pyro.sample("z2", dist.Normal(z2_loc, z2_scale).to_event(1))  # [(K,) batch, d]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, batch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean of z₁ and the classifier's logits of q(y | z₁) at that mean."""
        z1_loc = self.encode_x(x, self.batch_inputs(x, batch))[0]  # [batch, d]
        return z1_loc, self.classifier(z1_loc)  # [batch, d], [batch, K]
