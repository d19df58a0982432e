"""An experiment's data: its manifest, pixels and split indices (`load_experiment_data`: real data never falls back
to synthetic, and files changed since the experiment was made are an error), the class-stratified training-set
limit, features addressed by manifest row, and the backbone weights it uses (`experiment_weights`).
Importable from `pattlite.experiments`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.config import SUBSETS
from pattlite.data import load_manifest, load_pixels
from pattlite.data.pixels import UnreadableImagesError
from pattlite.experiment_config import Experiment, bind_root
from pattlite.features import random_backbone_weights
from pattlite.profiles import resolve_weights

SUBSET_SEED = 0  # the training-set limit draws the same images whatever the training seed


def _split_for_fold(manifest: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Re-splits a synthetic CK+ stand-in by subject folds: test = fold, val = next fold, train = rest."""
    folds = manifest["fold"].astype(int)
    out = manifest.copy()
    out["split"] = np.where(folds == fold, "test", np.where(folds == (fold + 1) % 10, "val", "train"))
    for column in SUBSETS:
        if column in out.columns:
            out[column] = False
    out.attrs.update(manifest.attrs)
    return out


def limit_training_rows(y_train, limit: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """Positions (sorted) of at most `limit` training images, each class kept in proportion, seeded."""
    y_train = np.asarray(y_train)
    n = len(y_train)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValueError(f"train_limit {limit!r}: expected a positive int or None")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y_train):
        members = rng.permutation(np.flatnonzero(y_train == label))
        chosen.append(members[: max(1, int(round(limit * len(members) / n)))])
    return np.sort(np.concatenate(chosen))


class DataChangedError(ValueError):
    """The dataset's files changed after the experiment was made (its key names the old files)."""


def load_experiment_data(exp: Experiment, root=None, progress: bool = True) -> dict:
    """Manifest, pixels and split indices of an experiment.

    Real data never falls back to synthetic: a missing dataset raises the reader's
    `DatasetNotFoundError`, which says which dataset, where it looked and how to get it.
    `root` (optional) re-binds the experiment to another dataset folder (`bind_root`).

    Raises:
        DataChangedError: the files under the experiment's root changed since it was made.
    """
    exp = bind_root(exp, root)
    root = exp.data["root"]
    options = dict(exp.source["options"])
    reader = exp.source["dataset"]
    if reader == "synthetic":
        manifest = load_manifest("synthetic", **options)
        if exp.dataset == "ckplus":
            manifest = _split_for_fold(manifest, exp.fold)
    else:
        if exp.dataset == "ckplus":
            options["fold"] = exp.fold
        manifest = load_manifest(reader, root=root, **options)
        now = manifest.attrs["data"]["content"]
        if now != exp.data["content"]:
            raise DataChangedError(
                f"{exp.dataset}: the files under {root} changed after this experiment was made "
                f"(content digest {exp.data['content']}, now {now}); make the experiment again "
                "(rerun the command or the notebook cell) so that its key names the current files"
            )
    classes = tuple(manifest.attrs["classes"])
    if len(classes) != len(config.DATASET_CLASSES[exp.dataset]):
        raise ValueError(
            f"{exp.dataset}: source {exp.source} gives {len(classes)} classes, expected "
            f"{len(config.DATASET_CLASSES[exp.dataset])}"
        )
    split = manifest["split"].to_numpy()
    index = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        if len(index[s]) == 0:
            raise ValueError(f"{exp.dataset} ({exp.source['dataset']}): the {s} split is empty")
    y_all = manifest["y"].to_numpy().astype(np.int64)
    index["train"] = index["train"][limit_training_rows(y_all[index["train"]], exp.train_limit)]
    try:
        pixels = load_pixels(manifest, exp.image_size, progress=progress)
    except UnreadableImagesError as error:  # experiments never drop images: no skip_unreadable here
        raise UnreadableImagesError(
            error.unreadable,
            error.total,
            hint=(
                "Fix or replace these files and run again (edited files are read again); an experiment "
                "never skips images."
            ),
        ) from None
    return {"manifest": manifest, "classes": classes, "pixels": pixels, "y": y_all, "index": index}


class _RowsOf:
    """Features computed for some manifest rows (`used`), addressed by manifest position."""

    def __init__(self, array, used):
        self.array, self.used = array, np.asarray(used)
        self.shape = (len(self.used),) + tuple(array.shape[1:])

    def __getitem__(self, positions):
        if isinstance(positions, slice):
            positions = np.arange(*positions.indices(int(self.used[-1]) + 1))
        local = np.searchsorted(self.used, positions)
        if np.any(self.used[np.minimum(local, len(self.used) - 1)] != positions):
            raise IndexError("features were not computed for some requested manifest rows")
        return _take(self.array, local)


def _take(array, positions):
    """Rows of a (possibly memory-mapped) array; a contiguous range stays a view, not a copy."""
    positions = np.asarray(positions)
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
        return array[positions[0] : positions[0] + len(positions)]
    return np.asarray(array[positions])


def experiment_weights(exp: Experiment, data: dict, progress: bool = True):
    """The backbone weights an experiment uses: resolved file/"imagenet", or a calibrated random backbone."""
    if exp.weights is not None:
        return resolve_weights(exp.weights)
    train_rows = data["index"]["train"]
    rng = np.random.default_rng(exp.weights_seed)
    chosen = np.sort(rng.permutation(train_rows)[: exp.bn_calibration_images])
    return random_backbone_weights(exp.weights_seed, np.asarray(data["pixels"][chosen]), exp.resize_to)
