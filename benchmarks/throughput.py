"""Training throughput of pyro_scvae against SCANVI, timed alternately in one process.

Both models get the same data (a task's cells, query cells unlabelled), the same batch size
and the same layer widths (``n_hidden=128, n_latent=10, n_layers=1``). For every batch size,
repetitions alternate pyro_scvae, pyro_scvae with ``jit=True``, SCANVI, pyro_scvae, ...,
each a fresh model trained for a few epochs. Epoch times come from pyro_scvae's
``history.epoch_seconds`` and, for SCANVI, from a Lightning callback around each training
epoch; the first epoch of each fit (warm-up) is dropped and throughput is cells per epoch
over the median epoch time. On a machine shared with other work, wall time also counts
the waits for a core; so every record also has ``cpu_cells_per_s``, from the CPU time of
the process in each epoch (both methods train in one thread: ``OMP_NUM_THREADS=1``), which
measures the work itself.
Both train on all cells (SCANVI with ``train_size=1.0``, so no cells are held out).

Run alone (the benchmark's ``run.py`` calls :func:`measure_throughput` in a child)::

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --task T3 --batch-sizes 128 1024 --reps 3
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import numpy as np

ARCHITECTURE = {"n_hidden": 128, "n_latent": 10, "n_layers": 1}
METHODS = ("pyro_scvae", "pyro_scvae_jit", "scanvi")  # pyro_scvae_jit: fit(jit=True)


def _cells_per_second(seconds: list[float], cells: int) -> float:
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return float(cells / np.median(timed))


def _fit_pyro(
    adata: Any, batch_key: str | None, batch_size: int, epochs: int, seed: int, jit: bool = False
) -> dict:
    from benchmarks.methods import TRAIN_LABEL_KEY, epoch_seconds, pyro_device
    from pyro_scvae import PyroSCVAE

    PyroSCVAE.setup_anndata(adata, labels_key=TRAIN_LABEL_KEY, batch_key=batch_key)
    model = PyroSCVAE(adata, **ARCHITECTURE)
    start = time.perf_counter()
    model.fit(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=False,
        jit=jit,
        device=pyro_device(),
    )
    total = time.perf_counter() - start
    seconds = epoch_seconds(model)
    timing = "per-epoch"
    if seconds is None:
        seconds, timing = [total / epochs] * epochs, "whole-fit"
    cells = len(getattr(model, "training_cells", range(adata.n_obs)))
    cpu = getattr(model.history, "epoch_cpu_seconds", None)
    return {
        "epoch_seconds": seconds,
        "epoch_cpu_seconds": cpu,
        "cells_per_epoch": int(cells),
        "timing": timing,
    }


def _fit_scanvi(adata: Any, batch_key: str | None, batch_size: int, epochs: int, seed: int) -> dict:
    import scvi
    from lightning.pytorch.callbacks import Callback

    from benchmarks.methods import TRAIN_LABEL_KEY, UNLABELLED, accelerator, quiet_scvi

    class EpochTimer(Callback):
        """Wall time and CPU time of every training epoch."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._start = self._start_cpu = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._start, self._start_cpu = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._start_cpu)

    quiet_scvi(seed)
    scvi.model.SCANVI.setup_anndata(
        adata, labels_key=TRAIN_LABEL_KEY, unlabeled_category=UNLABELLED, batch_key=batch_key
    )
    model = scvi.model.SCANVI(adata, **ARCHITECTURE)
    timer = EpochTimer()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        train_size=1.0,
        accelerator=accelerator(),
        enable_progress_bar=False,
        callbacks=[timer],
    )
    cells = len(model.train_indices)
    return {
        "epoch_seconds": timer.seconds,
        "epoch_cpu_seconds": timer.cpu_seconds,
        "cells_per_epoch": int(cells),
        "timing": "per-epoch",
    }


def measure_throughput(
    task: str,
    *,
    batch_sizes: tuple[int, ...] = (128, 1024),
    reps: int = 3,
    epochs: int = 4,
    seed: int = 0,
    max_cells: int | None = None,
    data_dir: str | None = None,
    methods: tuple[str, ...] = METHODS,
) -> list[dict[str, Any]]:
    """Time pyro_scvae and SCANVI training alternately (meant to run in one child process).

    Parameters
    ----------
    task
        Task whose cells are trained on.
    batch_sizes
        Minibatch sizes to compare.
    reps
        Fits per method and batch size.
    epochs
        Epochs per fit; the first is dropped as warm-up.
    seed
        Seed of the task and the models.
    max_cells
        Subsample the task to at most this many cells.
    data_dir
        Folder of the shared data (None: ``../shared/data``).
    methods
        Which of :data:`METHODS` to time.

    Returns
    -------
    list of dict
        One record per fit: ``method``, ``batch_size``, ``rep``, ``epoch_seconds``,
        ``cells_per_epoch``, ``cells_per_s``, ``cpu_cells_per_s``, ``timing``, or
        ``status="failed"`` and ``error``.
    """
    warnings.filterwarnings("ignore")
    from benchmarks.methods import UNLABELLED, with_training_labels
    from benchmarks.tasks import build_task

    built = build_task(task, seed, max_cells=max_cells, data_dir=data_dir)
    fits = {
        "pyro_scvae": _fit_pyro,
        "pyro_scvae_jit": functools.partial(_fit_pyro, jit=True),
        "scanvi": _fit_scanvi,
    }
    unlabelled = {"pyro_scvae": np.nan, "pyro_scvae_jit": np.nan, "scanvi": UNLABELLED}
    records = []
    for batch_size in batch_sizes:
        for rep in range(reps):
            for method in methods:
                adata = with_training_labels(built.adata, unlabelled[method])
                record: dict[str, Any] = {
                    "task": task,
                    "method": method,
                    "batch_size": batch_size,
                    "rep": rep,
                    "epochs": epochs,
                    "n_cells": int(adata.n_obs),
                    "n_genes": int(adata.n_vars),
                }
                try:
                    result = fits[method](adata, built.batch_key, batch_size, epochs, seed + rep)
                    record.update(result)
                    record["cells_per_s"] = _cells_per_second(
                        result["epoch_seconds"], result["cells_per_epoch"]
                    )
                    if result.get("epoch_cpu_seconds"):
                        record["cpu_cells_per_s"] = _cells_per_second(
                            result["epoch_cpu_seconds"], result["cells_per_epoch"]
                        )
                    record["status"] = "ok"
                except Exception as error:  # recorded, the other fits go on
                    record["status"] = "failed"
                    record["error"] = f"{type(error).__name__}: {error}"
                records.append(record)
    return records


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: mean cells/s (wall and CPU time) per batch size and method, and / SCANVI."""
    lines = [
        "| batch size | method | fits | cells/s (wall) | / SCANVI "
        "| cells/s (CPU time) | / SCANVI |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    ok = [r for r in records if r.get("status") == "ok"]
    for batch_size in sorted({r["batch_size"] for r in ok}):
        part = [r for r in ok if r["batch_size"] == batch_size]
        means = {
            (m, key): float(np.mean([r[key] for r in part if r["method"] == m and key in r]))
            for m in {r["method"] for r in part}
            for key in ("cells_per_s", "cpu_cells_per_s")
            if any(key in r for r in part if r["method"] == m)
        }
        for method in [m for m in METHODS if any(r["method"] == m for r in part)]:
            cells = [f"| {batch_size} | {method} | {sum(r['method'] == method for r in part)}"]
            for key in ("cells_per_s", "cpu_cells_per_s"):
                value, scanvi = means.get((method, key)), means.get(("scanvi", key))
                ratio = f"{value / scanvi:.2f}×" if value and scanvi else "–"
                cells.append(f"{value:,.0f} | {ratio}" if value else "– | –")
            lines.append(" | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import argparse
    import json
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="pyro_scvae against SCANVI, alternating")
    parser.add_argument("--task", default="T3")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    records = measure_throughput(
        args.task,
        batch_sizes=tuple(args.batch_sizes),
        reps=args.reps,
        epochs=args.epochs,
        methods=tuple(args.methods),
    )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    print(f"python benchmarks/throughput.py {' '.join(argv or sys.argv[1:])}")
    print(table(records))
    return records


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
