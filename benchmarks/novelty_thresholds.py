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
  distance divided by that threshold;
- ``oracle``: not a rule a user can apply, a bound: the threshold that flags exactly the
  share ``1 − quantile`` of the *query's* known cells (chosen with the query's labels).
  Its novel cells flagged are the most that any threshold on this score can flag at that
  share of false flags: the ROC curve read at that point.

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

from pyro_scvae.novelty import (  # noqa: E402
    class_statistics,
    nearest_centre,
    out_of_fold_nearest,
)

#: Fewest reference cells nearest a type for it to get a threshold of its own.
MIN_CELLS = 20


def evaluate(path: Path, quantiles: list[float]) -> list[dict]:
    run = np.load(path)
    reference, labels = run["reference_latent"], run["reference_labels"]
    n_classes = int(labels.max()) + 1
    means, precision = class_statistics(reference, labels, n_classes)
    score, kind = nearest_centre(run["latent"], means, precision)
    oof, oof_kind = out_of_fold_nearest(reference, labels, n_classes)
    novel = run["novel"].astype(bool)
    rows = []
    for q in quantiles:
        overall = np.quantile(oof, q)
        per_type = np.full(n_classes, overall)
        for k in range(n_classes):
            if (oof_kind == k).sum() >= MIN_CELLS:
                per_type[k] = np.quantile(oof[oof_kind == k], q)
        oracle = np.quantile(score[~novel], q)  # flags 1 − q of the known query cells
        for rule, threshold in (
            ("global", np.full(len(score), overall)),
            ("per_type", per_type[kind]),
            ("oracle", np.full(len(score), oracle)),
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
        for rule in ("global", "per_type", "oracle"):
            chosen = [r for r in rows if r["quantile"] == q and r["rule"] == rule]
            print(
                f"| {q} | {rule} | {len(chosen)} | {np.mean([r['auroc'] for r in chosen]):.3f} | "
                f"{np.mean([r['novel_flagged'] for r in chosen]):.3f} | "
                f"{np.mean([r['known_flagged'] for r in chosen]):.3f} |"
            )


if __name__ == "__main__":
    main()
