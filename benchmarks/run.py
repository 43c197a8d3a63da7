"""Run the benchmark of issue 5 and write ``results.md`` and ``results.json``.

Usage (from the repository root)::

    python benchmarks/run.py                      # everything: 6 tasks x 6 methods x 3 seeds
    python benchmarks/run.py --quick              # T1a + T4, 20 epochs, one seed: minutes
    python benchmarks/run.py --tasks T4 --methods logreg knn --seeds 0 1 2
    python benchmarks/run.py --accelerator gpu    # SCANVI and pyro_scvae on the GPU
    OMP_NUM_THREADS=1 python benchmarks/run.py --jobs 2   # two runs at a time, a core each

Every (task, method, seed) runs in a fresh child process, ``--jobs`` of them at a time;
the throughput comparison runs afterwards in one more child, alone. Results are rewritten
after every run, so an interrupted run keeps what it has done.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine_info, package_versions, run_isolated, run_one
from benchmarks.methods import ACCELERATOR_ENV, METHODS, NEURAL_METHODS, OPTION_METHODS
from benchmarks.report import HEADERS, markdown_table, summary_rows, write_results
from benchmarks.tasks import TASKS, TASKS_NEEDING_DATA, data_available
from benchmarks.throughput import measure_throughput

QUICK_TASKS = ("T1a", "T4")
QUICK_EPOCHS = 20
DEFAULT_OUT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments without the program name (None: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        Parsed options, with the quick-mode defaults filled in.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T1a + T4, 20 epochs, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; quick 0)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help="default: all")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        help="default: all but those of an option (pyro_scvae_cli_ensemble3)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results")
    parser.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    parser.add_argument("--max-cells", type=int, help="subsample every task to this many cells")
    parser.add_argument(
        "--epochs", type=int, help="epochs of the neural methods (default theirs; quick 20)"
    )
    parser.add_argument(
        "--scvi-epochs",
        type=int,
        help="epochs of SCVI (recipe) and of SCANVI trained directly, overriding --epochs for "
        "them; -1 gives them pyro_scvae's default number of epochs for the task "
        "(default: scvi-tools' heuristic, 400 on every task here)",
    )
    parser.add_argument(
        "--accelerator",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where SCANVI and pyro_scvae train, throughput included (default cpu; the "
        "other methods always run on the CPU)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(task, method, seed) runs at a time, each in its own process (default 1); "
        "with more than one, set OMP_NUM_THREADS so that jobs x threads fits the cores",
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput part")
    parser.add_argument(
        "--throughput-only", action="store_true", help="run only the throughput part"
    )
    parser.add_argument("--throughput-task", help="task trained on (default T3; quick T4)")
    parser.add_argument(
        "--throughput-batch-sizes", type=int, nargs="+", help="default 128 1024; quick 128"
    )
    parser.add_argument("--throughput-reps", type=int, help="fits per method (default 3; quick 2)")
    parser.add_argument("--throughput-epochs", type=int, help="epochs per fit (default 4; quick 3)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.tasks = args.tasks or list(QUICK_TASKS if quick else TASKS)
    args.methods = args.methods or [m for m in METHODS if m not in OPTION_METHODS]
    args.epochs = args.epochs or (QUICK_EPOCHS if quick else None)
    args.throughput_batch_sizes = args.throughput_batch_sizes or ([128] if quick else [128, 1024])
    args.throughput_reps = args.throughput_reps or (2 if quick else 3)
    args.throughput_epochs = args.throughput_epochs or (3 if quick else 4)
    if args.throughput_task is None:
        args.throughput_task = "T4" if quick or not data_available(args.data_dir) else "T3"
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_job(args: argparse.Namespace, task: str, method: str, seed: int) -> dict[str, Any]:
    """Run one (task, method, seed) in a fresh child process and label its record."""
    epochs = args.epochs if method in NEURAL_METHODS else None
    if method.startswith("scanvi") and args.scvi_epochs is not None:
        epochs = args.scvi_epochs
    record = run_isolated(
        run_one,
        task,
        method,
        seed,
        epochs=epochs,
        max_cells=args.max_cells,
        data_dir=args.data_dir,
    )
    return {"task": task, "method": method, "seed": seed, **record}


def run_benchmark(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run every requested (task, method, seed) and the throughput comparison.

    Parameters
    ----------
    args
        Options from :func:`parse_args`.
    command
        The command line, for the record.

    Returns
    -------
    dict
        ``meta`` (command, date, machine, versions, settings), ``runs`` (one record per
        task, method and seed) and ``throughput`` (one record per fit).
    """
    start = time.perf_counter()
    have_data = data_available(args.data_dir)
    missing = [] if have_data else [t for t in args.tasks if t in TASKS_NEEDING_DATA]
    skipped = {t: "../shared/data is absent" for t in missing}
    tasks = [t for t in args.tasks if t not in skipped]
    results: dict[str, Any] = {
        "meta": {
            "command": command,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "versions": package_versions(),
            "quick": args.quick,
            "seeds": args.seeds,
            "tasks": tasks,
            "methods": args.methods,
            "epochs": args.epochs,
            "scvi_epochs": args.scvi_epochs,
            "max_cells": args.max_cells,
            "accelerator": args.accelerator,
            "jobs": args.jobs,
            "task_descriptions": dict(TASKS),
            "skipped_tasks": skipped,
            "throughput": None,
        },
        "runs": [],
        "throughput": [],
    }
    jobs = [(t, m, s) for t in tasks for s in args.seeds for m in args.methods]
    if args.throughput_only:
        jobs, results["meta"]["tasks"] = [], []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads that wait on children
        pending = [pool.submit(_run_job, args, *job) for job in jobs]
        for number, future in enumerate(as_completed(pending), start=1):
            record = future.result()
            results["runs"].append(record)
            name = f"[{number}/{len(jobs)}] {record['task']} {record['method']}"
            name += f" seed {record['seed']}"
            if record["status"] == "ok":
                _log(
                    f"{name}: accuracy {record['accuracy']:.3f}, "
                    f"macro-F1 {record['macro_f1']:.3f}, train {record['train_s']:.1f} s, "
                    f"peak {record['peak_rss_mb']:.0f} MB"
                )
            else:
                _log(f"{name}: FAILED {record['error']}")
            results["meta"]["wall_s"] = time.perf_counter() - start
            write_results(results, args.out)

    wanted = args.throughput_only or {"pyro_scvae", "scanvi_recipe", "scanvi_direct"} & set(
        args.methods
    )
    if not args.no_throughput and wanted:
        settings = {
            "task": args.throughput_task,
            "batch_sizes": args.throughput_batch_sizes,
            "reps": args.throughput_reps,
            "epochs": args.throughput_epochs,
        }
        results["meta"]["throughput"] = settings
        _log(f"throughput: {settings}")
        records = run_isolated(
            measure_throughput,
            args.throughput_task,
            batch_sizes=tuple(args.throughput_batch_sizes),
            reps=args.throughput_reps,
            epochs=args.throughput_epochs,
            max_cells=args.max_cells,
            data_dir=args.data_dir,
        )
        results["throughput"] = records if isinstance(records, list) else [records]
    results["meta"]["wall_s"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: run, write the results and print the summary table.

    Parameters
    ----------
    argv
        Arguments without the program name (None: ``sys.argv[1:]``).

    Returns
    -------
    dict
        The results that were written.
    """
    args = parse_args(argv)
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "benchmarks/run.py: --accelerator gpu was asked for, but torch sees no CUDA GPU"
            )
    os.environ[ACCELERATOR_ENV] = args.accelerator  # read by the child processes
    words = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/run.py", *words])
    results = run_benchmark(args, command)
    md_path, json_path = write_results(results, args.out)
    table = markdown_table(
        ["task", "method", "seeds", *HEADERS],
        summary_rows(results["runs"], results["meta"]["tasks"], args.methods),
    )
    print(table)
    print(f"\nwrote {md_path} and {json_path}")
    return results


if __name__ == "__main__":
    main()
