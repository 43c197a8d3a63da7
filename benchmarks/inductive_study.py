"""The command line trained on the reference alone (``--query``) against the benchmark's run.

The benchmark gives ``python -m pyro_scvae.fit`` one file in which the query's labels are
missing, so the query's cells train the model as unlabelled cells (transductive). Here the
labelled cells are written to one file and the query to another, and the query is
annotated with ``--query`` by a model that never saw it (inductive; the query's batch is
then one the model was not trained on). Prints one JSON line per (task, seed): macro-F1,
accuracy and ECE on the query (``benchmarks.metrics.score``) and the per-class F1::

    OMP_NUM_THREADS=1 python benchmarks/inductive_study.py --tasks T6 T2 --seeds 0 1 2

Compare with the ``pyro_scvae_cli`` rows of ``results_current.json`` (the same seeds give
the same transductive figures on rerun).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.metrics import score  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402


def run_inductive(task_name: str, seed: int, options: list[str] = ()) -> dict:
    """Train on the task's labelled cells alone and score the annotated query.

    ``options`` are more options of the command (the study itself uses none).
    """
    adata = build_task(task_name, seed).adata
    query = adata.obs["is_query"].to_numpy(dtype=bool)
    batch = ["batch"] if "batch" in adata.obs else []
    var = pd.DataFrame(index=adata.var_names)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        reference = adata.obs.loc[~query, ["label", *batch]].astype("category")
        ad.AnnData(X=adata.X[~query], obs=reference, var=var).write_h5ad(folder / "ref.h5ad")
        cells = adata.obs.loc[query, batch].astype("category")
        ad.AnnData(X=adata.X[query], obs=cells, var=var).write_h5ad(folder / "query.h5ad")
        command = [sys.executable, "-m", "pyro_scvae.fit", "--adata", str(folder / "ref.h5ad")]
        command += ["--query", str(folder / "query.h5ad"), "--labels-key", "label"]
        command += ["--seed", str(seed), "--out", str(folder / "out"), "--quiet"]
        command += ["--batch-key", "batch"] if batch else []
        command += list(options)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:])
        table = pd.read_csv(folder / "out" / "query" / "predictions.csv", index_col=0)
    proba = table.filter(like="prob:").rename(columns=lambda c: c[len("prob:") :])
    truth = adata.obs.loc[query, "label"].astype(str).to_numpy()
    metrics = score(truth, proba)
    return {
        "task": task_name,
        "seed": seed,
        **{k: round(float(metrics[k]), 3) for k in ("macro_f1", "accuracy", "ece")},
        "per_class_f1": {k: round(float(v), 2) for k, v in metrics["per_class_f1"].items()},
        "query_cells": int(np.sum(query)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--options",
        default="",
        help="more options of the command, comma-separated: --options=--epochs,3",
    )
    args = parser.parse_args()
    options = [o for o in args.options.split(",") if o]
    for task_name in args.tasks:
        for seed in args.seeds:
            print(json.dumps(run_inductive(task_name, seed, options)), flush=True)


if __name__ == "__main__":
    main()
