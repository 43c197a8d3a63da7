"""The notebooks in ``notebooks/`` run top to bottom and show what they claim.

Each notebook is executed in memory with ``PYRO_SCVAE_NOTEBOOK_QUICK=1`` in the kernel's
environment, which switches it to tiny settings (a few epochs); the committed files, which
hold the outputs of a full run, are never written. A notebook that raises, including one of
its own ``assert`` statements, fails its test.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SHARED_DATA = REPO.parent / "shared" / "data"  # what the notebooks reach as ../../shared/data

#: Notebook → (data file it needs in SHARED_DATA or None, least number of figures it draws).
EXPECTED = {
    "01_quickstart.ipynb": (None, 7),
    "02_elbo.ipynb": (None, 3),
    "03_label_transfer.ipynb": ("symphony_pbmc_3chem.h5ad", 6),
    "04_reference_mapping.ipynb": ("symphony_pbmc_3chem.h5ad", 4),
    "05_model_checks.ipynb": (None, 3),
}


def execute(nb: nbformat.NotebookNode, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run ``nb`` in place (in memory) on a fresh ``python3`` kernel in quick mode."""
    monkeypatch.setenv("PYRO_SCVAE_NOTEBOOK_QUICK", "1")  # inherited by the kernel
    # The quick models are tiny: one thread each avoids oversubscribing a shared machine's
    # cores, which makes them several times slower (unless the caller chose otherwise).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def text_outputs(nb: nbformat.NotebookNode) -> str:
    """Everything the code cells printed or displayed as text."""
    pieces = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                pieces.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                pieces.append(output["data"]["text/plain"])
    return "\n".join(pieces)


def count_images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        for output in cell.get("outputs", [])
    )


def test_python3_kernel_is_this_environment(monkeypatch):
    """``kernel_name="python3"`` starts the interpreter of the environment running the tests."""
    cell = nbformat.v4.new_code_cell("import sys; print(sys.prefix)")
    nb = nbformat.v4.new_notebook(cells=[cell])
    execute(nb, monkeypatch)
    assert nb.cells[0].outputs[0]["text"].strip() == sys.prefix


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_quick_mode(name, monkeypatch):
    data_file, n_figures = EXPECTED[name]
    if data_file is not None and not (SHARED_DATA / data_file).exists():
        pytest.skip(f"{SHARED_DATA / data_file} is absent (no shared data folder beside the repo)")
    path = NOTEBOOKS / name
    committed = path.read_bytes()
    nb = execute(nbformat.read(path, as_version=4), monkeypatch)
    assert path.read_bytes() == committed, "executing the notebook must not rewrite it"

    text = text_outputs(nb)
    assert "quick mode: True" in text  # the environment variable reached the kernel
    assert count_images(nb) >= n_figures

    if name == "01_quickstart.ipynb":
        assert "before saving and after loading: 0.0e+00" in text
    if name == "02_elbo.ipynb":
        # The notebook asserts the agreement itself; check the printed numbers too.
        relative = [float(v) for v in re.findall(r"relative difference: ([-+.e\d]+)", text)]
        assert len(relative) == 2, text
        assert max(relative) < 1e-5
    if name == "05_model_checks.ipynb":
        assert "macro-F1" in text and "clusters; the vote changed" in text
    if name == "03_label_transfer.ipynb":
        for method in ("pyro_scvae", "scANVI", "logistic regression"):
            assert method in text
    if name == "04_reference_mapping.ipynb":
        assert "they are encoded and decoded with the average" in text  # the unseen batch
        assert "fine-tuned: 2 epochs" in text and "'3pv1']" in text  # mapped, saved, loaded
        assert "flagged novel:" in text
