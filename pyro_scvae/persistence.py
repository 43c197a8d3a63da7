"""Saving a trained model and loading it again: safetensors weights and a JSON config.

A saved model is a folder of two files: ``weights.safetensors`` (the module's tensors;
the format holds data only, so loading runs no code, unlike a pickle) and
``config.json`` (the architecture, classes, genes, batches, set-up, training settings
and history).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pyro_scvae import __version__
from pyro_scvae.config import ModelConfig, TrainingConfig
from pyro_scvae.errors import InputError
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.novelty import NoveltyReference
from pyro_scvae.training import History, resolve_device

if TYPE_CHECKING:
    from pyro_scvae.api import PyroSCVAE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def save_model(model: PyroSCVAE, directory: str | Path, overwrite: bool = False) -> None:
    """Write ``model``'s weights and config into ``directory``.

    Raises
    ------
    InputError
        If ``directory`` exists and is not empty, unless ``overwrite``.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise InputError(f"{directory} exists and is not empty; pass overwrite=True")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    config = {
        "pyro_scvae_version": __version__,  # of the package that saved it
        "model": model.config.to_dict(),
        "classes": model.classes,
        "genes": model.genes,
        "batch_categories": model.batch_categories,
        "setup": model.setup,
        "seed": model.seed,
        "calibration": {"temperature": model.temperature},
        "novelty": None if model.novelty is None else model.novelty.to_dict(),
        "mapping": getattr(model, "mapping", None),  # set by PyroSCVAE.map_query
        "selection": selection_summary(model),
        "training": None if model.training_config is None else model.training_config.to_dict(),
        "history": None if model.history is None else asdict(model.history),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1))


def selection_summary(model: PyroSCVAE) -> dict | None:
    """What the first fit chose (:class:`~pyro_scvae.fitting.Selection`), without its history."""
    selection = getattr(model, "selection", None)
    if selection is None:
        return None
    return {
        "best_epoch": selection.best_epoch,
        "stopped_epoch": selection.stopped_epoch,
        "temperature": selection.temperature,
        "scores": selection.scores,
        "seconds": selection.seconds,
    }


def load_model(cls: type[PyroSCVAE], directory: str | Path, device: str = "auto") -> PyroSCVAE:
    """A ``cls`` (a :class:`~pyro_scvae.api.PyroSCVAE`) from a folder of :func:`save_model`."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise InputError(f"{directory} is not a saved pyro_scvae model (no {CONFIG_FILE})")
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = cls.__new__(cls)
    # Models saved before these options existed gave the batch to the encoder, q(l | x)
    # shared the encoder of q(z₁ | x), and p(y) and the class weights were kept apart.
    old_defaults = {
        "encode_batch": True,
        "separate_library_encoder": False,
        "class_prior": config.get("class_prior", "uniform"),
        "balance_classes": config.get("balance_classes", False),
    }
    model.config = ModelConfig(**{**old_defaults, **config["model"]})
    model.classes = config["classes"]
    model.genes = config["genes"]
    model.batch_categories = config["batch_categories"]
    model.setup = config["setup"]
    model.seed = config["seed"]
    model.temperature = float(config.get("calibration", {}).get("temperature", 1.0))
    novelty = config.get("novelty")  # absent in models saved before novelty scores
    model.novelty = None if novelty is None else NoveltyReference.from_dict(novelty)
    model.mapping = config.get("mapping")
    model.training_config = config["training"] and TrainingConfig(**config["training"])
    model.history = config["history"] and History(**config["history"])
    model.adata = None
    state = load_file(directory / WEIGHTS_FILE)
    n_library = state["library_loc"].shape[0]
    model.module = HierarchicalVAE(
        model.config,
        torch.zeros(n_library),
        torch.ones(n_library),
        torch.ones(len(model.classes)),
    )
    model.module.load_state_dict(state)
    model.module.to(resolve_device(device)).eval()
    model.validation_cells = np.array([], dtype=np.int64)
    model.validation_metrics = None
    model.selection = None
    model.train_seconds = None
    model.distributed_run = None
    return model
