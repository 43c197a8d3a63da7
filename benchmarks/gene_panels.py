"""Which genes carry the labels: logistic regression on gene panels of one task.

A quick diagnostic (seconds per task) behind ``pyro_scvae.panel``: logistic regression on
log-CP10k counts of the query cells, trained on the labelled cells, reading all genes,
the ``N`` most variable ones (scanpy's seurat_v3 on every cell, as the command line
chooses them), those plus ``ceil(N / 2 / types)`` markers of each labelled type (t-test
against the other labelled cells, scanpy's ``rank_genes_groups``: the command line's
default), and the same markers filling half of a budget of ``N`` genes instead. Prints a
row per task and seed with macro-F1 and the number of genes of each panel.

    OMP_NUM_THREADS=1 python benchmarks/gene_panels.py --tasks T8@2000 T7@2000 T6@500
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from benchmarks.tasks import build_task


def panels(adata, n_genes: int) -> dict[str, np.ndarray]:
    """Boolean gene masks by name: all, variable, variable + markers, markers in budget."""
    query = adata.obs["is_query"].to_numpy()
    ranking = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_genes, flavor="seurat_v3", inplace=False
    )
    order = np.argsort(-ranking["variances_norm"].to_numpy(), kind="stable")
    variable = np.zeros(adata.n_vars, dtype=bool)
    variable[order[:n_genes]] = True
    labelled = adata[~query].copy()
    sc.pp.normalize_total(labelled, target_sum=1e4)
    sc.pp.log1p(labelled)
    labelled.obs["label"] = labelled.obs["label"].astype("category")
    sizes = labelled.obs["label"].value_counts()
    groups = [g for g in sizes.index if sizes[g] >= 2]
    sc.tl.rank_genes_groups(labelled, "label", groups=groups, method="t-test")
    names = labelled.uns["rank_genes_groups"]["names"]
    per_type = math.ceil(n_genes / 2 / sizes.size)
    markers = adata.var_names.isin({g for t in names.dtype.names for g in names[t][:per_type]})
    budget = markers.copy()
    for gene in order:  # the most variable genes fill the rest of the budget
        if budget.sum() >= n_genes:
            break
        budget[gene] = True
    return {
        "all": np.ones(adata.n_vars, dtype=bool),
        "variable": variable,
        "variable+markers": variable | markers,
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
