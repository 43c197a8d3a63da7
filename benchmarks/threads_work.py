"""Where a second thread starts to pay: seconds per epoch at 1 and 2 threads, by batch size.

Usage (from the repository root, on an otherwise idle machine)::

    python benchmarks/threads_work.py                       # T4 and T1a, 64/128/256, 2 reps
    python benchmarks/threads_work.py --tasks T4 --batch-sizes 64 512 --reps 3

The work of one training step is ``batch_size × n_genes`` (the decoder's output and the
ZINB's arrays); ``pyro_scvae.threads.ELEMENTS_PER_THREAD`` is how much of it one more
thread needs. Each fit (6 epochs, ``threads=1`` or ``2``, a task's cells with the query
unlabelled) runs in a fresh process without ``OMP_NUM_THREADS``; 1 and 2 threads alternate
within a repetition, so that each pair is measured side by side. Time per epoch is the
median over epochs 2–6. Results go to ``benchmarks/threads_work.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "threads_work"

CHILD = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import build_task
from pyro_scvae import PyroSCVAE
task, batch_size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = with_training_labels(build_task(task, 0).adata, np.nan)
setup_pyro_scvae(data)
model = PyroSCVAE(data, seed=0)
model.fit(epochs=6, progress=False, device="cpu", threads=threads, batch_size=batch_size)
print(json.dumps({"s": float(np.median(model.history.epoch_seconds[1:])),
                  "genes": int(data.n_vars), "cells": len(model.training_cells)}))
"""


def run_fit(task: str, batch_size: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(batch_size), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record.update(task=task, bs=batch_size, t=str(threads), load=os.getloadavg()[0])
    return record


def table(records: list[dict]) -> list[str]:
    """One row per (task, batch size): medians, and how many pairs 2 threads won."""
    lines = [
        "| task | batch × genes | 1 thread s/epoch | 2 threads s/epoch | 1 / 2 | pairs 2 won |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["task"], r["bs"]) for r in records}, key=lambda k: (k[0], k[1]))
    for task, bs in keys:
        one = [r["s"] for r in records if (r["task"], r["bs"], r["t"]) == (task, bs, "1")]
        two = [r["s"] for r in records if (r["task"], r["bs"], r["t"]) == (task, bs, "2")]
        genes = next(r["genes"] for r in records if r["task"] == task)
        wins = sum(b < a for a, b in zip(one, two))
        lines.append(
            f"| {task} | {bs} × {genes} = {bs * genes:,} | {np.median(one):.3f} | "
            f"{np.median(two):.3f} | {np.median(one) / np.median(two):.2f}× | "
            f"{wins} of {len(one)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["T4", "T1a"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT, help="path without suffix")
    args = parser.parse_args(argv)
    command = "python benchmarks/threads_work.py " + " ".join(argv or sys.argv[1:])
    records = []
    for task in args.tasks:
        for bs in args.batch_sizes:
            for _ in range(args.reps):
                for threads in (1, 2):
                    records.append(run_fit(task, bs, threads))
                    print(records[-1], flush=True)
    loads = [r["load"] for r in records]
    lines = [
        "# Where a second thread pays: 1 and 2 threads by batch size",
        "",
        f"Produced by `{command.strip()}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({os.cpu_count()} CPUs; load average {min(loads):.1f}–{max(loads):.1f}).",
        "",
        *table(records),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"command": command, "records": records}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
