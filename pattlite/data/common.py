"""Helpers the dataset readers share: the manifest's finishing touches (`finish_manifest`), `DataWarning`s kept
in `df.attrs` (`data_warning`), the seeded per-class validation hold-out (`stratified_holdout`), class-folder
scanning and option checks. Below every reader; `pattlite.data` re-exports these names.
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
