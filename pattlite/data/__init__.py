"""Dataset manifests: one reader per dataset, one manifest contract (docs/architecture.md).

`load_manifest(dataset, root=None, **options)` returns a pandas DataFrame with one row per image and
the columns `split`, `label`, `y`, `path`, `row`, `image_id` (+ `subject`, `fold` for CK+; +
`occlusion`, `pose30`, `pose45` for RAF-DB and FERPlus). The readers live in `fer2013.py`,
`ferplus.py`, `rafdb.py`, `ckplus.py` (and `synthetic.py`); the RAN challenging-condition lists in
`subsets.py`; Tables 1-3 of the paper in `tables.py`. data/README.md says where to get each dataset
and how to lay it out.
"""

from __future__ import annotations

import pandas as pd

from pattlite import config

# The readers' shared helpers live in `common` (below the readers); re-exported here for existing callers.
from pattlite.data.common import (  # noqa: F401
    IMAGE_SUFFIXES,
    SPLITS,
    data_warning,
    finish_manifest,
    reject_unknown_options,
    scan_class_folders,
    stratified_holdout,
)
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError, DataWarning


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
