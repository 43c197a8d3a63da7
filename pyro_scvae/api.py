"""The user-facing class: from an AnnData to cell-type annotations, in the scvi-tools manner.

Examples
--------
>>> PyroSCVAE.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
>>> model = PyroSCVAE(adata)
>>> model.fit()
>>> probabilities = model.predict(soft=True)        # cells × classes DataFrame
>>> adata.obsm["X_pyro_scvae"] = model.get_latent_representation()
>>> model.save("my_model/")
>>> model = PyroSCVAE.load("my_model/")
>>> model.predict(new_adata)                          # genes matched by name
"""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pyro_scvae.calibration import softmax
from pyro_scvae.config import ModelConfig, TrainingConfig, default_epochs, defaults
from pyro_scvae.data import (
    BackedCounts,
    CellData,
    class_prior_and_weights,
    count_matrix,
    encode_labels,
    library_prior,
    take_rows,
)
from pyro_scvae.errors import InputError, PyroSCVAEWarning
from pyro_scvae.fitting import fit_ensemble, member_seed
from pyro_scvae.genes import match_genes
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.novelty import NoveltyReference, fit_novelty
from pyro_scvae.persistence import load_model, save_model
from pyro_scvae.threads import ThreadPolicy
from pyro_scvae.training import History, train

SETUP_KEY = "_pyro_scvae_setup"
#: The batch of cells without a value in the batch column (NaN, None).
MISSING_BATCH = "nan"
#: Below this median number of cells per batch, the batch column is questioned (a warning):
#: a column of one value per cell or per few cells is more likely a barcode or a sample id.
MIN_CELLS_PER_BATCH = 10
UNASSIGNED = "Unassigned"
#: The call of a cell unlike every reference type (``predict(..., novelty=True)``).
NOVEL = "novel"
#: The constructor's defaults: those of :class:`~pyro_scvae.config.ModelConfig`.
MODEL_DEFAULTS = defaults(ModelConfig)
#: ``fit``'s defaults: those of :class:`~pyro_scvae.config.TrainingConfig`.
TRAINING_DEFAULTS = defaults(TrainingConfig)

__all__ = ["PyroSCVAE", "default_epochs", "match_genes", "NOVEL", "UNASSIGNED"]


class PyroSCVAE:
    """Semi-supervised cell-type annotation with the hierarchical VAE of MODEL.md.

    Parameters
    ----------
    adata
        Raw counts, registered with :meth:`setup_anndata`. An AnnData opened with
        ``anndata.read_h5ad(path, backed="r")`` (or one subset of it, e.g.
        ``adata[:, genes]``) keeps ``.X`` on disk: training reads the rows of each
        minibatch from the file and every full pass goes in chunks.
    n_latent, n_hidden, n_layers, dropout, alpha, encode_batch, separate_library_encoder
        Architecture and classification weight, see :class:`~pyro_scvae.model.ModelConfig`.
    class_prior
        p(y): ``"frequencies"`` (the default: label frequencies of the labelled cells, each
        count plus one) or ``"uniform"``, see :class:`~pyro_scvae.model.ModelConfig`.
    balance_classes
        Weigh the classification term of each labelled cell by a power of the inverse
        frequency of its class, ``n_y ** -p`` scaled to mean 1 over the labelled cells:
        ``True`` (the default) is p = 1 (rare types count as much as common ones in
        total), a number in [0, 1] is p itself (0.5 balances half-way, on a log scale),
        ``False`` is p = 0: MODEL.md's plain α · log q(y | z₁). The default was chosen on
        the benchmark tasks over three seeds (``benchmarks/tuning.md``).
    seed
        Seeds the initial weights (and, unless ``fit`` is given another, training).
    """

    def __init__(
        self,
        adata: ad.AnnData,
        n_latent: int = MODEL_DEFAULTS["n_latent"],
        n_hidden: int = MODEL_DEFAULTS["n_hidden"],
        n_layers: int = MODEL_DEFAULTS["n_layers"],
        dropout: float = MODEL_DEFAULTS["dropout"],
        alpha: float = MODEL_DEFAULTS["alpha"],
        encode_batch: bool = MODEL_DEFAULTS["encode_batch"],
        separate_library_encoder: bool = MODEL_DEFAULTS["separate_library_encoder"],
        class_prior: str = MODEL_DEFAULTS["class_prior"],
        balance_classes: bool | float = MODEL_DEFAULTS["balance_classes"],
        seed: int = 0,
    ) -> None:
        if SETUP_KEY not in adata.uns:
            raise InputError("call PyroSCVAE.setup_anndata(adata, labels_key=...) first")
        self.setup = dict(adata.uns[SETUP_KEY])
        self.adata = adata
        self.seed = seed
        counts = count_matrix(adata, self.setup["layer"])
        labels, self.classes = encode_labels(
            adata.obs[self.setup["labels_key"]], self.setup["unlabeled_category"]
        )
        if (labels >= 0).sum() == 0:
            raise InputError(f"no cell has a label in obs['{self.setup['labels_key']}']")
        if len(self.classes) < 2:
            raise InputError(
                f"obs['{self.setup['labels_key']}'] has a single class ({self.classes[0]}); "
                "annotation needs at least two"
            )
        self.batch_categories = self._batch_categories(adata)
        batches = self._batch_codes(adata)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        if (totals == 0).any():
            warnings.warn(
                f"{int((totals == 0).sum())} cells have zero counts; they are left out of training",
                PyroSCVAEWarning,
                stacklevel=2,
            )
        self.data = CellData(counts, labels, batches)
        self.training_cells = np.flatnonzero(totals > 0)
        n_batches = len(self.batch_categories)
        loc, scale = library_prior(totals, batches, n_batches)
        prior, weights = class_prior_and_weights(
            labels, len(self.classes), class_prior, balance_classes
        )
        self.config = ModelConfig(
            n_genes=counts.shape[1],
            n_classes=len(self.classes),
            n_batches=n_batches,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout=dropout,
            alpha=alpha,
            encode_batch=bool(encode_batch),
            separate_library_encoder=bool(separate_library_encoder),
            class_prior=class_prior,
            balance_classes=balance_classes,
        )
        self._module_arguments = (loc, scale, prior, weights)
        self.module = self.new_module()
        self.extra_members: list[HierarchicalVAE] = []  # members 1 … of a seed ensemble
        self.ensemble_summary: dict | None = None  # what fit(ensemble=N > 1) found
        self.genes = list(map(str, adata.var_names))
        self.history: History | None = None
        self.training_config: TrainingConfig | None = None
        self.validation_cells = np.array([], dtype=np.int64)
        self.validation_metrics: dict | None = None
        self.temperature = 1.0  # of q(y | z₁)'s logits, fitted on held-out cells in fit()
        self.selection = None  # what the first fit found (pyro_scvae.fitting.Selection)
        self.epochs_trained = 0  # by every fit of the last fit() together
        self.train_seconds: float | None = None
        self.distributed_run = None  # a DistributedRun after training through Lightning
        self.prediction_threads: ThreadPolicy | None = None  # of the last prediction
        self.novelty: NoveltyReference | None = None  # set by fit (pyro_scvae.novelty)
        self.mapping: dict | None = None  # what map_query did, on a mapped model

    def new_module(self, member: int = 0) -> HierarchicalVAE:
        """The networks with their initial weights (seeded by ``seed``): the untrained model.

        ``member`` m > 0: those of member m of a seed ensemble (seeded by ``seed + m``).
        """
        torch.manual_seed(member_seed(self.seed, member))
        return HierarchicalVAE(self.config, *self._module_arguments)

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def setup_anndata(
        adata: ad.AnnData,
        labels_key: str,
        unlabeled_category: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
    ) -> None:
        """Register where the labels, batches and counts of ``adata`` are.

        Parameters
        ----------
        labels_key
            ``obs`` column of cell types; missing values mean "no label".
        unlabeled_category
            A label value that also means "no label".
        batch_key
            Optional ``obs`` column of a categorical batch covariate: an input of the
            decoder (and of the encoder with ``encode_batch=True``), and the library-size
            prior is estimated per batch.
        layer
            Layer holding the raw counts (``.X`` when None).
        """
        for role, key in (("labels", labels_key), ("batch", batch_key)):
            if key is not None and key not in adata.obs:
                raise InputError(
                    f"{role} column '{key}' not found in obs; columns are: "
                    + ", ".join(map(str, adata.obs.columns))
                )
        if layer is not None and layer not in adata.layers:
            raise InputError(f"layer '{layer}' not found; layers are: {list(adata.layers)}")
        adata.uns[SETUP_KEY] = {
            "labels_key": labels_key,
            "unlabeled_category": unlabeled_category,
            "batch_key": batch_key,
            "layer": layer,
        }

    def _batch_categories(self, adata: ad.AnnData) -> list[str]:
        """The batches of the training cells; cells without a value form batch ``"nan"``."""
        key = self.setup["batch_key"]
        if key is None:
            return []
        values = batch_values(adata.obs[key])
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing:
            warnings.warn(
                f"{n_missing} cells have no value in obs['{key}'] (NaN); they form a batch "
                f"of their own, '{MISSING_BATCH}'",
                PyroSCVAEWarning,
                stacklevel=3,
            )
        categories, sizes = np.unique(values, return_counts=True)
        if len(categories) > 1 and np.median(sizes) < MIN_CELLS_PER_BATCH:
            warnings.warn(
                f"obs['{key}'] has {len(categories)} batches for {len(values)} cells (median "
                f"{np.median(sizes):g} cells per batch); a batch's effect is learnt from its own "
                f"cells, so batches of a few cells are not corrected: is '{key}' a batch column?",
                PyroSCVAEWarning,
                stacklevel=3,
            )
        return categories.tolist()  # sorted, as np.unique gives them

    def _batch_codes(self, adata: ad.AnnData) -> np.ndarray | None:
        """Codes of ``adata``'s batches; -1 (with a warning) for batches the model lacks.

        A cell of an unseen batch is encoded and decoded with the average of the training
        batches' effects (:meth:`~pyro_scvae.model.HierarchicalVAE.batch_inputs`); it is
        never put in one training batch. :meth:`map_query` learns the new batches instead.
        """
        key = self.setup.get("batch_key")
        if key is None or not self.batch_categories:
            return None
        if key not in adata.obs:
            raise InputError(f"batch column '{key}' not found in obs of the data to annotate")
        values = batch_values(adata.obs[key])
        index = {name: i for i, name in enumerate(self.batch_categories)}
        unknown = ~np.isin(values, self.batch_categories)
        if unknown.any():
            names = ", ".join(f"'{v}'" for v in sorted(set(values[unknown])))
            without = int((unknown & (values == MISSING_BATCH)).sum())
            note = f"; {without} of them have no batch value" if without else ""
            warnings.warn(
                f"{int(unknown.sum())} cells belong to batches the model was not trained on "
                f"({names}{note}); they are encoded and decoded with the average of the "
                "training batches' effects. To learn their own, map them first: "
                "PyroSCVAE.map_query (predict --fine-tune)",
                PyroSCVAEWarning,
                stacklevel=3,
            )
        return np.array([index.get(v, -1) for v in values], dtype=np.int64)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        epochs: int | None = None,
        batch_size: int = TRAINING_DEFAULTS["batch_size"],
        lr: float = TRAINING_DEFAULTS["lr"],
        lr_schedule: str = TRAINING_DEFAULTS["lr_schedule"],
        kl_warmup: float = TRAINING_DEFAULTS["kl_warmup"],
        seed: int | None = None,
        device: str = TRAINING_DEFAULTS["device"],
        validation_fraction: float = TRAINING_DEFAULTS["validation_fraction"],
        early_stopping: bool = TRAINING_DEFAULTS["early_stopping"],
        patience: int | None = TRAINING_DEFAULTS["patience"],
        refit: str = TRAINING_DEFAULTS["refit"],
        calibrate: bool = TRAINING_DEFAULTS["calibrate"],
        labelled_share: float = TRAINING_DEFAULTS["labelled_share"],
        ensemble: int = TRAINING_DEFAULTS["ensemble"],
        progress: bool = True,
        jit: bool = False,
        devices: int = 1,
        accelerator: str = "auto",
        num_nodes: int = 1,
        threads: int | str | None = None,
        novelty_quantile: float | None = None,
    ) -> PyroSCVAE:
        """Train on all cells: labelled ones with their label, the others enumerating y.

        By default a stratified tenth of the labelled cells first has its labels hidden:
        those cells give honest held-out metrics (``validation_metrics``), choose when
        to stop and calibrate the probabilities; then training goes on with every label,
        so the model that annotates has learnt from all of them
        (:mod:`pyro_scvae.fitting`). The settings are those of
        :class:`~pyro_scvae.config.TrainingConfig`.

        Parameters
        ----------
        epochs
            Length of the schedule (the most epochs the first fit may train); by default
            chosen from the number of cells (:func:`~pyro_scvae.config.default_epochs`).
        batch_size
            Cells per minibatch. The default of 512 was chosen on the benchmark tasks
            (``benchmarks/tuning.md``, seventh round): higher macro-F1 than 128 on four
            of six tasks, and 1.3–1.6 times faster.
        lr, lr_schedule
            Learning rate of Adam and its schedule over epochs (``"constant"`` or
            ``"cosine"``).
        kl_warmup
            Fraction of the epochs over which the weight of the KL terms of y, z₂ and l
            rises linearly from 0 to 1 (scvi-tools' KL warm-up; 0 = none), see
            :mod:`pyro_scvae.training`. From then on training maximises MODEL.md's ELBO.
        validation_fraction, early_stopping, patience, refit, calibrate
            How the labels are used (:mod:`pyro_scvae.fitting`): the fraction of labelled
            cells held out at first (0: train once on every label, uncalibrated), whether
            that fit stops early and after how many epochs without improvement, how the
            held-out labels then join (``"continue"``, ``"full"``, ``"none"``), and
            whether q(y | z₁) is temperature-scaled on the held-out cells.
        labelled_share
            Least share of each epoch's minibatches that are labelled (see
            :func:`pyro_scvae.data.minibatches`).
        ensemble
            Fit this many models from seeds ``seed``, ``seed + 1`` … and predict with the
            mean of their probabilities (:func:`~pyro_scvae.fitting.fit_ensemble`); it
            takes as many times as long. The first member gives the latent
            representation, the novelty scores and the marker genes.
        jit
            Compile the loss with ``JitTraceEnum_ELBO`` (see :mod:`pyro_scvae.training`).
        devices, accelerator, num_nodes
            With ``devices > 1``, ``num_nodes > 1`` or an ``accelerator`` other than
            ``"auto"`` (``"cpu"`` or ``"gpu"``), training runs through PyTorch Lightning
            with DDP, one process per device (:mod:`pyro_scvae.distributed`); each
            optimiser step then averages the gradients of ``devices × num_nodes``
            minibatches, and the first fit cannot stop early. Otherwise (the default) it
            runs in this process (:func:`~pyro_scvae.training.train`, on ``device``).
        threads
            torch's CPU threads during training: a number, or ``"auto"`` / None (the
            default): as many as there are free cores and the minibatches can use, often
            one on a shared machine (:mod:`pyro_scvae.threads`). torch's own setting is
            restored afterwards; ``history.threads`` says what each epoch used.
        novelty_quantile
            Quantile of the reference cells' out-of-fold novelty scores above which a cell
            is flagged novel (:meth:`fit_novelty`; None: the default of
            :mod:`pyro_scvae.novelty`).
        """
        seed = self.seed if seed is None else seed
        epochs = default_epochs(len(self.training_cells)) if epochs is None else epochs
        distributed = devices > 1 or num_nodes > 1 or accelerator != "auto"
        self.training_config = TrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            kl_warmup=kl_warmup,
            seed=seed,
            device=device,
            progress=progress,
            jit=jit,
            labelled_share=labelled_share,
            validation_fraction=validation_fraction,
            early_stopping=early_stopping and not distributed,
            patience=patience,
            refit=refit,
            calibrate=calibrate,
            ensemble=ensemble,
        )
        start = time.perf_counter()
        self.distributed_run = None
        run = functools.partial(train, threads=threads)
        if distributed:
            from pyro_scvae.distributed import train_distributed

            if accelerator == "auto" and device != "auto":
                accelerator = "gpu" if device == "cuda" else device  # honour device="cpu"

            def run(module, data, config, on_epoch_end=None, description=""):
                self.distributed_run = train_distributed(
                    module,
                    data,
                    config,
                    devices=devices,
                    accelerator=accelerator,
                    num_nodes=num_nodes,
                )
                return self.distributed_run.history

        self.history = fit_ensemble(self, self.training_config, run)
        self.fit_novelty(novelty_quantile)
        self.train_seconds = time.perf_counter() - start
        return self

    def fit_novelty(self, quantile: float | None = None) -> NoveltyReference:
        """Class centres of z₁ and the novelty threshold from the labelled training cells.

        Called by :meth:`fit`; call it again to move the threshold to another ``quantile``
        of the reference cells' out-of-fold scores (:mod:`pyro_scvae.novelty`).
        """
        if self.adata is None:
            raise InputError("the novelty reference needs the training data (not a loaded model)")
        cells = self.training_cells[self.data.labels[self.training_cells] >= 0]
        batches = None if self.data.batches is None else self.data.batches[cells]
        counts = take_rows(self.data.counts, cells)
        latent = self._encode_chunks(counts, batches, 4096, ensemble=False)[0]
        settings = {} if quantile is None else {"quantile": quantile}
        self.novelty = fit_novelty(
            latent, self.data.labels[cells], len(self.classes), seed=self.seed, **settings
        )
        return self.novelty

    # ------------------------------------------------------------------ query mapping
    def map_query(
        self,
        adata: ad.AnnData,
        epochs: int | None = None,
        freeze_reference: bool = True,
        seed: int = 0,
        batch_size: int = TRAINING_DEFAULTS["batch_size"],
        lr: float = TRAINING_DEFAULTS["lr"],
        device: str = TRAINING_DEFAULTS["device"],
        progress: bool = True,
        threads: int | str | None = None,
    ) -> PyroSCVAE:
        """A new model that also knows the batches of ``adata``, fine-tuned on its cells.

        The batch covariate gains the categories of ``adata``'s batch column (the
        model's ``batch_key``) that the model lacks; the model is then trained on the
        query's ELBO, every cell unlabelled (labels in ``adata`` are not read), with the
        reference's weights frozen: only the new batches' weight columns learn, in the
        decoder and in the encoders, which the result gives the batch as an input if this
        model's did not (:mod:`pyro_scvae.mapping`). In the first half of the epochs only
        the decoder's columns learn, in the second half the encoders' as well. This model
        is left unchanged. The result keeps the reference's temperature and novelty
        reference and predicts on ``adata`` (pass it: the result holds no training data).

        Parameters
        ----------
        epochs
            Fine-tuning epochs, both halves together; by default about 300 gradient steps
            in each (:func:`~pyro_scvae.mapping.fine_tune_epochs`).
        freeze_reference
            Train only the new batches' weights (True), or in the second half every
            weight (False).
        seed, batch_size, lr, device, progress, threads
            As in :meth:`fit` (the KL terms have their full weight from the start).
        """
        from pyro_scvae.mapping import map_query

        return map_query(
            self, adata, epochs, freeze_reference, seed, batch_size, lr, device, progress, threads
        )

    # ------------------------------------------------------------------ inference
    def _probabilities(
        self,
        counts: sp.csr_matrix | BackedCounts,
        batches: np.ndarray | None,
        chunk: int = 4096,
        threads: int | str | None = None,
    ) -> np.ndarray:
        """q(y | z₁) at the posterior mean of z₁, calibrated, ``[cells, classes]``."""
        return softmax(self._encode(counts, batches, chunk, threads)[1], self.temperature)

    def _encode(
        self,
        counts: sp.csr_matrix | BackedCounts,
        batches: np.ndarray | None,
        chunk: int = 4096,
        threads: int | str | None = None,
        ensemble: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of z₁ and the logits of q(y | z₁) there, in chunks, on ``threads``.

        ``prediction_threads`` keeps the :class:`~pyro_scvae.threads.ThreadPolicy` used.
        """
        policy = ThreadPolicy(threads, min(chunk, counts.shape[0]) * counts.shape[1])
        with policy:
            self.prediction_threads = policy
            return self._encode_chunks(counts, batches, chunk, ensemble)

    def _encode_chunks(
        self,
        counts: sp.csr_matrix | BackedCounts,
        batches: np.ndarray | None,
        chunk: int,
        ensemble: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of z₁ ``[cells, d]`` and the classifier's logits ``[cells, K]``.

        With members beyond the first (a seed ensemble) the logits are stacked
        ``[members, cells, K]``, unless ``ensemble=False``; z₁ is the first member's.
        """
        modules = [self.module, *self.extra_members] if ensemble else [self.module]
        device = next(self.module.parameters()).device
        latent, logits = [], [[] for _ in modules]
        for module in modules:
            module.eval()
        for start in range(0, counts.shape[0], chunk):
            rows = slice(start, start + chunk)
            x = torch.from_numpy(counts[rows].toarray()).to(device)  # [chunk, G]
            b = None if batches is None else torch.from_numpy(batches[rows]).to(device)
            for member, module in enumerate(modules):
                z1, chunk_logits = module.encode(x, b)  # [chunk, d], [chunk, K]
                if member == 0:
                    latent.append(z1.cpu().numpy())
                logits[member].append(chunk_logits.cpu().numpy())
        stacked = np.stack([np.concatenate(m) for m in logits])  # [members, cells, K]
        return np.concatenate(latent), stacked[0] if len(modules) == 1 else stacked

    def _query_arrays(
        self, adata: ad.AnnData | None
    ) -> tuple[sp.csr_matrix | BackedCounts, np.ndarray | None]:
        """Counts (genes matched to the model's by name) and batch codes of ``adata``."""
        if adata is None and self.adata is None:
            raise InputError(
                "this model holds no training data (loaded from disk, or mapped): "
                "pass the AnnData to annotate"
            )
        if adata is None or adata is self.adata:
            return self.data.counts, self.data.batches
        counts = match_genes(count_matrix(adata, self.setup["layer"]), adata.var_names, self.genes)
        return counts, self._batch_codes(adata)

    def predict(
        self,
        adata: ad.AnnData | None = None,
        soft: bool = False,
        min_confidence: float = 0.0,
        novelty: bool = False,
        threads: int | str | None = None,
    ) -> pd.DataFrame | pd.Series:
        """Cell types of ``adata`` (the training data by default).

        Parameters
        ----------
        soft
            Return the class probabilities (a cells × classes DataFrame, rows sum to 1).
        min_confidence
            Hard calls whose largest probability is below this become ``"Unassigned"``.
        novelty
            Hard calls of cells unlike every reference type (novelty score above the
            threshold, :meth:`novelty_scores`) become ``"novel"``.
        threads
            torch's CPU threads for the call, or ``"auto"`` / None, as in :meth:`fit`.
        """
        latent, logits = self._encode(*self._query_arrays(adata), threads=threads)
        probabilities = softmax(logits, self.temperature)
        index = (self.adata if adata is None else adata).obs_names
        if soft:
            return pd.DataFrame(probabilities, index=index, columns=self.classes)
        calls = self._hard_calls(probabilities, min_confidence)
        if novelty:
            calls[self._novelty_reference().is_novel(self.novelty.score(latent))] = NOVEL
        return pd.Series(calls, index=index, name="pyro_scvae_prediction")

    def _novelty_reference(self) -> NoveltyReference:
        if self.novelty is None:
            raise InputError(
                "this model has no novelty reference (it was saved before novelty scores "
                "existed, or not fitted); refit it, or call fit_novelty() on its training data"
            )
        return self.novelty

    def novelty_scores(
        self, adata: ad.AnnData | None = None, threads: int | str | None = None
    ) -> pd.DataFrame:
        """How unlike every reference type each cell is (:mod:`pyro_scvae.novelty`).

        Returns a DataFrame with ``novelty`` (the Mahalanobis distance of the posterior
        mean of z₁ to the nearest class centre of the labelled training cells) and
        ``novel`` (the score is above the threshold: by default the 98th percentile of
        the training cells' own out-of-fold scores).
        """
        reference = self._novelty_reference()
        scores = reference.score(self.get_latent_representation(adata, threads=threads))
        index = (self.adata if adata is None else adata).obs_names
        return pd.DataFrame({"novelty": scores, "novel": reference.is_novel(scores)}, index=index)

    def _hard_calls(self, probabilities: np.ndarray, min_confidence: float) -> np.ndarray:
        """The most probable class of each cell, ``"Unassigned"`` below ``min_confidence``."""
        calls = np.array(self.classes, dtype=object)[probabilities.argmax(1)]
        calls[probabilities.max(1) < min_confidence] = UNASSIGNED
        return calls

    def get_latent_representation(
        self, adata: ad.AnnData | None = None, threads: int | str | None = None
    ) -> np.ndarray:
        """Posterior mean of z₁ for each cell, ``[cells, n_latent]`` (for UMAP, clustering).

        For a seed ensemble, that of its first member.
        """
        return self._encode(*self._query_arrays(adata), threads=threads, ensemble=False)[0]

    def annotate(
        self,
        adata: ad.AnnData | None = None,
        min_confidence: float = 0.0,
        threads: int | str | None = None,
        majority_voting: bool = False,
        over_clustering_resolution: float | None = None,
    ) -> ad.AnnData:
        """Write predictions, confidences, class probabilities and z₁ into ``adata`` (in place).

        Adds ``obs["pyro_scvae_prediction"]``, ``obs["pyro_scvae_confidence"]`` (the largest
        probability), ``obsm["pyro_scvae_probabilities"]`` (a cells × classes DataFrame) and
        ``obsm["X_pyro_scvae"]`` (the posterior mean of z₁, for ``sc.pp.neighbors``/UMAP)
        and, where the model has a novelty reference, ``obs["pyro_scvae_novelty"]`` (the
        score) and ``obs["pyro_scvae_novel"]`` (above the threshold), see
        :meth:`novelty_scores`; the calls themselves stay the nearest reference type.
        ``threads`` as in :meth:`predict`.

        With ``majority_voting=True`` also ``obs["pyro_scvae_over_clustering"]`` (Leiden
        clusters of z₁ at CellTypist's resolution for this many cells, or
        ``over_clustering_resolution``) and ``obs["pyro_scvae_majority_voting"]``, the most
        frequent call of each cell's cluster (:mod:`pyro_scvae.voting`).
        """
        latent, logits = self._encode(*self._query_arrays(adata), threads=threads)
        probabilities = softmax(logits, self.temperature)
        adata = self.adata if adata is None else adata
        calls = self._hard_calls(probabilities, min_confidence)
        adata.obs["pyro_scvae_prediction"] = pd.Categorical(calls)
        adata.obs["pyro_scvae_confidence"] = probabilities.max(1)
        adata.obsm["pyro_scvae_probabilities"] = pd.DataFrame(
            probabilities, index=adata.obs_names, columns=self.classes
        )
        adata.obsm["X_pyro_scvae"] = latent
        if self.novelty is not None:
            scores = self.novelty.score(latent)
            adata.obs["pyro_scvae_novelty"] = scores
            adata.obs["pyro_scvae_novel"] = self.novelty.is_novel(scores)
        if majority_voting:
            from pyro_scvae.voting import majority_voting as vote

            voted = vote(latent, calls, over_clustering_resolution, seed=self.seed)
            adata.obs["pyro_scvae_over_clustering"] = pd.Categorical(voted["over_clustering"])
            adata.obs["pyro_scvae_majority_voting"] = pd.Categorical(voted["majority_voting"])
        return adata

    # ------------------------------------------------------------------ criticism
    def posterior_predictive_check(
        self,
        adata: ad.AnnData | None = None,
        n_samples: int = 20,
        max_cells: int = 2000,
        seed: int | None = None,
    ):
        """Compare the counts with counts replicated from the fitted model.

        Draws ``n_samples`` replicated data sets for up to ``max_cells`` random cells of
        ``adata`` (the training cells by default) with ``pyro.infer.Predictive`` and
        compares statistics per gene and per cell (:mod:`pyro_scvae.criticism`).

        Returns
        -------
        A :class:`~pyro_scvae.criticism.PosteriorPredictiveCheck`: ``.summary`` holds the
        numbers (as in metrics.json's ``"ppc"``); draw it with
        :func:`~pyro_scvae.criticism.plot_ppc`.
        """
        from pyro_scvae.criticism import posterior_predictive_check

        counts, batches = self._query_arrays(adata)
        if adata is None or adata is self.adata:  # the cells trained on (no empty ones)
            counts = take_rows(counts, self.training_cells)
            batches = None if batches is None else batches[self.training_cells]
        seed = self.seed if seed is None else seed
        return posterior_predictive_check(
            self.module, counts, batches, n_samples=n_samples, max_cells=max_cells, seed=seed
        )

    def marker_genes(
        self,
        adata: ad.AnnData | None = None,
        calls: np.ndarray | pd.Series | None = None,
        delta: float = 0.25,
        n_samples: int = 2000,
        m_permutation: int = 4000,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Marker genes of each type, one-vs-rest, from the decoded expression ρ(z₁).

        scvi-tools' ``differential_expression(mode="change")`` on this model
        (:mod:`pyro_scvae.markers`): for the cells of each type (by default the model's
        calls on ``adata``, the training data by default) against all other cells, the
        posterior log2 fold change of ρ, ``proba_de`` = P(abs(LFC) ≥ ``delta``) and its
        Bayes factor. Returns one row per (type, gene), ``rank`` 1 the best marker.
        """
        from pyro_scvae.markers import marker_genes

        counts, batches = self._query_arrays(adata)
        if calls is None:
            calls = self.predict(adata).to_numpy()
        seed = self.seed if seed is None else seed
        return marker_genes(
            self.module,
            counts,
            batches,
            np.asarray(calls),
            self.genes,
            delta=delta,
            n_samples=n_samples,
            m_permutation=m_permutation,
            seed=seed,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        """Weights (safetensors) and a JSON config; loading executes no code.

        See :func:`pyro_scvae.persistence.save_model`.
        """
        save_model(self, directory, overwrite)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> PyroSCVAE:
        """A trained model from :meth:`save`, ready for :meth:`predict` on new data.

        See :func:`pyro_scvae.persistence.load_model`.
        """
        return load_model(cls, directory, device)


def batch_values(column: pd.Series) -> np.ndarray:
    """The batch of each cell as text, ``[cells]``; a missing value is :data:`MISSING_BATCH`."""
    return column.astype(object).where(column.notna(), MISSING_BATCH).astype(str).to_numpy()
