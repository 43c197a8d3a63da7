"""What held-out labelled cells say along training, beside what a user would want.

Usage (from the repository root)::

    python benchmarks/stopping_curve.py --tasks T1b T4 --seeds 0 --out /tmp/curves.jsonl

For each task and seed, a stratified 10 % of the labelled cells is hidden (their labels,
not their counts: they train as unlabelled cells, like the cells to annotate). The model
trains with the defaults for ``--scale`` times the default number of epochs (the KL
warm-up still ends where the default run's does) and every ``--every`` epochs records

- on the hidden labelled cells: the negative log-likelihood of their labels under
  q(y | z₁) at the posterior mean, as it is and after temperature scaling on those same
  cells (the temperature too), accuracy, macro-F1 and ECE (what a stopping rule may use);
- the training ELBO per cell;
- on the task's query cells: macro-F1, accuracy and ECE (what the user gets; a stopping
  rule must not read it).

``benchmarks/tuning.md`` records what the curves showed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.metrics import score
from benchmarks.tasks import TASKS, build_task


def curve(
    task: str,
    seed: int,
    scale: float,
    every: int,
    init: dict,
    n_top_genes: int = 2000,
    data_dir=None,
    fit: dict | None = None,
) -> list:
    """Train once on ``task`` and return one record per evaluated epoch.

    ``n_top_genes`` highly variable genes are kept as the command line keeps them.
    """
    import pandas as pd

    from pyro_scvae import PyroSCVAE
    from pyro_scvae.calibration import fit_temperature, negative_log_likelihood, softmax
    from pyro_scvae.config import TrainingConfig, default_epochs
    from pyro_scvae.data import CellData
    from pyro_scvae.evaluation import classification_metrics
    from pyro_scvae.preprocess import select_genes
    from pyro_scvae.selection import validation_split
    from pyro_scvae.training import train

    warnings.filterwarnings("ignore")
    built = build_task(task, seed, data_dir=data_dir)
    data = with_training_labels(built.adata, np.nan)
    query = np.flatnonzero(data.obs["is_query"].to_numpy(dtype=bool))
    truth = built.adata.obs["label"].to_numpy()[query]
    data = select_genes(data, n_top_genes, None)  # as python -m pyro_scvae.fit does
    setup_pyro_scvae(data)
    model = PyroSCVAE(data, seed=seed, **init)
    labels = model.data.labels.copy()
    held = validation_split(labels, len(model.classes), 0.1, seed)
    labels[held] = -1
    training = CellData(model.data.counts, labels, model.data.batches)
    base = default_epochs(data.n_obs)
    config = TrainingConfig(
        epochs=round(scale * base), seed=seed, progress=False, kl_warmup=0.5 / scale, **(fit or {})
    )
    classes = np.array(model.classes)
    records: list[dict] = []
    start = time.perf_counter()

    def monitor(epoch: int, history) -> bool:
        if (epoch + 1) % every:
            return False
        batches = None if model.data.batches is None else model.data.batches[held]
        logits = model._encode(model.data.counts[held], batches)[1]
        true = model.data.labels[held]
        probabilities = softmax(logits)
        temperature = fit_temperature(logits, true)
        held_metrics = classification_metrics(
            classes[true], classes[probabilities.argmax(1)], probabilities
        )
        proba = model.predict(soft=True).iloc[query]
        query_metrics = score(truth, pd.DataFrame(proba))
        record = {
            "task": task,
            "seed": seed,
            "init": init,
            "fit": fit or {},
            "n_genes": data.n_vars,
            "epoch": epoch + 1,
            "default_epochs": base,
            "seconds": time.perf_counter() - start,
            "train_elbo": history.elbo[-1] if history.elbo else None,
            "held_nll": negative_log_likelihood(logits, true, 1.0),
            "held_nll_calibrated": negative_log_likelihood(logits, true, temperature),
            "temperature": temperature,
            "held_accuracy": held_metrics["accuracy"],
            "held_macro_f1": held_metrics["macro_f1"],
            "held_ece": held_metrics["ece"],
            "query_macro_f1": query_metrics["macro_f1"],
            "query_accuracy": query_metrics["accuracy"],
            "query_ece": query_metrics["ece"],
        }
        records.append(record)
        print(json.dumps(record), flush=True)
        return False

    train(model.module, training, config, monitor)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--scale", type=float, default=1.5, help="times the default epochs")
    parser.add_argument("--every", type=int, default=5, help="epochs between evaluations")
    parser.add_argument("--init", default="{}", help="JSON keyword arguments of PyroSCVAE")
    parser.add_argument("--fit", default="{}", help="JSON keyword arguments of TrainingConfig")
    parser.add_argument("--n-top-genes", type=int, default=2000, help="as the command line")
    parser.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines appended here")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for task in args.tasks:
            records = curve(
                task,
                seed,
                args.scale,
                args.every,
                json.loads(args.init),
                args.n_top_genes,
                fit=json.loads(args.fit),
            )
            with args.out.open("a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
