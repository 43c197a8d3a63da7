"""``python -m pyro_scvae.fit``: train on an AnnData file and annotate its cells.

With no arguments it trains on the embedded default data (scanpy's ``pbmc68k_reduced``
with its exact counts, labels ``bulk_labels``) and writes everything to
``./pyro_scvae_out/``. A tenth of the labels is held out in a first fit (honest held-out
metrics, the stopping epoch, the calibration); then every label is learnt
(:mod:`pyro_scvae.fitting`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_scvae import cli
from pyro_scvae.config import (
    LR_SCHEDULES,
    MARKER_SHARE,
    MAX_ENSEMBLE,
    REFIT_MODES,
    ModelConfig,
    TrainingConfig,
    defaults,
)
from pyro_scvae.threads import threads_argument

DEFAULT_LABELS_KEY = "bulk_labels"  # the labels of the embedded pbmc68k_reduced data
#: Options of ``PyroSCVAE(...)`` offered as flags (``--n-latent`` …): the argument parser's
#: type (or list of choices) and help; their defaults are those of ModelConfig, the
#: constructor's own.
MODEL_OPTIONS = {
    "n_latent": (cli.integer(1, 1024, "positive_int"), "dimension of z1 and z2"),
    "n_hidden": (cli.integer(1, 16384, "positive_int"), "width of the hidden layers"),
    "n_layers": (cli.integer(1, 32, "positive_int"), "hidden layers per network"),
    "dropout": (cli.fraction, "dropout rate of the encoders and the classifier"),
    "alpha": (cli.positive_float, "weight α of the classification term of labelled cells"),
    "balance_classes": (
        cli.probability,
        "power p of the class weights n_class^-p on the classification term of labelled "
        "cells (0: no balancing, 1: every type counts the same in total)",
    ),
    "class_prior": (
        ["frequencies", "uniform"],
        "p(y): the labelled cells' label frequencies, or uniform (MODEL.md's default)",
    ),
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


#: Names that say what an option takes, given first; the older name stays as an alias.
CLEARER_NAMES = {"balance_classes": ["--class-weight-power"]}


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m pyro_scvae.fit",
        description="Train the hierarchical VAE on raw counts with partly missing cell-type "
        "labels, and annotate every cell. Without --adata it runs on the embedded "
        "pbmc68k_reduced data.",
    )
    cli.add_version(parser)
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
        help="keep this many highly variable genes, chosen on the counts with scanpy "
        "(seurat_v3), and the markers of the labelled types (--marker-share); 0 keeps all "
        "genes (default: 2000)",
    )
    data.add_argument(
        "--marker-share",
        type=cli.fraction,
        default=MARKER_SHARE,
        help="also keep the genes that best tell each labelled type from the others (a "
        "t-test), as many per type, up to this share of --n-top-genes in all; 0: the most "
        f"variable genes only (default: {MARKER_SHARE})",
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
    model_defaults = defaults(ModelConfig)
    training_defaults = defaults(TrainingConfig)
    model = parser.add_argument_group("model (see MODEL.md)")
    for name, (kind, help_text) in MODEL_OPTIONS.items():
        default = model_defaults[name]
        if kind is bool:
            how = {"action": argparse.BooleanOptionalAction, "default": default}
        elif isinstance(kind, list):
            how = {"choices": kind, "default": default}
        else:
            how = {"type": kind, "default": kind(default)}  # True → 1.0 for balance_classes
        flags = [*CLEARER_NAMES.get(name, []), "--" + name.replace("_", "-")]
        model.add_argument(*flags, dest=name, help=f"{help_text} (default: %(default)s)", **how)
    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs",
        type=cli.integer(1, 100_000, "positive_int"),
        help="length of the training schedule in passes over the data; the first fit may "
        "stop earlier (default: chosen from the number of cells)",
    )
    training.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=training_defaults["batch_size"],
        help="cells per minibatch (default: %(default)s, chosen on the benchmark tasks)",
    )
    training.add_argument(
        "--lr",
        type=cli.positive_float,
        default=training_defaults["lr"],
        help="learning rate of Adam (default: %(default)s)",
    )
    training.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=training_defaults["lr_schedule"],
        help="learning rate over the epochs: constant, or cosine decay towards 0 "
        "(default: constant)",
    )
    training.add_argument(
        "--kl-warmup",
        type=cli.probability,
        default=training_defaults["kl_warmup"],
        help="fraction of the epochs over which the weight of the KL terms of y, z2 and l "
        "rises from 0 to 1 (scvi-tools' KL warm-up; 0: none; default: %(default)s)",
    )
    training.add_argument(
        "--ensemble",
        type=cli.integer(1, MAX_ENSEMBLE, "positive_int"),
        default=training_defaults["ensemble"],
        metavar="N",
        help="fit N models from seeds --seed, --seed + 1 … and annotate with the mean of "
        "their probabilities (a seed ensemble); N times the training time "
        "(default: %(default)s)",
    )
    training.add_argument(
        "--seed",
        type=cli.seed,
        default=0,
        help="random seed from 0 to 2^32 - 1; the same seed gives the same results (default: 0)",
    )
    training.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where a single process trains; auto uses a GPU when present (default: auto)",
    )
    ddp = parser.add_argument_group(
        "several devices (training through PyTorch Lightning with DDP; one process per "
        "device, see docs/large_data.md)"
    )
    ddp.add_argument(
        "--ddp-devices",
        "--devices",
        dest="devices",
        type=cli.integer(1, 1024, "positive_int"),
        default=1,
        metavar="N",
        help="DDP processes per machine: GPUs, or CPU processes with --ddp-accelerator cpu; "
        "each step averages the gradients of one minibatch per process (default: 1, no "
        "Lightning; --device then says where the single process trains)",
    )
    ddp.add_argument(
        "--ddp-accelerator",
        "--accelerator",
        dest="accelerator",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="what the DDP processes run on; cpu or gpu also trains through Lightning with "
        "one process (default: auto, GPUs when present)",
    )
    ddp.add_argument(
        "--ddp-nodes",
        "--num-nodes",
        dest="num_nodes",
        type=cli.positive_int,
        default=1,
        metavar="M",
        help="machines taking part, each running --ddp-devices processes; see "
        "docs/large_data.md for the environment variables (default: 1)",
    )
    training.add_argument(
        "--threads",
        type=threads_argument,
        default="auto",
        help="CPU threads of torch, or auto: as many as there are free cores and the "
        "minibatches can use, often 1 on a shared machine (default: auto)",
    )
    labels = parser.add_argument_group(
        "use of the labels (a first fit with some labels held out chooses the epoch and "
        "calibrates; then every label is learnt)"
    )
    labels.add_argument(
        "--validation-fraction",
        type=cli.fraction,
        default=training_defaults["validation_fraction"],
        help="fraction of labelled cells whose labels the first fit hides, for honest "
        "held-out metrics, the stopping epoch and the calibration; 0 trains once on every "
        "label for --epochs, uncalibrated (default: %(default)s)",
    )
    labels.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=training_defaults["early_stopping"],
        help="stop the first fit when the held-out cells' calibrated log-likelihood has not "
        "improved for --patience epochs (default: on)",
    )
    labels.add_argument(
        "--patience",
        type=cli.integer(1, 100_000, "positive_int"),
        help="epochs without improvement before stopping, and the epochs of --refit "
        "continue (default: a tenth of the epochs, at least 10)",
    )
    labels.add_argument(
        "--refit",
        choices=REFIT_MODES,
        default=training_defaults["refit"],
        help="how the held-out labels join: continue (train on from the best epoch with "
        "every label for --patience epochs), full (train again from the start on every "
        "label) or none (default: %(default)s)",
    )
    labels.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=training_defaults["calibrate"],
        help="temperature-scale the class probabilities on the held-out cells (default: on)",
    )
    labels.add_argument(
        "--labelled-share",
        type=cli.fraction,
        default=training_defaults["labelled_share"],
        help="least share of each epoch's minibatches that are labelled; labelled cells are "
        "passed over again as needed (default: %(default)s)",
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
        "--novelty-quantile",
        type=cli.probability,
        default=None,
        help="cells whose novelty score is above this quantile of the reference cells' own "
        "(out-of-fold) scores are flagged novel; lower flags more novel and more known "
        "cells (default: 0.98, see docs/mapping.md)",
    )
    output.add_argument(
        "--majority-voting",
        action="store_true",
        help="also call each cell by the most frequent call of its cluster in an "
        "over-clustering of z1 (CellTypist's majority voting): a majority_voting column "
        "in predictions.csv and obs",
    )
    output.add_argument(
        "--ppc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="posterior predictive check of up to 2000 training cells: ppc.png and "
        "metrics.json's ppc (default: on)",
    )
    output.add_argument(
        "--markers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="marker genes of each predicted type from the decoded expression: markers.csv "
        "and the dot plot markers.png (default: on)",
    )
    output.add_argument(
        "--out",
        metavar="DIR",
        default="pyro_scvae_out",
        help="output folder, replaced only when the run succeeds, and only if it is empty "
        "or was written by pyro_scvae (default: ./pyro_scvae_out)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def run(args) -> None:
    """Train and annotate as ``args`` say; the heavy libraries are imported only here."""
    from pyro_scvae.folders import check_output_dir

    inputs = [args.adata, args.query]
    check_output_dir(args.out, inputs)  # before any data are read
    cli.import_heavy("pyro_scvae.outputs", "pyro_scvae.preprocess")
    from pyro_scvae.api import PyroSCVAE, default_epochs
    from pyro_scvae.folders import atomic_output_dir
    from pyro_scvae.outputs import (
        annotate_and_write,
        json_ready,
        print_summary,
        write_outputs,
    )
    from pyro_scvae.preprocess import (
        backed_cells,
        backed_training_subset,
        drop_empty_cells,
        load_training_data,
        markers_added,
        nonempty_cells,
        read_adata,
        select_genes,
    )

    adata, labels_key = load_training_data(args)
    output_cells = None  # backed: the cells written to the outputs (those with counts)
    if adata.isbacked:
        output_cells = nonempty_cells(adata, None)
        training_adata = backed_training_subset(
            adata, args.n_top_genes, output_cells, args.marker_share
        )
    else:
        training_adata = select_genes(adata, args.n_top_genes, args.layer, args.marker_share)
        training_adata = drop_empty_cells(training_adata, args.layer)
    n_markers_added = markers_added(args.n_top_genes, adata.n_vars, training_adata.n_vars)
    query, query_cells = None, None
    if args.query is not None:  # its counts are checked here, before training
        query = read_adata(args.query, backed=args.backed)
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
        early_stopping=args.early_stopping,
        patience=args.patience,
        refit=args.refit,
        calibrate=args.calibrate,
        labelled_share=args.labelled_share,
        ensemble=args.ensemble,
        progress=not args.quiet,
        devices=args.devices,
        accelerator=args.accelerator,
        num_nodes=args.num_nodes,
        threads=args.threads,
        novelty_quantile=args.novelty_quantile,
    )
    if model.distributed_run is not None and not model.distributed_run.is_global_zero:
        return  # with DDP processes started by torchrun or SLURM, rank 0 writes the outputs
    settings = json_ready(
        {
            **vars(args),
            "labels_key": labels_key,
            "epochs": epochs,
            "n_genes_used": training_adata.n_vars,
            "n_marker_genes_added": n_markers_added,
        }
    )
    with atomic_output_dir(args.out, "fit", inputs) as out:
        metrics = write_outputs(model, adata, training_adata, settings, out, args, output_cells)
        if query is not None:
            (out / "query").mkdir()
            annotate_and_write(
                model,
                query,
                settings,
                out / "query",
                args.min_confidence,
                query_cells,
                threads=args.threads,
                majority_voting=args.majority_voting,
            )
    if not args.quiet:
        print_summary(model, metrics, training_adata, Path(args.out), n_markers_added)


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    cli.exit_process(main())
