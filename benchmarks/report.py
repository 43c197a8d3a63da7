"""Summarise benchmark records into ``results.md`` and ``results.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("accuracy", "macro_f1", "weighted_f1", "ece", "train_s", "predict_s", "peak_rss_mb")
HEADERS = ("accuracy", "macro-F1", "weighted F1", "ECE", "train s", "predict s", "peak MB")
DIGITS = {"train_s": 1, "predict_s": 2, "peak_rss_mb": 0}
BASELINES = ("celltypist", "logreg", "knn")
SCANVI = ("scanvi_recipe", "scanvi_direct")
#: Throughput targets (× SCANVI's) per batch size, from the speed issue.
THROUGHPUT_TARGETS = {128: 2.0, 1024: 3.0}

METHOD_NOTES = {
    "pyro_scvae_cli": "the command line at its defaults (`python -m pyro_scvae.fit --adata "
    "cells.h5ad --labels-key ... [--batch-key batch] --seed S`, 2,000 highly variable genes) "
    "in a fresh process, so its time includes starting Python, imports, the UMAP plot and "
    "writing every output; query cells unlabelled",
    "pyro_scvae_cli_ensemble3": "the command line at its defaults plus `--ensemble 3`: a "
    "seed ensemble of three members (seeds S, S + 1, S + 2), about three times the training",
    "pyro_scvae": "the Python API at its defaults (`PyroSCVAE(adata)`, `fit()`, all genes); "
    "query cells unlabelled (NaN label); `batch` as batch key where the task has one",
    "scanvi_recipe": "scvi-tools recipe: `SCVI` (default architecture, scvi's epoch heuristic "
    "or `--epochs`) then `SCANVI.from_scvi_model` (scvi's default fine-tuning epochs, at most "
    "10); query cells in the unlabelled category `__unlabelled__`; `batch` as batch key",
    "scanvi_direct": "`SCANVI.setup_anndata` + `SCANVI(adata)` + `train()`, defaults",
    "celltypist": "`celltypist.train` defaults on log1p CP10k training cells, `annotate` "
    "without majority voting; probabilities are its own `probability_matrix` (per-class "
    "sigmoids, rows need not sum to 1); on scikit-learn >= 1.8 its one-vs-rest logistic "
    "regression is refitted through `OneVsRestClassifier` (scikit-learn removed "
    "`multi_class='ovr'`, which CellTypist 1.7.1 passes)",
    "logreg": "`LogisticRegression(max_iter=1000)` on log1p CP10k of training cells",
    "knn": "15-NN vote on a 50-component PCA of log1p CP10k computed on all cells",
}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format a GitHub-flavoured markdown table.

    Parameters
    ----------
    headers
        Column names.
    rows
        Cell values, converted with ``str``.

    Returns
    -------
    str
        The table, one line per row.
    """
    lines = ["| " + " | ".join(map(str, headers)) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def save_study(rows: list[dict[str, Any]], report: str, out: str) -> None:
    """Write a study's records to ``OUT.json`` and its report to ``OUT.md``, then print it."""
    Path(f"{out}.json").write_text(json.dumps(rows, indent=1))
    Path(f"{out}.md").write_text(report)
    print(report)


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± sd"`` (sample sd), or the mean alone for a single value.

    Parameters
    ----------
    values
        Numbers, one per seed or repetition.
    digits
        Decimals shown.

    Returns
    -------
    str
        The formatted summary, ``"–"`` when there are no values.
    """
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + [v for v in present if v not in order]


def _ok_runs(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([r for r in runs if r.get("status") == "ok"])
    return frame if len(frame) else pd.DataFrame(columns=["task", "method", "seed", *METRICS])


def summary_rows(
    runs: Sequence[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str]
) -> list[list[object]]:
    """Rows ``task, method, seeds, metric means ± sd`` over the successful runs.

    Parameters
    ----------
    runs
        Run records.
    tasks, methods
        Display order.

    Returns
    -------
    list of list
        One row per task and method that has at least one successful run.
    """
    frame = _ok_runs(runs)
    rows = []
    for task in _ordered(frame["task"], tasks):
        for method in _ordered(frame.loc[frame["task"] == task, "method"], methods):
            part = frame[(frame["task"] == task) & (frame["method"] == method)]
            cells = [mean_sd(part[m].tolist(), DIGITS.get(m, 3)) for m in METRICS]
            rows.append([task, method, len(part), *cells])
    return rows


def method_means(runs: Sequence[dict[str, Any]], column: str) -> pd.DataFrame:
    """Mean over seeds of one column, tasks x methods.

    Parameters
    ----------
    runs
        Run records.
    column
        A numeric field of the records (``"macro_f1"``, ``"train_s"``...).

    Returns
    -------
    pandas.DataFrame
        Tasks as rows, methods as columns.
    """
    frame = _ok_runs(runs)
    if frame.empty:
        return pd.DataFrame()
    return frame.pivot_table(index="task", columns="method", values=column, aggfunc="mean")


def throughput_rows(records: Sequence[dict[str, Any]]) -> list[list[object]]:
    """Rows ``batch size, method, fits, cells/s, ratio to SCANVI``.

    Parameters
    ----------
    records
        Throughput records of :func:`benchmarks.throughput.measure_throughput`.

    Returns
    -------
    list of list
        One row per batch size and method.
    """
    frame = pd.DataFrame([r for r in records if r.get("status") == "ok"])
    if frame.empty:
        return []
    rows = []
    for batch_size, part in frame.groupby("batch_size", sort=True):
        means = part.groupby("method")["cells_per_s"].mean()
        for method, fits in part.groupby("method", sort=False):
            ratio = means[method] / means["scanvi"] if "scanvi" in means else float("nan")
            rows.append(
                [
                    batch_size,
                    method,
                    len(fits),
                    int(fits["cells_per_epoch"].iloc[0]),
                    mean_sd(fits["cells_per_s"].tolist(), 0),
                    f"{ratio:.2f}×",
                    ", ".join(sorted(set(fits["timing"]))),
                ]
            )
    return rows


#: pyro_scvae as each path gives it: the command line and the Python API, each at its defaults.
OURS = ("pyro_scvae_cli", "pyro_scvae", "pyro_scvae_cli_ensemble3")
#: End-to-end time targets: at most this fraction of SCANVI's recipe, this multiple of logreg.
TIME_TARGETS = {"scanvi_recipe": 1 / 3, "logreg": 15.0}
#: Accuracy targets: macro-F1 at least theirs on every task; mean lead over the best other.
PEERS = ("logreg", "celltypist")
MEAN_LEAD = 0.03
ECE_TARGET = 0.03


def target_lines(runs: Sequence[dict[str, Any]], throughput: Sequence[dict[str, Any]]) -> list[str]:
    """Check the accuracy, calibration and speed targets against the measured means.

    For each path of pyro_scvae (:data:`OURS`) present: macro-F1 at least that of logistic
    regression and CellTypist on every task, a mean macro-F1 at least :data:`MEAN_LEAD`
    above the best other method's, ECE at most :data:`ECE_TARGET` on every task, and
    end-to-end time (train + predict) within :data:`TIME_TARGETS`; then throughput.
    Each ECE is followed by its floor (``benchmarks.metrics.ece_floor``) where recorded:
    on a few hundred cells a perfectly calibrated model's ECE is itself about 0.02–0.07.

    Returns
    -------
    list of str
        Markdown bullet lines, each saying met or MISSED with the numbers, or why a target
        could not be checked.
    """
    f1 = method_means(runs, "macro_f1")
    ece = method_means(runs, "ece")
    recorded = any("ece_floor" in r for r in runs)  # runs before the floor existed lack it
    floors = method_means(runs, "ece_floor") if recorded else pd.DataFrame()
    total = method_means(runs, "train_s") + method_means(runs, "predict_s")
    lines = []
    ours = [m for m in OURS if m in f1]
    if not ours:
        lines.append("- accuracy targets: not checked (no pyro_scvae run)")
    for method in ours:
        lines.append(f"- **{method}**")
        for peer in (p for p in PEERS if p in f1):
            both = f1[[method, peer]].dropna()
            misses = both[both[method] < both[peer]]
            verdict = "met" if misses.empty else f"MISSED on {', '.join(misses.index)}"
            detail = ", ".join(f"{t} {r[method]:.3f} vs {r[peer]:.3f}" for t, r in both.iterrows())
            lines.append(f"  - macro-F1 ≥ {peer} on every task: **{verdict}** ({detail})")
        others = [m for m in f1.columns if m not in OURS]
        common = f1[[method, *others]].dropna()
        if others and not common.empty:
            averages = common.mean()
            best = averages[others].idxmax()
            lead = averages[method] - averages[best]
            verdict = "met" if lead >= MEAN_LEAD else "MISSED"
            lines.append(
                f"  - mean macro-F1 ≥ best other method's + {MEAN_LEAD}: **{verdict}** "
                f"({averages[method]:.3f} vs {best} {averages[best]:.3f}, lead {lead:+.3f}, "
                f"over {len(common)} tasks)"
            )
        if method in ece:
            over = ece[method].dropna()
            bad = over[over > ECE_TARGET]
            verdict = "met" if bad.empty else f"MISSED on {', '.join(bad.index)}"
            floor = floors.get(method, pd.Series(dtype=float))
            detail = ", ".join(
                f"{t} {v:.3f}" + (f" (floor {floor[t]:.3f})" if pd.notna(floor.get(t)) else "")
                for t, v in over.items()
            )
            lines.append(f"  - ECE ≤ {ECE_TARGET} on every task: **{verdict}** ({detail})")
        for peer, limit in TIME_TARGETS.items():
            if peer not in total or method not in total:
                continue
            ratio = (total[method] / total[peer]).dropna()
            bad = ratio[ratio > limit]
            verdict = "met" if bad.empty else f"MISSED on {', '.join(bad.index)}"
            detail = ", ".join(f"{t} {v:.2f}" for t, v in ratio.items())
            lines.append(
                f"  - fit + annotate time ≤ {limit:.3g} × {peer}'s: **{verdict}** (ratio {detail})"
            )
    rows = throughput_rows(throughput)
    ratios = {r[0]: float(r[5].rstrip("×")) for r in rows if r[1] == "pyro_scvae"}
    if not ratios:
        lines.append("- training throughput against SCANVI's: not checked (no throughput run)")
    for batch_size, ratio in ratios.items():
        goal = THROUGHPUT_TARGETS.get(batch_size, 2.0)
        verdict = "met" if ratio >= goal else "MISSED"
        lines.append(
            f"- training throughput ≥ {goal:g}× SCANVI's at batch size {batch_size}: "
            f"**{verdict}** ({ratio:.2f}×)"
        )
    return lines


def busy_machine_lines(runs: Sequence[dict[str, Any]], cores: int) -> list[str]:
    """A warning when the 1-minute load average exceeded the core count during the runs.

    Parameters
    ----------
    runs
        Run records (with ``load_avg_start`` and ``load_avg_end``).
    cores
        Cores available to the benchmark.

    Returns
    -------
    list of str
        The warning and a blank line, or nothing.
    """
    loads = [r.get(k) for r in runs for k in ("load_avg_start", "load_avg_end")]
    loads = [v for v in loads if v is not None]
    if not loads or max(loads) <= cores:
        return []
    return [
        f"**Warning: the machine was busy** (1-minute load average up to {max(loads):.1f} on "
        f"{cores} cores during the runs): times and throughput are inflated and noisy.",
        "",
    ]


def scvi_epochs_note(scvi_epochs: int | None) -> str:
    """How SCVI / SCANVI epochs were set, when not by scvi-tools' own heuristic."""
    if scvi_epochs is None:
        return ""
    if scvi_epochs == -1:
        return (
            "; SCVI (recipe) and SCANVI (direct) trained for pyro_scvae's default number of "
            "epochs of each task instead of scvi's 400 (time budget of 2 cores)"
        )
    return f"; SCVI (recipe) and SCANVI (direct) trained for {scvi_epochs} epochs"


def scaling_lines(scaling: dict[str, Any] | None) -> list[str]:
    """The scaling section: ``scaling.md``'s table and notes (from ``scaling.json``)."""
    out = ["", "## Scaling: time per epoch and peak memory against the number of cells", ""]
    if scaling is None:
        return out + ["Not run here (`python benchmarks/scaling.py` writes `scaling.json`)."]
    from benchmarks.scaling import markdown

    data = {int(n): d for n, d in scaling["data_sets"].items()}
    body = markdown(scaling["cases"], data, scaling["meta"]).splitlines()
    return out + body[2:]  # without scaling.md's own title


def render_markdown(results: dict[str, Any], scaling: dict[str, Any] | None = None) -> str:
    """The whole ``results.md``.

    Parameters
    ----------
    results
        What :func:`benchmarks.run.run_benchmark` returns: ``meta``, ``runs``,
        ``throughput``.
    scaling
        The contents of ``scaling.json`` (:mod:`benchmarks.scaling`), if measured.

    Returns
    -------
    str
        Markdown text.
    """
    meta, runs = results["meta"], results["runs"]
    tasks, methods = meta["tasks"], meta["methods"]
    machine = meta["machine"]
    out = [
        "# pyro_scvae benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; total wall time {meta.get('wall_s', float('nan')):.0f} s",
        f"- machine: {machine['cpu']}, {machine['logical_cores']} logical cores "
        f"({machine['usable_cores']} usable), {machine['memory_gb']} GB memory, "
        f"{machine['os']}, Python {machine['python']}, torch threads {machine['torch_threads']}"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ""),
        "- SCANVI and pyro_scvae trained on the "
        + ("GPU" if meta.get("accelerator") == "gpu" else "CPU"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- mode: {'quick' if meta['quick'] else 'full'}; seeds {meta['seeds']}; "
        f"epochs of neural methods: {meta['epochs'] or 'their defaults'}"
        + scvi_epochs_note(meta.get("scvi_epochs"))
        + (f"; tasks subsampled to ≤ {meta['max_cells']} cells" if meta["max_cells"] else ""),
        "",
        "Every (task, method, seed) ran in a fresh child process"
        + (f", {meta['jobs']} at a time" if meta.get("jobs", 1) > 1 else "")
        + "; metrics use query cells "
        "only; train s = raw counts to fitted model (preprocessing included), predict s = "
        "raw query counts to probabilities; peak MB = peak resident set of the child "
        "process (libraries and data included). Values are mean ± sd over seeds.",
        "",
        *busy_machine_lines(runs, machine.get("usable_cores") or machine["logical_cores"]),
        "## Summary",
        "",
        markdown_table(["task", "method", "seeds", *HEADERS], summary_rows(runs, tasks, methods)),
    ]
    f1 = method_means(runs, "macro_f1")
    if not f1.empty:
        f1 = f1.reindex(index=_ordered(f1.index, tasks), columns=_ordered(f1.columns, methods))
        rows = [[t, *(f"{v:.3f}" for v in f1.loc[t])] for t in f1.index]
        rows.append(["mean", *(f"{v:.3f}" for v in f1.mean())])
        out += ["", "## Macro-F1 by task", "", markdown_table(["task", *f1.columns], rows)]
    out += ["", "## Targets", ""]
    if meta["quick"] or meta["max_cells"] or len(meta["seeds"]) < 3:
        out += ["Indicative only: quick mode, subsampled tasks or fewer than three seeds.", ""]
    out += target_lines(runs, results.get("throughput", []))

    out += ["", "## Throughput", ""]
    tp_rows = throughput_rows(results.get("throughput", []))
    if tp_rows:
        tp = meta["throughput"]
        out += [
            f"Task {tp['task']}, {tp['reps']} fits per method and batch size, alternating "
            f"pyro_scvae / SCANVI in one process, {tp['epochs']} epochs per fit (first "
            "dropped), n_hidden=128, n_latent=10, n_layers=1; cells/s = cells per epoch / "
            "median epoch time, mean ± sd over fits.",
            "",
            markdown_table(
                ["batch size", "method", "fits", "cells/epoch", "cells/s", "vs SCANVI", "timing"],
                tp_rows,
            ),
        ]
    else:
        out.append("Not run.")
    out += scaling_lines(scaling)

    out += ["", "## Per-class F1 (mean over seeds)"]
    frame = _ok_runs(runs)
    for task in _ordered(frame["task"], tasks):
        part = frame[frame["task"] == task]
        per_class = pd.DataFrame(
            [{"method": r.method, **r.per_class_f1} for r in part.itertuples()]
        )
        table = per_class.groupby("method").mean()
        table = table.reindex(_ordered(table.index, methods))
        rows = [[m, *(f"{v:.2f}" for v in table.loc[m])] for m in table.index]
        support = part.iloc[0].get("query_class_counts")
        if isinstance(support, dict):
            rows.append(["*query cells*", *(support.get(c, "") for c in table.columns)])
        out += ["", f"### {task}", "", markdown_table(["method", *table.columns], rows)]

    out += ["", "## Tasks", ""]
    rows = []
    for task in tasks:
        done = [r for r in runs if r["task"] == task and "n_train" in r]
        if done:
            r = done[0]
            rows.append(
                [task, meta["task_descriptions"][task], r["n_train"], r["n_query"], r["n_genes"]]
            )
    out.append(markdown_table(["task", "description", "train cells", "query cells", "genes"], rows))
    out += ["", "## Methods", ""]
    out += [f"- **{m}**: {METHOD_NOTES.get(m, '')}" for m in methods]

    failed = [r for r in runs if r.get("status") != "ok"]
    failed += [r for r in results.get("throughput", []) if r.get("status") != "ok"]
    skipped = meta.get("skipped_tasks", {})
    if failed or skipped:
        out += ["", "## Failures and skipped runs", ""]
        out += [f"- task {t} skipped: {why}" for t, why in skipped.items()]
        for r in failed:
            where = f"{r.get('task')} / {r.get('method')} / seed {r.get('seed', r.get('rep'))}"
            out.append(f"- {where}: {r.get('error')}")
    return "\n".join(out) + "\n"


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` into ``out_dir``.

    The scaling section comes from ``out_dir / "scaling.json"`` when that file exists.

    Parameters
    ----------
    results
        Benchmark results (``meta``, ``runs``, ``throughput``).
    out_dir
        Destination folder (created if needed).

    Returns
    -------
    tuple of pathlib.Path
        The markdown and JSON paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / "results.md", out_dir / "results.json"
    scaling_file = out_dir / "scaling.json"
    scaling = json.loads(scaling_file.read_text()) if scaling_file.is_file() else None
    md_path.write_text(render_markdown(results, scaling), encoding="utf-8")
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return md_path, json_path
