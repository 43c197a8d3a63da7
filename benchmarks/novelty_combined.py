"""Does the model's likelihood, or its prior density, add to the novelty score? From saved runs.

Reads the ``.npz`` files that ``benchmarks/novelty.py --save`` wrote and compares, on the
same cells, the package's Mahalanobis distance with the model's other answers and their
rank sums (each score's ranks over the query's cells, added: no scale to choose):

- ``mahalanobis``: the package's score (:mod:`pyro_scvae.novelty`);
- ``reconstruction``: −log p(x | z₁, l) per count (``benchmarks/novelty.py``);
- ``prior_density``: −log p(z₁) under the model's prior mixture;
- ``rank(a + b)``: the rank sums.

Reported per run and as means: AUROC (held-out type against known query cells) and the
share of novel cells flagged by the threshold that flags 5 % of the known ones (the ROC
curve at 5 %, the oracle bound of ``novelty_thresholds.py``).

    python benchmarks/novelty_combined.py /tmp/s17/lat
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_scvae.novelty import class_statistics, nearest_centre  # noqa: E402


def flagged_at(novel: np.ndarray, score: np.ndarray, false_flags: float = 0.05) -> float:
    """Share of novel cells above the threshold that flags ``false_flags`` of the known."""
    return float((score[novel] > np.quantile(score[~novel], 1 - false_flags)).mean())


def scores(run) -> dict[str, np.ndarray]:
    """The single scores and their rank sums, ``[query cells]`` each."""
    reference, labels = run["reference_latent"], run["reference_labels"]
    means, precision = class_statistics(reference, labels, int(labels.max()) + 1)
    single = {
        "mahalanobis": nearest_centre(run["latent"], means, precision)[0],
        "reconstruction": -run["decoder_ll"] / run["totals"],
        "prior_density": run["prior_density"],
    }
    ranks = {name: rankdata(value) for name, value in single.items()}
    return {
        **single,
        "rank(mahalanobis + reconstruction)": ranks["mahalanobis"] + ranks["reconstruction"],
        "rank(mahalanobis + prior_density)": ranks["mahalanobis"] + ranks["prior_density"],
        "rank(all three)": sum(ranks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    table: dict[str, list[tuple[float, float]]] = {}
    print("| run | score | AUROC | novel flagged at 5 % |")
    print("|---|---|---|---|")
    for path in sorted(args.folder.glob("*.npz")):
        run = np.load(path)
        novel = run["novel"].astype(bool)
        for name, score in scores(run).items():
            result = (roc_auc_score(novel, score), flagged_at(novel, score))
            table.setdefault(name, []).append(result)
            print(f"| {path.stem} | {name} | {result[0]:.3f} | {result[1]:.3f} |")
    print("\n| score | runs | mean AUROC | novel flagged at 5 % of known |")
    print("|---|---|---|---|")
    for name, results in table.items():
        auroc, flagged = np.mean(results, axis=0)
        print(f"| {name} | {len(results)} | {auroc:.3f} | {flagged:.3f} |")


if __name__ == "__main__":
    main()
