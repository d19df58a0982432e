"""Errors raised by the dataset readers, and the checks that raise them.

`DatasetNotFoundError` (a `FileNotFoundError`) names the dataset, the path tried, the layout expected
and where to get the data. `DatasetFormatError` (a `ValueError`) names the file, the line and what was
expected there.
"""

from __future__ import annotations

import re
from pathlib import Path

# Where each dataset comes from (data/README.md has the full instructions). Nothing is downloaded.
WHERE_TO_GET = {
    "fer2013": "Kaggle, 'Challenges in Representation Learning: Facial Expression Recognition "
    "Challenge' (fer2013.csv), or a Kaggle image-folder copy (train/<class>/, test/<class>/)",
    "ferplus": "Microsoft's FERPlus GitHub repository (microsoft/FERPlus: fer2013new.csv, plus "
    "fer2013.csv from Kaggle; or the PNG folders its generate_training_data.py writes)",
    "rafdb": "the RAF-DB request page (www.whdeng.cn/raf/model1.html), 'basic' part, by e-mail agreement",
    "ckplus": "the CK+ request page (jeffcohn.net/Resources, Extended Cohn-Kanade), or a CK+48 copy",
    "ran_lists": "the RAN authors' GitHub repository (kaiwang960112/Challenge-condition-FER-dataset): "
    "folders FERplus_dir/ and RAF_DB_dir/",
}

SEE_README = "see data/README.md"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing.

    Args:
        dataset: dataset name (`"fer2013"`, ... or `"ran_lists"`).
        path: the path that was tried.
        expected: the layout that was expected there, in words.
        detail: optional extra text (e.g. the first missing files and their count).
    """

    def __init__(self, dataset: str, path, expected: str, detail: str = ""):
        self.dataset = dataset
        self.path = Path(path)
        self.expected = expected
        where = WHERE_TO_GET.get(dataset, "")
        message = (
            f"{dataset}: not found at {self.path}. Expected {expected}."
            + (f" {detail}" if detail else "")
            + (f" Get it from {where};" if where else "")
            + f" {SEE_README} for the layout and the $PATTLITE_{dataset.upper()}_ROOT variable."
        )
        super().__init__(message)


class DataWarning(UserWarning):
    """A data problem the user should know about that does not stop the reading (a duplicate row, a
    subset-list entry that matches no test image, ...); the message names the file and line."""


class DatasetFormatError(ValueError):
    """A file of a dataset has malformed content.

    Args:
        path: the file.
        line: 1-based line number in the file (None when the problem is not tied to one line).
        problem: what is wrong and what was expected.
    """

    def __init__(self, path, line: int | None, problem: str):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}")


def require_file(dataset: str, path: Path, expected: str) -> Path:
    """Return `path` if it is a file, else raise `DatasetNotFoundError`."""
    if not path.is_file():
        raise DatasetNotFoundError(dataset, path, expected)
    return path


def require_files_exist(dataset: str, paths, listed_in: Path, expected: str, lines=None) -> None:
    """Raise `DatasetNotFoundError` naming the first missing image, the file and line that list it,
    and how many are missing.

    Args:
        paths: the image files listed.
        listed_in: the file that lists them (label file).
        lines: the 1-based line of `listed_in` naming each path (same order), when known.
    """
    paths = [str(p) for p in paths]
    lines = [None] * len(paths) if lines is None else list(lines)
    missing = [(path, line) for path, line in zip(paths, lines) if not Path(path).is_file()]
    if missing:

        def where(path, line):
            return f"{Path(path).name} ({listed_in}, line {line})" if line is not None else path

        path, line = missing[0]
        others = ", ".join(where(p, n) for p, n in missing[1:5])
        raise DatasetNotFoundError(
            dataset,
            Path(path),
            "the image file that " + (f"line {line} of {listed_in}" if line is not None else str(listed_in)) + " names",
            detail=(
                f"{len(missing)} image file(s) listed in {listed_in} are missing"
                + (f"; also {others}" if others else "")
                + ". The folder itself exists; "
                f"expected layout: {expected}."
            ),
        )


def read_csv_table(path: Path, **options):
    """`pandas.read_csv` as strings; a parse error becomes DatasetFormatError naming file and line."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **options)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        match = re.search(r"line (\d+)", str(error))
        raise DatasetFormatError(
            path, int(match.group(1)) if match else None, f"cannot be parsed as CSV: {error}"
        ) from None
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(path, 1, "empty file; expected CSV rows") from None
