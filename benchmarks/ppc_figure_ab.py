"""Time ``plot_ppc`` of an earlier commit against the working tree's, alternating.

Both draw the same posterior predictive check (of a saved model on the embedded data) in
one process, so the ratio holds on a busy machine. Prints CPU seconds per figure::

    python -m pyro_scvae.fit --out /tmp/demo
    OMP_NUM_THREADS=1 python benchmarks/ppc_figure_ab.py \
        --model /tmp/demo/model --reference b7a0174~1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_scvae.criticism as current  # noqa: E402
from benchmarks.zinb_ab import module_at  # noqa: E402
from pyro_scvae import PyroSCVAE  # noqa: E402
from pyro_scvae.data import load_pbmc68k_counts  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model saved by pyro_scvae.fit")
    parser.add_argument("--reference", required=True, help="the commit to compare with")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    model = PyroSCVAE.load(args.model, device="cpu")
    check = model.posterior_predictive_check(load_pbmc68k_counts())
    before = module_at(args.reference, "pyro_scvae/criticism.py")
    versions = {args.reference: before, "working tree": current}
    seconds: dict[str, list[float]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(args.reps + 1):  # the first round warms up and is not counted
            for name, module in versions.items():
                start = time.process_time()
                module.plot_ppc(check, Path(folder) / "ppc.png")
                if rep:
                    seconds[name].append(time.process_time() - start)
    print("| version | CPU s per figure |\n|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
