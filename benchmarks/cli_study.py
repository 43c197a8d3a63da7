"""Macro-F1 of ``python -m pyro_scvae.fit`` with extra options against its defaults.

Paired seeds: every option set runs on the same task split and seed, so the differences
are paired. Prints one row per (task, seed, option set) and a mean per option set; "train
s" is the whole command's wall time, "training s" the model's training seconds (both
fits) from its ``metrics.json``.

    OMP_NUM_THREADS=1 python benchmarks/cli_study.py --tasks T3s T5s --seeds 0 \\
        --variant default= --variant share=--labelled-share,0.5

An option ``EPOCHS/k`` stands for a k-th of the command's default epochs on the task's
cells (``--variant short3=--ensemble,3,--epochs,EPOCHS/3``: a seed ensemble of three
members in the time of one).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import fit_predict_pyro_scvae_cli
from benchmarks.metrics import score
from benchmarks.tasks import build_task
from pyro_scvae.config import default_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=OPTIONS, the options comma-separated (NAME= alone: the defaults)",
    )
    args = parser.parse_args()
    variants = {}
    for text in args.variant:
        name, _, options = text.partition("=")
        variants[name] = [o for o in options.split(",") if o]
    totals: dict[str, list[float]] = {name: [] for name in variants}
    print("| task | seed | variant | accuracy | macro-F1 | ECE | train s | training s | genes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task_name in args.tasks:
        for seed in args.seeds:
            task = build_task(task_name, seed)
            truth = task.adata.obs.loc[task.adata.obs["is_query"], "label"]
            for name, options in variants.items():
                options = [epochs_option(o, task.adata.n_obs) for o in options]
                proba, info = fit_predict_pyro_scvae_cli(task.adata, seed, extra_args=options)
                result = score(truth.loc[proba.index], proba)
                fit = info.get("fit_metrics", {})  # the command's own metrics.json
                totals[name].append(result["macro_f1"])
                print(
                    f"| {task_name} | {seed} | {name} | {result['accuracy']:.3f} | "
                    f"{result['macro_f1']:.3f} | {result['ece']:.3f} | {info['train_s']:.0f} | "
                    f"{fit.get('train_seconds', float('nan')):.0f} | {fit.get('n_genes', '')} |",
                    flush=True,
                )
    for name, values in totals.items():
        print(f"mean macro-F1 {name}: {sum(values) / len(values):.3f} over {len(values)} runs")


def epochs_option(option: str, n_cells: int) -> str:
    """``EPOCHS/k`` as a number: a k-th of the default epochs of ``n_cells`` (at least 1)."""
    match = re.fullmatch(r"EPOCHS/(\d+)", option)
    if match is None:
        return option
    return str(max(1, round(default_epochs(n_cells) / int(match.group(1)))))


if __name__ == "__main__":
    main()
