"""Plots of a fit and an annotation: ELBO, confusion, UMAP, risk–coverage.

The plots are made to be read at a glance: :func:`plot_umap` draws one panel per view
of the cells (call, batch, confidence, given label) with the names of the types written
on the map, in scanpy's palettes (:func:`category_palette`: no two colours alike, cells
without a call or label in light grey); :func:`plot_confusion` gives each true type's
number of cells in its row label and scales with the number of types. The metrics behind
them are in :mod:`pyro_scvae.evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.lines import Line2D
from mpl_toolkits.axes_grid1 import make_axes_locatable
from sklearn.metrics import confusion_matrix

from pyro_scvae.evaluation import risk_coverage


def plot_elbo(
    elbo: Sequence[float], path: str | Path | None = None, warmup_epochs: float = 0.0
) -> plt.Figure:
    """The training curve: ELBO per cell against epoch.

    During the first ``warmup_epochs`` (KL warm-up) the curve is the objective with the
    KL terms of y, z₂ and l weighted by β < 1, not yet the ELBO; that span is shaded.
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if warmup_epochs > 0:
        ax.axvspan(0.5, warmup_epochs + 0.5, color="0.9", label="KL warm-up (β < 1)")
    ax.plot(np.arange(1, len(elbo) + 1), elbo, label="training ELBO")
    ax.set(xlabel="epoch", ylabel="ELBO per cell (nats)", title="Training objective")
    if len(elbo) > 5:  # the first epochs dwarf the rest; show the part worth reading
        low, high = np.percentile(elbo[len(elbo) // 10 :], [0, 100])
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1))
    ax.legend()
    return _finish(fig, path)


#: Colour of cells without a call or without a label ("Unassigned", "unlabelled").
GREY = "#d3d3d3"
#: Names drawn in :data:`GREY` and never given a palette colour.
UNCOLOURED = frozenset({"Unassigned", "unlabelled"})
#: Colours of scanpy's ``default_102`` left out of :func:`category_palette`: its greys
#: (chroma below 8 in CIELAB) and the pale colours within ΔE 15 of :data:`GREY`.
NOT_FOR_CATEGORIES = frozenset(
    {
        "#61615A",
        "#C0B9B2",
        "#34362D",
        "#938A81",
        "#404E55",
        "#FFDBE5",
        "#DDEFFF",
        "#A3C8C9",
        "#FDE8DC",
    }
)


def category_palette(n: int) -> list[str]:
    """``n`` colours for categories, no two of them near-identical, none of them grey.

    scanpy's palettes: ``default_20`` for up to 20 categories, else ``default_102`` without
    its greys and the pale colours closest to the grey of unassigned cells
    (:data:`NOT_FOR_CATEGORIES`), 93 colours whose first ones differ most. Beyond 93
    categories the colours repeat in the same order, so that neighbours in a legend still
    differ (the names written on the map tell repeated colours apart).
    """
    from scanpy.plotting import palettes  # scanpy's palettes, chosen for distinctness

    if n <= len(palettes.default_20):
        return list(palettes.default_20[:n])
    colours = [c for c in palettes.default_102 if c.upper() not in NOT_FOR_CATEGORIES]
    return [colours[i % len(colours)] for i in range(n)]


def category_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per distinct name (sorted), with :data:`UNCOLOURED` names in grey."""
    coloured = sorted({str(n) for n in names} - UNCOLOURED)
    colours = dict(zip(coloured, category_palette(len(coloured))))
    return colours | {name: GREY for name in UNCOLOURED}


def plot_confusion(
    truth: Sequence[str], predicted: Sequence[str], path: str | Path | None = None, title: str = ""
) -> plt.Figure:
    """Confusion matrix: the percentage of each true type's cells given each call.

    Rows are the true types, labelled with their number of cells ("CD4 T (n=373)");
    columns are the same types in the same order, then calls that are no true type (such
    as "Unassigned"). Cells, fonts and the figure scale with the number of types, so that
    20–50 types stay readable. Drawn with ``imshow`` rather than scikit-learn's
    ``ConfusionMatrixDisplay``, which draws square matrices only.
    """
    truth = np.asarray(truth, dtype=object).astype(str)
    predicted = np.asarray(predicted, dtype=object).astype(str)
    rows = sorted(set(truth))
    columns = rows + sorted(set(predicted) - set(rows))
    counts = confusion_matrix(truth, predicted, labels=columns)[: len(rows)]  # [rows, columns]
    cells = counts.sum(axis=1)  # [rows]
    percent = 100 * counts / cells[:, None]  # [rows, columns]

    inches = float(np.clip(8.0 / max(len(columns), 1), 0.3, 0.55))  # per matrix cell
    font = float(np.clip(inches * 20, 6.0, 9.0))  # points: "100" fits a cell at 6 pt
    fig, ax = plt.subplots(
        figsize=(inches * len(columns) + 2.5 + 0.07 * _longest(rows), inches * len(rows) + 2.5)
    )
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i, j in zip(*np.nonzero(counts)):
        value = percent[i, j]
        text = f"{value:.0f}" if value >= 0.5 else "<1"
        colour = "white" if value > 60 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=font, color=colour)
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=font + 1)
    ax.set_yticks(
        range(len(rows)), [f"{r} (n={n})" for r, n in zip(rows, cells)], fontsize=font + 1
    )
    ax.set_xlabel("predicted type")
    ax.set_ylabel("true type")
    ax.set_title(title or "Confusion matrix", fontsize=10)
    bar_axes = make_axes_locatable(ax).append_axes("right", size=0.2, pad=0.15)  # inches
    colourbar = fig.colorbar(image, cax=bar_axes)  # as tall as the matrix
    colourbar.set_label("% of the true type's cells")
    return _finish(fig, path)


def plot_embedding(
    coordinates: np.ndarray,
    colour_by: Sequence[str],
    path: str | Path | None = None,
    title: str = "UMAP of the latent z₁",
    names_on_map: bool = True,
) -> plt.Figure:
    """A 2-D embedding of the cells coloured by a categorical annotation (one panel).

    Parameters
    ----------
    coordinates
        ``[cells, 2]``, e.g. from :func:`umap_coordinates`.
    colour_by
        One name per cell; "Unassigned" and "unlabelled" cells are drawn in light grey,
        beneath the others; the legend gives each name's number of cells.
    names_on_map
        Write each group's name at the median position of its cells.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    names = np.asarray(colour_by, dtype=object).astype(str)
    category_panel(ax, coordinates, names, category_colours(names), title, names_on_map)
    return _finish(fig, path)


def category_panel(
    ax: plt.Axes,
    coordinates: np.ndarray,
    names: np.ndarray,
    colours: dict[str, str],
    title: str,
    names_on_map: bool = True,
) -> None:
    """Draw cells coloured by ``names`` (``[cells]``) into ``ax``, with a legend of counts."""
    # Grey cells first, the rest in a random order, so that no type hides another wholesale.
    order = np.random.default_rng(0).permutation(len(names))
    order = order[np.argsort(~np.isin(names[order], list(UNCOLOURED)), kind="stable")]
    grey = np.isin(names[order], list(UNCOLOURED))  # [cells], True first
    size = _point_size(len(names))
    ax.scatter(
        *coordinates[order].T,
        s=np.where(grey, size / 2, size),  # grey cells smaller, so that they recede
        c=[colours[n] for n in names[order]],
        linewidths=0,
        rasterized=True,
    )
    groups, counts = np.unique(names, return_counts=True)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[g], label=f"{g} ({c})")
        for g, c in zip(groups, counts)
    ]
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1, 0.5),
        frameon=False,
        ncol=1 if len(groups) <= 25 else 2 if len(groups) <= 60 else 3,
        handletextpad=0.1,
        columnspacing=0.6,
    )
    if names_on_map:
        size = 9 if len(groups) <= 15 else 7 if len(groups) <= 40 else 5
        outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
        left, right = coordinates[:, 0].min(), coordinates[:, 0].max()
        for group in sorted(set(groups) - UNCOLOURED):
            x, y = np.median(coordinates[names == group], axis=0)
            where = (x - left) / (right - left + 1e-12)  # names near an edge grow inwards
            align = "left" if where < 0.2 else "right" if where > 0.8 else "center"
            ax.text(x, y, group, fontsize=size, weight="bold", ha=align, va="center",
                    path_effects=outline)  # fmt: skip
    _embedding_axes(ax, title)


def confidence_panel(ax: plt.Axes, coordinates: np.ndarray, confidence: np.ndarray) -> None:
    """Draw cells coloured by their confidence (largest class probability), with a colour bar.

    The least confident cells are drawn last, on top, where they can be seen.
    """
    order = np.argsort(-confidence, kind="stable")
    points = ax.scatter(
        *coordinates[order].T,
        s=_point_size(len(order)),
        c=confidence[order],
        cmap="viridis",
        vmin=0,
        vmax=1,
        linewidths=0,
        rasterized=True,
    )
    colourbar = ax.figure.colorbar(points, ax=ax, fraction=0.05, pad=0.02)
    colourbar.set_label("largest class probability")
    _embedding_axes(ax, "confidence of the call")


def plot_umap(
    coordinates: np.ndarray,
    predicted: Sequence[str],
    confidence: np.ndarray | None = None,
    batch: Sequence[str] | None = None,
    labels: Sequence[str | None] | None = None,
    unlabeled_category: str | None = None,
    path: str | Path | None = None,
    title: str = "UMAP of the latent z₁",
) -> plt.Figure:
    """One figure of UMAP panels: by call, by batch, by confidence and by the given label.

    Parameters
    ----------
    coordinates
        ``[cells, 2]``.
    predicted
        The call of each cell (names written on the map; "Unassigned" in grey).
    confidence
        Each cell's largest class probability: a panel with a continuous colour map.
    batch
        Each cell's batch: a panel where there is a batch covariate.
    labels
        Each cell's given label, missing (None, NaN) or ``unlabeled_category`` where the
        cell has none: a panel with the labelled cells coloured, the others grey. A type
        has the same colour here as in the panel of calls.
    """
    predicted = np.asarray(predicted, dtype=object).astype(str)
    panels: list[tuple[str, np.ndarray]] = [("predicted type", predicted)]
    if batch is not None:
        panels.append(("batch", np.asarray(batch, dtype=object).astype(str)))
    if confidence is not None:
        panels.append(("confidence", np.asarray(confidence, dtype=float)))
    typed = [predicted]  # the panels of cell types, which share one colour per type
    if labels is not None:
        given = pd.Series(np.asarray(labels, dtype=object))
        unlabelled = given.isna().to_numpy()
        if unlabeled_category is not None:
            unlabelled |= (given == unlabeled_category).to_numpy()
        typed.append(np.where(unlabelled, "unlabelled", given.astype(str).to_numpy()))
        panels.append(("given label", typed[-1]))
    colours = category_colours(np.concatenate(typed))

    n_columns = 2 if len(panels) == 4 else len(panels)  # 2 × 2, or one row
    n_rows = -(-len(panels) // n_columns)
    fig, axes = plt.subplots(
        n_rows, n_columns, figsize=(7.5 * n_columns, 5.5 * n_rows), squeeze=False
    )
    for ax, (name, values) in zip(axes.flat, panels):
        if name == "confidence":
            confidence_panel(ax, coordinates, values)
        elif name == "batch":
            category_panel(ax, coordinates, values, category_colours(values), name, False)
        else:
            category_panel(ax, coordinates, values, colours, name)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    fig.suptitle(f"{title} ({len(predicted):,} cells)")
    return _finish(fig, path)


def umap_coordinates(latent: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP (scanpy's) of a latent, on :func:`~pyro_scvae.neighbours.latent_neighbours`."""
    import scanpy as sc

    from pyro_scvae.neighbours import latent_neighbours

    holder = latent_neighbours(latent, n_neighbors=15, seed=seed)
    sc.tl.umap(holder, random_state=seed)
    return holder.obsm["X_umap"]


def _point_size(n_cells: int) -> float:
    """Marker area (pt²) that keeps a few hundred cells visible and 50,000 from merging."""
    return float(np.clip(30_000 / max(n_cells, 1), 0.5, 30.0))


def _longest(names: Sequence[str]) -> int:
    return max((len(str(n)) for n in names), default=0)


def _embedding_axes(ax: plt.Axes, title: str) -> None:
    ax.set(xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
    ax.set_title(title)


def _finish(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def plot_risk_coverage(
    truth: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    path: str | Path | None = None,
) -> plt.Figure:
    """How accurate the calls that are kept are, for every ``--min-confidence`` threshold.

    The x axis is the fraction of cells a threshold leaves ``Unassigned``; marked points
    give the thresholds 0.5, 0.7 and 0.9.
    """
    unassigned, accuracy, threshold = risk_coverage(truth, probabilities, classes)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(unassigned, accuracy, color="C0")
    for value, marker in ((0.5, "o"), (0.7, "s"), (0.9, "^")):
        below = threshold < value
        index = int(below.sum()) if below.any() else 0
        index = min(index, len(accuracy) - 1)
        ax.plot(unassigned[index], accuracy[index], marker, color="C1", label=f"≥ {value}")
    ax.set(
        xlabel="fraction of cells left Unassigned",
        ylabel="accuracy of the calls kept",
        title=f"Risk–coverage on held-out labelled cells (n={len(accuracy)})",
        xlim=(-0.02, 1.0),
    )
    ax.legend(title="min. confidence", fontsize=8)
    return _finish(fig, path)
