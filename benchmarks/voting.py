"""Macro-F1 of pyro_scvae's calls with and without majority voting, on the benchmark tasks.

For each task and seed: pyro_scvae at its defaults (query cells unlabelled, as in
``benchmarks/methods.py``), then ``annotate(query, majority_voting=True)`` on the query
cells alone, as CellTypist votes over the data set it annotates (Leiden over-clustering
of z₁ at CellTypist's resolution for that many cells, :mod:`pyro_scvae.voting`). Prints a
Markdown table: macro-F1 and accuracy of the per-cell and of the voted calls on the query
cells, the number of clusters and the cells whose call the vote changed.

Usage::

    python benchmarks/voting.py --tasks T4 T1a --seeds 0 [--epochs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import TASKS, build_task


def run_task(name: str, seed: int, epochs: int | None) -> dict:
    """Fit on one task and score the query cells' calls with and without voting."""
    from pyro_scvae import PyroSCVAE

    task = build_task(name, seed=seed)
    data = with_training_labels(task.adata, np.nan)
    query = data.obs["is_query"].to_numpy()
    start = time.perf_counter()
    setup_pyro_scvae(data)
    model = PyroSCVAE(data, seed=seed)
    model.fit(seed=seed, progress=False, **({} if epochs is None else {"epochs": epochs}))
    annotated = model.annotate(data[query].copy(), majority_voting=True)
    truth = annotated.obs["label"].astype(str).to_numpy()
    labels = sorted(set(truth))
    result = {"task": name, "seed": seed, "n_query": int(query.sum())}
    for key, column in (("cell", "pyro_scvae_prediction"), ("voted", "pyro_scvae_majority_voting")):
        calls = annotated.obs[column].astype(str).to_numpy()
        result[f"{key}_macro_f1"] = f1_score(
            truth, calls, labels=labels, average="macro", zero_division=0
        )
        result[f"{key}_accuracy"] = accuracy_score(truth, calls)
    obs = annotated.obs
    result["n_clusters"] = int(obs["pyro_scvae_over_clustering"].nunique())
    per_cell = obs["pyro_scvae_prediction"].astype(str)
    voted = obs["pyro_scvae_majority_voting"].astype(str)
    result["changed"] = int((per_cell != voted).sum())
    result["types_lost"] = sorted(set(per_cell) - set(voted))  # called, but by no vote
    result["seconds"] = time.perf_counter() - start
    return result


def table(results: list[dict]) -> str:
    """The Markdown table of :func:`run_task`'s results."""
    lines = [
        "| task | seed | query cells | macro-F1 per cell | macro-F1 voted | Δ | accuracy per cell "
        "| accuracy voted | clusters | calls changed | types lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delta = r["voted_macro_f1"] - r["cell_macro_f1"]
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['n_query']} | {r['cell_macro_f1']:.3f} "
            f"| {r['voted_macro_f1']:.3f} | {delta:+.3f} | {r['cell_accuracy']:.3f} "
            f"| {r['voted_accuracy']:.3f} | {r['n_clusters']} | {r['changed']} "
            f"| {', '.join(r['types_lost']) or '–'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, help="training epochs (default: the package's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    results = [run_task(t, s, args.epochs) for t in args.tasks for s in args.seeds]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
