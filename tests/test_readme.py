"""The code in README.md and in the quick start of the docs runs as written.

The ```python blocks of a document are run in order, as one script, in a fresh
interpreter in an empty folder: what a reader gets who pastes them. The ```bash lines
that are commands of this package (``python -m pyro_scvae.fit`` / ``.predict``) are run
too, where that is cheap: in a folder holding the example inputs the documents name
(``cells.h5ad`` with ``obs["cell_type"]`` and ``obs["donor"]``, ``new_cells.h5ad``), with
``--epochs 2`` added to ``fit``. A command that reads a file not there (``atlas.h5ad``)
or asks for several processes (``--devices``, ``--num-nodes``) is left out.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/quickstart.md"]
READS = ("--adata", "--query", "--model")  # options whose value must exist beforehand


def code_blocks(markdown: str, language: str) -> list[str]:
    """The contents of the fenced blocks of ``language``, in order (CommonMark's parsing)."""
    return [
        token.content
        for token in MarkdownIt("commonmark").parse(markdown)
        if token.type == "fence" and token.info.split()[:1] == [language]
    ]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: continuations joined, comments cut."""
    joined = block.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def package_command(words: list[str]) -> str | None:
    """``fit`` or ``predict`` for ``python -m pyro_scvae.fit|predict ...``, else None."""
    if words[:2] == ["python", "-m"] and len(words) > 2:
        module = words[2]
        if module in ("pyro_scvae.fit", "pyro_scvae.predict"):
            return module.rsplit(".", 1)[1]
    return None


def test_code_blocks_and_commands_are_read_as_a_reader_would():
    markdown = (
        "Intro\n\n```python\nx = 1\n```\n\n```bash\n"
        "python -m pyro_scvae.fit --adata a.h5ad \\\n  --out b/   # train\n"
        "make demo\n```\n\n    indented = 'not a fence'\n\n```python\nprint(x)\n```\n"
    )
    assert code_blocks(markdown, "python") == ["x = 1\n", "print(x)\n"]
    (bash,) = code_blocks(markdown, "bash")
    commands = shell_commands(bash)
    assert commands == [
        ["python", "-m", "pyro_scvae.fit", "--adata", "a.h5ad", "--out", "b/"],
        ["make", "demo"],
    ]
    assert [package_command(c) for c in commands] == ["fit", None]


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run_as_written(document, tmp_path):
    blocks = code_blocks((REPO / document).read_text(), "python")
    assert blocks, f"{document} has no python block"
    script = tmp_path / "blocks.py"
    script.write_text("\n\n".join(blocks))
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=1200,
    )
    error = run.stderr[run.stderr.rfind("Traceback") :]  # without the progress bars before it
    assert run.returncode == 0, f"{document}'s python blocks failed:\n{error[-3000:]}"


@pytest.fixture(scope="module")
def example_inputs(tmp_path_factory) -> Path:
    """``cells.h5ad`` (a third unlabelled, two donors) and ``new_cells.h5ad``, as the docs say."""
    from pyro_scvae import load_pbmc68k_counts

    folder = tmp_path_factory.mktemp("inputs")
    adata = load_pbmc68k_counts()
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "donor 1", "donor 2")
    cells = adata[:500].copy()
    labels = cells.obs["bulk_labels"].astype(object)
    labels.iloc[::3] = None  # the cells to annotate
    cells.obs["cell_type"] = labels
    cells.write_h5ad(folder / "cells.h5ad")
    adata[500:].copy().write_h5ad(folder / "new_cells.h5ad")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_package_commands_run(document, example_inputs, tmp_path, monkeypatch, capsys):
    from pyro_scvae import fit, predict

    for name in ("cells.h5ad", "new_cells.h5ad"):
        (tmp_path / name).symlink_to(example_inputs / name)
    monkeypatch.chdir(tmp_path)
    commands = [
        words
        for block in code_blocks((REPO / document).read_text(), "bash")
        for words in shell_commands(block)
        if package_command(words)
    ]
    ran = []
    for words in commands:
        options = words[3:]
        reads = [options[i + 1] for i, w in enumerate(options[:-1]) if w in READS]
        if not all(Path(p).exists() for p in reads) or {"--devices", "--num-nodes"} & set(words):
            continue  # not cheap here: data we do not have, or several processes
        command = package_command(words)
        if command == "fit" and "--epochs" not in options:
            options = [*options, "--epochs", "2"]
        main = fit.main if command == "fit" else predict.main
        status = main(options)
        assert status == 0, f"{shlex.join(words)} failed:\n{capsys.readouterr().err[-3000:]}"
        ran.append(command)
    assert "fit" in ran and "predict" in ran, (document, commands)
