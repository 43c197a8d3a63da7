"""Time one training step three ways, to see what Pyro's per-step work costs (issue 6).

On a GPU a step of this model is bound by Python, not arithmetic (``gpu.md``). This
script measures how much of a step is ``SVI`` and the parameter registration it needs,
on the minibatches of a real task with the throughput benchmark's layer widths:

- ``svi``: the package's step (:class:`pyro_scvae.training.Stepper`: ``SVI`` with
  ``TraceEnum_ELBO`` and one fused Adam);
- ``differentiable_loss``: ``TraceEnum_ELBO.differentiable_loss``, ``backward`` and the same
  clipped, fused Adam over the module's parameters, without ``SVI`` (the model and the
  guide still call ``pyro.module``);
- ``no_registration``: the same with ``pyro.module`` made a no-op, i.e. a training step
  with no per-step parameter registration at all.

The three give the same loss and gradients (the objective is the same ``TraceEnum_ELBO``);
only the Python around it differs. For each batch size and kind of minibatch (labelled,
or unlabelled with y enumerated; fewer cells where the task has fewer of that kind) it
prints the fastest of ``--reps`` means over ``--steps`` steps, after ten warm-up steps,
and the time to assemble the minibatch from the sparse counts and move it to the device::

    OMP_NUM_THREADS=1 python benchmarks/step_times.py --task T3 --batch-sizes 128 1024
    python benchmarks/step_times.py --device cuda --steps 50

With ``--breakdown`` (CPU only) it then splits a step, timed in CPU time of this one-thread
process (steadier than wall time on a shared machine), into

- *Pyro's work*: the package's SVI step less a step of plain torch that computes the same
  ELBO (:func:`torch_loss`: one draw of z₁, l and z₂ per y, the sum over y written out as
  in :mod:`pyro_scvae.elbo`) with the same clipped fused Adam, i.e. traces, enumeration
  bookkeeping, messengers and parameter registration;
- *optimiser*: clipping and the fused Adam update alone;
- *ZINB*: the log-probability of the minibatch's counts and its gradient alone, at the
  model's current means;
- *matrix products*: the share of ``aten::mm``/``addmm``/``bmm`` in the plain-torch step's
  operator time (``torch.profiler``), times that step;
- *other tensor operations*: the rest of the plain-torch step (LayerNorm, ReLU, dropout,
  softplus, Normal densities, sampling, backward bookkeeping), by difference::

    OMP_NUM_THREADS=1 python benchmarks/step_times.py --task T3 --batch-sizes 128 1024 --breakdown
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from torch.distributions import LogNormal, Normal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import build_task
from benchmarks.throughput import ARCHITECTURE
from pyro_scvae import PyroSCVAE
from pyro_scvae.distributions import ZINB
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.training import ScaleKL, Stepper

VARIANTS = ("svi", "differentiable_loss", "no_registration")


class DifferentiableLossStep:
    """A step without ``SVI``: ``differentiable_loss``, ``backward``, clipped fused Adam."""

    def __init__(self, vae: HierarchicalVAE, lr: float, kl_weight: float) -> None:
        self.params = list(vae.parameters())
        self.optimiser = torch.optim.Adam(self.params, lr=lr, fused=True)
        scale_kl = ScaleKL(kl_weight)
        self.model, self.guide = scale_kl(vae.model), scale_kl(vae.guide)
        self.elbo = TraceEnum_ELBO(max_plate_nesting=1)

    def step(self, x, y, batch) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(self.model, self.guide, x, y, batch)  # []
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.params, 100.0, foreach=True)
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        return loss.detach()


@contextmanager
def registration(enabled: bool):
    """``pyro.module`` as it is, or a no-op that registers nothing."""
    original = pyro.module
    if not enabled:
        pyro.module = lambda name, module, update_module_params=False: module
    try:
        yield
    finally:
        pyro.module = original


def make_stepper(variant: str, vae: HierarchicalVAE) -> object:
    """A fresh stepper of ``variant`` at KL weight 0.5 and the default learning rate."""
    if variant == "svi":
        stepper = Stepper(vae, 3e-3)
        stepper.set_kl_weight(0.5)
        return stepper
    return DifferentiableLossStep(vae, 3e-3, 0.5)


def milliseconds_per_call(call: Callable[[], object], steps: int, reps: int, device) -> float:
    """Fastest of ``reps`` mean times of ``call`` (ms), after ten warm-up calls."""

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(10):
        call()
    means = []
    for _ in range(reps):
        synchronise()
        start = time.perf_counter()
        for _ in range(steps):
            call()
        synchronise()
        means.append((time.perf_counter() - start) / steps * 1e3)
    return min(means)


def torch_loss(vae: HierarchicalVAE, x, y, batch) -> torch.Tensor:
    """Minus the ELBO (β = 1) in plain torch: the objective of ``TraceEnum_ELBO`` here.

    One reparameterised draw of z₁ and l, and of z₂ for each value of y (unlabelled) or the
    observed y; the sum over y weighted by q(y | z₁) written out (:mod:`pyro_scvae.elbo`).
    """
    k = vae.config.n_classes
    batch_onehot = vae.batch_inputs(x, batch)
    z1_loc, z1_scale, l_loc, l_scale = vae.encode_x(x, batch_onehot)  # [b, d] x2, [b] x2
    z1 = z1_loc + z1_scale * torch.randn_like(z1_loc)  # [b, d]
    l = (l_loc + l_scale * torch.randn_like(l_loc)).exp()  # [b]
    log_q_z1 = Normal(z1_loc, z1_scale).log_prob(z1).sum(-1)  # [b]
    log_q_l = LogNormal(l_loc, l_scale).log_prob(l)  # [b]
    log_p_l = LogNormal(*vae.library_prior(batch)).log_prob(l)  # [b]
    rho, zi_logits = vae.x_decoder(z1, *batch_onehot)  # [b, G] each
    theta = vae.log_theta.exp()  # [G]
    reconstruction = ZINB(l.unsqueeze(-1) * rho, theta, zi_logits).log_prob(x).sum(-1)  # [b]
    log_q_y_all = torch.log_softmax(vae.classifier(z1), -1)  # [b, K]
    if y is None:
        ys = torch.arange(k, device=x.device).unsqueeze(-1)  # [K, 1]
        log_q_y = log_q_y_all.T  # [K, b]
        weight = log_q_y.exp()  # [K, b]
    else:
        ys = y.unsqueeze(0)  # [1, b]
        log_q_y = log_q_y_all.gather(-1, y.unsqueeze(-1)).T  # [1, b]
        weight = torch.ones_like(log_q_y)  # [1, b]
    y_onehot = vae.one_hot_y(ys, x)  # [K, 1, K] or [1, b, K]
    z2_loc, z2_scale = vae.z2_encoder(z1, y_onehot)  # [K, b, d] or [1, b, d]
    z2 = z2_loc + z2_scale * torch.randn_like(z2_loc)
    log_q_z2 = Normal(z2_loc, z2_scale).log_prob(z2).sum(-1)  # [K, b]
    log_p_z1 = Normal(*vae.z1_decoder(z2, y_onehot)).log_prob(z1).sum(-1)  # [K, b]
    log_p_z2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)  # [K, b]
    log_p_y = vae.class_log_prior[ys]  # [K, 1] or [1, b]
    elbo = reconstruction - log_q_z1 + log_p_l - log_q_l  # [b]
    elbo = elbo + (weight * (log_p_z1 + log_p_z2 - log_q_z2)).sum(0)
    if y is None:
        elbo = elbo + (weight * (log_p_y - log_q_y)).sum(0)
    else:
        elbo = elbo + log_p_y.squeeze(0) + vae.classification_weight[y] * log_q_y.squeeze(0)
    return -elbo.sum()


def cpu_milliseconds(call: Callable[[], object], steps: int, reps: int) -> float:
    """Fastest of ``reps`` mean CPU times of ``call`` (ms), after three warm-up calls."""
    for _ in range(3):
        call()
    means = []
    for _ in range(reps):
        start = time.process_time()
        for _ in range(steps):
            call()
        means.append((time.process_time() - start) / steps * 1e3)
    return min(means)


def breakdown(vae: HierarchicalVAE, tensors: tuple, steps: int, reps: int) -> dict[str, float]:
    """Where a step's CPU time goes (ms): see the module docstring."""
    from torch.profiler import ProfilerActivity, profile

    x, y, batch = tensors
    params = list(vae.parameters())
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        stepper = Stepper(vae, 0.0)
        svi = cpu_milliseconds(partial(stepper.step, *tensors), steps, reps)
    optimiser = torch.optim.Adam(params, lr=0.0, fused=True)

    def update() -> None:
        torch.nn.utils.clip_grad_value_(params, 100.0, foreach=True)
        optimiser.step()

    def plain_step() -> None:
        torch_loss(vae, x, y, batch).backward()
        update()
        optimiser.zero_grad(set_to_none=True)

    plain = cpu_milliseconds(plain_step, steps, reps)
    for p in params:
        p.grad = torch.zeros_like(p)
    adam = cpu_milliseconds(update, steps, reps)
    with torch.no_grad():
        batch_onehot = vae.batch_inputs(x, batch)
        rho, zi_logits = vae.x_decoder(vae.encode_x(x, batch_onehot)[0], *batch_onehot)
    mu = (rho * x.sum(-1, keepdim=True)).requires_grad_()  # [b, G]
    theta = vae.log_theta.exp().detach().requires_grad_()  # [G]
    zi_logits = zi_logits.requires_grad_()

    def zinb_step() -> None:
        ZINB(mu, theta, zi_logits).log_prob(x).sum().backward()

    zinb = cpu_milliseconds(zinb_step, steps, reps)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for _ in range(3):
            plain_step()
    events = profiled.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(
        e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")
    )
    matmul = plain * products / total
    return {
        "svi": svi,
        "plain_torch": plain,
        "pyro": svi - plain,
        "optimiser": adam,
        "zinb": zinb,
        "matmul": matmul,
        "other": plain - adam - zinb - matmul,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="T3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--breakdown", action="store_true", help="then split a step's CPU time (see above)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites", UserWarning)

    device = torch.device(args.device)
    built = build_task(args.task, 0, max_cells=args.max_cells, data_dir=args.data_dir)
    adata = with_training_labels(built.adata, np.nan)
    setup_pyro_scvae(adata)
    model = PyroSCVAE(adata, seed=0, **ARCHITECTURE)
    vae, data = model.module.to(device).train(), model.data
    print(f"{args.task}: {data.n_cells} cells, {data.counts.shape[1]} genes, on {device}")
    print(
        "\n| batch size | minibatch | cells | "
        + " | ".join(f"{v} ms" for v in VARIANTS)
        + " | assembly ms |"
    )
    print("|---" * (len(VARIANTS) + 4) + "|")
    rows = []
    for batch_size in args.batch_sizes:
        for labelled in (False, True):
            cells = np.flatnonzero((data.labels >= 0) == labelled)[:batch_size]
            tensors = data.tensors(cells, device, labelled)
            row = {"batch_size": batch_size, "labelled": labelled, "cells": len(cells)}
            for variant in VARIANTS:
                with (
                    pyro.get_param_store().scope(),
                    pyro.validation_enabled(False),
                    registration(variant != "no_registration"),
                ):
                    stepper = make_stepper(variant, vae)
                    row[variant] = milliseconds_per_call(
                        partial(stepper.step, *tensors), args.steps, args.reps, device
                    )
            row["assembly"] = milliseconds_per_call(
                partial(data.tensors, cells, device, labelled), args.steps, args.reps, device
            )
            kind = "labelled" if labelled else "unlabelled"
            times = " | ".join(f"{row[v]:.2f}" for v in (*VARIANTS, "assembly"))
            print(f"| {batch_size} | {kind} | {len(cells)} | {times} |", flush=True)
            rows.append(row)
    if args.breakdown:
        parts = ("svi", "plain_torch", "pyro", "optimiser", "matmul", "zinb", "other")
        print("\nCPU ms per step (one thread):\n")
        print(
            "| batch size | minibatch | SVI step | plain torch | Pyro's work | optimiser "
            "| matrix products | ZINB | other tensor ops |"
        )
        print("|---" * 9 + "|")
        for row in rows:
            cells = np.flatnonzero((data.labels >= 0) == row["labelled"])[: row["batch_size"]]
            tensors = data.tensors(cells, device, row["labelled"])
            split = breakdown(vae, tensors, args.steps, args.reps)
            row["breakdown"] = split
            kind = "labelled" if row["labelled"] else "unlabelled"
            shares = " | ".join(
                f"{split[p]:.1f}" + (f" ({split[p] / split['svi']:.0%})" if i > 1 else "")
                for i, p in enumerate(parts)
            )
            print(f"| {row['batch_size']} | {kind} | {shares} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
