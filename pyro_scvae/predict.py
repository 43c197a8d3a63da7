"""``python -m pyro_scvae.predict``: annotate new cells with a saved model, without retraining.

Genes are matched by name: genes the model needs but the data lack count as zero (with
a warning that says how many); too few shared genes is an error. Cells with zero counts
are left out of the outputs (with a warning). With ``--backed`` the counts stay on disk
and are read in chunks: memory grows with the number of cells only through the outputs
(calls, probabilities, latent z₁) and ``obs``.
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
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def run(args) -> None:
    """Annotate as ``args`` say; the heavy libraries are imported only here."""
    from pyro_scvae.folders import atomic_output_dir, check_output_dir

    inputs = [args.adata, args.model]
    check_output_dir(args.out, inputs)  # before the model and the data are read

    from pyro_scvae.api import PyroSCVAE
    from pyro_scvae.errors import InputError
    from pyro_scvae.outputs import annotate_and_write, json_ready, score_labelled_query
    from pyro_scvae.preprocess import backed_cells, check_backed_layer, drop_empty_cells, read_adata

    check_backed_layer(args.backed, args.layer)
    model = PyroSCVAE.load(args.model, device=args.device)
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
    settings = json_ready({**vars(args), "classes": model.classes})
    metrics = None
    with atomic_output_dir(args.out, "predict", inputs) as out:
        annotate_and_write(
            model, adata, settings, out, args.min_confidence, cells, threads=args.threads
        )
        if args.labels_key is not None:
            metrics = score_labelled_query(adata, args.labels_key, model.classes, out, cells)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if not args.quiet:
        calls = adata.obs["pyro_scvae_prediction"]
        calls = calls if cells is None else calls[cells].cat.remove_unused_categories()
        threads = model.prediction_threads.describe(short=True)
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
