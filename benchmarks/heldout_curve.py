"""Held-out ELBO and query macro-F1 along training: would early stopping on the ELBO help?

Usage (from the repository root)::

    python benchmarks/heldout_curve.py T1b 0 --data-dir ../shared/data

A random 10 % of a task's cells (labelled or not) is held out. The model trains on the
rest with the default settings and epochs, through the same :class:`Stepper` as
``PyroSCVAE.fit``. Every ``--every`` epochs it prints:
- the held-out ELBO per cell, with y enumerated for every held-out cell, averaged over
  three draws;
- the macro-F1 on the task's query cells.

Early stopping on the held-out ELBO would stop near the ELBO's best epoch.
``benchmarks/tuning.md`` records what these curves showed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import TraceEnum_ELBO

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.metrics import score
from benchmarks.tasks import build_task
from pyro_scvae import PyroSCVAE
from pyro_scvae.api import default_epochs
from pyro_scvae.data import CellData, minibatches
from pyro_scvae.training import Stepper, TrainingConfig, kl_weight


def curve(
    task: str, seed: int, data_dir: str | None, every: int = 5, epochs: int | None = None
) -> list[dict]:
    """Train on 90 % of the cells; return held-out ELBO and query macro-F1 by epoch.

    ``epochs`` overrides the default number of epochs (for tests); the KL warm-up spans
    half of them either way.
    """
    warnings.filterwarnings("ignore")
    built = build_task(task, seed, data_dir=data_dir)
    adata = with_training_labels(built.adata, np.nan)
    query = adata.obs["is_query"].to_numpy(dtype=bool)
    truth = built.adata.obs["label"].to_numpy()[query]
    setup_pyro_scvae(adata)
    model = PyroSCVAE(adata, seed=seed)
    vae, data = model.module, model.data
    rng = np.random.default_rng(seed)
    held = rng.random(len(data.labels)) < 0.1

    def subset(mask: np.ndarray) -> CellData:
        rows = np.flatnonzero(mask)
        batches = None if data.batches is None else data.batches[rows]
        return CellData(data.counts[rows], data.labels[rows], batches)

    train, held_out = subset(~held), subset(held)
    config = TrainingConfig(epochs=epochs or default_epochs(len(data.labels)), seed=seed)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(seed)
    records = []
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        stepper = Stepper(vae, config.lr)
        for epoch in range(config.epochs):
            vae.train()
            stepper.set_kl_weight(kl_weight(config.kl_warmup, epoch, config.epochs))
            for index, labelled in minibatches(train.labels, config.batch_size, rng):
                stepper.step(*train.tensors(index, "cpu", labelled))
            if (epoch + 1) % every and epoch + 1 != config.epochs:
                continue
            vae.eval()
            with torch.no_grad():
                x, _, batch = held_out.tensors(np.arange(len(held_out.labels)))  # [n, G]
                losses = [elbo.loss(vae.model, vae.guide, x, None, batch) for _ in range(3)]
            proba = pd.DataFrame(model.predict(soft=True)).loc[adata.obs_names[query]]
            record = {
                "epoch": epoch + 1,
                "heldout_elbo_per_cell": -float(np.mean(losses)) / x.shape[0],
                "query_macro_f1": score(truth, proba)["macro_f1"],
            }
            print(task, seed, *record.values(), flush=True)
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the curve, optionally write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("seed", type=int)
    parser.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    parser.add_argument("--every", type=int, default=5, help="epochs between evaluations")
    parser.add_argument("--out", type=Path, help="write the curve here as JSON")
    args = parser.parse_args(argv)
    records = curve(args.task, args.seed, args.data_dir, args.every)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
