"""Time training epochs with the working tree's ZINB against a reference, side by side.

The two alternate in one process on the same model and the same minibatches, so that the
ratio is meaningful on a shared, noisy machine. The reference is scvi's own
``log_zinb_positive`` everywhere (``scvi``), or the sparse ZINB of an earlier commit (from
4ee5ea1 on, where ``log_zinb_sparse`` first appears)::

    OMP_NUM_THREADS=1 python benchmarks/zinb_ab.py --tasks T1a T4 --reference 19a75f3
    OMP_NUM_THREADS=1 python benchmarks/zinb_ab.py --tasks T1a --reference scvi

Prints a table: median milliseconds per epoch (the first minibatches of one epoch, up to
``--steps``) over ``--reps`` repetitions after two warm-up ones, and the speed-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_scvae.distributions as distributions
from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import build_task
from pyro_scvae import PyroSCVAE
from pyro_scvae.data import minibatches
from pyro_scvae.training import Stepper

REPOSITORY = Path(__file__).resolve().parents[1]


def module_at(commit: str, path: str) -> types.ModuleType:
    """The file ``path`` of the repository as it was at ``commit``, loaded as a module of
    its own beside the working tree's (registered in ``sys.modules``, where dataclasses
    look their module up)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{path}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"{Path(path).stem}_{commit}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def reference_zinb(reference: str) -> tuple[object, float]:
    """``(log_zinb_sparse, SPARSE_DENSITY)`` of the reference: a commit, or ``scvi``."""
    if reference == "scvi":
        return distributions.log_zinb_sparse, 0.0  # never sparse: scvi's function
    module = module_at(reference, "pyro_scvae/distributions.py")
    return module.log_zinb_sparse, module.SPARSE_DENSITY


def epoch_times(task: str, args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds per epoch of the reference and of the working tree on ``task``."""
    built = build_task(task, 0, data_dir=args.data_dir)
    data = with_training_labels(built.adata, np.nan)
    setup_pyro_scvae(data)
    model = PyroSCVAE(data, seed=0)
    vae, cells = model.module.train(), model.data
    variants = {
        "reference": reference_zinb(args.reference),
        "working tree": (distributions.log_zinb_sparse, distributions.SPARSE_DENSITY),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    rng = np.random.default_rng(0)
    try:
        with pyro.get_param_store().scope(), pyro.validation_enabled(False):
            stepper = Stepper(vae, 3e-3)
            batches = list(minibatches(cells.labels, args.batch_size, rng))[: args.steps]
            tensors = [cells.tensors(index, "cpu", labelled) for index, labelled in batches]
            for rep in range(args.reps + 2):  # the first two are warm-up
                order = list(variants.items())
                for name, (function, density) in order if rep % 2 else order[::-1]:
                    distributions.log_zinb_sparse = function
                    distributions.SPARSE_DENSITY = density
                    start = time.perf_counter()
                    for step_tensors in tensors:
                        stepper.step(*step_tensors)
                    if rep >= 2:
                        times[name].append(time.perf_counter() - start)
    finally:  # leave the working tree's ZINB in place
        distributions.log_zinb_sparse, distributions.SPARSE_DENSITY = variants["working tree"]
    return {name: 1e3 * float(np.median(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["T1a", "T4"])
    parser.add_argument("--reference", default="scvi", help="a commit, or scvi (default)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12, help="minibatches per timed pass")
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--data-dir", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"reference: {args.reference}; batch size {args.batch_size}; median of {args.reps}")
    print("| task | reference (ms) | working tree (ms) | speed-up |")
    print("|---|---|---|---|")
    for task in args.tasks:
        ms = epoch_times(task, args)
        speed_up = ms["reference"] / ms["working tree"]
        print(f"| {task} | {ms['reference']:.1f} | {ms['working tree']:.1f} | {speed_up:.3f}× |")


if __name__ == "__main__":
    main()
