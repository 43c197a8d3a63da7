"""Saving a trained model and loading it again: safetensors weights and a JSON config.

A saved model is a folder of two files: ``weights.safetensors`` (the module's tensors;
the format holds data only, so loading runs no code, unlike a pickle) and
``config.json`` (the architecture, classes, genes, batches, set-up, training settings
and history). A seed ensemble adds ``member_1.safetensors`` … for its other members.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from pyro_scvae import __version__
from pyro_scvae.config import MAX_ENSEMBLE, ModelConfig, TrainingConfig
from pyro_scvae.errors import InputError
from pyro_scvae.folders import atomic_output_dir, write_atomically
from pyro_scvae.model import HierarchicalVAE
from pyro_scvae.novelty import NoveltyReference
from pyro_scvae.training import History, resolve_device

if TYPE_CHECKING:
    from pyro_scvae.api import PyroSCVAE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def member_file(member: int) -> str:
    """The weights file of ensemble member ``member`` (0 is :data:`WEIGHTS_FILE`)."""
    return WEIGHTS_FILE if member == 0 else f"member_{member}.safetensors"


def tensors(module: torch.nn.Module) -> bytes:
    """A module's state as safetensors bytes."""
    return save_safetensors(
        {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    )


def save_model(model: PyroSCVAE, directory: str | Path, overwrite: bool = False) -> None:
    """Write ``model``'s weights and config into ``directory``, all at once.

    The files are written into a new folder beside ``directory`` that replaces it at the
    end (:func:`~pyro_scvae.folders.atomic_output_dir`), with the marker of a folder
    pyro_scvae wrote and the permissions of the umask.

    Raises
    ------
    InputError
        If ``directory`` exists and is not empty, unless ``overwrite``; even then, if it
        holds anything pyro_scvae did not write there (see :mod:`pyro_scvae.folders`).
    """
    directory = Path(directory)
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise InputError(f"{directory} exists and is not empty; pass overwrite=True")
    members = [model.module, *model.extra_members]
    config = {
        "pyro_scvae_version": __version__,  # of the package that saved it
        "model": model.config.to_dict(),
        "classes": model.classes,
        "genes": model.genes,
        "batch_categories": model.batch_categories,
        "setup": model.setup,
        "seed": model.seed,
        "calibration": {"temperature": model.temperature},
        "ensemble": {
            "members": len(members),
            "summary": model.ensemble_summary,
        },
        "novelty": None if model.novelty is None else model.novelty.to_dict(),
        "mapping": getattr(model, "mapping", None),  # set by PyroSCVAE.map_query
        "selection": selection_summary(model),
        "training": None if model.training_config is None else model.training_config.to_dict(),
        "history": None if model.history is None else asdict(model.history),
    }
    with atomic_output_dir(directory, "save", option="model folder") as staging:
        for index, module in enumerate(members):
            write_atomically(staging / member_file(index), tensors(module))
        write_atomically(staging / CONFIG_FILE, json.dumps(config, indent=1).encode())


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
    """A ``cls`` (a :class:`~pyro_scvae.api.PyroSCVAE`) from a folder of :func:`save_model`.

    Only JSON and safetensors are read, so loading runs no code. Everything is checked
    against what this version saves: the keys of ``config.json`` and their types, the
    lengths of the gene, class and batch lists, and the names and shapes of the tensors.

    Raises
    ------
    InputError
        Naming the file and what is wrong with it, for a missing folder or file, invalid
        JSON, unknown or missing settings, lists of the wrong length, or weights that are
        unreadable, missing, extra, of the wrong shape or not finite.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"model folder not found: {directory}")
    config = read_config(directory / CONFIG_FILE)
    model = cls.__new__(cls)
    model.config = model_config(config, directory / CONFIG_FILE)
    model.classes = config["classes"]
    model.genes = config["genes"]
    model.batch_categories = config["batch_categories"]
    model.setup = config["setup"]
    model.seed = config["seed"]
    model.temperature = float(config.get("calibration", {}).get("temperature", 1.0))
    novelty = config.get("novelty")  # absent in models saved before novelty scores
    model.novelty = None if novelty is None else NoveltyReference.from_dict(novelty)
    model.mapping = config.get("mapping")
    model.training_config = _settings(TrainingConfig, config, "training", directory / CONFIG_FILE)
    model.history = _settings(History, config, "history", directory / CONFIG_FILE)
    model.adata = None
    n_library = max(1, model.config.n_batches)
    ensemble = config.get("ensemble") or {}  # absent in models saved before ensembles
    members = []
    for index in range(ensemble.get("members", 1)):
        module = HierarchicalVAE(
            model.config,
            torch.zeros(n_library),
            torch.ones(n_library),
            torch.ones(len(model.classes)),
        )
        module.load_state_dict(read_weights(directory / member_file(index), module.state_dict()))
        members.append(module.to(resolve_device(device)).eval())
    model.module, model.extra_members = members[0], members[1:]
    model.ensemble_summary = ensemble.get("summary")
    model.validation_cells = np.array([], dtype=np.int64)
    model.validation_metrics = None
    model.selection = None
    model.train_seconds = None
    model.distributed_run = None
    return model


#: The keys of ``config.json``: those every saved model has, and those it may have.
REQUIRED_KEYS = {"model", "classes", "genes", "batch_categories", "setup", "seed"}
OPTIONAL_KEYS = {
    "novelty",
    "mapping",
    "pyro_scvae_version",
    "calibration",
    "ensemble",
    "selection",
    "training",
    "history",
    "class_prior",
    "balance_classes",
}
SETUP_KEYS = {"labels_key", "unlabeled_category", "batch_key", "layer"}


def read_config(path: Path) -> dict:
    """``config.json`` of a saved model, its keys and plain values checked."""
    if not path.is_file():
        raise InputError(f"{path} is missing: the folder is not a saved pyro_scvae model")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path} cannot be read ({type(error).__name__})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} holds a {type(config).__name__}, not the settings of a model")
    missing, unknown = REQUIRED_KEYS - set(config), set(config) - REQUIRED_KEYS - OPTIONAL_KEYS
    if missing or unknown:
        what = [f"missing {_names(missing)}"] * bool(missing) + [
            f"unknown {_names(unknown)}"
        ] * bool(unknown)
        raise InputError(f"{path}: {' and '.join(what)}; was it written by pyro_scvae?")
    if not isinstance(config["setup"], dict) or set(config["setup"]) != SETUP_KEYS:
        raise InputError(f"{path}: 'setup' must have exactly the keys {_names(SETUP_KEYS)}")
    if not _is_int(config["seed"]):
        raise InputError(f"{path}: 'seed' must be an integer, not {config['seed']!r}")
    temperature = (config.get("calibration") or {}).get("temperature", 1.0)
    if (
        not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise InputError(f"{path}: the calibration temperature must be a positive number")
    ensemble = config.get("ensemble") or {}
    members = ensemble.get("members", 1) if isinstance(ensemble, dict) else None
    if not _is_int(members) or not 1 <= members <= MAX_ENSEMBLE:
        raise InputError(
            f"{path}: 'ensemble' must give its number of members (1 to {MAX_ENSEMBLE})"
        )
    return config


def model_config(config: dict, path: Path) -> ModelConfig:
    """The :class:`ModelConfig` of ``config``, checked against the gene, class, batch lists."""
    # Models saved before these options existed gave the batch to the encoder, q(l | x)
    # shared the encoder of q(z₁ | x), and p(y) and the class weights were kept apart.
    old_defaults = {
        "encode_batch": True,
        "separate_library_encoder": False,
        "class_prior": config.get("class_prior", "uniform"),
        "balance_classes": config.get("balance_classes", False),
    }
    settings = _settings(ModelConfig, {"model": {**old_defaults, **config["model"]}}, "model", path)
    least = {
        "n_genes": 1,
        "n_classes": 2,
        "n_batches": 0,
        "n_latent": 1,
        "n_hidden": 1,
        "n_layers": 1,
    }
    for name, low in least.items():
        value = getattr(settings, name)
        if not _is_int(value) or value < low:
            raise InputError(
                f"{path}: model setting {name} must be an integer ≥ {low}, not {value!r}"
            )
    if not isinstance(settings.dropout, int | float) or not 0 <= settings.dropout < 1:
        raise InputError(
            f"{path}: model setting dropout must be in [0, 1), not {settings.dropout!r}"
        )
    if not isinstance(settings.alpha, int | float) or not math.isfinite(settings.alpha):
        raise InputError(f"{path}: model setting alpha must be a number, not {settings.alpha!r}")
    if settings.class_prior not in ("uniform", "frequencies"):
        raise InputError(f"{path}: model setting class_prior {settings.class_prior!r} is unknown")
    for key, setting in (
        ("genes", "n_genes"),
        ("classes", "n_classes"),
        ("batch_categories", "n_batches"),
    ):
        names, size = config[key], getattr(settings, setting)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path}: '{key}' must be a list of names")
        if len(names) != size:
            raise InputError(f"{path}: '{key}' lists {len(names)} names but {setting} is {size}")
        if len(set(names)) != len(names):
            raise InputError(f"{path}: '{key}' lists a name twice")
    return settings


def read_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``weights.safetensors``, checked against the model's own (``expected``)."""
    if not path.is_file():
        raise InputError(f"{path} is missing: the folder is not a complete saved model")
    try:
        state = load_file(path)
    except Exception as error:  # safetensors raises its own error types, and OSError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path} cannot be read as safetensors ({reason})") from None
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        what = [f"lacks {_names(missing)}"] * bool(missing) + [
            f"has unknown {_names(extra)}"
        ] * bool(extra)
        raise InputError(f"{path} {' and '.join(what)} (it does not match config.json)")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise InputError(
                f"{path}: tensor {name} has shape {tuple(state[name].shape)}, config.json "
                f"needs {tuple(tensor.shape)}"
            )
        if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            raise InputError(f"{path}: tensor {name} holds NaN or infinite values")
    return state


def _settings(kind: type, config: dict, key: str, path: Path):
    """``kind(**config[key])`` (None stays None), or an InputError naming the bad settings."""
    values = config.get(key)
    if values is None:
        return None
    if not isinstance(values, dict):
        raise InputError(f"{path}: '{key}' must hold settings, not {type(values).__name__}")
    names = {f.name for f in fields(kind)}
    required = {
        f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING
    }
    missing, unknown = required - set(values), set(values) - names
    if missing or unknown:
        what = [f"missing {_names(missing)}"] * bool(missing) + [
            f"unknown {_names(unknown)}"
        ] * bool(unknown)
        raise InputError(f"{path}: '{key}' has {' and '.join(what)}")
    return kind(**values)


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
