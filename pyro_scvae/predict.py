"""``python -m pyro_scvae.predict``: annotate new cells with a saved model, without retraining.

Genes are matched by name: genes the model needs but the data lack count as zero (with
a warning that says how many); too few shared genes is an error. Cells with zero counts
are left out of the outputs (with a warning). With ``--backed`` the counts stay on disk
and are read in chunks: memory grows with the number of cells only through the outputs
(calls, probabilities, latent z₁) and ``obs``.

Cells of batches the model was not trained on are encoded and decoded with the average
of the training batches' effects (a warning names those batches). With ``--fine-tune``
the model first learns those batches on the query's own cells, its reference weights
frozen (:meth:`pyro_scvae.api.PyroSCVAE.map_query`), and the fine-tuned model is written
to ``OUT/model``. Where the model has a novelty reference, ``predictions.csv`` has the
columns ``novelty`` (score) and ``novel`` (flag), see :mod:`pyro_scvae.novelty`.
"""

from __future__ import annotations

import json

from pyro_scvae import cli
from pyro_scvae.threads import threads_argument


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m pyro_scvae.predict",
        description="Annotate the cells of an .h5ad file with a model saved by "
        "pyro_scvae.fit (its --out folder contains model/).",
    )
    cli.add_version(parser)
    parser.add_argument(
        "--model",
        metavar="DIR",
        required=True,
        help="a saved model folder (e.g. pyro_scvae_out/model)",
    )
    parser.add_argument("--adata", metavar="PATH", required=True, help=".h5ad file of raw counts")
    parser.add_argument("--layer", help="layer holding the raw counts (default: the model's)")
    parser.add_argument(
        "--labels-key",
        help="obs column of known cell types of these cells: scores the calls against them "
        "(metrics.json, confusion.png); missing values are left out",
    )
    parser.add_argument(
        "--backed",
        action="store_true",
        help="leave .X of the --adata file on disk (anndata backed mode) and read it in "
        "chunks, for data larger than memory. The counts must be in .X, stored CSR "
        "(--layer and the model's layer do not apply)",
    )
    parser.add_argument(
        "--min-confidence",
        type=cli.probability,
        default=0.0,
        help="calls below this confidence become 'Unassigned' (default: 0)",
    )
    parser.add_argument(
        "--batch-key",
        help="obs column of the query's batches (default: the model's batch key)",
    )
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="first learn the query's new batches (reference weights frozen) on its own "
        "cells, and write the fine-tuned model to OUT/model",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=cli.positive_int,
        metavar="N",
        help="epochs of --fine-tune, both phases (decoder first, then the encoders too) "
        "together (default: about 300 gradient steps each, 5 to 200 epochs each)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --fine-tune (default: 0)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="pyro_scvae_predictions",
        help="output folder, replaced only when the run succeeds, and only if it is empty "
        "or was written by pyro_scvae (default: ./pyro_scvae_predictions)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to run the model (default: auto)",
    )
    parser.add_argument(
        "--threads",
        type=threads_argument,
        default="auto",
        help="CPU threads of torch, or auto: as many as there are free cores (default: auto)",
    )
    parser.add_argument(
        "--majority-voting",
        action="store_true",
        help="also call each cell by the most frequent call of its cluster in an "
        "over-clustering of z1 (CellTypist's majority voting): a majority_voting column "
        "in predictions.csv and obs",
    )
    parser.add_argument(
        "--markers",
        action="store_true",
        help="marker genes of each predicted type among these cells: markers.csv and the "
        "dot plot markers.png",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def run(args) -> None:
    """Annotate as ``args`` say; the heavy libraries are imported only here."""
    from pyro_scvae.folders import atomic_output_dir, check_output_dir

    inputs = [args.adata, args.model]
    check_output_dir(args.out, inputs)  # before the model and the data are read
    cli.import_heavy("pyro_scvae.outputs", "pyro_scvae.preprocess")

    from pyro_scvae.api import PyroSCVAE
    from pyro_scvae.errors import InputError
    from pyro_scvae.outputs import (
        annotate_and_write,
        json_ready,
        score_labelled_query,
        write_markers,
    )
    from pyro_scvae.preprocess import backed_cells, check_backed_layer, drop_empty_cells, read_adata

    check_backed_layer(args.backed, args.layer)
    if args.fine_tune_epochs is not None and not args.fine_tune:
        raise InputError("--fine-tune-epochs needs --fine-tune")
    model = PyroSCVAE.load(args.model, device=args.device)
    if args.batch_key is not None:
        model.setup["batch_key"] = args.batch_key
    if args.backed:
        model.setup["layer"] = None  # backed: the counts are .X, whatever the model's layer
    elif args.layer is not None:
        model.setup["layer"] = args.layer
    adata = read_adata(args.adata, backed=args.backed)
    if args.labels_key is not None and args.labels_key not in adata.obs:
        raise InputError(f"--labels-key {args.labels_key!r} is not a column of obs in {args.adata}")
    # A backed AnnData cannot be copied: its cells without counts are left out when writing.
    cells = backed_cells(adata)
    if cells is None:
        adata = drop_empty_cells(adata, model.setup["layer"])
    if args.fine_tune:
        query = adata if cells is None else adata[cells]
        model = model.map_query(
            query,
            epochs=args.fine_tune_epochs,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
            threads=args.threads,
        )
    settings = json_ready({**vars(args), "classes": model.classes})
    metrics = None
    with atomic_output_dir(args.out, "predict", inputs) as out:
        annotate_and_write(
            model,
            adata,
            settings,
            out,
            args.min_confidence,
            cells,
            threads=args.threads,
            majority_voting=args.majority_voting,
        )
        if args.labels_key is not None:
            metrics = score_labelled_query(adata, args.labels_key, model.classes, out, cells)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        if args.fine_tune:
            model.save(out / "model")
        if args.markers:
            calls = model.predict(adata).to_numpy()  # without --min-confidence
            marked = adata if cells is None else adata[cells]
            write_markers(model, marked, out, calls if cells is None else calls[cells])
    if not args.quiet:
        calls = adata.obs["pyro_scvae_prediction"]
        calls = calls if cells is None else calls[cells].cat.remove_unused_categories()
        threads = model.prediction_threads.describe(short=True)
        if args.fine_tune:
            mapping = model.mapping
            print(
                f"fine-tuned on {mapping['n_cells']} cells of new batches "
                f"{', '.join(mapping['new_batches'])} for {mapping['epochs']} epochs"
            )
        print(f"annotated {len(calls)} cells ({threads}); outputs written to {args.out}/")
        print(calls.value_counts().to_string())
        if metrics is not None:
            unknown = metrics["types_unknown_to_model"]
            print(
                f"against obs[{args.labels_key!r}] (n={metrics['n_cells']}): accuracy "
                f"{metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
                + (f"; types the model does not know: {', '.join(unknown)}" if unknown else "")
            )


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    cli.exit_process(main())
