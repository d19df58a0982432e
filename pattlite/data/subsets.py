"""The challenging-condition test subsets of RAF-DB and FERPlus (the RAN paper's public lists).

The RAN authors (Wang et al., "Region Attention Networks ...") published, in their GitHub repository
`kaiwang960112/Challenge-condition-FER-dataset`, two folders of lists that the PAtt-Lite paper uses for
Tables 2 and 11:

- `FERplus_dir/jianfei_occlusion_list.txt`: lines `1_fer0034656.png 8 0` (CRLF). The leading number
  is the label in FERPlus column order (0 neutral, 1 happiness, 2 surprise, 3 sadness, 4 anger,
  5 disgust, 6 fear, 7 contempt); the two numbers after the name are not used here.
- `FERplus_dir/pose_30_ferplus_list.txt`, `pose_45_ferplus_list.txt`: lines `0/fer0032226.jpg`
  (label/name; the images are PNG files in the FERPlus layouts, hence matching on `ferNNNNNNN`).
- `RAF_DB_dir/rafdb_occlusion_list.txt`: lines `test_0003_aligned 3 4` (CRLF); the first number is
  the RAF-DB label minus 1 (0 surprise, 1 fear, 2 disgust, 3 happiness, 4 sadness, 5 anger,
  6 neutral). One image (`test_2464`) is listed twice: reported once, counted once.
- `RAF_DB_dir/val_raf_db_list.txt`, `val_raf_db_list_45.txt`: lines `0/test_0004_aligned.jpg`, with
  label files `val_raf_db_label.txt`, `val_raf_db_label_45.txt` whose first line is a header
  (`1247 7`: count and number of classes) and then one label per line (cross-checked when present).

All listed images come from the test split. Images are matched on a normalised key: `ferNNNNNNN` for
FERPlus, `test_NNNN` for RAF-DB (the `_aligned` suffix and the extension are dropped).

Where the lists are looked for: the option `subsets_dir` (the folder holding `FERplus_dir/` and
`RAF_DB_dir/`; an error when given but missing), else `$PATTLITE_SUBSETS_DIR` (same), else
`<dataset root>/ran_challenge_lists/`. When none exists the subset columns are all False and
`df.attrs["subsets"]` is None.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pattlite import config
from pattlite.data.common import data_warning
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError

SUBSETS_ENV_VAR = "PATTLITE_SUBSETS_DIR"
DEFAULT_SUBFOLDER = "ran_challenge_lists"

# Label numbering inside the lists, mapped to canonical class names.
FERPLUS_FILE_ORDER = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
RAFDB_MINUS_ONE_ORDER = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")

_LIST_FILES = {
    "ferplus": (
        "FERplus_dir",
        {
            "occlusion": ("jianfei_occlusion_list.txt", None),
            "pose30": ("pose_30_ferplus_list.txt", None),
            "pose45": ("pose_45_ferplus_list.txt", None),
        },
    ),
    "rafdb": (
        "RAF_DB_dir",
        {
            "occlusion": ("rafdb_occlusion_list.txt", None),
            "pose30": ("val_raf_db_list.txt", "val_raf_db_label.txt"),
            "pose45": ("val_raf_db_list_45.txt", "val_raf_db_label_45.txt"),
        },
    ),
}

_FERPLUS_OCCLUSION = re.compile(r"^(\d+)_(fer\d+)\.png$", re.IGNORECASE)
_LABEL_SLASH_NAME = re.compile(r"^(\d+)/([^/\s]+)$")
_FERPLUS_NAME = re.compile(r"^(fer\d+)(\.png|\.jpg)?$", re.IGNORECASE)
_RAFDB_NAME = re.compile(r"^(test_\d+)(_aligned)?(\.jpg|\.png)?$", re.IGNORECASE)


@dataclass
class SubsetList:
    """One RAN list, read: `entries` maps image key -> canonical label, in file order; `lines` maps
    image key -> the 1-based line it was read from."""

    dataset: str
    subset: str
    path: Path
    entries: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def subset_key(dataset: str, image_id: str) -> str | None:
    """Normalised matching key of an image name (`ferNNNNNNN` / `test_NNNN`), None if not one."""
    name = Path(str(image_id)).name
    pattern = _FERPLUS_NAME if dataset == "ferplus" else _RAFDB_NAME
    match = pattern.match(name)
    return match.group(1).lower() if match else None


def resolve_subsets_dir(dataset_root, subsets_dir=None) -> Path | None:
    """The folder holding `FERplus_dir/` and `RAF_DB_dir/`, or None when the lists are nowhere."""
    if subsets_dir is not None:
        path = Path(subsets_dir).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(
                "ran_lists", path, "a folder holding FERplus_dir/ and RAF_DB_dir/ (option subsets_dir)"
            )
        return path
    from_env = os.environ.get(SUBSETS_ENV_VAR)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(
                "ran_lists", path, f"a folder holding FERplus_dir/ and RAF_DB_dir/ (${SUBSETS_ENV_VAR})"
            )
        return path
    path = Path(dataset_root) / DEFAULT_SUBFOLDER
    return path if path.is_dir() else None


def _lines(path: Path):
    # Two of the lists have CRLF endings: splitlines() handles both; blank lines are skipped.
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _parse_line(dataset: str, subset: str, path: Path, number: int, line: str):
    """(key, label) of one list line, or DatasetFormatError naming file and line."""
    if dataset == "ferplus" and subset == "occlusion":
        tokens = line.split()
        match = _FERPLUS_OCCLUSION.match(tokens[0]) if len(tokens) == 3 else None
        expected = "'<label>_ferNNNNNNN.png <n> <n>' (e.g. '1_fer0034656.png 8 0')"
        order, key = FERPLUS_FILE_ORDER, (match.group(2).lower() if match else None)
        label_text = match.group(1) if match else None
    elif dataset == "rafdb" and subset == "occlusion":
        tokens = line.split()
        match = _RAFDB_NAME.match(tokens[0]) if len(tokens) == 3 else None
        expected = "'test_NNNN_aligned <label-1> <n>' (e.g. 'test_0003_aligned 3 4')"
        order, key = RAFDB_MINUS_ONE_ORDER, (match.group(1).lower() if match else None)
        label_text = tokens[1] if match and tokens[1].isdigit() else None
    else:
        match = _LABEL_SLASH_NAME.match(line)
        key = subset_key(dataset, match.group(2)) if match else None
        order = FERPLUS_FILE_ORDER if dataset == "ferplus" else RAFDB_MINUS_ONE_ORDER
        example = "0/fer0032226.jpg" if dataset == "ferplus" else "0/test_0004_aligned.jpg"
        expected = f"'<label>/<image name>' (e.g. '{example}')"
        label_text = match.group(1) if match else None
    if key is None or label_text is None:
        raise DatasetFormatError(path, number, f"malformed line {line!r}; expected {expected}")
    index = int(label_text)
    if index >= len(order):
        raise DatasetFormatError(path, number, f"label {index} out of range 0-{len(order) - 1} in {line!r}")
    return key, order[index]


def list_files(dataset: str, subsets_dir) -> list[tuple[str, Path]]:
    """(`<dataset's folder>/<file>`, path) of every RAN list and label file the dataset's reader reads
    from `subsets_dir` (those that exist; the reader names a missing one)."""
    folder, files = _LIST_FILES[dataset]
    names = [name for pair in files.values() for name in pair if name is not None]
    return [
        (f"{folder}/{name}", Path(subsets_dir) / folder / name)
        for name in names
        if (Path(subsets_dir) / folder / name).is_file()
    ]


def read_subset_list(dataset: str, subset: str, subsets_dir) -> SubsetList:
    """Read one RAN list; duplicates and contradictions are reported in `.warnings`, kept once."""
    folder, files = _LIST_FILES[dataset]
    list_name, label_name = files[subset]
    base = Path(subsets_dir) / folder
    path = base / list_name
    if not path.is_file():
        raise DatasetNotFoundError("ran_lists", path, f"the RAN list {folder}/{list_name}")
    result = SubsetList(dataset, subset, path)
    first_line = {}
    ordered = []
    for number, line in _lines(path):
        key, label = _parse_line(dataset, subset, path, number, line)
        ordered.append((number, key, label))
        if key in result.entries:
            previous = result.entries[key]
            kind = "listed twice" if previous == label else f"listed twice with labels {previous!r} and {label!r}"
            result.warnings.append(
                f"{path}: {key} {kind} (lines {first_line[key]} and {number}); counted once (first entry kept)"
            )
            continue
        first_line[key] = number
        result.entries[key] = label
        result.lines[key] = number
    if label_name is not None:
        _check_label_file(base / label_name, ordered, result)
    return result


def _check_label_file(path: Path, ordered, result: SubsetList) -> None:
    """Cross-check a RAF-DB pose label file (header 'count classes', then one label a line)."""
    if not path.is_file():
        result.warnings.append(f"{path} not found; labels taken from the list's '<label>/' prefixes")
        return
    lines = list(_lines(path))
    if not lines:
        raise DatasetFormatError(path, 1, "empty file; expected a header '<count> <classes>' then one label a line")
    header_number, header = lines[0]
    parts = header.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DatasetFormatError(
            path, header_number, f"header {header!r}; expected '<count> <classes>' (e.g. '1247 7')"
        )
    count = int(parts[0])
    labels = lines[1:]
    if count != len(labels) or count != len(ordered):
        raise DatasetFormatError(
            path,
            header_number,
            f"header says {count} labels, file has {len(labels)}, list {result.path.name} has {len(ordered)}",
        )
    disagreements = []
    for (number, text), (list_number, key, label) in zip(labels, ordered):
        if not text.isdigit() or int(text) >= len(RAFDB_MINUS_ONE_ORDER):
            raise DatasetFormatError(path, number, f"label {text!r}; expected an integer 0-6")
        if RAFDB_MINUS_ONE_ORDER[int(text)] != label:
            disagreements.append(f"{key} (line {number})")
    if disagreements:
        result.warnings.append(
            f"{path}: {len(disagreements)} label(s) contradict {result.path.name}, e.g. {disagreements[:5]}; "
            "the list's prefix label is kept"
        )


def read_subset_lists(dataset: str, subsets_dir) -> dict:
    """All three lists of a dataset: {subset name: SubsetList}."""
    config.check_name("subset dataset", dataset, tuple(_LIST_FILES))
    return {subset: read_subset_list(dataset, subset, subsets_dir) for subset in config.SUBSETS}


def subset_label_counts(dataset: str, subsets_dir) -> pd.DataFrame:
    """Per-class counts of each list from the labels embedded in the lists (rows subsets, columns classes)."""
    lists = read_subset_lists(dataset, subsets_dir)
    classes = config.DATASET_CLASSES[dataset]
    counts = {
        subset: pd.Series(list(sl.entries.values()), dtype=object).value_counts().reindex(classes, fill_value=0)
        for subset, sl in lists.items()
    }
    return pd.DataFrame(counts).T.astype("int64")


def mark_subsets(df: pd.DataFrame, dataset: str, dataset_root, subsets_dir=None) -> pd.DataFrame:
    """Add the boolean columns occlusion/pose30/pose45 (True on listed test images) and attrs["subsets"]."""
    for subset in config.SUBSETS:
        df[subset] = False
    folder = resolve_subsets_dir(dataset_root, subsets_dir)
    if folder is None:
        df.attrs["subsets"] = None
        data_warning(
            df,
            f"{dataset}: RAN challenging-condition lists not found (option subsets_dir, "
            f"${SUBSETS_ENV_VAR}, or {Path(dataset_root) / DEFAULT_SUBFOLDER}); "
            "occlusion/pose30/pose45 are all False",
            stacklevel=4,
        )
        return df
    lists = read_subset_lists(dataset, folder)
    test_rows = df.index[df["split"] == "test"]
    keys = df.loc[test_rows, "image_id"].map(lambda image_id: subset_key(dataset, image_id))
    key_to_row = dict(zip(keys, test_rows))
    info = {"dir": str(folder), "listed": {}, "matched": {}, "label_disagreements": {}}

    def warn(message):
        data_warning(df, message, stacklevel=5)

    for subset, sl in lists.items():
        for message in sl.warnings:
            warn(message)
        if not sl.entries:
            warn(f"{sl.path}: no entries; the {subset} subset is empty")
        matched = [key_to_row[k] for k in sl.entries if k in key_to_row]
        unmatched = [k for k in sl.entries if k not in key_to_row]
        df.loc[matched, subset] = True
        disagree = [k for k in sl.entries if k in key_to_row and df.at[key_to_row[k], "label"] != sl.entries[k]]
        info["listed"][subset] = len(sl.entries)
        info["matched"][subset] = len(matched)
        info["label_disagreements"][subset] = len(disagree)
        if unmatched:
            listed = ", ".join(f"{k} (line {sl.lines[k]})" for k in unmatched[:5])
            warn(
                f"{sl.path}: {len(unmatched)} of {len(sl.entries)} listed images match no test image "
                f"read here: {listed}{' ...' if len(unmatched) > 5 else ''}; they are left out of the "
                f"{subset} subset"
            )
        if disagree:
            listed = ", ".join(f"{k} (line {sl.lines[k]})" for k in disagree[:5])
            warn(
                f"{sl.path}: {len(disagree)} listed images carry a label different from the manifest's: "
                f"{listed}{' ...' if len(disagree) > 5 else ''}; the manifest's label is used"
            )
    df.attrs["subsets"] = info
    return df
