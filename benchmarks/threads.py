"""Training time with 1 thread, 2 threads and the default (``threads="auto"``), side by side.

Usage (from the repository root)::

    python benchmarks/threads.py                      # T4 and T1a, 3 repetitions, 20 epochs
    python benchmarks/threads.py --tasks T4 --reps 2 --epochs 10

Each fit is a default ``PyroSCVAE(...).fit(...)`` on a task's cells (query cells
unlabelled, as in the benchmark), shortened to ``--epochs`` epochs, in a fresh Python
process whose environment does not set ``OMP_NUM_THREADS`` (so that torch's default and
``auto`` see the whole machine). It runs in two conditions:

- ``alone``: nothing started by this script (other users' work may still be running: the
  load average before and after each fit is recorded);
- ``competitor``: beside one CPU-bound process (a Python busy loop) that this script
  starts before the condition's fits and stops after them.

Within a condition, repetitions interleave the variants (1, 2, auto, 1, 2, auto, ...).
Time per epoch is the median over a fit's epochs after the first. Results go to
``benchmarks/threads.md`` and ``benchmarks/threads.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent
VARIANTS = ("1", "2", "auto")
CONDITIONS = ("alone", "competitor")
TARGET = 1.2  # the default within this factor of the best choice

CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from benchmarks.methods import setup_pyro_scvae, with_training_labels
from benchmarks.tasks import build_task
from pyro_scvae import PyroSCVAE
task, epochs, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = with_training_labels(build_task(task, 0).adata, np.nan)
setup_pyro_scvae(data)
model = PyroSCVAE(data, seed=0)
load_before = __import__("os").getloadavg()[0]
model.fit(epochs=epochs, progress=False, device="cpu", threads=threads)
print(json.dumps({
    "epoch_seconds": model.history.epoch_seconds,
    "threads": model.history.threads_summary,
    "cells": int(len(model.training_cells)),
    "genes": int(data.n_vars),
    "load_before": load_before,
}))
"""


def run_fit(task: str, epochs: int, threads: str) -> dict:
    """One fit in a fresh process without OMP_NUM_THREADS; its record."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(epochs), threads],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if result.returncode != 0:
        return {"status": "failed", "error": result.stderr.strip().splitlines()[-1:]}
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record.update(
        status="ok",
        wall_seconds=time.perf_counter() - start,
        load_after=os.getloadavg()[0],
        median_epoch_seconds=float(np.median(record["epoch_seconds"][1:])),
    )
    return record


def start_competitor() -> subprocess.Popen:
    """One CPU-bound process (a Python busy loop), stopped by :func:`stop`."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def summarise(records: list[dict]) -> list[dict]:
    """Per (task, condition, variant): median seconds per epoch, and auto against the best."""
    rows = []
    keys = sorted({(r["task"], r["condition"]) for r in records if r["status"] == "ok"})
    for task, condition in keys:
        medians = {}
        for variant in VARIANTS:
            times = [
                r["median_epoch_seconds"]
                for r in records
                if r["status"] == "ok"
                and (r["task"], r["condition"], r["variant"]) == (task, condition, variant)
            ]
            if times:
                medians[variant] = float(np.median(times))
        if not medians:
            continue
        best = min(medians.values())
        loads = [
            (r["load_before"], r["load_after"])
            for r in records
            if r["status"] == "ok" and (r["task"], r["condition"]) == (task, condition)
        ]
        auto_used = sorted(
            {
                n
                for r in records
                if r["status"] == "ok"
                and (r["task"], r["condition"], r["variant"]) == (task, condition, "auto")
                for n in r["threads"]["used"]
            }
        )
        rows.append(
            {
                "task": task,
                "condition": condition,
                "seconds_per_epoch": medians,
                "auto_over_best": medians.get("auto", np.nan) / best,
                "auto_threads": auto_used,
                "load_min": min(min(pair) for pair in loads),
                "load_max": max(max(pair) for pair in loads),
            }
        )
    return rows


def write_report(records: list[dict], rows: list[dict], command: str, out: Path) -> None:
    lines = [
        "# Threads: 1, 2 and the default (`auto`), side by side",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}).",
        "",
        "| task | condition | 1 thread s/epoch | 2 threads s/epoch | auto s/epoch | auto used "
        "| auto / best | load average during |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        s = row["seconds_per_epoch"]
        cells = " | ".join(f"{s[v]:.3f}" if v in s else "–" for v in VARIANTS)
        verdict = "" if row["auto_over_best"] <= TARGET else " (target missed)"
        lines.append(
            f"| {row['task']} | {row['condition']} | {cells} | "
            f"{', '.join(map(str, row['auto_threads']))} | "
            f"{row['auto_over_best']:.2f}×{verdict} | {row['load_min']:.1f}–{row['load_max']:.1f} |"
        )
    failed = [r for r in records if r["status"] != "ok"]
    lines += ["", f"{len(records)} fits, {len(failed)} failed."]
    (out.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(
        json.dumps({"command": command, "records": records, "summary": rows}, indent=1)
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["T4", "T1a"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--out", type=Path, default=OUT / "threads", help="path without suffix")
    args = parser.parse_args(argv)
    command = "python benchmarks/threads.py " + " ".join(argv or sys.argv[1:])
    records: list[dict] = []
    for condition in args.conditions:
        competitor = start_competitor() if condition == "competitor" else None
        try:
            for rep in range(args.reps):
                for task in args.tasks:
                    for variant in VARIANTS:
                        record = run_fit(task, args.epochs, variant)
                        record.update(task=task, condition=condition, variant=variant, rep=rep)
                        records.append(record)
                        print(
                            condition,
                            task,
                            variant,
                            rep,
                            f"{record.get('median_epoch_seconds', float('nan')):.3f} s/epoch",
                            record.get("threads", {}).get("used"),
                            f"load {record.get('load_before', float('nan')):.1f}",
                            flush=True,
                        )
        finally:
            if competitor is not None:
                stop(competitor)
    rows = summarise(records)
    write_report(records, rows, command.strip(), args.out)
    print((args.out.with_suffix(".md")).read_text())
    return rows


if __name__ == "__main__":
    main()
