"""Schedules of ``map_query``'s fine-tuning on T1: which new columns learn, and when.

A study record (issue 25, 2026-12-07), run on commit 16d3799,
before ``map_query`` gained its two phases: ``pyro_scvae.mapping.train`` is replaced by
a function that trains in stages, each ``(fraction of the default epochs, part)``, where
part is ``decoder`` (only the decoder's new batch column learns: the encoders' new
columns get a zero gradient), ``encoder`` (only the encoders') or ``both``. ``both`` at
1.0 was ``map_query`` of that commit; ``dec1_then_both1`` is what ``map_query`` does now
(on later commits, where ``map_query`` already has the phases, check out 16d3799 to rerun
this script). For each fold and seed: the reference (``fit`` on the other two chemistries),
then each schedule from that same reference; macro-F1, kNN batch entropy and iLISI as in
``benchmarks/mapping.py``. Records (one JSON line per row) in ``mapping_phases.jsonl``::

    OMP_NUM_THREADS=1 python benchmarks/mapping_phases.py --folds T1a T1b T1c --seeds 0 \\
        --variants both dec_then_both dec_then_enc dec1_then_both1 both_x2 --out rows.jsonl
    python benchmarks/mapping_phases.py --summary benchmarks/mapping_phases.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_scvae.mapping as mapping  # noqa: E402
from benchmarks.mapping import scored, split_fold  # noqa: E402

#: Schedule name → stages (fraction of the default fine-tuning epochs, what learns).
VARIANTS = {
    "both": [(1.0, "both")],
    "dec_then_both": [(0.5, "decoder"), (0.5, "both")],
    "dec_then_enc": [(0.5, "decoder"), (0.5, "encoder")],
    "dec1_then_both1": [(1.0, "decoder"), (1.0, "both")],
    "both_x2": [(2.0, "both")],
    "dec1_then_both2": [(1.0, "decoder"), (2.0, "both")],
    "dec2_then_both1": [(2.0, "decoder"), (1.0, "both")],
}
METRICS = ("macro_f1", "batch_entropy", "ilisi")


def staged(train, stages):
    """``train`` run once per stage, the parts that must not learn given a zero gradient."""

    def staged_train(module, data, config, on_epoch_end, description, threads):
        histories = []
        for fraction, part in stages:
            if part == "decoder":
                frozen = mapping.encoder_layers(module)
            elif part == "encoder":
                frozen = {"x_decoder.hidden.0.weight": module.x_decoder.hidden[0].weight}
            else:
                frozen = {}
            handles = [p.register_hook(torch.zeros_like) for p in frozen.values()]
            epochs = max(1, round(config.epochs * fraction))
            try:
                histories.append(
                    train(
                        module,
                        data,
                        replace(config, epochs=epochs),
                        on_epoch_end,
                        description,
                        threads,
                    )
                )
            finally:
                for handle in handles:
                    handle.remove()
        return histories[-1]

    return staged_train


def run_fold(fold: str, seed: int, variants: list[str], out: Path) -> None:
    """The reference of one fold and seed, then each schedule from it; rows to ``out``."""
    from pyro_scvae import PyroSCVAE

    _, reference, query = split_fold(fold, seed)

    def record(name, model, seconds):
        scores = scored(model, reference, query)
        row = {"fold": fold, "seed": seed, "setting": name, **scores, "seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        with open(out, "a") as file:
            file.write(json.dumps(row) + "\n")

    real_train = mapping.train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen-batch warning is expected
        PyroSCVAE.setup_anndata(reference, labels_key="label", batch_key="batch")
        start = time.perf_counter()
        model = PyroSCVAE(reference, seed=seed).fit(seed=seed, progress=False, device="cpu")
        record("reference", model, time.perf_counter() - start)
        try:
            for name in variants:
                mapping.train = staged(real_train, VARIANTS[name])
                start = time.perf_counter()
                mapped = model.map_query(query, seed=seed, progress=False, device="cpu")
                record(name, mapped, time.perf_counter() - start)
        finally:
            mapping.train = real_train


def summary(path: Path) -> None:
    """Each schedule against the reference of the same fold and seed, paired."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    reference = {(r["fold"], r["seed"]): r for r in rows if r["setting"] == "reference"}
    by_setting = collections.defaultdict(dict)
    for r in rows:
        by_setting[r["setting"]][r["fold"], r["seed"]] = r
    print("| schedule | runs | " + " | ".join(f"{m} (− reference, higher)" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, runs in by_setting.items():
        cells = []
        for metric in METRICS:
            values = [runs[k][metric] for k in runs]
            diffs = [runs[k][metric] - reference[k][metric] for k in runs]
            higher = sum(d > 0 for d in diffs)
            cells.append(f"{np.mean(values):.3f} ({np.mean(diffs):+.3f}, {higher}/{len(diffs)})")
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", nargs="+", default=["T1a", "T1b", "T1c"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["both"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summary", type=Path, help="print the table of a records file")
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.summary)
    else:
        for seed in args.seeds:
            for fold in args.folds:
                run_fold(fold, seed, args.variants, args.out)


if __name__ == "__main__":
    main()
