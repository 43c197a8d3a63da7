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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import build_task
from benchmarks.throughput import ARCHITECTURE
from pyro_scvae import PyroSCVAE
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="T3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
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
    return rows


if __name__ == "__main__":
    main()
