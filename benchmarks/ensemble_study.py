"""Would an ensemble of seeds help? Macro-F1 and ECE of single fits against their average.

On a task whose split does not depend on the seed (T1, T2, T6: the query is fixed), the
command line is run at its defaults with several seeds on the same split, and the mean
of their class probabilities (a deep ensemble, Lakshminarayanan et al. 2017) is scored
beside each member. Prints one row per member, one for the ensemble, and the ECE floor.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_study.py --tasks T6 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import fit_predict_pyro_scvae_cli  # noqa: E402
from benchmarks.metrics import score  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    print("| task | fit | accuracy | macro-F1 | ECE | ECE floor |")
    print("|---|---|---|---|---|---|")
    for task_name in args.tasks:
        task = build_task(task_name, 0)  # the split of seed 0 for every member
        truth = task.adata.obs.loc[task.adata.obs["is_query"], "label"]
        members = []
        for seed in args.seeds:
            proba, _ = fit_predict_pyro_scvae_cli(task.adata, seed)
            members.append(proba)
            result = score(truth.loc[proba.index], proba)
            print(
                f"| {task_name} | seed {seed} | {result['accuracy']:.3f} | "
                f"{result['macro_f1']:.3f} | {result['ece']:.3f} | {result['ece_floor']:.3f} |",
                flush=True,
            )
        mean = sum(m.loc[members[0].index, members[0].columns] for m in members) / len(members)
        result = score(truth.loc[mean.index], mean)
        singles = [score(truth.loc[m.index], m)["macro_f1"] for m in members]
        print(
            f"| {task_name} | ensemble of {len(members)} | {result['accuracy']:.3f} | "
            f"{result['macro_f1']:.3f} | {result['ece']:.3f} | {result['ece_floor']:.3f} |"
        )
        print(f"members' mean macro-F1 {np.mean(singles):.3f} ± {np.std(singles, ddof=1):.3f}")


if __name__ == "__main__":
    main()
