"""Leave one type out: does the novelty score flag a cell type the reference never saw?

For each task and held-out type, the type's cells are removed from the reference (its
labels *and* cells), pyro_scvae is trained on the rest of the reference alone (the query
is not in training: a saved reference meets a new query), and the query, which holds
the type, is scored. T1 (``T1a``: the 3pv1 chemistry is the query) keeps its query as
the task defines it; in T5 (a random 80/20 split) the held-out type's reference-side
cells join the query, so that small types give enough novel cells to measure.

Scores compared (higher = more novel), AUROC of held-out-type cells against the known
query cells:

``mahalanobis``
    the package's score (:mod:`pyro_scvae.novelty`): distance of z₁ to the nearest class
    centre under the shared, shrunk within-class covariance; flagged at its default
    threshold.
``mahalanobis_per_class``
    the same with one shrunk covariance per class (classes under 10 cells use the shared one).
``relative_mahalanobis``
    its square minus the squared distance to one Gaussian of all reference cells (Ren et
    al. 2021), which discounts directions in which every type varies.
``knn``
    mean Euclidean distance of z₁ to its 10 nearest labelled reference cells.
``prior_density``
    −log p(z₁) under the model's own prior of cell states, the mixture over types
    Σ_y p(y) ∫ p(z₁ | z₂, y) p(z₂) dz₂, at the posterior mean of z₁, each integral
    importance-sampled with the guide's q(z₂ | z₁, y) (:func:`prior_log_density`): how
    improbable the cell's state is under every type's generative prior.
``reconstruction``
    the model's likelihood: −log p(x | z₁, l) under the ZINB, at the posterior mean of z₁
    and the observed total count l, per count (:func:`reconstruction_log_likelihood`):
    how badly the decoder, trained on the known types, explains the cell.
``encoder_hidden``, ``classifier_hidden``, ``logits``
    the package's distance (nearest class centre, shared shrunk covariance) computed in
    other layers of the networks instead of z₁: the last hidden layer of the encoder of
    q(z₁ | x), the last hidden layer of the classifier q(y | z₁), and its logits (Lee et
    al. 2018 read a classifier's own features) (:func:`network_features`).
``max_probability`` (baseline)
    1 − the largest calibrated probability of q(y | z₁).
``entropy``
    entropy of the calibrated q(y | z₁).
``celltypist`` (baseline)
    1 − CellTypist's largest probability (its default training); flagged where no class
    reaches its default ``p_thres`` of 0.5 ("Unassigned" in its ``prob match`` mode).

Usage::

    python benchmarks/novelty.py --tasks T1a T5 --types 3 --seed 0 --out benchmarks/novelty
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import entropy
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import fit_predict_celltypist  # noqa: E402
from benchmarks.report import markdown_table, save_study  # noqa: E402
from benchmarks.tasks import build_task  # noqa: E402

#: Held-out types of each task: for T1 (every chemistry in turn as the query) the issue's
#: example and two others; for T5 the 2nd, 6th and 10th largest types (357, 224 and 64 cells).
T1_HELD_OUT = ["Mono_CD14", "B", "NK"]
HELD_OUT = {
    "T1a": T1_HELD_OUT,
    "T1b": T1_HELD_OUT,
    "T1c": T1_HELD_OUT,
    "T5": ["type_02", "type_06", "type_10"],
}
#: Quantiles of the reference cells' out-of-fold scores at which the flags are reported.
QUANTILES = (0.95, 0.975, 0.98, 0.99, 0.999)
SCORES = [
    "mahalanobis",
    "relative_mahalanobis",
    "mahalanobis_per_class",
    "knn",
    "prior_density",
    "reconstruction",
    "encoder_hidden",
    "classifier_hidden",
    "logits",
    "max_probability",
    "entropy",
]


def per_class_distance(latent, reference_latent, reference_labels, shared_precision):
    """min over classes of the Mahalanobis distance under each class's shrunk covariance."""
    best = np.full(len(latent), np.inf)
    for k in np.unique(reference_labels):
        members = reference_latent[reference_labels == k]
        centre = members.mean(0)
        precision = shared_precision
        if len(members) >= 10:
            precision = np.linalg.inv(LedoitWolf().fit(members).covariance_)
        diff = latent - centre
        best = np.minimum(best, np.einsum("nd,de,ne->n", diff, precision, diff))
    return np.sqrt(best)


def relative_distance(latent, reference_latent, nearest):
    """Squared nearest-class distance minus the squared distance to one background Gaussian."""
    background = LedoitWolf().fit(reference_latent)
    return nearest**2 - background.mahalanobis(latent)


def prior_log_density(module, latent: np.ndarray, draws: int = 16, seed: int = 0) -> np.ndarray:
    """log p(z₁) = log Σ_y p(y) ∫ p(z₁ | z₂, y) p(z₂) dz₂ at each row of ``latent``.

    Each ∫ is ``log mean_s p(z₁ | z₂ˢ, y) p(z₂ˢ) / q(z₂ˢ | z₁, y)`` over ``draws`` draws
    z₂ˢ ~ q(z₂ | z₁, y) (an importance-sampling estimate, unbiased in p(z₁ | y)).
    """
    import torch
    from torch.distributions import Normal

    module.eval()
    n_classes = module.config.n_classes
    generator = torch.Generator().manual_seed(seed)
    onehot = torch.eye(n_classes).unsqueeze(1)  # [K, 1, K]: every type for every cell
    log_prior_y = torch.log_softmax(module.class_log_prior, 0).unsqueeze(-1)  # [K, 1]
    out = []
    with torch.no_grad():
        for start in range(0, len(latent), 512):
            z1 = torch.as_tensor(latent[start : start + 512], dtype=torch.float32)  # [n, d]
            z2_loc, z2_scale = module.z2_encoder(z1, onehot)  # [K, n, d]
            noise = torch.randn((draws, *z2_loc.shape), generator=generator)
            z2 = z2_loc + z2_scale * noise  # [S, K, n, d]
            log_q = Normal(z2_loc, z2_scale).log_prob(z2).sum(-1)  # [S, K, n]
            log_p_z2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)  # [S, K, n]
            z1_loc, z1_scale = module.z1_decoder(z2, onehot)  # [S, K, n, d]
            log_p_z1 = Normal(z1_loc, z1_scale).log_prob(z1).sum(-1)  # [S, K, n]
            log_p_given_y = torch.logsumexp(log_p_z1 + log_p_z2 - log_q, 0) - np.log(draws)
            out.append(torch.logsumexp(log_p_given_y + log_prior_y, 0).numpy())  # [n]
    return np.concatenate(out)


def count_chunks(model, adata, size: int = 2048):
    """``(counts [chunk, G], batch codes [chunk] or None)`` of ``adata``'s cells in the
    model's genes, as float32 tensors, with the module in evaluation mode (``adata`` None:
    the model's own cells)."""
    import torch

    model.module.eval()
    counts, batches = model._query_arrays(adata)
    for start in range(0, counts.shape[0], size):
        rows = slice(start, start + size)
        x = torch.from_numpy(counts[rows].toarray()).float()
        yield x, None if batches is None else torch.from_numpy(batches[rows])


def reconstruction_log_likelihood(model, adata) -> tuple[np.ndarray, np.ndarray]:
    """log p(x | z₁, l) ``[cells]`` of ``adata``'s cells and their total counts ``[cells]``.

    z₁ is the posterior mean; l the observed total count.
    """
    import torch

    from pyro_scvae.distributions import ZINB

    module = model.module
    log_likelihood, totals = [], []
    with torch.no_grad():
        theta = module.log_theta.exp()  # [G]
        for x, b in count_chunks(model, adata):
            onehot = module.batch_inputs(x, b)
            z1 = module.encode_x(x, onehot)[0]  # [chunk, d]
            rho, zi_logits = module.x_decoder(z1, *onehot)  # [chunk, G] each
            total = x.sum(1, keepdim=True)  # [chunk, 1]
            log_likelihood.append(ZINB(total * rho, theta, zi_logits).log_prob(x).sum(-1).numpy())
            totals.append(total[:, 0].numpy())
    return np.concatenate(log_likelihood), np.concatenate(totals)


def network_features(model, adata) -> dict[str, np.ndarray]:
    """``adata``'s cells in three layers of the networks, ``[cells, width]`` each.

    ``encoder_hidden``: the last hidden layer of q(z₁ | x)'s encoder (after its ReLU);
    ``classifier_hidden``: the classifier's last hidden layer at the posterior mean of z₁;
    ``logits``: the classifier's output there.
    """
    import torch

    module = model.module
    encoder, classifier = module.x_encoder.mlp, module.classifier.mlp
    out: dict[str, list[np.ndarray]] = {"encoder_hidden": [], "classifier_hidden": [], "logits": []}
    with torch.no_grad():
        for x, b in count_chunks(model, adata):
            onehot = module.batch_inputs(x, b) if module.config.encode_batch else []
            hidden = encoder[0](torch.log1p(x), *onehot)
            for layer in list(encoder)[1:-1]:
                hidden = layer(hidden)  # [chunk, H]
            features = module.encode_x(x, module.batch_inputs(x, b))[0]  # [chunk, d], z₁
            for layer in list(classifier)[:-1]:
                features = layer(features)  # [chunk, H]
            out["encoder_hidden"].append(hidden.numpy())
            out["classifier_hidden"].append(features.numpy())
            out["logits"].append(classifier[-1](features).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def distance_in(reference: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The package's score with centres and covariance estimated on ``reference`` features."""
    from pyro_scvae.novelty import class_statistics, nearest_distance

    means, precision = class_statistics(reference, labels, int(labels.max()) + 1)
    return nearest_distance(query, means, precision)


def split(task: str, held_out: str, seed: int):
    """Reference (without the held-out type) and query (with it) AnnData objects."""
    adata = build_task(task, seed).adata
    label = adata.obs["label"].to_numpy()
    is_query = adata.obs["is_query"].to_numpy()
    if task.startswith("T5"):
        is_query = is_query | (label == held_out)
    reference = adata[~is_query & (label != held_out)].copy()
    query = adata[is_query].copy()
    return reference, query


def leave_one_out(
    task: str, held_out: str, seed: int, epochs: int | None, setting: str, save: Path | None
) -> dict:
    """Train without ``held_out``'s labels and reference cells, score the query; one row.

    ``setting``: ``"inductive"`` trains on the reference alone; ``"transductive"`` also
    on the query cells, unlabelled (as ``fit`` with the query present).
    """
    import anndata as ad

    from pyro_scvae import PyroSCVAE

    reference, query = split(task, held_out, seed)
    batch_key = "batch" if "batch" in reference.obs else None
    training = reference
    if setting == "transductive":
        training = ad.concat([reference, query], join="inner")
        training.obs["label"] = training.obs["label"].where(
            np.r_[np.ones(reference.n_obs, bool), np.zeros(query.n_obs, bool)]
        )
    PyroSCVAE.setup_anndata(training, labels_key="label", batch_key=batch_key)
    start = time.perf_counter()
    model = PyroSCVAE(training, seed=seed).fit(epochs=epochs, seed=seed, progress=False)
    train_s = time.perf_counter() - start
    novel = query.obs["label"].to_numpy() == held_out  # [query cells]
    latent = model.get_latent_representation(query)  # [query, d]
    probabilities = model.predict(query, soft=True).to_numpy()  # [query, K]
    reference_latent = model.get_latent_representation()
    labels = model.data.labels
    nearest = model.novelty.score(latent)
    decoder_ll, totals = reconstruction_log_likelihood(model, query)
    query_features = network_features(model, query)
    reference_features = network_features(model, None)  # the training cells, as `labels`
    labelled = model.data.labels >= 0
    scores = {
        "mahalanobis": nearest,
        "relative_mahalanobis": relative_distance(latent, reference_latent[labels >= 0], nearest),
        "mahalanobis_per_class": per_class_distance(
            latent, reference_latent[labels >= 0], labels[labels >= 0], model.novelty.precision
        ),
        "knn": NearestNeighbors(n_neighbors=10)
        .fit(reference_latent[labels >= 0])
        .kneighbors(latent)[0]
        .mean(1),
        "prior_density": -prior_log_density(model.module, latent, seed=seed),
        "reconstruction": -decoder_ll / totals,
        **{
            name: distance_in(
                reference_features[name][labelled], model.data.labels[labelled], features
            )
            for name, features in query_features.items()
        },
        "max_probability": 1 - probabilities.max(1),
        "entropy": entropy(probabilities, axis=1),
    }
    if save is not None:  # for looking at other scores and thresholds afterwards
        np.savez_compressed(
            save / f"{task}_{held_out}_{setting}_seed{seed}.npz",
            latent=latent,
            novel=novel,
            probabilities=probabilities,
            prior_density=scores["prior_density"],
            decoder_ll=decoder_ll,
            totals=totals,
            reference_latent=reference_latent[labels >= 0],
            reference_labels=labels[labels >= 0],
        )
    row = {
        "task": task,
        "held_out": held_out,
        "setting": setting,
        "seed": seed,
        "n_novel": int(novel.sum()),
        "n_known": int((~novel).sum()),
        "train_s": round(train_s, 1),
        "epochs": model.epochs_trained,
        "threshold": model.novelty.threshold,
        "quantile": model.novelty.quantile,
    }
    for name, score in scores.items():
        row[f"auroc_{name}"] = float(roc_auc_score(novel, score))
    flagged = model.novelty.is_novel(scores["mahalanobis"])
    row["novel_flagged"] = float(flagged[novel].mean())
    row["known_flagged"] = float(flagged[~novel].mean())
    # the flags at other quantiles of the reference's out-of-fold scores, to choose the default
    from pyro_scvae.novelty import out_of_fold_scores

    oof = out_of_fold_scores(reference_latent[labels >= 0], labels[labels >= 0], len(model.classes))
    for q in QUANTILES:
        at = scores["mahalanobis"] > np.quantile(oof, q)
        row[f"novel_flagged_q{q}"] = float(at[novel].mean())
        row[f"known_flagged_q{q}"] = float(at[~novel].mean())
    # kNN distance of reference cells to their 10 nearest other reference cells
    known = reference_latent[labels >= 0]
    own = NearestNeighbors(n_neighbors=11).fit(known).kneighbors(known)[0][:, 1:].mean(1)
    for q in (0.95, 0.99):
        at = scores["knn"] > np.quantile(own, q)
        row[f"knn_novel_flagged_q{q}"] = float(at[novel].mean())
        row[f"knn_known_flagged_q{q}"] = float(at[~novel].mean())
    row.update(celltypist_row(reference, query, novel, seed))
    return row


def celltypist_row(reference, query, novel, seed) -> dict:
    """AUROC of 1 − CellTypist's largest probability and its flags at p_thres = 0.5."""
    try:
        import celltypist  # noqa: F401
    except ImportError:
        return {"auroc_celltypist": None}
    import anndata as ad

    cells = ad.concat([reference, query], join="inner")
    cells.obs["is_query"] = np.r_[np.zeros(reference.n_obs, bool), np.ones(query.n_obs, bool)]
    proba, _ = fit_predict_celltypist(cells, seed)
    top = proba.max(1).to_numpy()
    flagged = top < 0.5
    return {
        "auroc_celltypist": float(roc_auc_score(novel, 1 - top)),
        "celltypist_novel_flagged": float(flagged[novel].mean()),
        "celltypist_known_flagged": float(flagged[~novel].mean()),
    }


def render(rows: list[dict], command: str) -> str:
    """The markdown report: one row per held-out type, then the means."""
    table = pd.DataFrame(rows)
    auroc = [f"auroc_{s}" for s in SCORES] + ["auroc_celltypist"]
    headers = ["task", "setting", "held out", "novel / known", *[a[6:] for a in auroc]]
    headers += ["novel flagged", "known flagged", "CellTypist novel / known flagged"]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"

    body = []
    for r in rows:
        ct = f"{fmt(r.get('celltypist_novel_flagged'))} / {fmt(r.get('celltypist_known_flagged'))}"
        body.append(
            [r["task"], r["setting"], r["held_out"], f"{r['n_novel']} / {r['n_known']}"]
            + [fmt(r.get(a)) for a in auroc]
            + [fmt(r["novel_flagged"]), fmt(r["known_flagged"]), ct]
        )
    quantiles = ["| setting | quantile | novel flagged | known flagged |", "|---|---|---|---|"]
    for setting, part in table.groupby("setting", sort=False):
        means = part.mean(numeric_only=True)
        body.append(
            ["mean", setting, "", ""]
            + [fmt(means.get(a)) for a in auroc]
            + [fmt(means["novel_flagged"]), fmt(means["known_flagged"]), ""]
        )
        for q in QUANTILES:
            if f"novel_flagged_q{q}" not in means:  # a run with other quantiles
                continue
            novel, known = means[f"novel_flagged_q{q}"], means[f"known_flagged_q{q}"]
            quantiles.append(f"| {setting} | {q} | {novel:.3f} | {known:.3f} |")
    return "\n".join(
        [
            "# Novel-type detection: leave one type out",
            "",
            f"Command: `{command}`",
            "",
            markdown_table(headers, body),
            "",
            "Flags of the Mahalanobis score at thresholds set at other quantiles of the "
            "reference cells' out-of-fold scores (mean over the rows above):",
            "",
            *quantiles,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT))
    parser.add_argument("--types", type=int, default=3, help="held-out types per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the package's")
    parser.add_argument(
        "--settings", nargs="+", default=["inductive"], choices=["inductive", "transductive"]
    )
    parser.add_argument("--save", type=Path, help="folder for each run's latent (.npz)")
    parser.add_argument("--out", default="benchmarks/novelty", help="writes OUT.json, OUT.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/novelty.py " + " ".join(argv or sys.argv[1:])
    rows = []
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    for setting in args.settings:
        for task in args.tasks:
            for held_out in HELD_OUT[task][: args.types]:
                rows.append(
                    leave_one_out(task, held_out, args.seed, args.epochs, setting, args.save)
                )
                print(json.dumps(rows[-1]), flush=True)
                Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    save_study(rows, render(rows, command), args.out)


if __name__ == "__main__":
    main()
