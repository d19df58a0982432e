"""FER2013 reader: Kaggle's `fer2013.csv`, or a Kaggle image-folder copy.

Layouts (root = the dataset folder, default `data/fer2013/`):

1. `fer2013.csv` (columns `emotion,pixels,Usage`; 35,887 rows). `Usage` Training -> train,
   PublicTest -> val, PrivateTest -> test. Rows that repeat an earlier row exactly are kept (the
   published split sizes count them; the full file has 1,231) and named in a warning. `emotion` 0 Angry,
   1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral, mapped to the canonical names. `path` = the CSV
   file, `row` = the data row
   index (0-based, header excluded), `image_id` = `row<N>`. Rows keep the CSV's order.
2. Image folders `train/<class>/*.jpg`, `test/<class>/*.jpg` and optionally `validation/<class>/`
   (or `val/`), class folders angry, disgust, fear, happy, neutral, sad, surprise. Without a
   validation folder, a stratified `val_fraction` (default 0.1) of train, seeded by `val_seed`
   (default 0), becomes val (`pattlite.data.common.stratified_holdout`). Rows are class-grouped.

The CSV is preferred when both are present. Options: `val_seed`, `val_fraction` (folder layout only).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pattlite.data.common import (
    data_warning,
    finish_manifest,
    reject_unknown_options,
    scan_class_folders,
    stratified_holdout,
)
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError, read_csv_table, require_file

DATASET = "fer2013"
CSV_NAME = "fer2013.csv"
# The CSV's emotion numbering, mapped to canonical names.
FER2013_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
PIXELS_PER_IMAGE = 48 * 48
FOLDER_TO_LABEL = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "surprise": "surprise",
    # canonical names too, for copies that use them
    "anger": "anger",
    "happiness": "happiness",
    "sadness": "sadness",
}
EXPECTED_LAYOUT = (
    f"{CSV_NAME} (columns emotion,pixels,Usage) or image folders train/<class>/ and test/<class>/ "
    "(optionally validation/<class>/), class folders angry, disgust, fear, happy, neutral, sad, surprise"
)


def read_fer2013_csv_table(csv_path: Path, columns=("emotion", "pixels", "Usage")) -> pd.DataFrame:
    """The CSV as strings, with its required columns checked (error names the file and line 1)."""
    require_file(DATASET, csv_path, EXPECTED_LAYOUT)
    table = read_csv_table(csv_path)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetFormatError(csv_path, 1, f"header lacks column(s) {missing}; expected emotion,pixels,Usage")
    return table


def _first_bad(mask, table, csv_path, problem):
    if mask.any():
        index = int(mask.to_numpy().nonzero()[0][0])
        # +2: line 1 is the header, data row 0 is line 2.
        raise DatasetFormatError(csv_path, index + 2, problem(index))


def read_fer2013_csv(csv_path: Path) -> pd.DataFrame:
    """Manifest of the original `fer2013.csv` layout."""
    table = read_fer2013_csv_table(csv_path)
    emotion = table["emotion"].str.strip()
    valid_emotions = {str(i) for i in range(len(FER2013_EMOTIONS))}
    _first_bad(
        ~emotion.isin(valid_emotions),
        table,
        csv_path,
        lambda i: f"emotion {emotion.iloc[i]!r}; expected an integer 0-6",
    )
    usage = table["Usage"].str.strip()
    _first_bad(
        ~usage.isin(USAGE_TO_SPLIT.keys()),
        table,
        csv_path,
        lambda i: f"Usage {usage.iloc[i]!r}; expected one of {list(USAGE_TO_SPLIT)}",
    )
    pixel_counts = table["pixels"].str.split().str.len()
    _first_bad(
        pixel_counts != PIXELS_PER_IMAGE,
        table,
        csv_path,
        lambda i: f"{pixel_counts.iloc[i]} pixel values; expected {PIXELS_PER_IMAGE} (48x48)",
    )
    records = pd.DataFrame(
        {
            "split": usage.map(USAGE_TO_SPLIT),
            "label": emotion.astype(int).map(dict(enumerate(FER2013_EMOTIONS))),
            "path": str(Path(csv_path).resolve()),
            "row": range(len(table)),
            "image_id": [f"row{i}" for i in range(len(table))],
        }
    )
    df = finish_manifest(records, DATASET, f"fer2013.csv ({csv_path})")
    repeats = duplicate_rows(table, ("emotion", "pixels", "Usage"))
    if repeats:
        listed = ", ".join(f"line {line} repeats line {first}" for line, first in repeats[:5])
        data_warning(
            df,
            f"{csv_path}: {len(repeats)} data row(s) repeat an earlier row exactly (emotion, "
            f"pixels and Usage), {listed}{' ...' if len(repeats) > 5 else ''}; all rows are "
            "kept (the published split sizes count them)",
        )
    return df


def duplicate_rows(table: pd.DataFrame, columns) -> list[tuple[int, int]]:
    """(line, line of its first occurrence) of each row that repeats an earlier one in `columns`
    (1-based file lines, header on line 1)."""
    frame = table[list(columns)].apply(lambda column: column.str.strip())
    repeated = frame.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return []
    first = frame.reset_index(drop=True).reset_index().groupby(list(columns), sort=False)["index"].transform("min")
    return [(int(i) + 2, int(first.iloc[i]) + 2) for i in repeated.nonzero()[0]]


def _folder_split_dir(root: Path, names) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def read_class_folder_splits(
    dataset, root, folder_to_label, expected, val_seed=0, val_fraction=0.1, val_names=("validation", "val", "valid")
):
    """Rows (split, label, path) of a `train/`, [`validation/`], `test/` class-folder copy.

    Without a validation folder, a seeded stratified `val_fraction` of train becomes val.
    """
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DatasetNotFoundError(dataset, root, expected)
    train = scan_class_folders(dataset, root / "train", folder_to_label, expected)
    test = scan_class_folders(dataset, root / "test", folder_to_label, expected)
    val_dir = _folder_split_dir(root, val_names)
    train_frame = pd.DataFrame(train, columns=["label", "path"]).assign(split="train")
    if val_dir is not None:
        note = f"val = {val_dir.name}/"
        val_frame = pd.DataFrame(
            scan_class_folders(dataset, val_dir, folder_to_label, expected), columns=["label", "path"]
        ).assign(split="val")
    else:
        held_out = stratified_holdout(train_frame["label"], val_fraction, val_seed)
        train_frame.loc[held_out, "split"] = "val"
        val_frame = train_frame.iloc[:0]
        note = f"val = stratified {val_fraction:g} of train, seed {val_seed}"
    frame = pd.concat(
        [train_frame, val_frame, pd.DataFrame(test, columns=["label", "path"]).assign(split="test")], ignore_index=True
    )
    frame["row"] = -1
    frame["image_id"] = frame["path"].map(lambda p: Path(p).name)
    return frame, note


def read_fer2013(root, **options) -> pd.DataFrame:
    """FER2013 manifest from `root` (a folder, or the CSV file itself); see the module docstring."""
    reject_unknown_options(DATASET, options, ("val_seed", "val_fraction"))
    root = Path(root)
    if root.is_file():
        return read_fer2013_csv(root)
    if (root / CSV_NAME).is_file():
        return read_fer2013_csv(root / CSV_NAME)
    if not root.is_dir():
        raise DatasetNotFoundError(DATASET, root, EXPECTED_LAYOUT)
    frame, note = read_class_folder_splits(
        DATASET,
        root,
        FOLDER_TO_LABEL,
        EXPECTED_LAYOUT,
        val_seed=options.get("val_seed", 0),
        val_fraction=options.get("val_fraction", 0.1),
    )
    return finish_manifest(frame, DATASET, f"image folders ({root}; {note})")
