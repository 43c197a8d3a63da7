"""Shared fixtures: small simulated data, the shared real data folder, float64 helpers."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest

from pyro_scvae.simulate import simulate_counts

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_param_store():
    """Each test starts with an empty global Pyro parameter store."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def simulated():
    """400 cells, 60 genes, 3 types, half of them labelled, 2 batches."""
    return simulate_counts(
        n_cells=400, n_genes=60, n_classes=3, labelled_fraction=0.5, n_batches=2, seed=1
    )


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test where that folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder is not beside the repository)")
    return path
