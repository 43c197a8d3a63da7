"""Which genes carry the labels: logistic regression on gene panels of one task.

A quick diagnostic (seconds per task) behind ``pyro_scvae.panel``: logistic regression on
log-CP10k counts of the query cells, trained on the labelled cells, reading all genes,
the ``N`` most variable ones (scanpy's seurat_v3 on every cell, as the command line
chooses them), those plus ``ceil(N / 2 / types)`` markers of each labelled type (the
package's ``pyro_scvae.panel``: the command line's default), and the same markers
filling half of a budget of ``N`` genes instead. Prints a
row per task and seed with macro-F1 and the number of genes of each panel.

    OMP_NUM_THREADS=1 python benchmarks/gene_panels.py --tasks T8@2000 T7@2000 T6@500
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from benchmarks.tasks import build_task


def panels(adata, n_genes: int) -> dict[str, np.ndarray]:
    """Boolean gene masks by name: all, variable, variable + markers, markers in budget.

    The markers are the package's (:func:`pyro_scvae.panel.type_markers`, as many per type
    as :func:`~pyro_scvae.panel.markers_per_type` gives at the default share).
    """
    from pyro_scvae.config import MARKER_SHARE
    from pyro_scvae.panel import gene_panel, markers_per_type, type_markers

    query = adata.obs["is_query"].to_numpy()
    ranking = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_genes, flavor="seurat_v3", inplace=False
    )
    order = np.argsort(-ranking["variances_norm"].to_numpy(), kind="stable")
    ranks = np.empty(adata.n_vars)
    ranks[order] = np.arange(adata.n_vars)  # [genes], 0 = most variable
    labels = adata.obs["label"].where(~query)
    codes = np.where(labels.isna(), -1, pd.factorize(labels, sort=True)[0])  # [cells]
    per_type = markers_per_type(n_genes, int(labels.nunique()), MARKER_SHARE)
    markers = type_markers(adata.X, codes, per_type)
    budget = markers.copy()
    for gene in order:  # the most variable genes fill the rest of the budget
        if budget.sum() >= n_genes:
            break
        budget[gene] = True
    return {
        "all": np.ones(adata.n_vars, dtype=bool),
        "variable": ranks < n_genes,
        "variable+markers": gene_panel(ranks, markers, n_genes),
        "markers_in_budget": budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True, help="TASK@N, N genes kept")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(
        "| task | N | seed | "
        + " | ".join(["all", "variable", "variable+markers", "markers_in_budget"])
        + " |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in args.tasks:
        name, _, n_text = spec.partition("@")
        for seed in args.seeds:
            adata = build_task(name, seed).adata
            query = adata.obs["is_query"].to_numpy()
            logged = adata.copy()
            sc.pp.normalize_total(logged, target_sum=1e4)
            sc.pp.log1p(logged)
            labels = logged.obs["label"].to_numpy()
            cells = []
            for genes in panels(adata, int(n_text)).values():
                matrix = logged.X[:, genes]
                classifier = LogisticRegression(max_iter=1000).fit(matrix[~query], labels[~query])
                calls = classifier.predict(matrix[query])
                f1 = f1_score(labels[query], calls, average="macro")
                cells.append(f"{f1:.3f} ({genes.sum()})")
            print(f"| {name} | {n_text} | {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
