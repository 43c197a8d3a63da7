"""Tuning study: pyro_scvae settings compared on the benchmark tasks, over seeds.

Each configuration is a name plus keyword arguments of ``PyroSCVAE(...)`` (``init``) and
of ``fit`` (``fit``). Every (configuration, task, seed) trains one model in this process
on the task's cells (query cells unlabelled, as in the benchmark) and scores its query
predictions. Records are appended to ``<out>/tuning.jsonl`` as they finish, so an
interrupted study keeps what it measured, and ``<out>/tuning.md`` gets a table of
macro-F1 (mean ± sd over seeds) per task and configuration.

Usage::

    python benchmarks/tuning.py --configs default balanced --seeds 0 1 2 --out /tmp/tuning
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.methods import _split, setup_pyro_scvae, with_training_labels
from benchmarks.metrics import score
from benchmarks.tasks import TASKS, build_task

#: Named configurations: keyword arguments of ``PyroSCVAE(...)`` and of ``fit``.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"init": {}, "fit": {}},
    "balanced": {"init": {"balance_classes": True}, "fit": {}},
    "unbalanced": {"init": {"balance_classes": False}, "fit": {}},
    "alpha200": {"init": {"alpha": 200.0}, "fit": {}},
    "balanced_alpha200": {"init": {"balance_classes": True, "alpha": 200.0}, "fit": {}},
    "hidden256": {"init": {"n_hidden": 256}, "fit": {}},
    "latent10": {"init": {"n_latent": 10}, "fit": {}},
    "double_epochs": {"init": {}, "fit": {"epoch_scale": 2.0}},
    "half_epochs": {"init": {}, "fit": {"epoch_scale": 0.5}},
    "lr1e-3": {"init": {}, "fit": {"lr": 1e-3}},
    "cosine": {"init": {}, "fit": {"lr_schedule": "cosine"}},
    "balanced_sqrt": {"init": {"balance_classes": 0.5}, "fit": {}},
    "balanced_sqrt_cosine": {"init": {"balance_classes": 0.5}, "fit": {"lr_schedule": "cosine"}},
    "balanced_cosine": {"init": {"balance_classes": True}, "fit": {"lr_schedule": "cosine"}},
    "balanced_double": {"init": {"balance_classes": True}, "fit": {"epoch_scale": 2.0}},
    "balanced_quadruple": {"init": {"balance_classes": True}, "fit": {"epoch_scale": 4.0}},
    "warmup": {"init": {}, "fit": {"kl_warmup": 1.0}},
    "warmup_half": {"init": {}, "fit": {"kl_warmup": 0.5}},
    "warmup_double": {"init": {}, "fit": {"kl_warmup": 1.0, "epoch_scale": 2.0}},
    "warmup_latent10": {"init": {"n_latent": 10}, "fit": {"kl_warmup": 1.0}},
    "warmup_half_nobatchenc": {"init": {"encode_batch": False}, "fit": {"kl_warmup": 0.5}},
    "warmup_half_latent10": {"init": {"n_latent": 10}, "fit": {"kl_warmup": 0.5}},
    "warmup_half_hidden256": {"init": {"n_hidden": 256}, "fit": {"kl_warmup": 0.5}},
    "warmup_half_layers2": {"init": {"n_layers": 2}, "fit": {"kl_warmup": 0.5}},
    "warmup_half_alpha200": {"init": {"alpha": 200.0}, "fit": {"kl_warmup": 0.5}},
    "warmup_half_dropout0": {"init": {"dropout": 0.0}, "fit": {"kl_warmup": 0.5}},
    "nobatchenc_warmup_alpha200": {
        "init": {"encode_batch": False, "alpha": 200.0},
        "fit": {"kl_warmup": 0.5},
    },
    "warmup_half_double": {"init": {}, "fit": {"kl_warmup": 0.5, "epoch_scale": 2.0}},
    "warmup_triple": {"init": {}, "fit": {"kl_warmup": 1.0, "epoch_scale": 3.0}},
    "warmup_half_double_bs256": {
        "init": {},
        "fit": {"kl_warmup": 0.5, "epoch_scale": 2.0, "batch_size": 256},
    },
    "warmup_half_alpha10": {"init": {"alpha": 10.0}, "fit": {"kl_warmup": 0.5}},
    "new_defaults": {"init": {}, "fit": {}},
    "new_balance_sqrt": {"init": {"balance_classes": 0.5}, "fit": {}},
    "new_unbalanced": {"init": {"balance_classes": False}, "fit": {}},
    "new_layers2": {"init": {"n_layers": 2}, "fit": {}},
    "new_hidden256": {"init": {"n_hidden": 256}, "fit": {}},
    "new_prior_frequencies": {"init": {"class_prior": "frequencies"}, "fit": {}},
    "new_alpha100": {"init": {"alpha": 100.0}, "fit": {}},
    "new_alpha100_lr1e-3": {"init": {"alpha": 100.0}, "fit": {"lr": 1e-3}},
    "new_jit": {"init": {}, "fit": {"jit": True}},
    "new_lr1e-3": {"init": {}, "fit": {"lr": 1e-3}},
    "new_lr1e-3_double": {"init": {}, "fit": {"lr": 1e-3, "epoch_scale": 2.0}},
    "new_half": {"init": {}, "fit": {"epoch_scale": 0.5}},
    "new_third": {"init": {}, "fit": {"epoch_scale": 0.35}},
    "new_scanvi_schedule": {"init": {}, "fit": {"epochs": 400, "lr": 1e-3, "kl_warmup": 1.0}},
    "new_scanvi_schedule_alpha100": {
        "init": {"alpha": 100.0},
        "fit": {"epochs": 400, "lr": 1e-3, "kl_warmup": 1.0},
    },
    "new_half_lr6e-3": {"init": {}, "fit": {"epoch_scale": 0.5, "lr": 6e-3}},
    "new_half_lr6e-3_cosine": {
        "init": {},
        "fit": {"epoch_scale": 0.5, "lr": 6e-3, "lr_schedule": "cosine"},
    },
    "new_half_warmup0.25": {"init": {}, "fit": {"epoch_scale": 0.5, "kl_warmup": 0.25}},
    "new_half_warmup0": {"init": {}, "fit": {"epoch_scale": 0.5, "kl_warmup": 0.0}},
    "new_0.4_bs64": {"init": {}, "fit": {"epoch_scale": 0.4, "batch_size": 64}},
    "new_bs256": {"init": {}, "fit": {"batch_size": 256}},
    "new_bs256_lr6e-3": {"init": {}, "fit": {"batch_size": 256, "lr": 6e-3}},
    "new_bs512": {"init": {}, "fit": {"batch_size": 512}},
    # even_*: run on commit a014f5a (minibatches of near-equal size, since reverted)
    "even_bs512": {"init": {}, "fit": {"batch_size": 512}},
    "even_bs512_e0.8": {"init": {}, "fit": {"batch_size": 512, "epoch_scale": 0.8}},
    "new_prior_frequencies_unbalanced": {
        "init": {"class_prior": "frequencies", "balance_classes": False},
        "fit": {},
    },
    "warmup_half_jit": {"init": {}, "fit": {"kl_warmup": 0.5, "jit": True}},
    "warmup_half_short": {"init": {}, "fit": {"kl_warmup": 0.5, "epoch_scale": 0.5}},
    "warmup_half_jit_long": {
        "init": {},
        "fit": {"kl_warmup": 0.5, "jit": True, "epoch_scale": 1.5},
    },
    "balanced_cosine_double": {
        "init": {"balance_classes": True},
        "fit": {"lr_schedule": "cosine", "epoch_scale": 2.0},
    },
    # ninth round: fixed epoch counts, for T4 (700 cells; the default gives it 227)
    "epochs132": {"init": {}, "fit": {"epochs": 132}},
    "epochs115": {"init": {}, "fit": {"epochs": 115}},
    # tenth round: the JIT with more of the steps compiled (T1: 3-4 full minibatches of 256)
    "bs256_jit": {"init": {}, "fit": {"batch_size": 256, "jit": True}},
    # eleventh round: T2, where SCANVI's recipe leads over seven seeds
    "triple_epochs": {"init": {}, "fit": {"epoch_scale": 3.0}},
    "alpha10": {"init": {"alpha": 10.0}, "fit": {}},
    # twelfth round: how the labels are used (every label learnt, early stopping,
    # calibration), with the command line's 2,000 highly variable genes
    "old_python": {"init": {}, "fit": {"validation_fraction": 0.0}, "n_top_genes": 2000},
    "old_cli": {
        "init": {},
        "fit": {"validation_fraction": 0.2, "early_stopping": False, "refit": "none"},
        "n_top_genes": 2000,
    },
    "es_continue": {"init": {}, "fit": {"refit": "continue"}, "n_top_genes": 2000},
    "es_full": {"init": {}, "fit": {"refit": "full"}, "n_top_genes": 2000},
    "fixed_continue": {
        "init": {},
        "fit": {"refit": "continue", "early_stopping": False},
        "n_top_genes": 2000,
    },
    "es_continue_share": {
        "init": {},
        "fit": {"refit": "continue", "labelled_share": 0.5},
        "n_top_genes": 2000,
    },
}


def posterior_probabilities(model: Any, cells: np.ndarray, seed: int, n_samples: int = 32):
    """q(y | x) = E over q(z₁ | x) of q(y | z₁), by Monte Carlo (the API uses z₁'s mean)."""
    import torch

    module = model.module.eval()
    x = torch.from_numpy(model.data.counts[cells].toarray())  # [cells, G]
    batch = None if model.data.batches is None else torch.from_numpy(model.data.batches[cells])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        loc, scale, _, _ = module.encode_x(x, module.batch_inputs(x, batch))  # [cells, d]
        noise = torch.randn((n_samples, *loc.shape), generator=generator)  # [S, cells, d]
        return torch.softmax(module.classifier(loc + scale * noise), -1).mean(0).numpy()


def run_one(config: dict[str, dict[str, Any]], task: str, seed: int, data_dir: str | None) -> dict:
    """Train one model on one task and score its query cells."""
    from pyro_scvae import PyroSCVAE
    from pyro_scvae.api import default_epochs

    built = build_task(task, seed, data_dir=data_dir)
    data = with_training_labels(built.adata, np.nan)
    if config.get("n_top_genes"):  # as the command line chooses its genes
        from pyro_scvae.preprocess import select_genes

        data = select_genes(data, config["n_top_genes"], None)
    _, query = _split(data)
    setup_pyro_scvae(data)
    fit_kwargs = dict(config["fit"])
    scale = fit_kwargs.pop("epoch_scale", None)
    if scale is not None:
        fit_kwargs["epochs"] = max(1, round(scale * default_epochs(data.n_obs)))
    start = time.perf_counter()
    model = PyroSCVAE(data, seed=seed, **config["init"])
    model.fit(seed=seed, progress=False, **fit_kwargs)
    seconds = time.perf_counter() - start
    proba = pd.DataFrame(model.predict(soft=True)).loc[data.obs_names[query]]
    truth = built.adata.obs["label"].to_numpy()[query]
    result = score(truth, proba)
    sampled = pd.DataFrame(
        posterior_probabilities(model, np.flatnonzero(query), seed), columns=proba.columns
    )
    result_mc = score(truth, sampled)
    selection = getattr(model, "selection", None)
    return {
        "task": task,
        "seed": seed,
        "train_s": seconds,
        "epochs": len(model.history.elbo),
        "epochs_trained": getattr(model, "epochs_trained", len(model.history.elbo)),
        "best_epoch": None if selection is None else selection.best_epoch,
        "temperature": getattr(model, "temperature", 1.0),
        "validation_macro_f1": (model.validation_metrics or {}).get("macro_f1"),
        "n_genes": int(data.n_vars),
        **{k: result[k] for k in ("accuracy", "macro_f1", "weighted_f1", "ece")},
        "per_class_f1": result.get("per_class_f1"),
        "macro_f1_mc": result_mc["macro_f1"],
        "ece_mc": result_mc["ece"],
    }


def table(records: list[dict]) -> str:
    """Markdown table of macro-F1, mean ± sd over seeds, configurations × tasks."""
    frame = pd.DataFrame(records)
    rows = ["| config | " + " | ".join(sorted(frame.task.unique())) + " | mean |"]
    rows.append("|---" * (frame.task.nunique() + 2) + "|")
    for name, group in frame.groupby("config", sort=False):
        cells, means = [], []
        for task in sorted(frame.task.unique()):
            values = group.loc[group.task == task, "macro_f1"]
            means.append(values.mean())
            spread = f" ± {values.std(ddof=0):.3f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{spread} ({len(values)})" if len(values) else "–")
        mean = f"{np.mean(means):.3f}" if not np.isnan(means).any() else "–"  # all tasks only
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["default"], choices=list(CONFIGS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "tuning.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["config"], r["task"], r["seed"]) for r in records}
    for seed in args.seeds:
        for name in args.configs:
            for task in args.tasks:
                if (name, task, seed) in done:
                    continue
                record = {"config": name, **run_one(CONFIGS[name], task, seed, args.data_dir)}
                records.append(record)
                with log.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(name, task, seed, f"macro-F1 {record['macro_f1']:.3f}", flush=True)
    wanted = [r for r in records if r["config"] in args.configs]
    text = f"# Tuning study\n\ncommand: `{' '.join(sys.argv)}`\n\n" + table(wanted) + "\n"
    (args.out / "tuning.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
