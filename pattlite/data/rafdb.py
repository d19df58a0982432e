"""RAF-DB (basic) reader.

Layouts (root = the dataset folder, default `data/rafdb/`, holding `basic/`, or `basic/` itself):

1. `basic/EmoLabel/list_patition_label.txt` (lines `train_00001.jpg 5`, `test_0001.jpg 4`; 12,271 train
   + 3,068 test) with images in `basic/Image/aligned/train_00001_aligned.jpg` (note the suffix the label
   file lacks) or `basic/Image/original/train_00001.jpg`. Option `images` = "aligned" (default when
   present), "original". `image_id` = the label file's name.
2. A class-folder copy `train/<label>/*.jpg`, `test/<label>/*.jpg`, class folders named by the RAF
   label digit 1-7 or by emotion name.

Labels: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.

RAF-DB has no validation split. A stratified `val_fraction` (default 0.1) of train, drawn with the seed
`val_seed` (default 0) by `pattlite.data.common.stratified_holdout`, becomes val; the paper's 12,271 training
images are train + val here. `val_fraction=0` gives no val split.
Subset columns come from the RAN lists (`RAF_DB_dir/`), option `subsets_dir`; see `pattlite.data.subsets`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pattlite import config
from pattlite.data.common import data_warning, finish_manifest, reject_unknown_options, stratified_holdout
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError, require_files_exist
from pattlite.data.fer2013 import read_class_folder_splits
from pattlite.data.subsets import RAFDB_MINUS_ONE_ORDER, mark_subsets

DATASET = "rafdb"
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic: the release's spelling
RAFDB_LABELS = {i + 1: name for i, name in enumerate(RAFDB_MINUS_ONE_ORDER)}  # 1 surprise ... 7 neutral
FOLDER_TO_LABEL = {
    **{str(k): v for k, v in RAFDB_LABELS.items()},
    **{c: c for c in config.DATASET_CLASSES["rafdb"]},
    "angry": "anger",
    "happy": "happiness",
    "sad": "sadness",
}
EXPECTED_LAYOUT = (
    "basic/EmoLabel/list_patition_label.txt with basic/Image/aligned/*_aligned.jpg (or basic/Image/original/), "
    "or class folders train/<1-7>/ and test/<1-7>/"
)
_LINE = re.compile(r"^((train|test)_\d+)\.jpg\s+(\d+)$")


def _basic_dir(root: Path) -> Path | None:
    for candidate in (root / "basic", root):
        if (candidate / LABEL_FILE).is_file():
            return candidate
    return None


def read_label_file(path: Path):
    """(table, duplicates): image_id, stem, split, label and line number of each line, and one message
    per repeated name.

    Malformed lines raise DatasetFormatError naming the file and line; a repeated name is kept once.
    """
    rows, seen, duplicates = [], {}, []
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if not match or int(match.group(3)) not in RAFDB_LABELS:
            raise DatasetFormatError(
                path,
                number,
                f"malformed line {line.strip()!r}; "
                "expected '<train|test>_NNNN.jpg <label 1-7>' (e.g. 'train_00001.jpg 5')",
            )
        stem, label = match.group(1), RAFDB_LABELS[int(match.group(3))]
        if stem in seen:
            first_number, first_label = seen[stem]
            kind = "again" if first_label == label else f"again with label {label!r} (first: {first_label!r})"
            duplicates.append(
                f"{path}: {stem}.jpg listed {kind} on line {number} (first on line {first_number}); first entry kept"
            )
            continue
        seen[stem] = (number, label)
        rows.append((f"{stem}.jpg", stem, match.group(2), label, number))
    if not rows:
        raise DatasetFormatError(path, None, "no label lines; expected '<train|test>_NNNN.jpg <label 1-7>'")
    return pd.DataFrame(rows, columns=["image_id", "stem", "split", "label", "line"]), duplicates


def read_rafdb(root, **options) -> pd.DataFrame:
    """RAF-DB manifest from `root`; see the module docstring.

    Options:
        images: "aligned" or "original" (label-file layout; default aligned when present).
        val_seed: seed of the validation draw (default 0).
        val_fraction: fraction of each class of train held out as val (default 0.1).
        subsets_dir: folder holding RAF_DB_dir/ (RAN lists).
    """
    reject_unknown_options(DATASET, options, ("images", "val_seed", "val_fraction", "subsets_dir"))
    val_seed, val_fraction = options.get("val_seed", 0), options.get("val_fraction", 0.1)
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(DATASET, root, EXPECTED_LAYOUT)
    duplicates = []
    basic = _basic_dir(root)
    if basic is not None:
        table, duplicates = read_label_file(basic / LABEL_FILE)
        images = options.get("images")
        if images is None:
            images = "aligned" if (basic / "Image" / "aligned").is_dir() else "original"
        config.check_name("images", images, ("aligned", "original"))
        image_dir = basic / "Image" / images
        if not image_dir.is_dir():
            raise DatasetNotFoundError(DATASET, image_dir, EXPECTED_LAYOUT)
        suffix = "_aligned.jpg" if images == "aligned" else ".jpg"
        table["path"] = [str((image_dir / f"{stem}{suffix}").resolve()) for stem in table["stem"]]
        require_files_exist(DATASET, table["path"], basic / LABEL_FILE, EXPECTED_LAYOUT, lines=table["line"])
        table = table.drop(columns=["line"])
        # Keep the label file's order within each split: train first, then test.
        table = pd.concat([table[table["split"] == "train"], table[table["split"] == "test"]], ignore_index=True)
        train = (table["split"] == "train").to_numpy()
        held_out = stratified_holdout(table.loc[train, "label"], val_fraction, val_seed)
        table.loc[table.index[train][held_out], "split"] = "val"
        records = table.assign(row=-1)
        source = f"label file + Image/{images} ({basic}); val = stratified {val_fraction:g} of train, seed {val_seed}"
    elif (root / "train").is_dir() and (root / "test").is_dir():
        records, note = read_class_folder_splits(
            DATASET, root, FOLDER_TO_LABEL, EXPECTED_LAYOUT, val_seed=val_seed, val_fraction=val_fraction
        )
        source = f"class folders ({root}; {note})"
    else:
        raise DatasetNotFoundError(DATASET, root / "basic" / LABEL_FILE, EXPECTED_LAYOUT)
    df = finish_manifest(records, DATASET, source)
    for message in duplicates:
        data_warning(df, message)
    return mark_subsets(df, DATASET, root, options.get("subsets_dir"))
