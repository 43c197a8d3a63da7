"""How far temperature scaling can calibrate the query: fitted, oracle and Monte-Carlo.

Fits pyro_scvae through its Python API at its defaults (query cells unlabelled) and,
on the query cells of known types, prints one JSON line per (task, seed, refit) with the
ECE of q(y | z₁) at the posterior mean of z₁

- ``ece_T1``: uncalibrated (temperature 1);
- ``ece_T``: at the temperature the fit chose on its held-out reference cells (default);
- ``ece_oracle``: at the best temperature for the query itself, fitted on its labels
  (what no user has: the most any single temperature can do);
- ``ece_mc``: the Monte-Carlo predictive E over q(z₁ | x) of q(y | z₁) (32 draws), at a
  temperature ``T_mc`` fitted the same way on the same held-out cells;
- ``ece_floor``: the ECE a calibrated predictor would show with these confidences on this
  many cells (``benchmarks.metrics.ece_floor``);

with macro-F1 of the point and Monte-Carlo calls (``f1``, ``f1_mc``).

``--held-out batch`` holds out, instead of the package's stratified random fraction, every
labelled cell of the smallest reference batch (:func:`batch_held_out`): a temperature
fitted on cells of a batch whose labels the selection fit never saw, as the query's were
not (tuning.md, fourteenth round).

    OMP_NUM_THREADS=1 python benchmarks/calibration_study.py --tasks T4 T1b --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import f1_score

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_scvae.fitting as fitting  # noqa: E402
from benchmarks.methods import _split, setup_pyro_scvae, with_training_labels  # noqa: E402
from benchmarks.metrics import ece_floor, expected_calibration_error  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402
from pyro_scvae import PyroSCVAE  # noqa: E402
from pyro_scvae.calibration import TEMPERATURE_BOUNDS, fit_temperature, softmax  # noqa: E402

DRAWS = 32


def logit_draws(model: PyroSCVAE, counts, batches) -> np.ndarray:
    """Classifier logits ``[draws, cells, K]`` at z₁ drawn from q(z₁ | x)."""
    module = model.module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, counts.shape[0], 2048):
            x = torch.from_numpy(counts[start : start + 2048].toarray())
            b = None if batches is None else torch.from_numpy(batches[start : start + 2048])
            loc, scale, _, _ = module.encode_x(x, module.batch_inputs(x, b))
            z1 = loc + scale * torch.randn((DRAWS, *loc.shape))  # [draws, chunk, d]
            out.append(module.classifier(z1).numpy())
    return np.concatenate(out, axis=1)


def mc_probabilities(draws: np.ndarray, temperature: float) -> np.ndarray:
    return np.mean([softmax(logits, temperature) for logits in draws], axis=0)


def fit_mc_temperature(draws: np.ndarray, labels: np.ndarray) -> float:
    def nll(log_t: float) -> float:
        p = mc_probabilities(draws, float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())

    result = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded")
    return float(np.exp(result.x))


def ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return expected_calibration_error(probabilities.max(1), probabilities.argmax(1) == labels)


def batch_held_out(labels: np.ndarray, batches: np.ndarray, n_classes: int) -> np.ndarray:
    """The labelled cells of the smallest batch (by labelled cells), sorted positions,
    less one cell of each class that would otherwise keep no labelled cell for training."""
    labelled = labels >= 0
    codes, counts = np.unique(batches[labelled], return_counts=True)
    held = np.flatnonzero(labelled & (batches == codes[np.argmin(counts)]))
    for code in range(n_classes):
        members = np.flatnonzero(labels == code)
        if len(members) and np.isin(members, held).all():
            held = held[held != members[0]]
    return held.astype(np.int64)


def study(task_name: str, seed: int, refit: str, held_out: str = "random") -> dict:
    task = build_task(task_name, seed)
    data = with_training_labels(task.adata, np.nan)
    _, query = _split(data)
    setup_pyro_scvae(data)
    model = PyroSCVAE(data)
    found = {}
    metrics, split = fitting.classification_metrics, fitting.validation_split

    def at_selection(*args, **kwargs):  # called once, on the selection fit's model
        held = model.validation_cells
        batches = None if model.data.batches is None else model.data.batches[held]
        torch.manual_seed(seed)
        draws = logit_draws(model, model.data.counts[held], batches)
        found["T_mc"] = fit_mc_temperature(draws, model.data.labels[held])
        return metrics(*args, **kwargs)

    def by_batch(labels, n_classes, fraction, seed):
        return batch_held_out(labels, model.data.batches, n_classes)

    fitting.classification_metrics = at_selection
    if held_out == "batch":
        fitting.validation_split = by_batch
    try:
        model.fit(seed=seed, progress=False, refit=refit)
    finally:
        fitting.classification_metrics, fitting.validation_split = metrics, split
    classes = list(model.classes)
    truth = data.obs["label"].astype(str).to_numpy()[query]
    known = np.isin(truth, classes)
    labels = np.array([classes.index(t) for t in truth[known]])
    cells = np.flatnonzero(query)[known]
    batches = None if model.data.batches is None else model.data.batches[cells]
    _, logits = model._encode_chunks(model.data.counts[cells], batches, 4096)
    torch.manual_seed(seed)
    draws = logit_draws(model, model.data.counts[cells], batches)
    oracle = fit_temperature(logits, labels)
    point = softmax(logits, model.temperature)
    mc = mc_probabilities(draws, found["T_mc"])
    return {
        "task": task_name,
        "seed": seed,
        "refit": refit,
        "held_out": held_out,
        "n_held_out": int(len(model.validation_cells)),
        "n_query": int(len(labels)),
        "T": model.temperature,
        "oracle_T": oracle,
        "T_mc": found["T_mc"],
        "ece_floor": ece_floor(point.max(1)),
        "ece_T1": ece(softmax(logits), labels),
        "ece_T": ece(point, labels),
        "ece_oracle": ece(softmax(logits, oracle), labels),
        "ece_mc": ece(mc, labels),
        "f1": float(f1_score(labels, point.argmax(1), average="macro")),
        "f1_mc": float(f1_score(labels, mc.argmax(1), average="macro")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--refit", nargs="+", default=["continue"])
    parser.add_argument("--held-out", nargs="+", default=["random"], choices=["random", "batch"])
    args = parser.parse_args()
    for task_name in args.tasks:
        for seed in args.seeds:
            for refit in args.refit:
                for held_out in args.held_out:
                    row = study(task_name, seed, refit, held_out)
                    rounded = {
                        k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                    }
                    print(json.dumps(rounded), flush=True)


if __name__ == "__main__":
    main()
