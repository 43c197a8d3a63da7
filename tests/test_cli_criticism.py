"""The command lines' model checks: --ppc, --markers and --majority-voting."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest

from pyro_scvae import fit, predict
from pyro_scvae.simulate import simulate_counts

FAST = ["--epochs", "4", "--batch-size", "64", "--n-hidden", "16", "--n-latent", "4", "--quiet"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    adata = simulate_counts(
        n_cells=300, n_genes=60, n_classes=3, labelled_fraction=0.6, n_batches=2, seed=3
    )
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_fit_writes_ppc_markers_and_votes(h5ad, tmp_path):
    out = tmp_path / "out"
    args = ["--adata", str(h5ad), "--labels-key", "label", "--batch-key", "batch", "--out"]
    assert fit.main([*args, str(out), "--majority-voting", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ppc = metrics["ppc"]
    assert ppc["n_cells"] == 300
    assert set(ppc["genes"]) == {"zero_fraction", "mean", "variance", "cv"}
    assert set(ppc["cells"]) == {"library_size", "zero_fraction"}
    assert all(0 <= v["coverage"] <= 1 for v in ppc["genes"].values())
    markers = pd.read_csv(out / "markers.csv")
    assert len(markers) == 60 * markers["type"].nunique()
    assert {"type", "gene", "rank", "lfc_mean", "lfc_median", "proba_de", "bayes_factor"} <= set(
        markers
    )
    for png in ("ppc.png", "markers.png"):
        assert (out / png).stat().st_size > 10_000
    table = pd.read_csv(out / "predictions.csv", index_col="cell")
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    assert list(table.columns[:3]) == ["predicted", "majority_voting", "confidence"]
    voted = annotated.obs["pyro_scvae_majority_voting"].astype(str)
    assert (table["majority_voting"] == voted.loc[table.index]).all()
    clusters = annotated.obs["pyro_scvae_over_clustering"].astype(str)
    assert (voted.groupby(clusters).nunique() == 1).all()

    bare = tmp_path / "bare"
    assert fit.main([*args, str(bare), "--no-ppc", "--no-markers", *FAST]) == 0
    assert "ppc" not in json.loads((bare / "metrics.json").read_text())
    assert not (bare / "ppc.png").exists() and not (bare / "markers.csv").exists()
    assert "majority_voting" not in pd.read_csv(bare / "predictions.csv").columns

    status = predict.main(
        [
            "--model",
            str(out / "model"),
            "--adata",
            str(h5ad),
            "--out",
            str(tmp_path / "p"),
            "--majority-voting",
            "--markers",
            "--quiet",
        ]
    )
    assert status == 0
    assert "majority_voting" in pd.read_csv(tmp_path / "p" / "predictions.csv").columns
    assert len(pd.read_csv(tmp_path / "p" / "markers.csv")) == len(markers)
