"""Does a seed ensemble flag unseen types better? Leave one type out, as ``novelty.py``.

A seed ensemble (``fit(ensemble=3)``) is trained on the reference without the held-out
type (inductive). Each member gets its own novelty reference (class centres and
threshold of its z₁, :func:`pyro_scvae.novelty.fit_novelty`); scores compared, AUROC of
held-out-type cells against known query cells:

``member_0``
    the package's Mahalanobis score of the first member alone (what the ensemble's
    model reports today, and a single model of this seed).
``ensemble_mean``
    the mean over members of each member's score divided by its own threshold; a cell
    is flagged where that mean exceeds 1.
``ensemble_max_probability``
    1 − the ensemble's largest calibrated probability.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/novelty_ensemble.py --tasks T1a T5 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.novelty import HELD_OUT, split  # noqa: E402


def member_latent(model, module, adata=None) -> np.ndarray:
    """Posterior mean of z₁ ``[cells, d]`` under one member's encoder."""
    first, extra = model.module, model.extra_members
    model.module, model.extra_members = module, []
    try:
        return model.get_latent_representation(adata)
    finally:
        model.module, model.extra_members = first, extra


def leave_one_out(task: str, held_out: str, seed: int, members: int) -> dict:
    from pyro_scvae import PyroSCVAE
    from pyro_scvae.novelty import fit_novelty

    reference, query = split(task, held_out, seed)
    batch_key = "batch" if "batch" in reference.obs else None
    PyroSCVAE.setup_anndata(reference, labels_key="label", batch_key=batch_key)
    model = PyroSCVAE(reference, seed=seed).fit(seed=seed, ensemble=members, progress=False)
    novel = query.obs["label"].to_numpy() == held_out  # [query cells]
    labels = model.data.labels
    normalised = []
    for module in [model.module, *model.extra_members]:
        known = member_latent(model, module)[labels >= 0]
        novelty = fit_novelty(known, labels[labels >= 0], len(model.classes), seed=seed)
        normalised.append(novelty.score(member_latent(model, module, query)) / novelty.threshold)
    probabilities = model.predict(query, soft=True).to_numpy()
    scores = {
        "member_0": normalised[0],
        "ensemble_mean": np.mean(normalised, axis=0),
        "ensemble_max_probability": 1 - probabilities.max(1),
    }
    row = {"task": task, "held_out": held_out, "seed": seed, "n_novel": int(novel.sum())}
    for name, score in scores.items():
        row[f"auroc_{name}"] = float(roc_auc_score(novel, score))
    for name in ("member_0", "ensemble_mean"):
        flagged = scores[name] > 1
        row[f"{name}_novel_flagged"] = float(flagged[novel].mean())
        row[f"{name}_known_flagged"] = float(flagged[~novel].mean())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        for held_out in HELD_OUT[task]:
            rows.append(leave_one_out(task, held_out, args.seed, args.members))
            print(json.dumps(rows[-1]), flush=True)
    for key in rows[0]:
        if key.startswith(("auroc", "member_0_", "ensemble_mean_")):
            print(f"mean {key}: {np.mean([r[key] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
