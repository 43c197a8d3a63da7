"""One threshold for all types, or one per type? Flags of the novelty score, from saved runs.

The package flags a cell whose Mahalanobis distance to the nearest reference type is above
one quantile of the reference cells' out-of-fold distances (``pyro_scvae.novelty``). Types
differ in spread, so one threshold may be loose near a tight type and strict near a broad
one. Here, from the latents that ``benchmarks/novelty.py --save`` wrote, each rule is
applied to the same distances:

- ``global``: the package's rule (one quantile of all out-of-fold distances);
- ``per_type``: the same quantile of the out-of-fold distances of the reference cells whose
  nearest centre is that type (the global threshold where fewer than ``MIN_CELLS``), and a
  query cell compared with the threshold of its nearest type; its AUROC is that of the
  distance divided by that threshold.

    python benchmarks/novelty_thresholds.py /tmp/nov3/lat --quantiles 0.95 0.98
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_scvae.novelty import FOLDS, class_statistics  # noqa: E402

#: Fewest reference cells nearest a type for it to get a threshold of its own.
MIN_CELLS = 20


def nearest(latent: np.ndarray, means: np.ndarray, precision: np.ndarray):
    """Distance to the nearest centre and that centre's type, ``[cells]`` each."""
    root = np.linalg.cholesky(precision)
    present = np.flatnonzero(~np.isnan(means).any(1))
    z, m = latent @ root, means[present] @ root
    squared = (z**2).sum(1)[:, None] - 2 * z @ m.T + (m**2).sum(1)[None, :]
    best = squared.argmin(1)
    return np.sqrt(np.clip(squared[np.arange(len(z)), best], 0, None)), present[best]


def out_of_fold(latent: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0):
    """Out-of-fold distances and nearest types of the reference cells (as the package's)."""
    from sklearn.model_selection import KFold

    everyone, _ = class_statistics(latent, labels, n_classes)
    distance, kind = np.empty(len(labels)), np.empty(len(labels), int)
    folds = KFold(n_splits=min(FOLDS, len(labels)), shuffle=True, random_state=seed)
    for fit_on, apply_to in folds.split(latent):
        means, precision = class_statistics(latent[fit_on], labels[fit_on], n_classes)
        means = np.where(np.isnan(means), everyone, means)
        distance[apply_to], kind[apply_to] = nearest(latent[apply_to], means, precision)
    return distance, kind


def evaluate(path: Path, quantiles: list[float]) -> list[dict]:
    run = np.load(path)
    reference, labels = run["reference_latent"], run["reference_labels"]
    n_classes = int(labels.max()) + 1
    means, precision = class_statistics(reference, labels, n_classes)
    score, kind = nearest(run["latent"], means, precision)
    oof, oof_kind = out_of_fold(reference, labels, n_classes)
    novel = run["novel"].astype(bool)
    rows = []
    for q in quantiles:
        overall = np.quantile(oof, q)
        per_type = np.full(n_classes, overall)
        for k in range(n_classes):
            if (oof_kind == k).sum() >= MIN_CELLS:
                per_type[k] = np.quantile(oof[oof_kind == k], q)
        for rule, threshold in (
            ("global", np.full(len(score), overall)),
            ("per_type", per_type[kind]),
        ):
            flagged = score > threshold
            rows.append(
                {
                    "run": path.stem,
                    "quantile": q,
                    "rule": rule,
                    "auroc": roc_auc_score(novel, score / threshold),
                    "novel_flagged": flagged[novel].mean(),
                    "known_flagged": flagged[~novel].mean(),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--quantiles", nargs="+", type=float, default=[0.95, 0.98])
    args = parser.parse_args()
    rows = [r for path in sorted(args.folder.glob("*.npz")) for r in evaluate(path, args.quantiles)]
    print("| run | quantile | rule | AUROC | novel flagged | known flagged |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['quantile']} | {r['rule']} | {r['auroc']:.3f} | "
            f"{r['novel_flagged']:.3f} | {r['known_flagged']:.3f} |"
        )
    print("\nmean over runs:")
    print("| quantile | rule | runs | AUROC | novel flagged | known flagged |")
    print("|---|---|---|---|---|---|")
    for q in args.quantiles:
        for rule in ("global", "per_type"):
            chosen = [r for r in rows if r["quantile"] == q and r["rule"] == rule]
            print(
                f"| {q} | {rule} | {len(chosen)} | {np.mean([r['auroc'] for r in chosen]):.3f} | "
                f"{np.mean([r['novel_flagged'] for r in chosen]):.3f} | "
                f"{np.mean([r['known_flagged'] for r in chosen]):.3f} |"
            )


if __name__ == "__main__":
    main()
