"""Reference mapping on T1: two chemistries as reference, the third mapped fine-tuned or not.

For each T1 fold (the query chemistry):

``transductive``
    ``fit`` on all cells, the query's present without labels (the package's default,
    ``encode_batch=False``): the setting to match.
``reference``
    ``fit`` on the two reference chemistries alone (default settings), then ``predict``
    on the query: its unseen chemistry gets the average batch input.
``fine_tuned``
    that reference mapped with ``map_query`` (reference frozen, default epochs): the new
    chemistry's columns of the decoder and of the encoders (which the mapped model adds,
    zero for the reference chemistries) learn on the query's ELBO,
``fine_tuned_unfrozen``
    and with ``freeze_reference=False`` (every weight learns on the query alone).
``reference_encoded``, ``fine_tuned_encoded`` (``--groups encoded``)
    the same reference trained with ``encode_batch=True`` (the encoders see the
    chemistry from the start, as scArches' conditional encoders do), before and after
    ``map_query``.

Reported: macro-F1 of the query's calls, and batch mixing of the joint latent of the
reference and query cells: for each cell, the entropy of the chemistries among its 30
nearest neighbours in z₁ (Euclidean, scikit-learn), divided by log 3, averaged over
cells (1: neighbours spread evenly over the chemistries; 0: only its own). It is the kNN
batch entropy of Haghverdi et al. (2018), in a few lines of scikit-learn. Beside it, from a
library: **iLISI** (Korsunsky et al. 2019), the effective number of chemistries around each
cell at a perplexity of 30, computed by ``harmonypy.compute_lisi``; reported as scib does,
the median over cells scaled to [0, 1] by (LISI − 1) / (chemistries − 1). (scib-metrics
would bring jax into the environment; harmonypy needs only numpy.)

Usage::

    python benchmarks/mapping.py --folds T1a T1b T1c --seeds 0 --out benchmarks/mapping
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import f1_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import markdown_table, mean_sd, save_study  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402

NEIGHBOURS = 30


def batch_entropy(latent: np.ndarray, batches: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean normalised entropy of the batches among each cell's ``k`` nearest neighbours."""
    names, codes = np.unique(batches, return_inverse=True)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)[1][:, 1:]
    counts = np.stack([(codes[neighbours] == b).sum(1) for b in range(len(names))], 1)
    return float(np.mean(entropy(counts, axis=1) / np.log(len(names))))


def ilisi(latent: np.ndarray, batches: np.ndarray, perplexity: float = NEIGHBOURS) -> float:
    """Median iLISI over cells (harmonypy), scaled to [0, 1] as scib scales it."""
    import pandas as pd
    from harmonypy import compute_lisi

    n_batches = len(np.unique(batches))
    lisi = compute_lisi(latent, pd.DataFrame({"batch": batches}), ["batch"], perplexity)[:, 0]
    return float((np.median(lisi) - 1) / (n_batches - 1))


def macro_f1(truth, calls) -> float:
    return float(f1_score(truth, calls, average="macro", labels=np.unique(truth)))


def split_fold(fold: str, seed: int):
    """A T1 fold's cells, and copies of its reference (two chemistries) and query (the third)."""
    adata = build_task(fold, seed).adata
    is_query = adata.obs["is_query"].to_numpy()
    return adata, adata[~is_query].copy(), adata[is_query].copy()


def scored(model, reference, query) -> dict[str, float]:
    """The query's calls by ``model`` (macro-F1, accuracy), and the mixing of the reference
    and query cells as ``model`` encodes both (batch entropy, iLISI)."""
    truth = query.obs["label"].to_numpy()
    calls = model.predict(query).to_numpy()
    joint = np.vstack(
        [model.get_latent_representation(reference), model.get_latent_representation(query)]
    )
    batches = np.r_[reference.obs["batch"].to_numpy(), query.obs["batch"].to_numpy()]
    return {
        "macro_f1": macro_f1(truth, calls),
        "accuracy": float((calls == truth).mean()),
        "batch_entropy": batch_entropy(joint, batches),
        "ilisi": ilisi(joint, batches),
    }


def run_fold(
    fold: str, seed: int, epochs: int | None, groups: tuple[str, ...] = ("default",)
) -> list[dict]:
    """The settings of the module docstring on one fold (``default``: the first four,
    ``encoded``: the last two); one row each."""
    from pyro_scvae import PyroSCVAE

    adata, reference, query = split_fold(fold, seed)
    rows = []

    def record(name, model, seconds):
        scores = scored(model, reference, query)
        rows.append(
            {"fold": fold, "seed": seed, "setting": name, **scores, "seconds": round(seconds, 1)}
        )
        print(json.dumps(rows[-1]), flush=True)

    fit = {"epochs": epochs, "seed": seed, "progress": False, "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen-batch warning is expected here
        if "default" in groups:
            both = adata.copy()
            both.obs["training_label"] = both.obs["label"].where(~both.obs["is_query"])
            PyroSCVAE.setup_anndata(both, labels_key="training_label", batch_key="batch")
            start = time.perf_counter()
            model = PyroSCVAE(both, seed=seed).fit(**fit)
            record("transductive", model, seconds=time.perf_counter() - start)

        PyroSCVAE.setup_anndata(reference, labels_key="label", batch_key="batch")
        plans = {
            "default": ("", False, (("fine_tuned", True), ("fine_tuned_unfrozen", False))),
            "encoded": ("_encoded", True, (("fine_tuned_encoded", True),)),
        }
        for group in groups:
            suffix, encode_batch, mappings = plans[group]
            start = time.perf_counter()
            model = PyroSCVAE(reference, encode_batch=encode_batch, seed=seed).fit(**fit)
            record("reference" + suffix, model, seconds=time.perf_counter() - start)
            for name, freeze in mappings:
                start = time.perf_counter()
                mapped = model.map_query(
                    query, freeze_reference=freeze, seed=seed, progress=False, device="cpu"
                )
                record(name, mapped, seconds=time.perf_counter() - start)
    return rows


SETTINGS = (
    "transductive",
    "reference",
    "fine_tuned",
    "fine_tuned_unfrozen",
    "reference_encoded",
    "fine_tuned_encoded",
)
METRICS = ("macro_f1", "accuracy", "batch_entropy", "ilisi")


def measured(rows: list[dict], key: str) -> bool:
    """Every row has ``key`` (rows of runs before iLISI was added lack it)."""
    return all(key in r for r in rows)


def summarise(rows: list[dict]) -> list[list[str]]:
    """Mean ± sd over seeds of each fold and setting, then of all folds together."""
    body = []
    for fold in [*sorted({r["fold"] for r in rows}), "all"]:
        for setting in SETTINGS:
            chosen = [r for r in rows if r["setting"] == setting and fold in (r["fold"], "all")]
            if chosen:
                body.append(
                    [fold, setting, str(len(chosen))]
                    + [
                        mean_sd([r[key] for r in chosen]) if measured(chosen, key) else "n/a"
                        for key in METRICS
                    ]
                    + [f"{np.mean([r['seconds'] for r in chosen]):.0f}"]
                )
    return body


def paired(rows: list[dict], setting: str, baseline: str, key: str) -> tuple[float, int, int]:
    """Mean difference of ``key`` between two settings over (fold, seed) pairs, and how
    many pairs are higher and lower."""
    value = {(r["fold"], r["seed"], r["setting"]): r.get(key) for r in rows}
    pairs = sorted({(r["fold"], r["seed"]) for r in rows})
    diffs = np.array([value[(*p, setting)] - value[(*p, baseline)] for p in pairs])
    return float(diffs.mean()), int((diffs > 0).sum()), int((diffs < 0).sum())


def render(rows: list[dict], command: str) -> str:
    headers = ["fold", "setting", "runs", "macro-F1", "accuracy", "batch entropy", "iLISI", "s"]
    lines = [
        "# Reference mapping on T1",
        "",
        f"Command: `{command}`",
        "",
        "Mean ± sd over seeds; s: seconds of the fit (of the fine-tuning alone for the",
        "fine-tuned rows).",
        "",
        markdown_table(headers, summarise(rows)),
        "",
        "Paired by fold and seed (mean difference; pairs higher / lower):",
        "",
    ]
    ran = {r["setting"] for r in rows}
    for setting, baseline in (
        ("fine_tuned", "reference"),
        ("fine_tuned", "transductive"),
        ("fine_tuned_unfrozen", "reference"),
        ("reference_encoded", "reference"),
        ("fine_tuned_encoded", "reference_encoded"),
        ("fine_tuned_encoded", "transductive"),
    ):
        if not {setting, baseline} <= ran:
            continue
        both = [r for r in rows if r["setting"] in (setting, baseline)]
        for key in (k for k in METRICS if measured(both, k)):
            diff, up, down = paired(rows, setting, baseline, key)
            lines.append(f"- {setting} − {baseline}, {key}: {diff:+.3f} ({up} / {down})")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", nargs="+", default=["T1a"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the package's")
    parser.add_argument("--groups", nargs="+", default=["default"], choices=["default", "encoded"])
    parser.add_argument("--out", default="benchmarks/mapping", help="writes OUT.json, OUT.md")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="only report these runs' rows together"
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/mapping.py " + " ".join(argv or sys.argv[1:])
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(Path(path).read_text())]
        save_study(rows, render(rows, command), args.out)
        return
    rows = []
    for seed in args.seeds:
        for fold in args.folds:
            rows += run_fold(fold, seed, args.epochs, tuple(args.groups))
            Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    save_study(rows, render(rows, command), args.out)


if __name__ == "__main__":
    main()
