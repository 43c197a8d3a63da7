"""Is ``fit(jit=True)`` the same training as the uncompiled step? Two checks (``speed.md``).

``gradients``: at trained weights of a task (``--pretrain`` epochs), on real minibatches of
``--batch-size`` cells, ``--steps`` compiled and as many uncompiled steps at learning rate 0;
per gradient element, the z of the difference of the means and the ratio of the variances.
Equal estimators give mean |z| ≈ 0.80 and variance ratios ≈ 1::

    OMP_NUM_THREADS=1 python benchmarks/jit_study.py gradients --task T4 --steps 100

``stream``: macro-F1 of the default, of the uncompiled step with its random stream shifted
by one draw after seeding (same split, weights and minibatch order; other noise, as under
jit), and of ``jit=True``, on the same tasks and seeds; records appended to ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/jit_study.py stream --tasks T1c T1a --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyro
import torch


def gradients(task: str, batch_size: int, steps: int, pretrain: int) -> list[dict]:
    """Compiled against uncompiled gradients at trained weights (see the module docstring)."""
    from benchmarks.methods import setup_pyro_scvae, with_training_labels
    from benchmarks.tasks import build_task
    from pyro_scvae import PyroSCVAE
    from pyro_scvae.training import JointAdam, Stepper

    adata = with_training_labels(build_task(task, 0).adata, np.nan)
    setup_pyro_scvae(adata)
    model = PyroSCVAE(adata, seed=0)
    if pretrain:
        model.fit(epochs=pretrain, progress=False, device="cpu", threads=1)
    vae, data = model.module.train(), model.data
    recorded: list[torch.Tensor] = []
    original = JointAdam.__call__

    def record(self, params, *args, **kwargs):
        recorded.append(torch.cat([p.grad.reshape(-1) for p in vae.parameters()]))
        return original(self, params, *args, **kwargs)

    JointAdam.__call__ = record
    rows = []
    try:
        for beta in (0.5, 1.0):
            for labelled in (False, True):
                cells = np.flatnonzero((data.labels >= 0) == labelled)[:batch_size]
                tensors = data.tensors(cells, "cpu", labelled)
                results = {}
                for jit in (True, False):
                    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
                        stepper = Stepper(vae, lr=0.0, jit_batch_size=len(cells) if jit else None)
                        stepper.set_kl_weight(beta)
                        for _ in range(3):  # compiles, and the executor's profiling runs
                            stepper.step(*tensors)
                        recorded.clear()
                        losses = torch.tensor([stepper.step(*tensors) for _ in range(steps)])
                        results[jit] = torch.stack(recorded), losses
                (g_jit, l_jit), (g_eager, l_eager) = results[True], results[False]
                error = (g_jit.var(0) / steps + g_eager.var(0) / steps).sqrt()
                varies = error > 1e-6 * g_eager.abs().mean()
                z = (g_jit.mean(0) - g_eager.mean(0))[varies] / error[varies]
                ratio = g_jit.var(0)[varies] / g_eager.var(0)[varies]
                row = {
                    "beta": beta,
                    "labelled": labelled,
                    "cells": len(cells),
                    "mean_abs_z": float(z.abs().mean()),
                    "share_abs_z_over_4": float((z.abs() > 4).float().mean()),
                    "median_variance_ratio": float(ratio.median()),
                    "loss_z": float(
                        (l_jit.mean() - l_eager.mean())
                        / (l_jit.var() / steps + l_eager.var() / steps).sqrt()
                    ),
                }
                rows.append(row)
                print(row, flush=True)
    finally:
        JointAdam.__call__ = original
    return rows


def stream(tasks: list[str], seeds: list[int], out: Path) -> None:
    """Default, shifted stream and jit, macro-F1 per task and seed (appended to ``out``)."""
    import pyro_scvae.training as training
    from benchmarks import tuning

    original = pyro.set_rng_seed

    def shifted(seed: int) -> None:
        original(seed)
        torch.rand(1)  # one extra draw: another stream, the same statistics

    try:
        for seed in seeds:
            for task in tasks:
                for variant in ("default", "shifted", "jit"):
                    training.pyro.set_rng_seed = shifted if variant == "shifted" else original
                    config = {"init": {}, "fit": {"jit": True} if variant == "jit" else {}}
                    record = {"variant": variant, **tuning.run_one(config, task, seed, None)}
                    with out.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(variant, task, seed, f"macro-F1 {record['macro_f1']:.3f}", flush=True)
    finally:
        training.pyro.set_rng_seed = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    grad = sub.add_parser("gradients")
    grad.add_argument("--task", default="T4")
    grad.add_argument("--batch-size", type=int, default=512)
    grad.add_argument("--steps", type=int, default=100)
    grad.add_argument("--pretrain", type=int, default=30)
    control = sub.add_parser("stream")
    control.add_argument("--tasks", nargs="+", default=["T1c", "T1a"])
    control.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    control.add_argument("--out", type=Path, default=Path("jit_stream.jsonl"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.check == "gradients":
        gradients(args.task, args.batch_size, args.steps, args.pretrain)
    else:
        stream(args.tasks, args.seeds, args.out)


if __name__ == "__main__":
    main()
