"""FERPlus reader: FER2013 images relabelled by 10 crowd votes over 8 emotions (+ unknown, NF).

Layouts (root = the dataset folder, default `data/ferplus/`):

1. Microsoft's generated PNG folders `data/FER2013Train|FER2013Valid|FER2013Test/ferNNNNNNN.png`
   (the `data/` level may be omitted), each with a header-less `label.csv`: image name,
   `"(0, 0, 48, 48)"`, then the 10 votes (neutral, happiness, surprise, sadness, anger, disgust,
   fear, contempt, unknown, NF). Splits train / val / test; `path` = the PNG, `row` = -1.
2. `fer2013new.csv` (Microsoft) + `fer2013.csv` (Kaggle; looked for in the option `fer2013_csv`,
   then `<root>/fer2013.csv`, then the FER2013 root). The two files are JOINED BY ROW POSITION: row i
   of one is row i of the other. The image name is never used to join, because `ferNNNNNNN` is not the
   row index (it drifts by up to +85 and 4 names occur twice); the `Usage` columns of both files are
   checked to agree row by row. Rows with an empty image name (173 in the full file, images FERPlus
   dropped) are excluded. `path` = fer2013.csv, `row` = the row index, `image_id` = the image name.
   Usage Training / PublicTest / PrivateTest -> train / val / test. An image name on several rows
   keeps the LAST row, as Microsoft's `generate_training_data.py` does: it writes one PNG per name,
   row by row, so a later row overwrites the earlier one's file. The full file names 4 images twice
   (data rows 5274/6968, 5348/11817, 8423/15835, 33200/34334, counting from 0; each pair has different
   pixels, and the same label by the rule below), so both layouts give 35,710 images, 28,558 / 3,579 /
   3,573 (the paper's Table 3). A warning names the lines.

The folder layout is used when both are present; option `layout` ("auto", "folders", "csv") forces one.
The two vote sources are not identical: on the 167 real sample images in tests/fixtures, 20 images have
different votes in `label.csv` than in `fer2013.csv`'s row-aligned `fer2013new.csv` row, and 4 of them
get a different majority label. Which one the paper used is not stated; `df.attrs["source"]` records it.

Label rule (the paper does not state one). Its Table 1 counts sum to 35,710, every named image, so no
image is dropped for ties, 'unknown' or 'NF'. The label is therefore the argmax over the 8 emotion votes
alone ('unknown' and 'NF' votes ignored); a tie goes to the emotion that comes first in FERPlus' own
column order (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt), i.e. what
`numpy.argmax` over the file's first 8 vote columns returns; an image with no emotion vote at all gets
neutral by the same rule. Option `tie_order="canonical"` breaks ties in this project's class order
(anger, disgust, fear, happiness, neutral, sadness, surprise, contempt) instead. The rule cannot be
checked against the full dataset here; `pattlite.data.table1` reports the per-class difference from the
paper's counts, and `df.attrs["votes"]` says how many images were ties or had no emotion vote (the only
images whose label depends on the rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.data.common import data_warning, finish_manifest, reject_unknown_options
from pattlite.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    read_csv_table,
    require_file,
    require_files_exist,
)
from pattlite.data.fer2013 import USAGE_TO_SPLIT, read_fer2013_csv_table
from pattlite.data.subsets import FERPLUS_FILE_ORDER, mark_subsets

DATASET = "ferplus"
VOTE_COLUMNS = FERPLUS_FILE_ORDER + ("unknown", "NF")
SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
TIE_ORDERS = ("ferplus", "canonical")
EXPECTED_LAYOUT = (
    "data/FER2013Train|FER2013Valid|FER2013Test/*.png each with label.csv (Microsoft's generator), "
    "or fer2013new.csv next to fer2013.csv"
)


def majority_labels(votes: np.ndarray, tie_order: str = "ferplus"):
    """Label of each image from its (N, 10) votes in FERPlus column order; see the module docstring.

    Returns:
        (labels, is_tie, no_emotion_vote): canonical names, and two boolean arrays.
    """
    config.check_name("tie_order", tie_order, TIE_ORDERS)
    emotion_votes = np.asarray(votes)[:, :8]
    if tie_order == "ferplus":
        order = list(FERPLUS_FILE_ORDER)
    else:
        order = [c for c in config.CLASSES]
    columns = [FERPLUS_FILE_ORDER.index(c) for c in order]
    reordered = emotion_votes[:, columns]
    winners = np.argmax(reordered, axis=1)  # first maximum = tie goes to the earliest in `order`
    top = reordered.max(axis=1, keepdims=True)
    is_tie = (reordered == top).sum(axis=1) > 1
    no_emotion_vote = top[:, 0] == 0
    labels = np.array(order, dtype=object)[winners]
    return labels, is_tie & ~no_emotion_vote, no_emotion_vote


def _votes(frame: pd.DataFrame, columns, path: Path, line_offset: int) -> np.ndarray:
    """Integer votes, or DatasetFormatError naming the first bad cell's line."""
    values = frame[list(columns)].apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce"))
    bad = values.isna() | (values < 0) | (values != values.round())
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise DatasetFormatError(
            path,
            int(row) + line_offset,
            f"vote {frame.iloc[row][columns[col]]!r} in column {columns[col]!r}; expected a non-negative integer",
        )
    return values.to_numpy(dtype=np.int64)


def _folders_root(root: Path) -> Path | None:
    for base in (root / "data", root):
        if all((base / folder).is_dir() for folder in SPLIT_FOLDERS.values()):
            return base
    return None


def _first_lines(duplicated, first_of, names, line_offset):
    """'name (lines a and b)' for each duplicated row, as `data_warning` text."""
    return [
        f"{names.iloc[i]} (lines {first_of[names.iloc[i]] + line_offset} and {i + line_offset})"
        for i in np.flatnonzero(duplicated)
    ]


def _check_field_counts(path: Path, expected: int, layout: str) -> None:
    """DatasetFormatError naming the first line of a header-less CSV whose field count is not `expected`.

    pandas infers the count from the first line, so a short first line would be blamed on line 2."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for number, fields in enumerate(csv.reader(f), 1):
            if fields and len(fields) != expected:
                raise DatasetFormatError(path, number, f"{len(fields)} fields; expected {expected} ({layout})")


def read_ferplus_folders(base: Path):
    """(records, votes, source, messages) of the generated PNG layout.

    A name listed twice in one label.csv is one image file: the first line is kept (a warning names
    both lines). A listed image that does not exist is an error naming it, the label.csv and the line.
    """
    frames, votes, messages = [], [], []
    for split, folder in SPLIT_FOLDERS.items():
        label_csv = require_file(DATASET, base / folder / "label.csv", EXPECTED_LAYOUT)
        _check_field_counts(label_csv, 12, 'name, "(0, 0, 48, 48)", 10 votes')
        table = read_csv_table(label_csv, header=None)
        names = table[0].str.strip()
        bad_name = ~names.str.match(r"^fer\d+\.png$")
        if bad_name.any():
            index = int(bad_name.to_numpy().nonzero()[0][0])
            raise DatasetFormatError(label_csv, index + 1, f"image name {names.iloc[index]!r}; expected ferNNNNNNN.png")
        table.columns = ["name", "box"] + list(VOTE_COLUMNS)
        split_votes = _votes(table, VOTE_COLUMNS, label_csv, line_offset=1)
        repeated = names.duplicated(keep="first").to_numpy()
        if repeated.any():
            first_of = {name: i for i, name in reversed(list(enumerate(names)))}
            listed = _first_lines(repeated, first_of, names, line_offset=1)
            messages.append(
                f"{label_csv}: {int(repeated.sum())} image name(s) listed twice, "
                f"{', '.join(listed[:5])}{' ...' if len(listed) > 5 else ''}; the first line "
                "of each is kept (one image file per name)"
            )
        keep = ~repeated
        names, split_votes = names[keep], split_votes[keep]
        lines = np.flatnonzero(keep) + 1  # header-less: data row i is line i + 1
        paths = [str((base / folder / name).resolve()) for name in names]
        require_files_exist(DATASET, paths, label_csv, EXPECTED_LAYOUT, lines=lines)
        votes.append(split_votes)
        frames.append(pd.DataFrame({"split": split, "path": paths, "row": -1, "image_id": list(names)}))
    return pd.concat(frames, ignore_index=True), np.concatenate(votes), f"PNG folders ({base})", messages


def _find_fer2013_csv(root: Path, explicit) -> Path:
    candidates = (
        [Path(explicit)]
        if explicit is not None
        else [root / "fer2013.csv", config.dataset_root("fer2013") / "fer2013.csv"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        DATASET,
        candidates[0],
        "fer2013.csv (Kaggle) beside fer2013new.csv, at the FER2013 root, or given as option fer2013_csv",
        detail=f"Tried {', '.join(str(c) for c in candidates)}.",
    )


def read_ferplus_csv(root: Path, fer2013_csv=None):
    """(records, votes, source, unnamed rows, messages) of fer2013new.csv joined with fer2013.csv by
    row position.

    An image name on several rows keeps the LAST of them (a warning names the lines): Microsoft's
    generator writes one PNG per name, row by row, so a later row overwrites the file of an earlier one.
    """
    new_csv = require_file(DATASET, root / "fer2013new.csv", EXPECTED_LAYOUT)
    old_csv = _find_fer2013_csv(root, fer2013_csv)
    new = read_csv_table(new_csv)
    new.columns = [c.strip() for c in new.columns]
    required = ["Usage", "Image name", *VOTE_COLUMNS]
    missing = [c for c in required if c not in new.columns]
    if missing:
        raise DatasetFormatError(new_csv, 1, f"header lacks column(s) {missing}; expected {', '.join(required)}")
    old = read_fer2013_csv_table(old_csv, columns=("Usage",))
    if len(new) != len(old):
        raise DatasetFormatError(
            new_csv,
            None,
            f"{len(new)} data rows but {old_csv} has {len(old)}; the files must be row-aligned (same rows, same order)",
        )
    usage_new, usage_old = new["Usage"].str.strip(), old["Usage"].str.strip()
    differs = (usage_new != usage_old).to_numpy()
    if differs.any():
        i = int(differs.nonzero()[0][0])
        raise DatasetFormatError(
            new_csv,
            i + 2,
            f"Usage {usage_new.iloc[i]!r} but {old_csv} line {i + 2} says {usage_old.iloc[i]!r}; "
            "the files are not row-aligned",
        )
    unknown_usage = ~usage_new.isin(USAGE_TO_SPLIT.keys())
    if unknown_usage.any():
        i = int(unknown_usage.to_numpy().nonzero()[0][0])
        raise DatasetFormatError(new_csv, i + 2, f"Usage {usage_new.iloc[i]!r}; expected one of {list(USAGE_TO_SPLIT)}")
    votes = _votes(new, VOTE_COLUMNS, new_csv, line_offset=2)
    names = new["Image name"].str.strip()
    named = (names != "").to_numpy()
    overwritten = names.duplicated(keep="last").to_numpy() & named
    messages = []
    if overwritten.any():
        last_of = {name: i for i, name in enumerate(names)}
        pairs = [
            f"{names.iloc[i]} (lines {i + 2} and {last_of[names.iloc[i]] + 2})" for i in np.flatnonzero(overwritten)
        ]
        messages.append(
            f"{new_csv}: {len(pairs)} image name(s) on two data rows, "
            f"{', '.join(pairs[:5])}{' ...' if len(pairs) > 5 else ''}; the later row of each "
            "is kept, as in Microsoft's generator, which writes one PNG per name (the later "
            "row overwrites the earlier one's file)"
        )
    keep = named & ~overwritten
    records = pd.DataFrame(
        {
            "split": usage_new.map(USAGE_TO_SPLIT),
            "path": str(old_csv.resolve()),
            "row": np.arange(len(new)),
            "image_id": names,
        }
    )[keep]
    source = f"fer2013new.csv + fer2013.csv joined by row position ({new_csv}, {old_csv})"
    return records, votes[keep], source, int((~named).sum()), messages


def read_ferplus(root, **options) -> pd.DataFrame:
    """FERPlus manifest from `root`; see the module docstring.

    Options:
        layout: "auto" (default: folders if present, else the CSV pair), "folders" or "csv".
        fer2013_csv: path of fer2013.csv for the CSV layout.
        tie_order: "ferplus" (default) or "canonical"; see the label rule.
        subsets_dir: folder holding FERplus_dir/ (RAN lists); see `pattlite.data.subsets`.
    """
    reject_unknown_options(DATASET, options, ("layout", "fer2013_csv", "tie_order", "subsets_dir"))
    layout = config.check_name("layout", options.get("layout", "auto"), ("auto", "folders", "csv"))
    tie_order = options.get("tie_order", "ferplus")
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(DATASET, root, EXPECTED_LAYOUT)
    base = _folders_root(root) if layout in ("auto", "folders") else None
    unnamed = 0
    if base is not None:
        records, votes, source, messages = read_ferplus_folders(base)
    elif layout == "folders":
        raise DatasetNotFoundError(DATASET, root / "data", EXPECTED_LAYOUT)
    else:
        records, votes, source, unnamed, messages = read_ferplus_csv(root, options.get("fer2013_csv"))
    labels, is_tie, no_emotion = majority_labels(votes, tie_order)
    records = records.assign(label=labels)
    df = finish_manifest(records, DATASET, source)
    df.attrs["votes"] = {
        "rule": f"argmax of the 8 emotion votes, ties to the first in {tie_order} order",
        "ties": int(is_tie.sum()),
        "no_emotion_votes": int(no_emotion.sum()),
        "unnamed_rows_excluded": unnamed,
    }
    for message in messages:
        data_warning(df, message)
    return mark_subsets(df, DATASET, root, options.get("subsets_dir"))
