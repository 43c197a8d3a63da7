"""Posterior predictive checks: does the fitted model produce counts like the observed ones?

For a subsample of cells, Pyro's :class:`~pyro.infer.Predictive` draws z₁, l, y and z₂
from the guide q(z₁, l, y, z₂ | x) and then replicated counts x̃ from the model's
p(x | z₁, l), the ZINB (the observed counts are "unconditioned" with
:func:`pyro.poutine.uncondition`, so that the site ``x`` is sampled rather than
observed). Summary statistics of the observed counts are compared with those of each
replicated data set, as scvi-tools' ``PosteriorPredictiveCheck`` does:

- per gene (over the cells): the fraction of zeros, the mean, the variance and the
  coefficient of variation (standard deviation / mean), which with the mean is the
  mean–variance relation the ZINB must reproduce;
- per cell (over the genes): the library size (total counts) and the fraction of zeros.

For each statistic :func:`summarise` reports the fraction of genes (or cells) whose
observed value lies within the central 95 % interval of its replicated values
(``coverage``: near 1 when the model fits, and far below when the data have a property the
model cannot produce), the Spearman correlation between observed and mean replicated values
across genes (or cells), and the ratio of their averages (``ratio``: 1 is unbiased).
:func:`plot_ppc` draws observed against replicated values, one panel per statistic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import scipy.sparse as sp
import torch
from matplotlib.ticker import NullFormatter, NullLocator
from pyro import poutine
from pyro.infer import Predictive
from scipy.stats import spearmanr

from pyro_scvae.data import BackedCounts, take_rows

#: Statistics per gene and per cell, with the names used in metrics.json and the figure.
GENE_STATISTICS = ("zero_fraction", "mean", "variance", "cv")
CELL_STATISTICS = ("library_size", "zero_fraction")
#: Largest count whose frequency is compared (the figure's last panel); larger ones are pooled.
MAX_COUNT = 10


@dataclass
class PosteriorPredictiveCheck:
    """Observed and replicated statistics of a posterior predictive check.

    Attributes
    ----------
    genes, cells
        Statistic name → ``(observed [units], replicated [n_samples, units])``.
    count_frequencies
        ``(observed [MAX_COUNT + 1], replicated [n_samples, MAX_COUNT + 1])``: the
        fraction of entries equal to 0, 1, …, and at least ``MAX_COUNT``.
    n_cells, n_genes, n_samples, seconds
        Size and cost of the check.
    """

    genes: dict[str, tuple[np.ndarray, np.ndarray]]
    cells: dict[str, tuple[np.ndarray, np.ndarray]]
    count_frequencies: tuple[np.ndarray, np.ndarray]
    n_cells: int
    n_genes: int
    n_samples: int
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def replicate_counts(
    module,
    x: torch.Tensor,
    batch: torch.Tensor | None,
    n_samples: int,
) -> torch.Tensor:
    """Counts replicated from the posterior predictive, ``[n_samples, cells, G]``.

    ``Predictive`` samples the guide (z₁, l, y, z₂ given ``x``) and runs the model
    conditioned on those values; ``x`` is unobserved there, so it is drawn from the ZINB.
    The global parameter store is left as it was.
    """
    predictive = Predictive(
        poutine.uncondition(module.model),
        guide=module.guide,
        num_samples=n_samples,
        return_sites=("x",),
    )
    with pyro.get_param_store().scope():
        return predictive(x, None, batch)["x"]  # [S, cells, G]


def gene_statistics(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero fraction, mean, variance and CV of each gene over the cells of ``x [..., cells, G]``."""
    mean = x.mean(-2)  # [..., G]
    variance = x.var(-2)  # [..., G]
    return {
        "zero_fraction": (x == 0).double().mean(-2),
        "mean": mean,
        "variance": variance,
        "cv": variance.sqrt() / mean,  # NaN for a gene without counts
    }


def cell_statistics(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Library size and zero fraction of each cell of ``x [..., cells, G]``."""
    return {"library_size": x.sum(-1), "zero_fraction": (x == 0).double().mean(-1)}


def count_frequencies(x: torch.Tensor) -> torch.Tensor:
    """Fraction of the entries of ``x [..., cells, G]`` equal to 0 … ``MAX_COUNT`` (pooled)."""
    clipped = x.clamp(max=MAX_COUNT).long().reshape(-1, x.shape[-2] * x.shape[-1])  # [n, cells·G]
    frequencies = torch.stack([torch.bincount(row, minlength=MAX_COUNT + 1) for row in clipped])
    return (frequencies.double() / clipped.shape[1]).reshape(*x.shape[:-2], MAX_COUNT + 1)


def posterior_predictive_check(
    module,
    counts: sp.csr_matrix | BackedCounts,
    batches: np.ndarray | None,
    n_samples: int = 20,
    max_cells: int = 2000,
    seed: int = 0,
    chunk: int = 500,
) -> PosteriorPredictiveCheck:
    """Replicate the counts of up to ``max_cells`` random cells ``n_samples`` times and compare.

    Parameters
    ----------
    module
        A trained :class:`~pyro_scvae.model.HierarchicalVAE`.
    counts, batches
        The cells (raw counts ``[cells, G]``, batch codes ``[cells]`` or None).
    n_samples
        Replicated data sets (posterior draws).
    max_cells
        Cells drawn at random for the check (all when fewer): the statistics per gene are
        over these cells.
    seed
        Chooses the cells and seeds the draws; torch's global random state is restored.
    chunk
        Cells replicated at a time (memory: ``n_samples × chunk × G`` counts).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_total = counts.shape[0]
    cells = np.sort(rng.choice(n_total, min(max_cells, n_total), replace=False))
    subset = take_rows(counts, cells)
    observed = np.asarray(subset[0 : len(cells)].toarray(), np.float32)
    observed_x = torch.from_numpy(observed)  # [cells, G]
    device = next(module.parameters()).device
    module.eval()
    replicated = []  # [S, chunk, G] pieces, on the CPU
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for begin in range(0, len(cells), chunk):
            x = observed_x[begin : begin + chunk].to(device)  # [chunk, G]
            b = None
            if batches is not None:
                b = torch.from_numpy(batches[cells[begin : begin + chunk]]).to(device)
            replicated.append(replicate_counts(module, x, b, n_samples).cpu())
    replicated_x = torch.cat(replicated, dim=1)  # [S, cells, G]

    def compare(statistics) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        observed, rep = statistics(observed_x.double()), statistics(replicated_x.double())
        return {name: (observed[name].numpy(), rep[name].numpy()) for name in observed}

    check = PosteriorPredictiveCheck(
        genes=compare(gene_statistics),
        cells=compare(cell_statistics),
        count_frequencies=(
            count_frequencies(observed_x).numpy(),
            count_frequencies(replicated_x).numpy(),
        ),
        n_cells=len(cells),
        n_genes=counts.shape[1],
        n_samples=n_samples,
    )
    check.seconds = time.perf_counter() - start
    check.summary = summarise(check)
    return check


def compare_statistic(observed: np.ndarray, replicated: np.ndarray) -> dict:
    """Coverage of the replicated 95 % intervals, Spearman correlation and ratio of averages.

    ``observed [units]``, ``replicated [n_samples, units]``; units where any value is NaN
    (a CV of a gene without counts) are left out.
    """
    keep = np.isfinite(observed) & np.isfinite(replicated).all(0)
    observed, replicated = observed[keep], replicated[:, keep]
    low, high = np.quantile(replicated, [0.025, 0.975], axis=0)  # [units] each
    expected = replicated.mean(0)  # [units]
    same = np.ptp(observed) == 0 or np.ptp(expected) == 0
    return {
        "coverage": float(np.mean((observed >= low) & (observed <= high))),
        "spearman": float("nan") if same else float(spearmanr(observed, expected)[0]),
        "ratio": float(observed.mean() / expected.mean()),
        "n": int(keep.sum()),
    }


def summarise(check: PosteriorPredictiveCheck) -> dict:
    """The numbers for metrics.json's ``"ppc"``: one entry per statistic (see the module)."""
    observed, replicated = check.count_frequencies
    return {
        "n_cells": check.n_cells,
        "n_samples": check.n_samples,
        "seconds": check.seconds,
        "genes": {k: compare_statistic(*v) for k, v in check.genes.items()},
        "cells": {k: compare_statistic(*v) for k, v in check.cells.items()},
        "count_frequencies": {
            "observed": observed.round(6).tolist(),
            "replicated": replicated.mean(0).round(6).tolist(),
        },
    }


#: Statistics drawn on log axes (they span orders of magnitude).
LOG_SCALE = {"mean", "variance", "cv", "library_size"}
TITLES = {
    ("genes", "zero_fraction"): "gene: fraction of zeros",
    ("genes", "mean"): "gene: mean",
    ("genes", "variance"): "gene: variance",
    ("genes", "cv"): "gene: coefficient of variation",
    ("cells", "library_size"): "cell: library size",
    ("cells", "zero_fraction"): "cell: fraction of zeros",
}


def log_scale(ax: plt.Axes, *axes: str) -> None:
    """Log scale on the named axes ("x", "y"); call it after plotting.

    An axis spanning two decades or more keeps its ticks at the powers of ten only:
    matplotlib's default minor ticks (2–9 × each power) are hundreds of tick artists on
    panels spanning several decades, laid out on every draw, and without them
    :func:`plot_ppc` draws about twice as fast (``benchmarks/ppc_figure_ab.py``). A
    narrower axis, with one power of ten or none, keeps its few minor ticks as marks, and
    every axis is labelled at the powers of ten only.
    """
    for name in axes:
        getattr(ax, f"set_{name}scale")("log")
        axis = getattr(ax, f"{name}axis")
        axis.set_minor_formatter(NullFormatter())
        low, high = getattr(ax, f"get_{name}lim")()
        if low > 0 and high >= 100 * low:
            axis.set_minor_locator(NullLocator())


def plot_ppc(check: PosteriorPredictiveCheck, path: str | Path | None = None) -> plt.Figure:
    """Observed (x) against replicated (y) statistics, one panel per statistic.

    Points are the mean over the replicated data sets, vertical bars their 95 % interval
    (for up to 300 random genes or cells); the diagonal is perfect agreement. The last
    panels are the mean–variance relation of the genes and the frequencies of the counts.
    """
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.6))
    panels = [("genes", name) for name in GENE_STATISTICS] + [
        ("cells", name) for name in CELL_STATISTICS
    ]
    rng = np.random.default_rng(0)
    for ax, (level, name) in zip(axes.flat, panels, strict=False):
        observed, replicated = getattr(check, level)[name]
        keep = np.isfinite(observed) & np.isfinite(replicated).all(0)
        if name in LOG_SCALE:
            keep &= (observed > 0) & (replicated > 0).all(0)
        observed, replicated = observed[keep], replicated[:, keep]
        expected = replicated.mean(0)
        low, high = np.quantile(replicated, [0.025, 0.975], axis=0)
        bars = rng.permutation(len(observed))[:300]
        ax.vlines(observed[bars], low[bars], high[bars], color="tab:blue", alpha=0.3, lw=0.8)
        ax.scatter(observed, expected, s=4, color="tab:blue", alpha=0.6, lw=0)
        if len(observed):
            lo = min(observed.min(), low.min())
            hi = max(observed.max(), high.max())
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        if name in LOG_SCALE:
            log_scale(ax, "x", "y")
        stats = check.summary.get(level, {}).get(name)
        subtitle = f"\nin 95% interval: {stats['coverage']:.0%}" if stats else ""
        ax.set_title(TITLES[level, name] + subtitle, fontsize=10)
        ax.set_xlabel("observed")
        ax.set_ylabel("replicated")

    ax = axes.flat[6]  # mean–variance relation of the genes
    (obs_mean, rep_mean), (obs_var, rep_var) = check.genes["mean"], check.genes["variance"]
    ax.scatter(obs_mean, obs_var, s=4, color="black", lw=0, label="observed")
    ax.scatter(
        rep_mean[0], rep_var[0], s=4, color="tab:orange", lw=0, alpha=0.6, label="replicated"
    )
    grid = np.geomspace(max(obs_mean[obs_mean > 0].min(), 1e-4), obs_mean.max(), 50)
    ax.plot(grid, grid, color="grey", lw=0.8, ls="--", label="Poisson (var = mean)")
    log_scale(ax, "x", "y")
    ax.set_title("gene: mean–variance relation", fontsize=10)
    ax.set_xlabel("mean")
    ax.set_ylabel("variance")
    ax.legend(fontsize=8, frameon=False)

    ax = axes.flat[7]  # how often each count occurs
    observed, replicated = check.count_frequencies
    values = np.arange(MAX_COUNT + 1)
    low, high = np.quantile(replicated, [0.025, 0.975], axis=0)
    ax.fill_between(values, low, high, color="tab:orange", alpha=0.4, step="mid")
    ax.step(values, replicated.mean(0), where="mid", color="tab:orange", label="replicated")
    ax.plot(values, observed, "o", color="black", ms=3, label="observed")
    log_scale(ax, "y")
    ax.set_xticks(values, [*map(str, values[:-1]), f"≥{MAX_COUNT}"])
    ax.set_title("fraction of entries equal to each count", fontsize=10)
    ax.set_xlabel("count")
    ax.legend(fontsize=8, frameon=False)

    fig.suptitle(
        f"Posterior predictive check: {check.n_cells} cells, {check.n_samples} replicated data sets"
    )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
