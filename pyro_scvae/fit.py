"""``python -m pyro_scvae.fit``: train on an AnnData file and annotate its cells.

With no arguments it trains on the embedded default data (scanpy's ``pbmc68k_reduced``
with its exact counts, labels ``bulk_labels``), hides 20 % of the labels, reports the
accuracy on them and writes everything to ``./pyro_scvae_out/``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

from pyro_scvae import cli
from pyro_scvae.api import PyroSCVAE, default_epochs
from pyro_scvae.data import (
    BackedCounts,
    InputError,
    PyroSCVAEWarning,
    cell_totals,
    gene_selection,
    load_pbmc68k_counts,
    seurat_v3_genes,
    write_h5ad_rows,
)
from pyro_scvae.evaluation import plot_confusion, plot_elbo, plot_embedding, umap_coordinates
from pyro_scvae.training import LR_SCHEDULES, warmup_epochs

DEFAULT_LABELS_KEY = "bulk_labels"
MAX_UMAP_CELLS = 50_000
#: Options of ``PyroSCVAE(...)`` offered as flags (``--n-latent`` …): the argument parser's
#: type (or list of choices) and help; their defaults are the constructor's own.
MODEL_OPTIONS = {
    "n_latent": (cli.positive_int, "dimension of z1 and z2"),
    "n_hidden": (cli.positive_int, "width of the hidden layers"),
    "n_layers": (cli.positive_int, "hidden layers per network"),
    "dropout": (cli.fraction, "dropout rate of the encoders and the classifier"),
    "alpha": (cli.positive_float, "weight α of the classification term of labelled cells"),
    "balance_classes": (
        cli.probability,
        "power p of the class weights n_class^-p on the classification term of labelled "
        "cells (0: no balancing, 1: every type counts the same in total)",
    ),
    "class_prior": (["uniform", "frequencies"], "p(y): uniform, or the label frequencies"),
    "encode_batch": (
        bool,
        "give the --batch-key covariate to the encoders of z1 and l too, not only to the "
        "decoder (--no-encode-batch: q(z1 | x) as in MODEL.md)",
    ),
    "separate_library_encoder": (
        bool,
        "q(l | x) from an encoder of its own, as scvi-tools (--no-separate-library-encoder: "
        "it shares the hidden layers of the encoder of z1)",
    ),
}


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m pyro_scvae.fit",
        description="Train the hierarchical VAE on raw counts with partly missing cell-type "
        "labels, and annotate every cell. Without --adata it runs on the embedded "
        "pbmc68k_reduced data.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--adata",
        metavar="PATH",
        help=".h5ad file of raw counts (cells × genes); "
        "default: the embedded pbmc68k_reduced counts",
    )
    data.add_argument(
        "--labels-key",
        help="obs column of cell-type labels; missing values mean "
        f"'no label' (default for the embedded data: {DEFAULT_LABELS_KEY})",
    )
    data.add_argument(
        "--unlabeled-category",
        metavar="NAME",
        help="a label value that also means 'no label' (e.g. Unknown)",
    )
    data.add_argument(
        "--batch-key",
        help="obs column of a categorical batch covariate (e.g. donor or chemistry); default: none",
    )
    data.add_argument("--layer", help="layer holding the raw integer counts (default: .X)")
    data.add_argument(
        "--n-top-genes",
        type=cli.non_negative_int,
        default=2000,
        help="keep this many highly variable genes, chosen on the counts with "
        "scanpy (seurat_v3); 0 keeps all genes (default: 2000)",
    )
    data.add_argument(
        "--query", metavar="PATH", help="a second .h5ad file to annotate with the trained model"
    )
    data.add_argument(
        "--backed",
        action="store_true",
        help="leave .X of the --adata (and --query) file on disk (anndata backed mode) and "
        "read the cells of each minibatch from it, for data larger than memory; "
        "every full pass (count checks, library sizes, highly variable genes) goes in "
        "chunks. The counts must be in .X, stored CSR",
    )
    defaults = inspect.signature(PyroSCVAE.__init__).parameters
    model = parser.add_argument_group("model (see MODEL.md)")
    for name, (kind, help_text) in MODEL_OPTIONS.items():
        default = defaults[name].default
        if kind is bool:
            how = {"action": argparse.BooleanOptionalAction, "default": default}
        elif isinstance(kind, list):
            how = {"choices": kind, "default": default}
        else:
            how = {"type": kind, "default": kind(default)}  # True → 1.0 for balance_classes
        model.add_argument(
            "--" + name.replace("_", "-"), help=f"{help_text} (default: %(default)s)", **how
        )
    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs",
        type=cli.positive_int,
        help="passes over the data (default: chosen from the number of cells)",
    )
    training.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=512,
        help="cells per minibatch (default: 512, chosen on the benchmark tasks)",
    )
    training.add_argument(
        "--lr", type=cli.positive_float, default=3e-3, help="learning rate of Adam (default: 0.003)"
    )
    training.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="learning rate over the epochs: constant, or cosine decay towards 0 "
        "(default: constant)",
    )
    training.add_argument(
        "--kl-warmup",
        type=float,
        default=0.5,
        help="fraction of the epochs over which the weight of the KL terms of y, z2 and l "
        "rises from 0 to 1 (scvi-tools' KL warm-up; 0: none; default: 0.5)",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same results (default: 0)",
    )
    training.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to train; auto uses a GPU when present (default: auto)",
    )
    training.add_argument(
        "--devices",
        type=cli.positive_int,
        default=1,
        help="train with PyTorch Lightning and DDP on this many devices (GPUs, or CPU "
        "processes with --accelerator cpu) per node; each step averages the gradients "
        "of one minibatch per device (default: 1, no Lightning)",
    )
    training.add_argument(
        "--accelerator",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="Lightning accelerator for --devices; cpu or gpu also trains through "
        "Lightning with --devices 1 (default: auto, GPUs when present)",
    )
    training.add_argument(
        "--num-nodes",
        type=cli.positive_int,
        default=1,
        help="machines taking part in DDP training, each running --devices processes; "
        "see the README for the environment variables (default: 1)",
    )
    training.add_argument(
        "--validation-fraction",
        type=cli.fraction,
        default=0.2,
        help="fraction of labelled cells hidden from training to report "
        "accuracy and F1 on (default: 0.2)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--min-confidence",
        type=cli.probability,
        default=0.0,
        help="cells whose largest class probability is below this are called "
        "'Unassigned' (default: 0, call every cell)",
    )
    output.add_argument(
        "--out",
        metavar="DIR",
        default="pyro_scvae_out",
        help="output folder, replaced only when the run succeeds (default: ./pyro_scvae_out)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def load_training_data(args) -> tuple[ad.AnnData, str]:
    """The AnnData to train on and its labels key.

    In memory its counts are checked and its empty cells dropped. A backed AnnData is
    returned as opened: :func:`nonempty_cells` checks its counts in the same pass over
    the file that finds the empty cells.
    """
    if args.backed and args.adata is None:
        raise InputError("--backed needs --adata (the .h5ad file to read from disk)")
    cli.check_backed_layer(args.backed, args.layer)
    if args.adata is None:
        adata, labels_key = load_pbmc68k_counts(), args.labels_key or DEFAULT_LABELS_KEY
    else:
        if args.labels_key is None:
            raise InputError("--labels-key is required with --adata (the obs column of cell types)")
        adata, labels_key = cli.read_adata(args.adata, backed=args.backed), args.labels_key
    PyroSCVAE.setup_anndata(adata, labels_key, args.unlabeled_category, args.batch_key, args.layer)
    if adata.isbacked:
        return adata, labels_key  # a subset is taken once, in backed_training_subset
    return drop_empty_cells(adata, args.layer), labels_key  # checks the counts


def backed_training_subset(
    adata: ad.AnnData, n_top_genes: int, cells_with_counts: np.ndarray
) -> ad.AnnData:
    """The cells and genes to train on, as one view of a backed AnnData (kept on disk).

    The same choice as :func:`select_genes` then :func:`drop_empty_cells` in memory,
    with the highly variable genes from :func:`~pyro_scvae.data.seurat_v3_genes` (the
    seurat_v3 computation in chunks). ``cells_with_counts`` is :func:`nonempty_cells`
    of ``adata``, computed once by the caller, which also leaves the other cells out of
    the outputs. anndata allows only one level of view of a backed AnnData, so cells and
    genes are chosen first and the view taken once.
    """
    counts = BackedCounts.from_adata(adata)  # checked by nonempty_cells already
    cells = cells_with_counts.copy()  # [cells]
    genes = np.ones(adata.n_vars, dtype=bool)  # [genes]
    if 0 < n_top_genes < adata.n_vars:
        genes = seurat_v3_genes(counts.subset(cells), n_top_genes)
        selected = counts.select_genes(gene_selection(adata.var_names, adata.var_names[genes]))
        cells &= np.asarray(selected.sum(axis=1)).ravel() > 0
    emptied = int((cells != cells_with_counts).sum())  # cells with counts, none in these genes
    if emptied:
        warnings.warn(
            f"{emptied} cells have zero counts over the genes used: they are left out of "
            "training but still annotated",
            PyroSCVAEWarning,
            stacklevel=2,
        )
    if cells.all() and genes.all():
        return adata
    return adata[np.flatnonzero(cells), np.flatnonzero(genes)]


def select_genes(adata: ad.AnnData, n_top_genes: int, layer: str | None) -> ad.AnnData:
    """The ``n_top_genes`` most variable genes (scanpy's seurat_v3 on counts), or all."""
    if n_top_genes == 0 or n_top_genes >= adata.n_vars:
        return adata
    ranking = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer=layer, inplace=False
    )
    return adata[:, ranking["highly_variable"].to_numpy()].copy()


def drop_empty_cells(adata: ad.AnnData, layer: str | None) -> ad.AnnData:
    """Remove cells without a single count, with a warning that says how many."""
    cells = nonempty_cells(adata, layer)
    return adata if cells.all() else adata[cells].copy()


def nonempty_cells(adata: ad.AnnData, layer: str | None) -> np.ndarray:
    """Boolean mask ``[cells]`` of the cells with counts; a warning says how many have none.

    The counts are checked on the way (:func:`~pyro_scvae.data.cell_totals`: one pass
    in chunks over a backed AnnData).
    """
    totals = cell_totals(adata, layer)  # [cells]
    if (totals == 0).all():
        raise InputError("every cell has zero counts")
    if (totals == 0).any():
        warnings.warn(
            f"{int((totals == 0).sum())} cells with zero counts were dropped",
            PyroSCVAEWarning,
            stacklevel=3,
        )
    return totals > 0


def run(args) -> None:
    adata, labels_key = load_training_data(args)
    output_cells = None  # backed: the cells written to the outputs (those with counts)
    if adata.isbacked:
        output_cells = nonempty_cells(adata, None)
        training_adata = backed_training_subset(adata, args.n_top_genes, output_cells)
    else:
        training_adata = select_genes(adata, args.n_top_genes, args.layer)
        training_adata = drop_empty_cells(training_adata, args.layer)
    query, query_cells = None, None
    if args.query is not None:  # its counts are checked here, before training
        query = cli.read_adata(args.query, backed=args.backed)
        query_cells = backed_cells(query)  # one pass over a backed file: check and sums
        if query_cells is None:
            query = drop_empty_cells(query, args.layer)
    model_options = {name: getattr(args, name) for name in MODEL_OPTIONS}
    model = PyroSCVAE(training_adata, seed=args.seed, **model_options)
    epochs = args.epochs or default_epochs(training_adata.n_obs)
    model.fit(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        kl_warmup=args.kl_warmup,
        device=args.device,
        validation_fraction=args.validation_fraction,
        progress=not args.quiet,
        devices=args.devices,
        accelerator=args.accelerator,
        num_nodes=args.num_nodes,
    )
    if model.distributed_run is not None and not model.distributed_run.is_global_zero:
        return  # with DDP processes started by torchrun or SLURM, rank 0 writes the outputs
    settings = cli.json_ready(
        {
            **vars(args),
            "labels_key": labels_key,
            "epochs": epochs,
            "n_genes_used": training_adata.n_vars,
        }
    )
    with cli.atomic_output_dir(args.out) as out:
        metrics = write_outputs(model, adata, training_adata, settings, out, args, output_cells)
        if query is not None:
            (out / "query").mkdir()
            annotate_and_write(
                model, query, settings, out / "query", args.min_confidence, query_cells
            )
    if not args.quiet:
        print_summary(model, metrics, training_adata, Path(args.out))


def annotate_and_write(
    model: PyroSCVAE,
    adata: ad.AnnData,
    settings: dict,
    out: Path,
    min_confidence: float,
    cells: np.ndarray | None = None,
) -> None:
    """``predictions.csv`` and ``annotated.h5ad`` for ``adata`` in ``out``.

    With ``cells`` (a boolean mask; ``adata`` must be backed) both files hold only those
    cells, and the rows of ``.X`` are copied from the file in chunks
    (:func:`~pyro_scvae.data.write_h5ad_rows`).
    """
    model.annotate(adata, min_confidence=min_confidence)  # calls, probabilities, latent z₁
    probabilities = adata.obsm["pyro_scvae_probabilities"]
    calls = adata.obs["pyro_scvae_prediction"].astype(str)
    adata.uns["pyro_scvae"] = settings
    if cells is None:
        cli.write_predictions(probabilities, calls, out / "predictions.csv")
        adata.write_h5ad(out / "annotated.h5ad")
    else:
        cli.write_predictions(probabilities[cells], calls[cells], out / "predictions.csv")
        write_h5ad_rows(adata, np.flatnonzero(cells), out / "annotated.h5ad")


def backed_cells(adata: ad.AnnData) -> np.ndarray | None:
    """The cells with counts of a backed AnnData (written out row by row), else None.

    In memory the cells without counts were dropped from ``adata`` itself already.
    """
    return nonempty_cells(adata, None) if adata.isbacked else None


def write_outputs(
    model, adata, training_adata, settings, out: Path, args, cells: np.ndarray | None
) -> dict:
    """Predictions, annotated data, metrics, the model and the plots of the training run.

    ``cells``: for a backed ``adata``, the cells to write (see :func:`annotate_and_write`).
    """
    annotate_and_write(model, adata, settings, out, args.min_confidence, cells)
    history = model.history
    metrics = {
        "epochs": len(history.elbo),
        "final_elbo_per_cell": history.elbo[-1],
        "train_seconds": model.train_seconds,
        "cells_per_second": len(history.elbo) * training_adata.n_obs / model.train_seconds,
        "n_cells": training_adata.n_obs,
        "n_genes": training_adata.n_vars,
        "validation": model.validation_metrics,
    }
    if model.distributed_run is not None:  # trained through Lightning
        metrics["distributed"] = {
            "world_size": model.distributed_run.world_size,
            "replica_max_abs_difference": model.distributed_run.replica_max_abs_difference,
        }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    model.save(out / "model")
    config = model.training_config
    warmup = warmup_epochs(config.kl_warmup, config.epochs)
    plot_elbo(history.elbo, out / "elbo.png", warmup_epochs=warmup)
    if model.validation_metrics is not None:
        cells = model.validation_cells
        truth = np.array(model.classes)[model.data.labels[cells]]
        # A backed AnnData allows one level of view: index the file's AnnData by name.
        validation = adata[training_adata.obs_names[cells]] if adata.isbacked else None
        predicted = model.predict(validation if adata.isbacked else training_adata[cells])
        plot_confusion(
            truth,
            predicted,
            out / "confusion.png",
            title=f"Held-out labelled cells (n={len(cells)})",
        )
    latent = adata.obsm["X_pyro_scvae"]
    shown = np.random.default_rng(args.seed).permutation(adata.n_obs)[:MAX_UMAP_CELLS]
    plot_embedding(
        umap_coordinates(latent[shown], seed=args.seed),
        adata.obs["pyro_scvae_prediction"].to_numpy()[shown],
        out / "umap.png",
        title="UMAP of the latent z₁, coloured by predicted type",
    )
    return metrics


def print_summary(model: PyroSCVAE, metrics: dict, adata: ad.AnnData, out: Path) -> None:
    lines = [
        f"trained on {adata.n_obs} cells × {adata.n_vars} genes, {len(model.classes)} classes, "
        f"{metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s "
        f"({metrics['cells_per_second']:.0f} cells/s)",
        f"final ELBO per cell: {metrics['final_elbo_per_cell']:.1f}",
    ]
    validation = metrics["validation"]
    if validation:
        lines.append(
            f"held-out labelled cells (n={validation['n_cells']}): accuracy "
            f"{validation['accuracy']:.3f}, macro-F1 {validation['macro_f1']:.3f}"
        )
    lines.append(f"outputs written to {out}/")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
