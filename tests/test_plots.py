"""The plots read at a glance: panels, legends, names on the map, palette, confusion counts."""

from __future__ import annotations

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest

from pyro_scvae.plots import (
    GREY,
    category_colours,
    category_palette,
    plot_confusion,
    plot_embedding,
    plot_umap,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def cielab(colours) -> np.ndarray:
    """sRGB colours → CIELAB (D65), the space where ΔE (Euclidean) measures how alike they look."""
    rgb = np.array([mcolors.to_rgb(c) for c in colours])  # [n, 3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def delta_e(a, b) -> np.ndarray:
    return np.sqrt(((cielab(a)[:, None] - cielab(b)[None]) ** 2).sum(-1))  # [len(a), len(b)]


@pytest.mark.parametrize("n", [3, 10, 20, 21, 28, 50, 93])
def test_palette_colours_are_pairwise_distinct_and_not_grey(n):
    colours = category_palette(n)
    assert len(colours) == n
    distances = delta_e(colours, colours) + np.diag(np.full(n, np.inf))
    # ΔE ≈ 2.3 is a just-noticeable difference; 10 is plainly another colour.
    assert distances.min() >= 10, distances.min()
    assert delta_e(colours, [GREY]).min() >= 14  # none mistaken for an unassigned cell


def test_palette_beyond_its_size_keeps_neighbours_distinct():
    colours = category_palette(250)
    assert len(colours) == 250
    neighbours = [delta_e([a], [b])[0, 0] for a, b in zip(colours, colours[1:])]
    assert min(neighbours) >= 10


def test_category_colours_grey_for_unassigned_and_unlabelled():
    colours = category_colours(["B", "A", "Unassigned", "B", "unlabelled"])
    assert colours["Unassigned"] == colours["unlabelled"] == GREY
    assert colours["A"] != colours["B"] and GREY not in (colours["A"], colours["B"])
    assert [colours["A"], colours["B"]] == category_palette(2)  # in sorted order


def two_clusters(n: int = 200):
    rng = np.random.default_rng(0)
    truth = np.array(["T cell"] * (n // 2) + ["B cell"] * (n - n // 2), dtype=object)
    xy = rng.normal(size=(n, 2)) + np.where(truth == "T cell", -5.0, 5.0)[:, None]  # [n, 2]
    return xy, truth


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_umap_panels_by_call_batch_confidence_and_label():
    xy, truth = two_clusters()
    calls = truth.copy()
    calls[:7] = "Unassigned"
    confidence = np.linspace(0.2, 1.0, len(calls))
    batch = np.where(np.arange(len(calls)) % 2, "donor 1", "donor 2")
    labels = truth.copy()
    labels[::4] = None  # unlabelled: missing …
    labels[1::4] = "Unknown"  # … or the unlabelled category
    fig = plot_umap(xy, calls, confidence, batch, labels, unlabeled_category="Unknown")

    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"predicted type", "batch", "confidence of the call", "given label"}
    assert len(fig.axes) == 5  # four panels and the colour bar
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel() == "largest class probability"]
    assert bar.get_ylim() == (0.0, 1.0)

    assert legend_texts(panels["predicted type"]) == [
        "B cell (100)",
        "T cell (93)",
        "Unassigned (7)",
    ]
    assert legend_texts(panels["batch"]) == ["donor 1 (100)", "donor 2 (100)"]
    assert legend_texts(panels["given label"]) == ["B cell (50)", "T cell (50)", "unlabelled (100)"]

    # Type names on the map, at each group's median position; none for grey cells or batches.
    written = {t.get_text(): t.get_position() for t in panels["predicted type"].texts}
    assert set(written) == {"B cell", "T cell"}
    np.testing.assert_allclose(written["T cell"], np.median(xy[calls == "T cell"], axis=0))
    assert len(panels["batch"].texts) == 0

    # A type has one colour in the panels of calls and of labels; unlabelled cells are grey.
    def colours_of(ax):
        return {t: h.get_color() for t, h in zip(legend_texts(ax), ax.get_legend().legend_handles)}

    by_call, by_label = colours_of(panels["predicted type"]), colours_of(panels["given label"])
    assert by_call["T cell (93)"] == by_label["T cell (50)"] != by_call["B cell (100)"]
    assert by_call["Unassigned (7)"] == by_label["unlabelled (100)"] == GREY
    points = panels["given label"].collections[0]
    n_grey = np.all(np.isclose(points.get_facecolors(), mcolors.to_rgba(GREY)), axis=1).sum()
    assert n_grey == 100


def test_umap_without_batch_or_labels_has_two_panels():
    xy, truth = two_clusters()
    fig = plot_umap(xy, truth, confidence=np.ones(len(truth)))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["predicted type", "confidence of the call"]


def test_umap_is_written(tmp_path):
    xy, truth = two_clusters()
    plot_umap(xy, truth, path=tmp_path / "umap.png")
    assert plt.imread(tmp_path / "umap.png").shape[1] > 500


def test_single_embedding_keeps_its_signature():
    xy, truth = two_clusters()
    fig = plot_embedding(xy, truth, title="by type")
    (ax,) = fig.axes
    assert ax.get_title() == "by type"
    assert legend_texts(ax) == ["B cell (100)", "T cell (100)"]


def test_confusion_rows_give_cell_counts_and_percentages():
    truth = ["CD4 T"] * 4 + ["B"] * 2
    predicted = ["CD4 T", "CD4 T", "CD4 T", "Unassigned", "B", "CD4 T"]
    fig = plot_confusion(truth, predicted)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B (n=2)", "CD4 T (n=4)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["B", "CD4 T", "Unassigned"]
    values = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    # row B: 1 of 2 called B, 1 CD4 T; row CD4 T: 3 of 4 CD4 T, 1 Unassigned; no text at zeros
    assert values == {(0, 0): "50", (0, 1): "50", (1, 1): "75", (1, 2): "25"}
    assert fig.axes[1].get_ylabel() == "% of the true type's cells"  # the colour bar


def test_confusion_scales_to_many_types():
    rng = np.random.default_rng(0)
    names = [f"type {i}" for i in range(45)]
    truth = rng.choice(names, 3000)
    predicted = np.where(rng.random(3000) < 0.8, truth, rng.choice(names, 3000))
    small = plot_confusion(["a", "b", "c"], ["a", "b", "c"]).get_size_inches()
    fig = plot_confusion(truth, predicted)
    width, height = fig.get_size_inches()
    assert width > 45 * 0.29 and height > 45 * 0.29  # room for 45 × 46 cells
    assert min(t.get_fontsize() for t in fig.axes[0].texts) >= 6  # still legible
    ticks = fig.axes[0].get_yticklabels()
    assert len(ticks) == 45 and all(" (n=" in t.get_text() for t in ticks)
    assert width > 3 * small[0] and height > 3 * small[1]


def test_umap_of_more_cells_than_scanpy_takes_exact_neighbours_for():
    """From 4,096 cells scanpy 1.11 switches to pynndescent, whose graph it cannot read with
    scipy 1.17 once pynndescent searches approximately (between 6,000 and 8,617 cells here;
    ``fit`` failed at its last step on every such data set)."""
    from pyro_scvae.plots import umap_coordinates

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(3, 10))
    groups = np.repeat(np.arange(3), 2900)  # 8,700 cells
    latent = (centres[groups] + rng.normal(size=(8700, 10))).astype(np.float32)
    coordinates = umap_coordinates(latent, seed=0)
    assert coordinates.shape == (8700, 2) and np.isfinite(coordinates).all()
    # the three groups stay apart on the map: each cell's nearest mapped neighbour is of its group
    from sklearn.neighbors import NearestNeighbors

    _, nearest = NearestNeighbors(n_neighbors=2).fit(coordinates).kneighbors(coordinates)
    assert (groups[nearest[:, 1]] == groups).mean() > 0.99
