"""Tables 1-3 of the paper (data distributions), ours beside the published numbers.

Each function takes {dataset name: manifest} (any subset of the datasets) and returns a long
DataFrame with columns `dataset`, a key column (`class`, `subset`+`class`, or `split`), `paper`,
`ours` and `diff` (= ours - paper). `ours` is missing (NA) for a dataset with no manifest given;
`paper` is missing where the paper has no number.
"""

from __future__ import annotations

import pandas as pd

from pattlite import config

# The paper's published numbers for Tables 1-3 (class order: anger, disgust, fear, happiness, neutral,
# sadness, surprise, contempt; None = not applicable).
# TODO(lead): point this at pattlite.paper once paper_results.json exists.
PAPER_TABLES = {
    "table1": {
        "rafdb": (867, 877, 355, 5957, 3204, 2460, 1619, None),
        "fer2013": (4953, 547, 5121, 8989, 6198, 6077, 4002, None),
        "ferplus": (3123, 253, 825, 9367, 13014, 4414, 4493, 221),
    },
    "table2": {
        "rafdb": {
            "occlusion": (31, 47, 35, 236, 191, 122, 72, None),
            "pose30": (75, 78, 38, 446, 282, 179, 149, None),
            "pose45": (37, 36, 20, 164, 129, 90, 82, None),
        },
        "ferplus": {
            "occlusion": (23, 3, 33, 122, 162, 125, 135, 2),
            "pose30": (102, 5, 28, 286, 466, 151, 127, 5),
            "pose45": (52, 1, 16, 141, 271, 89, 59, 4),
        },
    },
    "table3": {
        "rafdb": {"train": 12271, "val": None, "test": 3068},
        "fer2013": {"train": 28659, "val": 3584, "test": 3582},
        "ferplus": {"train": 28558, "val": 3579, "test": 3573},
    },
}

_COLUMNS_TAIL = ["paper", "ours", "diff"]


def _frame(rows, key_columns) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["dataset", *key_columns, "paper", "ours"])
    for column in ("paper", "ours"):
        df[column] = df[column].astype("Int64")
    df["diff"] = df["ours"] - df["paper"]
    return df


def _check(manifests) -> dict:
    manifests = dict(manifests or {})
    for name in manifests:
        config.check_name("dataset", name, config.DATASETS)
    return manifests


def table1(manifests) -> pd.DataFrame:
    """Table 1, class distribution (all splits together) of RAF-DB, FER2013 and FERPlus, plus a total row."""
    manifests = _check(manifests)
    rows = []
    for dataset, published in PAPER_TABLES["table1"].items():
        df = manifests.get(dataset)
        counts = df["label"].value_counts() if df is not None else None
        for name, paper in zip(config.CLASSES, published):
            if paper is None:
                continue
            rows.append((dataset, name, paper, None if counts is None else int(counts.get(name, 0))))
        rows.append((dataset, "total", sum(p for p in published if p is not None),
                     None if df is None else len(df)))
    return _frame(rows, ["class"])


def table2(manifests=None, subsets_dir=None) -> pd.DataFrame:
    """Table 2, per-class counts of the challenging-condition subsets of RAF-DB and FERPlus.

    For a dataset with a manifest whose subset columns were filled (`df.attrs["subsets"]` not None),
    `ours` counts the flagged test images by the manifest's labels (column `source` = "manifest").
    Otherwise, when `subsets_dir` is given, it counts the labels embedded in the RAN lists
    (`source` = "lists"); else `ours` is NA.
    """
    from pattlite.data.subsets import SUBSETS, subset_label_counts

    manifests = _check(manifests)
    rows = []
    for dataset, by_subset in PAPER_TABLES["table2"].items():
        df = manifests.get(dataset)
        if df is not None and df.attrs.get("subsets") is not None:
            counts = {s: df.loc[df[s], "label"].value_counts() for s in SUBSETS}
            source = "manifest"
        elif subsets_dir is not None:
            table = subset_label_counts(dataset, subsets_dir)
            counts = {s: table.loc[s] for s in SUBSETS}
            source = "lists"
        else:
            counts, source = None, None
        for subset, published in by_subset.items():
            for name, paper in zip(config.CLASSES, published):
                if paper is None:
                    continue
                ours = None if counts is None else int(counts[subset].get(name, 0))
                rows.append((dataset, subset, name, paper, ours, source))
            total_ours = None if counts is None else int(sum(counts[subset].get(n, 0) for n in config.CLASSES))
            rows.append((dataset, subset, "total", sum(p for p in published if p is not None), total_ours, source))
    df = pd.DataFrame(rows, columns=["dataset", "subset", "class", "paper", "ours", "source"])
    out = _frame([r[:5] for r in rows], ["subset", "class"])
    out["source"] = df["source"]
    return out


def table3(manifests) -> pd.DataFrame:
    """Table 3, split sizes; RAF-DB also gets a row `train+val` (the paper has no val split there)."""
    manifests = _check(manifests)
    rows = []
    for dataset, published in PAPER_TABLES["table3"].items():
        df = manifests.get(dataset)
        sizes = df["split"].value_counts() if df is not None else None
        for split, paper in published.items():
            rows.append((dataset, split, paper, None if sizes is None else int(sizes.get(split, 0))))
        if published["val"] is None:
            rows.append((dataset, "train+val", published["train"],
                         None if sizes is None else int(sizes.get("train", 0) + sizes.get("val", 0))))
    return _frame(rows, ["split"])
