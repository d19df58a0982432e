"""Dataset manifests: one reader per dataset, one manifest contract (docs/architecture.md).

`load_manifest(dataset, root=None, **options)` returns a pandas DataFrame with one row per image and
the columns `split`, `label`, `y`, `path`, `row`, `image_id` (+ `subject`, `fold` for CK+; +
`occlusion`, `pose30`, `pose45` for RAF-DB and FERPlus). The readers live in `fer2013.py`,
`ferplus.py`, `rafdb.py`, `ckplus.py` (and `synthetic.py`); the RAN challenging-condition lists in
`subsets.py`; Tables 1-3 of the paper in `tables.py`. data/README.md says where to get each dataset
and how to lay it out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError, DataWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
_BASE_COLUMNS = ("split", "label", "y", "path", "row", "image_id")


def load_manifest(dataset: str, root=None, **options) -> pd.DataFrame:
    """Read a dataset's manifest: one row per image, in the dataset's own order.

    Args:
        dataset: one of `"fer2013"`, `"ferplus"`, `"rafdb"`, `"ckplus"`, `"synthetic"`.
        root: the dataset folder; default `$PATTLITE_<NAME>_ROOT`, else `data/<name>/`.
        **options: reader options (see each reader): e.g. `subsets_dir` (RAF-DB, FERPlus),
            `val_seed`/`val_fraction` (RAF-DB, FER2013 folders without `validation/`),
            `fold`/`fold_seed`/`frames_per_sequence` (CK+).

    Returns:
        A pandas DataFrame (see docs/architecture.md, "Manifests"). For a real dataset,
        `df.attrs["data"]` is its `pattlite.data.fingerprint.dataset_identity` (root, stat
        fingerprint and content digest of the files read, file count, bytes). Data problems worth knowing
        (duplicate rows, subset-list entries that match no test image, ...) are issued as `DataWarning`s
        naming file and line, and kept in
        `df.attrs["warnings"]`.

    Raises:
        ValueError: unknown dataset name or option.
        DatasetNotFoundError: a folder or file is missing.
        DatasetFormatError: a file has malformed content (names the file and line).
    """
    config.check_name("dataset", dataset, config.DATASETS)
    if dataset == "synthetic":
        from pattlite.data.synthetic import load_synthetic_manifest

        return load_synthetic_manifest(root, **options)
    if dataset == "fer2013":
        from pattlite.data.fer2013 import read_fer2013 as reader
    elif dataset == "ferplus":
        from pattlite.data.ferplus import read_ferplus as reader
    elif dataset == "rafdb":
        from pattlite.data.rafdb import read_rafdb as reader
    else:
        from pattlite.data.ckplus import read_ckplus as reader
    from pattlite.data.fingerprint import dataset_identity

    # Before reading: a file edited while the reader runs then gives a fingerprint that matches nothing.
    identity = dataset_identity(dataset, root, **options)
    df = reader(config.dataset_root(dataset, root), **options)
    df.attrs["data"] = identity
    return df


def load_pixels(manifest, size, progress=True, **options):
    """Pixels of a manifest as a uint8 array (N, size, size, 3); see `pattlite.data.pixels.load_pixels`
    for the options (`cache_dir`, `skip_unreadable`)."""
    from pattlite.data.pixels import load_pixels as _load_pixels

    return _load_pixels(manifest, size, progress=progress, **options)


def load_synthetic_manifest(root=None, **options):
    """The synthetic stand-in dataset's manifest; see `pattlite.data.synthetic`."""
    from pattlite.data.synthetic import load_synthetic_manifest as _load

    return _load(root, **options)


def __getattr__(name):
    # Tables are re-exported lazily so that `import pattlite.data` stays light.
    if name in ("table1", "table2", "table3", "published_tables"):
        from pattlite.data import tables

        return getattr(tables, name)
    raise AttributeError(f"module 'pattlite.data' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Helpers shared by the readers.


def finish_manifest(records: pd.DataFrame, dataset: str, source: str, extra_columns=()) -> pd.DataFrame:
    """Validate a reader's rows, add `y`, fix column order and dtypes, set `df.attrs`."""
    classes = config.DATASET_CLASSES[dataset]
    unknown = sorted(set(records["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{dataset}: labels {unknown} are not in the class list {classes}")
    bad_splits = sorted(set(records["split"]) - set(SPLITS))
    if bad_splits:
        raise ValueError(f"{dataset}: splits {bad_splits} are not among {SPLITS}")
    df = records.reset_index(drop=True).copy()
    df["y"] = df["label"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    df["row"] = df["row"].astype("int64")
    for column in ("split", "label", "path", "image_id"):
        df[column] = df[column].astype(str)
    df = df[list(_BASE_COLUMNS) + [c for c in extra_columns]]
    df.attrs.update(dataset=dataset, classes=tuple(classes), synthetic=False, source=source)
    df.attrs.setdefault("warnings", [])
    return df


def data_warning(df: pd.DataFrame, message: str, stacklevel: int = 3) -> None:
    """Issue a `DataWarning` (printed by the CLI, shown by notebooks) and keep it in `df.attrs["warnings"]`."""
    import warnings

    df.attrs.setdefault("warnings", []).append(message)
    warnings.warn(message, DataWarning, stacklevel=stacklevel)


def stratified_holdout(labels, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing round(fraction * n_c) items of each class c, seeded.

    Classes are visited in sorted order and each draws from its own permutation of one
    `numpy.random.default_rng(seed)` stream, so the choice depends only on the labels and the seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        take = int(round(fraction * len(members)))
        chosen[rng.permutation(members)[:take]] = True
    return chosen


def scan_class_folders(dataset: str, split_dir: Path, folder_to_label: dict, expected: str):
    """List (label, path) for every image under `split_dir/<class folder>/`, class by class.

    Class folders are read in the dataset's folder-name order (sorted), files sorted by name.
    A folder whose name is not a known class is an error naming it and the valid names.
    """
    if not split_dir.is_dir():
        raise DatasetNotFoundError(dataset, split_dir, expected)
    rows = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        key = class_dir.name.lower()
        if key not in folder_to_label:
            raise DatasetFormatError(
                class_dir,
                None,
                f"unknown class folder {class_dir.name!r}; expected one of {sorted(folder_to_label)}",
            )
        for image in sorted(class_dir.iterdir()):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                rows.append((folder_to_label[key], str(image.resolve())))
    if not rows:
        raise DatasetNotFoundError(dataset, split_dir, expected, detail="No images found in its class folders.")
    return rows


def reject_unknown_options(dataset: str, options: dict, allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{dataset}: unknown option(s) {unknown}; valid options: {', '.join(sorted(allowed))}")


__all__ = [
    "load_manifest",
    "load_pixels",
    "load_synthetic_manifest",
    "table1",
    "table2",
    "table3",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "DataWarning",
]
