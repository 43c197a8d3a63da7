"""Merge the results of several ``run.py`` invocations into one report.

Used when methods were run as separate invocations (for example the baselines and
pyro_scvae on three seeds beside SCANVI on fewer, in two processes)::

    python benchmarks/merge.py /tmp/a/results.json /tmp/b/results.json --out benchmarks/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_results


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict: the runs and throughput of every part, the meta of the first.

    The commands of all parts are kept; seeds, tasks, methods and task descriptions are
    their unions; ``scvi_epochs`` is taken from whichever part set it. A run of a (task,
    method, seed) that an earlier part also holds replaces it: a rerun of a changed
    default is listed after the run it updates.
    """
    meta = dict(parts[0]["meta"])
    meta["command"] = " ; ".join(part["meta"]["command"] for part in parts)
    for key in ("seeds", "tasks", "methods"):
        meta[key] = sorted({value for part in parts for value in part["meta"][key]}, key=str)
    meta["task_descriptions"] = {  # a task run in a later part only is described there
        task: text for part in parts for task, text in part["meta"]["task_descriptions"].items()
    }
    meta["scvi_epochs"] = next(
        (p["meta"].get("scvi_epochs") for p in parts if p["meta"].get("scvi_epochs")), None
    )
    meta["wall_s"] = sum(part["meta"].get("wall_s", 0.0) for part in parts)
    meta["throughput"] = next(
        (p["meta"]["throughput"] for p in parts if p["meta"]["throughput"]), None
    )
    runs: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for run in part["runs"]:
            runs[(run["task"], run["method"], run["seed"])] = run  # a later part's rerun wins
    return {
        "meta": meta,
        "runs": list(runs.values()),
        "throughput": [row for part in parts for row in part["throughput"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files to merge")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged report")
    args = parser.parse_args(argv)
    parts = [json.loads(path.read_text()) for path in args.results]
    md_path, json_path = write_results(merge(parts), args.out)
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
