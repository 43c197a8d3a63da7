"""Why the command line's probabilities are or are not calibrated on a task's query.

Runs ``python -m pyro_scvae.fit`` at its defaults (``benchmarks.methods``) and, on the
query cells of known types, prints one JSON line per (task, seed) with

- ``T``: the temperature the fit chose on its held-out labelled cells, and ``T_oracle``,
  the one fitted on the query's own labels (which no user has);
- ``ece_T1``, ``ece_T``, ``ece_oracle``: the ECE at temperature 1, at ``T`` and at
  ``T_oracle`` (the most a single temperature can do), and ``ece_floor``;
- ``f1`` and ``f1_label_shift``, ``ece_label_shift``: macro-F1 and ECE before and after the
  label-shift EM of Saerens et al. (2002), which re-estimates the query's class shares;
- ``worst``: the classes of lowest recall, with their query cells, mean confidence and the
  class most of them are called.

The written probabilities are ``softmax(logits / T)``, so ``T · log p`` are the logits up
to a constant per cell, and any other temperature can be applied to them.

    OMP_NUM_THREADS=1 python benchmarks/cli_calibration.py --tasks T5s --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.calibration_study import ece  # noqa: E402
from benchmarks.methods import fit_predict_pyro_scvae_cli  # noqa: E402
from benchmarks.metrics import ece_floor  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402
from pyro_scvae.calibration import fit_temperature, softmax  # noqa: E402


def label_shift(probabilities: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Saerens et al.'s EM from a uniform training prior: re-weighted probabilities."""
    shares = np.full(probabilities.shape[1], 1.0 / probabilities.shape[1])
    prior = shares.copy()
    for _ in range(iterations):
        weighted = probabilities * (shares / prior)
        weighted /= weighted.sum(axis=1, keepdims=True)
        shares = weighted.mean(axis=0)
    return weighted


def study(task_name: str, seed: int) -> dict:
    task = build_task(task_name, seed)
    proba, info = fit_predict_pyro_scvae_cli(task.adata, seed)
    truth = task.adata.obs.loc[proba.index, "label"].astype(str).to_numpy()
    classes = list(proba.columns)
    known = np.isin(truth, classes)
    p = proba.to_numpy()[known]
    y = np.array([classes.index(t) for t in truth[known]])
    temperature = info["fit_metrics"]["temperature"]
    logits = np.log(np.clip(p, 1e-300, None)) * temperature
    oracle = fit_temperature(logits, y)

    def f1(q: np.ndarray) -> float:  # over the query's classes, as benchmarks.metrics
        present = np.unique(y)
        return f1_score(y, q.argmax(axis=1), average="macro", labels=present, zero_division=0.0)

    shifted = label_shift(p)
    recall = []
    for code, name in enumerate(classes):
        members = y == code
        if members.any():
            calls = np.bincount(p[members].argmax(axis=1), minlength=len(classes))
            recall.append(
                {
                    "class": name,
                    "cells": int(members.sum()),
                    "recall": round(float(calls[code] / members.sum()), 3),
                    "confidence": round(float(p[members].max(axis=1).mean()), 3),
                    "called": classes[int(calls.argmax())],
                }
            )
    return {
        "task": task_name,
        "seed": seed,
        "T": round(temperature, 3),
        "T_oracle": round(oracle, 3),
        "ece_T1": round(ece(softmax(logits, 1.0), y), 3),
        "ece_T": round(ece(p, y), 3),
        "ece_oracle": round(ece(softmax(logits, oracle), y), 3),
        "ece_floor": round(ece_floor(p.max(axis=1)), 3),
        "f1": round(f1(p), 3),
        "f1_label_shift": round(f1(shifted), 3),
        "ece_label_shift": round(ece(shifted, y), 3),
        "worst": sorted(recall, key=lambda row: row["recall"])[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    for task_name in args.tasks:
        for seed in args.seeds:
            print(json.dumps(study(task_name, seed)), flush=True)


if __name__ == "__main__":
    main()
