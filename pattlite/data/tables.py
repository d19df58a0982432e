"""Tables 1-3 of the paper (data distributions), ours beside the published numbers.

Each function takes {dataset name: manifest} (any subset of the datasets) and returns a long
DataFrame with columns `dataset`, a key column (`class`, `subset`+`class`, or `split`), `paper`,
`ours` and `diff` (= ours - paper). `ours` is missing (NA) for a dataset with no manifest given;
`paper` is missing where the paper has no number.
"""

from __future__ import annotations

import pandas as pd

from pattlite import config


def published_tables() -> dict:
    """Tables 1-3 as published, from the project's one transcription (pattlite/resources/paper_results.json),
    shaped {table: {dataset: ...}} in the canonical class order (None = not in the paper)."""
    from pattlite.paper import paper_table

    out = {"table1": {}, "table2": {}, "table3": {}}
    t1 = paper_table(1)
    for dataset, g in t1.groupby("dataset", sort=False):
        values = dict(zip(g["class"], g["value"]))
        out["table1"][dataset] = tuple(_int_or_none(values.get(c)) for c in config.CLASSES)
    t2 = paper_table(2)
    for (dataset, subset), g in t2.groupby(["dataset", "subset"], sort=False):
        values = dict(zip(g["class"], g["value"]))
        out["table2"].setdefault(dataset, {})[subset] = tuple(_int_or_none(values.get(c)) for c in config.CLASSES)
    t3 = paper_table(3)
    for dataset, g in t3.groupby("dataset", sort=False):
        values = dict(zip(g["split"], g["value"]))
        out["table3"][dataset] = {s: _int_or_none(values.get(s)) for s in ("train", "val", "test")}
    return out


def _int_or_none(value):
    return None if value is None or pd.isna(value) else int(value)


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
    for dataset, published in published_tables()["table1"].items():
        df = manifests.get(dataset)
        counts = df["label"].value_counts() if df is not None else None
        for name, paper in zip(config.CLASSES, published):
            if paper is None:
                continue
            rows.append((dataset, name, paper, None if counts is None else int(counts.get(name, 0))))
        rows.append((dataset, "total", sum(p for p in published if p is not None), None if df is None else len(df)))
    return _frame(rows, ["class"])


def table2(manifests=None, subsets_dir=None) -> pd.DataFrame:
    """Table 2, per-class counts of the challenging-condition subsets of RAF-DB and FERPlus.

    For a dataset with a manifest whose subset columns were filled (`df.attrs["subsets"]` not None),
    `ours` counts the flagged test images by the manifest's labels (column `source` = "manifest").
    Otherwise, when `subsets_dir` is given, it counts the labels embedded in the RAN lists
    (`source` = "lists"); else `ours` is NA.
    """
    from pattlite.data.subsets import subset_label_counts

    manifests = _check(manifests)
    rows = []
    for dataset, by_subset in published_tables()["table2"].items():
        df = manifests.get(dataset)
        if df is not None and df.attrs.get("subsets") is not None:
            counts = {s: df.loc[df[s], "label"].value_counts() for s in config.SUBSETS}
            source = "manifest"
        elif subsets_dir is not None:
            table = subset_label_counts(dataset, subsets_dir)
            counts = {s: table.loc[s] for s in config.SUBSETS}
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
    out = _frame([r[:5] for r in rows], ["subset", "class"])
    out["source"] = [r[5] for r in rows]
    return out


def table3(manifests) -> pd.DataFrame:
    """Table 3, split sizes; RAF-DB also gets a row `train+val` (the paper has no val split there)."""
    manifests = _check(manifests)
    rows = []
    for dataset, published in published_tables()["table3"].items():
        df = manifests.get(dataset)
        sizes = df["split"].value_counts() if df is not None else None
        for split, paper in published.items():
            rows.append((dataset, split, paper, None if sizes is None else int(sizes.get(split, 0))))
        if published["val"] is None:
            rows.append(
                (
                    dataset,
                    "train+val",
                    published["train"],
                    None if sizes is None else int(sizes.get("train", 0) + sizes.get("val", 0)),
                )
            )
    return _frame(rows, ["split"])
