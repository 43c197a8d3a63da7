"""Would a final classifier phase help? q(y | z₁) retrained on the finished encoder.

Issue 22 asks how q(y | z₁) learns and is read. Here each fit is read three ways on the
same trained model (so every comparison is paired within one fit):

- ``model``: the package's calls, q(y | z₁) at the posterior mean of z₁, as trained
  jointly with the rest of the model;
- ``phase``: after training, every weight but the classifier's frozen, the classifier
  trained further on the labelled cells alone, on draws z₁ ~ q(z₁ | x) (a fresh draw each
  step), with the model's own class-balanced weights α_y (the classification term of
  MODEL.md, alone), Adam at the training learning rate, ``--phase-epochs`` passes;
- ``logreg_z1``: a class-balanced logistic regression (scikit-learn) on the posterior
  means of z₁ of the labelled cells, read at the query's posterior means.

The fit is the command line's: the 2,000 most variable genes (``select_genes``), every
default of ``PyroSCVAE`` and ``fit``, the query unlabelled. Macro-F1 and accuracy of the
query cells; the arg-max does not depend on the temperature.

    OMP_NUM_THREADS=1 python benchmarks/classifier_phase.py --tasks T4 T7 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import _split, setup_pyro_scvae, with_training_labels  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402


def labelled_arrays(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Posterior loc and scale of z₁ ``[n, d]``, labels ``[n]`` of the labelled training cells."""
    cells = model.training_cells[model.data.labels[model.training_cells] >= 0]
    module = model.module.eval()
    locs, scales = [], []
    with torch.no_grad():
        for start in range(0, len(cells), 4096):
            rows = cells[start : start + 4096]
            x = torch.from_numpy(model.data.counts[rows].toarray())
            b = None if model.data.batches is None else torch.from_numpy(model.data.batches[rows])
            loc, scale, _, _ = module.encode_x(x, module.batch_inputs(x, b))
            locs.append(loc)
            scales.append(scale)
    labels = torch.from_numpy(model.data.labels[cells])
    return torch.cat(locs), torch.cat(scales), labels, cells


def classifier_phase(model, epochs: int, lr: float, batch_size: int, seed: int) -> None:
    """Train ``model.module.classifier`` alone on draws of z₁ of the labelled cells."""
    loc, scale, labels, _ = labelled_arrays(model)
    module = model.module
    weights = module.classification_weight[labels]  # [n], α_y
    classifier = module.classifier.train()
    optimiser = torch.optim.Adam(classifier.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            z1 = loc[rows] + scale[rows] * torch.randn(loc[rows].shape, generator=generator)
            log_q = torch.log_softmax(classifier(z1), dim=-1)  # [batch, K]
            picked = log_q.gather(1, labels[rows, None])[:, 0]
            loss = -(weights[rows] * picked).sum() / weights[rows].sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()


def scores(truth: np.ndarray, calls: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, calls)),
        "macro_f1": float(f1_score(truth, calls, average="macro", labels=np.unique(truth))),
    }


def run(task_name: str, seed: int, phase_epochs: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from pyro_scvae import PyroSCVAE
    from pyro_scvae.preprocess import select_genes

    task = build_task(task_name, seed)
    data = with_training_labels(task.adata, np.nan)
    _, query = _split(data)
    truth = data.obs["label"].to_numpy()[query].astype(str)
    data = select_genes(data, 2000, None)
    setup_pyro_scvae(data)
    model = PyroSCVAE(data, seed=seed)
    model.fit(progress=False, device="cpu", threads=1)
    classes = np.array(model.classes)
    query_index = np.flatnonzero(query)
    counts = model.data.counts[query_index]
    batches = None if model.data.batches is None else model.data.batches[query_index]
    latent, logits = model._encode_chunks(counts, batches, 4096)
    record = {"task": task_name, "seed": seed, "model": scores(truth, classes[logits.argmax(1)])}
    loc, _, labels, _ = labelled_arrays(model)
    logreg = LogisticRegression(max_iter=2000, class_weight="balanced")
    logreg.fit(loc.numpy(), labels.numpy())
    record["logreg_z1"] = scores(truth, classes[logreg.predict(latent)])
    classifier_phase(model, phase_epochs, model.training_config.lr, 128, seed)
    _, logits = model._encode_chunks(counts, batches, 4096)
    record["phase"] = scores(truth, classes[logits.argmax(1)])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--phase-epochs", type=int, default=50)
    parser.add_argument("--out", type=Path, help="append records here (JSON lines)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for seed in args.seeds:
        for task_name in args.tasks:
            record = run(task_name, seed, args.phase_epochs)
            line = " | ".join(
                f"{k} {record[k]['macro_f1']:.3f}" for k in ("model", "phase", "logreg_z1")
            )
            print(f"{task_name} seed {seed}: macro-F1 {line}", flush=True)
            if args.out:
                with args.out.open("a") as stream:
                    stream.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
