"""Reference mapping on T1: two chemistries as reference, the third mapped fine-tuned or not.

For each T1 fold (the query chemistry):

``transductive``
    ``fit`` on all cells, the query's present without labels (the package's default,
    ``encode_batch=False``): the setting to match.
``reference``
    ``fit`` on the two reference chemistries alone (default settings), then ``predict``
    on the query: its unseen chemistry gets the average batch input. With
    ``encode_batch=False`` the encoder ignores the batch, so fine-tuning would not move
    the query's z₁ or calls; it is not repeated.
``reference_encoded``
    the same reference with ``encode_batch=True`` (the encoder sees the chemistry),
    without fine-tuning (average batch input),
``fine_tuned``
    and mapped with ``map_query`` (reference frozen, default epochs).

Reported: macro-F1 of the query's calls, and batch mixing of the joint latent of the
reference and query cells: for each cell, the entropy of the chemistries among its 30
nearest neighbours in z₁ (Euclidean, scikit-learn), divided by log 3, averaged over
cells (1: neighbours spread evenly over the chemistries; 0: only its own). It is the kNN
batch entropy of Haghverdi et al. (2018) and of scib's iLISI idea; scib is not installed,
and these few lines are its definition.

Usage::

    python benchmarks/mapping.py --folds T1a --seed 0 --out benchmarks/mapping
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import f1_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import markdown_table, save_study  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402

NEIGHBOURS = 30


def batch_entropy(latent: np.ndarray, batches: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean normalised entropy of the batches among each cell's ``k`` nearest neighbours."""
    names, codes = np.unique(batches, return_inverse=True)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)[1][:, 1:]
    counts = np.stack([(codes[neighbours] == b).sum(1) for b in range(len(names))], 1)
    return float(np.mean(entropy(counts, axis=1) / np.log(len(names))))


def macro_f1(truth, calls) -> float:
    return float(f1_score(truth, calls, average="macro", labels=np.unique(truth)))


def run_fold(fold: str, seed: int, epochs: int | None) -> list[dict]:
    """The four settings of the module docstring on one fold; one row each."""
    from pyro_scvae import PyroSCVAE

    adata = build_task(fold, seed).adata
    is_query = adata.obs["is_query"].to_numpy()
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    truth = query.obs["label"].to_numpy()
    batches = np.r_[reference.obs["batch"].to_numpy(), query.obs["batch"].to_numpy()]
    rows = []

    def record(name, model, query_model=None, seconds=0.0):
        query_model = query_model or model
        calls = query_model.predict(query).to_numpy()
        joint = np.vstack(
            [
                model.get_latent_representation(reference),
                query_model.get_latent_representation(query),
            ]
        )
        rows.append(
            {
                "fold": fold,
                "setting": name,
                "macro_f1": macro_f1(truth, calls),
                "accuracy": float((calls == truth).mean()),
                "batch_entropy": batch_entropy(joint, batches),
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    fit = {"epochs": epochs, "seed": seed, "progress": False, "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen-batch warning is expected here
        both = adata.copy()
        both.obs["training_label"] = both.obs["label"].where(~is_query)
        PyroSCVAE.setup_anndata(both, labels_key="training_label", batch_key="batch")
        start = time.perf_counter()
        model = PyroSCVAE(both, seed=seed).fit(**fit)
        record("transductive", model, seconds=time.perf_counter() - start)

        PyroSCVAE.setup_anndata(reference, labels_key="label", batch_key="batch")
        for name, encode in (("reference", False), ("reference_encoded", True)):
            start = time.perf_counter()
            model = PyroSCVAE(reference, encode_batch=encode, seed=seed).fit(**fit)
            record(name, model, seconds=time.perf_counter() - start)
        start = time.perf_counter()
        mapped = model.map_query(query, seed=seed, progress=False, device="cpu")
        record("fine_tuned", model, mapped, seconds=time.perf_counter() - start)
    return rows


def render(rows: list[dict], command: str) -> str:
    headers = ["fold", "setting", "macro-F1", "accuracy", "batch entropy", "train s"]
    body = [
        [
            r["fold"],
            r["setting"],
            f"{r['macro_f1']:.3f}",
            f"{r['accuracy']:.3f}",
            f"{r['batch_entropy']:.3f}",
            f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "# Reference mapping on T1",
            "",
            f"Command: `{command}`",
            "",
            markdown_table(headers, body),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", nargs="+", default=["T1a"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the package's")
    parser.add_argument("--out", default="benchmarks/mapping", help="writes OUT.json, OUT.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/mapping.py " + " ".join(argv or sys.argv[1:])
    rows = []
    for fold in args.folds:
        rows += run_fold(fold, args.seed, args.epochs)
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    save_study(rows, render(rows, command), args.out)


if __name__ == "__main__":
    main()
