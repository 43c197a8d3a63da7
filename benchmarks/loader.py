"""The minibatch loader alone: cells/s of dense float32 minibatches from an ``.h5ad``.

Usage (from the repository root)::

    python benchmarks/scaling.py --sizes 200000 --keep --workdir /tmp/loader  # makes a file
    OMP_NUM_THREADS=1 python benchmarks/loader.py /tmp/loader/cells_200000.h5ad

For each batch size it times what training does per minibatch
(:meth:`pyro_scvae.data.CellData.tensors`: the rows of a shuffled minibatch as a dense
float32 torch tensor), over ``--batches`` minibatches of one shuffled epoch:

- ``memory``: the file read with ``anndata.read_h5ad`` (CSR in memory);
- ``backed``: the file opened with ``backed="r"`` (:class:`pyro_scvae.data.BackedCounts`,
  rows read from the file for each minibatch).

Times are CPU time of this process and wall time; the page cache holds the file after the
first pass, as it would on a machine with memory to spare. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anndata as ad
import numpy as np

from pyro_scvae.data import CellData, count_matrix


def time_loader(data: CellData, batch_size: int, batches: int, seed: int = 0) -> dict:
    """Cells/s (wall and CPU time) of ``batches`` shuffled minibatches of ``data``."""
    order = np.random.default_rng(seed).permutation(data.n_cells)
    starts = range(0, min(len(order), batches * batch_size), batch_size)
    data.tensors(order[:batch_size])  # warm-up: open the file, fill caches
    wall, cpu = time.perf_counter(), time.process_time()
    cells = 0
    for start in starts:
        x, _, _ = data.tensors(order[start : start + batch_size])
        cells += x.shape[0]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"cells": cells, "cells_per_s": cells / wall, "cpu_cells_per_s": cells / cpu}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="an .h5ad file with CSR counts in .X")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batches", type=int, default=40, help="minibatches timed per case")
    parser.add_argument("--modes", nargs="+", default=["memory", "backed"])
    args = parser.parse_args(argv)
    rows = []
    for mode in args.modes:
        adata = ad.read_h5ad(args.path, backed="r" if mode == "backed" else None)
        data = CellData(count_matrix(adata), np.full(adata.n_obs, -1))
        for batch_size in args.batch_sizes:
            row = {
                "mode": mode,
                "batch_size": batch_size,
                **time_loader(data, batch_size, args.batches),
            }
            rows.append(row)
            print(row, flush=True)
    print(f"\n{args.path.name}: {data.n_cells:,} cells × {data.counts.shape[1]:,} genes")
    print("| mode | batch size | cells timed | cells/s (wall) | cells/s (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['batch_size']} | {r['cells']:,} | {r['cells_per_s']:,.0f} "
            f"| {r['cpu_cells_per_s']:,.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
