"""Run one method on one task in a fresh process, and describe the machine.

Each (task, method, seed) runs in its own child process started with the ``spawn`` method,
so runs never share imported libraries, caches, thread pools or memory. The child's peak
resident set is read with ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) at
the end of the run: it is the high-water mark of that process alone, libraries, task data
and method together. The high-water mark after building the task, before the method runs,
is recorded too, and so is the machine's 1-minute load average at the start and end of
each run: timings taken while other processes compete for the cores are inflated.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import sys
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import metadata
from typing import Any

PACKAGES = (
    "pyro_scvae",
    "torch",
    "pyro-ppl",
    "scvi-tools",
    "lightning",
    "celltypist",
    "scikit-learn",
    "scanpy",
    "anndata",
    "numpy",
    "scipy",
    "pandas",
)


def peak_rss_mb() -> float:
    """Peak resident set of this process image so far, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, which starts afresh when the
    child process executes Python. ``ru_maxrss`` would not: a spawned child inherits its
    parent's high-water mark through ``fork`` (a trivial child of a 600 MB parent
    reports 630 MB), so it is only the fallback elsewhere, as an upper bound.

    Returns
    -------
    float
        Peak resident memory in MiB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_one(
    task: str,
    method: str,
    seed: int,
    *,
    epochs: int | None = None,
    max_cells: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Build a task, run a method on it and score it (meant to run in a child process).

    Parameters
    ----------
    task
        Task name (see :data:`benchmarks.tasks.TASKS`).
    method
        Method name (see :data:`benchmarks.methods.METHODS`).
    seed
        Seed of the task's split and of the method.
    epochs
        Training epochs of neural methods (None: their defaults).
    max_cells
        Subsample the task to at most this many cells.
    data_dir
        Folder of the shared data (None: ``../shared/data``).

    Returns
    -------
    dict
        The run's record: ``status`` (``"ok"`` or ``"failed"``), sizes, metrics, per-class
        F1, timings, memory and, on failure, the error and its traceback.
    """
    warnings.filterwarnings("ignore")
    from benchmarks.methods import METHODS
    from benchmarks.metrics import score
    from benchmarks.tasks import build_task

    record: dict[str, Any] = {"task": task, "method": method, "seed": seed, "epochs": epochs}
    record["load_avg_start"] = os.getloadavg()[0]
    try:
        built = build_task(task, seed, max_cells=max_cells, data_dir=data_dir)
        adata = built.adata
        is_query = adata.obs["is_query"].to_numpy(dtype=bool)
        labels = adata.obs["label"]
        record.update(
            n_cells=int(adata.n_obs),
            n_train=int((~is_query).sum()),
            n_query=int(is_query.sum()),
            n_genes=int(adata.n_vars),
            train_classes=sorted(map(str, labels[~is_query].unique())),
            query_class_counts={str(k): int(v) for k, v in labels[is_query].value_counts().items()},
            batch_key=built.batch_key,
        )
        record["rss_before_method_mb"] = peak_rss_mb()
        proba, info = METHODS[method](adata, seed, epochs=epochs)
        metrics = score(labels.loc[proba.index], proba)
        record["per_class_f1"] = metrics.pop("per_class_f1")
        record.update(metrics)
        record["train_s"] = float(info.pop("train_s"))
        record["predict_s"] = float(info.pop("predict_s"))
        record["info"] = info
        record["status"] = "ok"
    except Exception as error:  # the harness records any failure and goes on
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc()
    record["peak_rss_mb"] = peak_rss_mb()
    record["load_avg_end"] = os.getloadavg()[0]
    return record


def run_isolated(function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
    """Call ``function(*args, **kwargs)`` in a fresh ``spawn`` child process.

    Parameters
    ----------
    function
        A module-level function (it is pickled by reference).
    *args, **kwargs
        Its arguments.

    Returns
    -------
    object
        What the function returned; a ``{"status": "failed", ...}`` record when the child
        died (for example killed for memory).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(function, *args, **kwargs).result()
        except BrokenProcessPool as error:
            return {"status": "failed", "error": f"child process died: {error}"}


def machine_info() -> dict[str, Any]:
    """CPU, core count, memory, OS and Python of this machine.

    Returns
    -------
    dict
        ``cpu``, ``logical_cores``, ``usable_cores``, ``memory_gb``, ``os``, ``python``,
        ``torch_threads``, ``gpu`` (the CUDA device's name, or None).
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        memory_gb = float("nan")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        import torch

        torch_threads = torch.get_num_threads()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_threads, gpu = None, None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": round(memory_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch_threads,
        "gpu": gpu,
    }


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages the benchmark uses.

    Parameters
    ----------
    packages
        Distribution names.

    Returns
    -------
    dict
        Name -> version, or ``"not installed"``.
    """
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
