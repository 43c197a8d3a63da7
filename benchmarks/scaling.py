"""Scaling of training with the number of cells: in-memory sparse against ``--backed``.

Usage (from the repository root)::

    python benchmarks/scaling.py                        # 10k, 100k, 1M cells x 2,000 genes
    python benchmarks/scaling.py --sizes 10000 100000   # a subset
    python benchmarks/scaling.py --workdir /scratch     # where the .h5ad files go

Data: a pool of cells simulated from the model (:func:`pyro_scvae.simulate.simulate_counts`,
2,000 genes, 5 types, 10 % labelled) is resampled with replacement to each size, and
every resampled cell's counts are binomially thinned to a random 70-100 % of themselves
so that no two cells are identical. Each data set is written as a CSR ``.h5ad`` in chunks
(memory never holds more than the pool and one chunk), under a temporary folder (never
the repository), and deleted at the end unless ``--keep``.

Each (size, mode) case runs in a fresh child process, which reads the file (in full, or
with ``anndata.read_h5ad(path, backed="r")``), builds ``PyroSCVAE`` (count checks and the
library-size prior: chunked passes in backed mode) and trains with the default
single-process path (``training.train``, batch size 128, CPU):

* a full epoch (``PyroSCVAE.fit(epochs=1)``) for sizes up to ``--full-epoch-max`` cells;
* otherwise ``--steps`` minibatches, drawn from a random subset of the cells spread over
  the whole file (so rows are read from the same places a full epoch reads), and the
  epoch time extrapolated as time per minibatch x minibatches per epoch. Such rows are
  labelled "extrapolated". The full matrix is loaded (in-memory mode) or opened (backed)
  and checked exactly as for a full epoch, so peak memory is that of the whole run.

Peak memory is the child's peak resident set size, ``VmHWM`` of ``/proc/self/status`` read
by the child when it is done. (``getrusage``'s ``ru_maxrss`` would not do: on Linux a
child inherits the parent's high-water mark across fork and exec, so every child would
report at least the parent's size, here the simulated pool; and ``RUSAGE_CHILDREN``
reports the largest child so far, not each one.) It does not include the operating
system's page cache, which holds the recently written file in backed mode.

Results go to ``benchmarks/scaling.md`` and ``benchmarks/scaling.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.harness import peak_rss_mb

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
N_GENES = 2000
POOL_CELLS = 20_000
WRITE_CHUNK = 50_000
BATCH_SIZE = 128
MODES = ("memory", "backed")
OUT = Path(__file__).resolve().parent
MEMORY_TARGET_GIB = 8.0


# ---------------------------------------------------------------------- data
def simulate_pool(n_genes: int, seed: int) -> ad.AnnData:
    """Cells simulated from the model, to be resampled into the data sets."""
    from pyro_scvae.simulate import simulate_counts

    return simulate_counts(
        n_cells=POOL_CELLS, n_genes=n_genes, n_classes=5, labelled_fraction=0.1, seed=seed
    )


def write_resampled(pool: ad.AnnData, n_cells: int, path: Path, seed: int) -> dict[str, Any]:
    """Write ``n_cells`` thinned resamples of ``pool`` to ``path`` as CSR, chunk by chunk.

    Returns
    -------
    dict
        ``nnz``, ``density``, ``file_gib`` and ``seconds`` of the written file.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    source = rng.integers(pool.n_obs, size=n_cells)  # [cells] pool row of each cell
    keep = rng.uniform(0.7, 1.0, size=n_cells)  # [cells] fraction of counts kept
    obs = pd.DataFrame(
        {
            "cell_type": pool.obs["cell_type"].to_numpy()[source],
            "label": pool.obs["label"].to_numpy()[source],
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    skeleton = ad.AnnData(obs=obs, var=pool.var.copy())
    skeleton.write_h5ad(path)
    counts = sp.csr_matrix(pool.X, dtype=np.float32)
    nnz = 0
    with h5py.File(path, "r+") as file:
        for begin in range(0, n_cells, WRITE_CHUNK):
            rows = slice(begin, min(begin + WRITE_CHUNK, n_cells))
            chunk = counts[source[rows]]  # [chunk, G]
            per_entry = np.repeat(keep[rows], np.diff(chunk.indptr))  # [nnz of chunk]
            chunk.data = rng.binomial(chunk.data.astype(np.int64), per_entry).astype(np.float32)
            chunk.eliminate_zeros()
            nnz += chunk.nnz
            if begin == 0:
                ad.io.write_elem(file, "X", chunk)
            else:
                ad.io.sparse_dataset(file["X"]).append(chunk)
    return {
        "nnz": int(nnz),
        "density": nnz / (n_cells * pool.n_vars),
        "file_gib": path.stat().st_size / 1024**3,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------- one case (child)
def run_case(
    path: Path, mode: str, full_epoch: bool, steps: int, seed: int, threads: int
) -> dict[str, Any]:
    """Load, set up and train one case in this process; returns timings and peak memory."""
    import torch

    from pyro_scvae import PyroSCVAE
    from pyro_scvae.data import CellData, take_rows
    from pyro_scvae.distributed import n_minibatches
    from pyro_scvae.training import TrainingConfig, train

    torch.set_num_threads(threads)
    start = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, seed=seed)  # count checks, library-size prior
    setup_seconds = time.perf_counter() - start
    cells = model.training_cells
    labels = model.data.labels[cells]
    epoch_minibatches = n_minibatches(labels, BATCH_SIZE)

    if full_epoch:
        model.fit(epochs=1, batch_size=BATCH_SIZE, seed=seed, device="cpu", progress=False)
        epoch_seconds = model.history.epoch_seconds[0]
        used_config = model.training_config
        timed_minibatches = epoch_minibatches
        per_minibatch = epoch_seconds / epoch_minibatches
    else:
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(len(cells), size=min(steps * BATCH_SIZE, len(cells))))
        subset = np.unique(subset)
        data = CellData(take_rows(model.data.counts, cells[subset]), labels[subset])
        config = TrainingConfig(
            epochs=1, batch_size=BATCH_SIZE, seed=seed, device="cpu", progress=False
        )
        history = train(model.module, data, config)
        used_config = config
        timed_minibatches = n_minibatches(labels[subset], BATCH_SIZE)
        per_minibatch = history.epoch_seconds[0] / timed_minibatches
        epoch_seconds = per_minibatch * epoch_minibatches
    peak_kib = peak_rss_kib()
    return {
        "mode": mode,
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "load_seconds": load_seconds,
        "setup_seconds": setup_seconds,
        "epoch_seconds": epoch_seconds,
        "epoch_timing": "measured" if full_epoch else "extrapolated",
        "timed_minibatches": int(timed_minibatches),
        "epoch_minibatches": int(epoch_minibatches),
        "ms_per_minibatch": 1000 * per_minibatch,
        "peak_rss_gib": peak_kib / 1024**2,
        "torch_threads": torch.get_num_threads(),
        "architecture": {
            key: getattr(model.config, key) for key in ("n_latent", "n_hidden", "n_layers")
        },
        "jit": bool(getattr(used_config, "jit", False)),
    }


def peak_rss_kib() -> int:
    """Peak resident set size of this process image (``VmHWM``), in KiB."""
    return round(peak_rss_mb() * 1024)


def run_isolated(
    path: Path, mode: str, full_epoch: bool, steps: int, seed: int, threads: int
) -> dict:
    """:func:`run_case` in a fresh Python process; its JSON result, or the error."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        str(path),
        "--mode",
        mode,
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
    ] + (["--full-epoch"] if full_epoch else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report
def markdown(records: list[dict], data: dict[int, dict], meta: dict) -> str:
    """``scaling.md``: the table, the data sets, how it was measured."""
    lines = [
        "# Scaling with the number of cells: in-memory sparse vs `--backed`",
        "",
        f"Produced by `{meta['command']}` at commit {meta.get('git', 'unknown')} on "
        f"{meta['date']} "
        f"({meta['machine'].get('cpu', '?')}, {meta['machine'].get('usable_cores', '?')} "
        f"usable cores, {meta['machine'].get('memory_gb', float('nan')):.0f} GiB; load "
        f"average {meta['load_before']} before, {meta['load_after']} after: the machine "
        f"was shared, so times are upper bounds; {meta['threads']} torch thread(s) per case).",
        "",
        "| cells | mode | time per epoch (s) | epoch time is | ms / minibatch "
        "| minibatches timed | load (s) | set-up (s) | peak RSS (GiB) |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['cells']:,} | {r['mode']} | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['cells']:,} | {r['mode']} | {r['epoch_seconds']:.0f} | {r['epoch_timing']} "
            f"| {r['ms_per_minibatch']:.1f} | {r['timed_minibatches']:,} of "
            f"{r['epoch_minibatches']:,} | {r['load_seconds']:.1f} | {r['setup_seconds']:.1f} "
            f"| {r['peak_rss_gib']:.2f} |"
        )
    architectures = {json.dumps(r["architecture"]) for r in records if "architecture" in r}
    lines += [
        "",
        "Model: the defaults of `PyroSCVAE` at that commit ("
        + "; ".join(sorted(architectures))
        + "), batch size 128, Adam with learning rate 0.003, CPU.",
    ]
    lines += [
        "",
        "Data sets (2,000 genes; cells resampled from a simulated pool and thinned, see "
        "`benchmarks/scaling.py`):",
        "",
        "| cells | non-zeros | density | file (GiB) | written in (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, d in data.items():
        lines.append(
            f"| {n:,} | {d['nnz']:,} | {d['density']:.3f} | {d['file_gib']:.2f} "
            f"| {d['seconds']:.0f} |"
        )
    lines += [
        "",
        "- *time per epoch*: one pass over all cells at batch size 128 on the CPU with "
        "the default single-process training; *measured* is a real epoch "
        "(`PyroSCVAE.fit(epochs=1)`), *extrapolated* is the time of the minibatches timed "
        "times the minibatches per epoch.",
        "- *load*: `anndata.read_h5ad` (in full, or `backed='r'`); *set-up*: `PyroSCVAE(adata)`, "
        "i.e. the count checks and the library-size prior (chunked passes over the file in "
        "backed mode).",
        "- *peak RSS*: the case's own process, from start to end (loading included). In "
        f"memory the target was under {MEMORY_TARGET_GIB:.0f} GiB at 1M cells; in backed mode "
        "only per-cell vectors (labels, totals, obs) grow with the number of cells, not the "
        "matrix.",
    ]
    return "\n".join(lines) + "\n"


def git_revision() -> str:
    """The commit the benchmark ran on, ``-dirty`` with uncommitted changes."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--genes", type=int, default=N_GENES)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--full-epoch-max",
        type=int,
        default=100_000,
        help="time a whole epoch up to this many cells, else --steps minibatches",
    )
    parser.add_argument("--steps", type=int, default=600, help="minibatches timed beyond that")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per case (default 1: on a shared machine, more threads than "
        "free cores make OpenMP wait on descheduled threads, several times slower)",
    )
    parser.add_argument("--workdir", type=Path, help="folder for the .h5ad files (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the .h5ad files")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for scaling.md/json")
    # internal: run one case in this process
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--full-epoch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case is not None:
        result = run_case(
            args.case, args.mode, args.full_epoch, args.steps, args.seed, args.threads
        )
        print(json.dumps(result))
        return 0

    from benchmarks.harness import machine_info, package_versions

    meta = {
        "command": ("python benchmarks/scaling.py " + shlex.join(argv or sys.argv[1:])).strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "versions": package_versions(),
        "load_before": load_average(),
        "threads": args.threads,
        "git": git_revision(),
    }
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pyro_scvae_scaling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    data: dict[int, dict] = {}
    try:
        pool = simulate_pool(args.genes, args.seed)
        for n_cells in sorted(args.sizes):
            path = workdir / f"cells_{n_cells}.h5ad"
            data[n_cells] = write_resampled(pool, n_cells, path, args.seed)
            print(f"{n_cells:,} cells written: {data[n_cells]}", flush=True)
            for mode in args.modes:
                full = n_cells <= args.full_epoch_max
                record = run_isolated(path, mode, full, args.steps, args.seed, args.threads)
                record.setdefault("cells", n_cells)
                records.append(record)
                print(json.dumps(record), flush=True)
                meta["load_after"] = load_average()
                write_results(records, data, meta, args.out)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_results(records: list[dict], data: dict[int, dict], meta: dict, out: Path) -> None:
    """Rewrite ``scaling.md`` and ``scaling.json`` with what has been measured so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(markdown(records, data, meta))
    payload = {"meta": meta, "data_sets": data, "cases": records}
    (out / "scaling.json").write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
