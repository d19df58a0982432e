"""The report's tables in the paper's own layout: its rows and columns as printed, ours in each cell.

The comparison frames of `pattlite.studies.tables` are long (one row per published number, e.g. 60 for
Table 1); the CSV files keep them. `paper_layout(n, frame, absent)` pivots one into the printed grid:

- Tables 4-6 (and 5 as layer x kernel): each cell holds the paper's number, then ours under the published
  protocol and under the independent one, each "mean ± sd" (sd only over more than one run);
- Tables 7-11: the paper's methods keep its numbers; our rows ("Ours: ...", `tables.OUR_ROWS`) hold ours
  with the paper's PAtt-Lite number in brackets;
- Tables 1-3: our count with the paper's in brackets.

A coloured mark in front of each number of ours gives its verdict (`MARKS`), so colour shows on GitHub's
Markdown and in the HTML alike; lines of a cell are separated by `<br>`. A dataset the run skipped
because its files are absent (`absent`, from `NotebookContext.skipped`) reads `ABSENT` in every cell
of ours, never a number.

Everything table-specific is in `SPECS`: which frame columns name a printed row and a printed column.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pandas as pd

from pattlite import paper, report
from pattlite.config import DATASET_NAMES

MARKS = {verdict: mark for verdict, (mark, _, _) in report.VERDICT_MARKS.items()}
ABSENT = "not run (dataset absent)"
PROTOCOL_LINES = (
    ("ours", "ours_sd", "verdict", "published protocol"),
    ("ours_independent", "ours_independent_sd", "verdict_independent", "independent"),
)


@dataclasses.dataclass(frozen=True)
class Key:
    """A frame column that names printed rows or columns; `header` heads a row-label column;
    `paper_column` is the same key in `paper.paper_table(n)` when named differently there."""

    column: str
    header: str = ""
    paper_column: str | None = None

    @property
    def in_paper(self) -> str:
        return self.paper_column or self.column


@dataclasses.dataclass(frozen=True)
class Spec:
    rows: tuple  # Keys whose values label a printed row (one label column each)
    columns: tuple = ()  # Keys whose values label a printed column; () is the paper's one value column


_METHODS = Key("method", "Methods", "row")
_PARAMS = Key("params", "# Params", "params_text")

SPECS = {
    1: Spec((Key("dataset", "Databases"),), (Key("class"),)),
    2: Spec((Key("dataset", "Databases"), Key("subset", "Subsets")), (Key("class"),)),
    3: Spec((Key("dataset", "Databases"),), (Key("split"),)),
    4: Spec(
        (Key("attention_classifier", "Attention Classifier"), Key("patch_extraction", "Patch Extraction")),
        (Key("dataset"),),
    ),
    5: Spec((Key("layer", "Layer"),), (Key("kernel"),)),
    6: Spec((Key("variant", ""),), (Key("dataset"),)),
    7: Spec((_METHODS,)),
    8: Spec((_METHODS, _PARAMS), (Key("dataset"),)),
    9: Spec((Key("method", "Method", "row"), _PARAMS), (Key("class"),)),
    10: Spec((_METHODS,)),
    11: Spec((_METHODS, _PARAMS), (Key("dataset"), Key("subset"))),
}

# Columns of `paper.paper_table` that are not keys of a number.
_NOT_KEYS = {"table", "row_group", "row", "column_group", "column", "value", "quantity", "unit"}


def _norm(value):
    """A key value that compares equal across frames (NaN/NA/None -> None, numpy scalars -> Python)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _missing(value) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value))


def _paper_labels(n: int) -> dict:
    """{key column: {value: label as printed}} from the paper's row and column headers of Table `n`.

    A header with one key labels that key's value; one with a group (Table 2's rows, Table 11's columns)
    labels the first key with the group and the second with the label.
    """
    info = paper.table_info(n)
    labels: dict = {}
    for entry in info["rows"] + info["columns"]:
        keys = [k for k in entry if k not in ("label", "group", "values", "ref", "params", "params_text")]
        if len(keys) == 1:
            labels.setdefault(keys[0], {})[entry[keys[0]]] = entry["label"]
        elif len(keys) == 2 and "group" in entry:
            labels.setdefault(keys[0], {})[entry[keys[0]]] = entry["group"]
            labels.setdefault(keys[1], {})[entry[keys[1]]] = entry["label"]
    return labels


def _label(column: str, value, labels: dict) -> str:
    if value is None:
        return "-"
    if column in labels and value in labels[column]:
        return str(labels[column][value])
    if column == "dataset":
        return DATASET_NAMES.get(value, str(value))
    if isinstance(value, bool):
        return "✓" if value else "×"
    if column == "class":
        return str(value).capitalize()  # "total", a row the paper does not print
    return str(value)


def _with_paper_keys(frame: pd.DataFrame, pub: pd.DataFrame, wanted) -> pd.DataFrame:
    """Add key columns the frame lacks (e.g. Table 4's attention_classifier) from the paper's table,
    joined on the keys both share."""
    missing = [c for c in wanted if c not in frame.columns and c in pub.columns]
    if not missing:
        return frame
    shared = [c for c in pub.columns if c in frame.columns and c not in _NOT_KEYS]
    if not shared or pub.duplicated(shared).any():
        raise ValueError(
            f"the frame lacks key column(s) {missing}, and its columns {list(frame.columns)} do not "
            "pick one of the paper's numbers to take them from"
        )
    return frame.merge(pub[shared + missing], on=shared, how="left")


def _by_printed_column(pub: pd.DataFrame, info: dict) -> pd.DataFrame:
    """The paper's numbers in the order of its printed columns (the tidy frame goes row by row, and a
    row may lack a column's number, so its own order does not give the columns')."""
    where = {(c.get("group"), c["label"]): i for i, c in enumerate(info["columns"])}
    position = [where[(_norm(g), label)] for g, label in zip(pub["column_group"], pub["column"])]
    return pub.iloc[pd.Series(position).sort_values(kind="stable").index]


def _ordered(pub: pd.DataFrame, frame: pd.DataFrame, keys) -> list:
    """Key tuples in the paper's order, then those only in the frame (e.g. our rows) in the frame's."""
    seen = dict.fromkeys(tuple(_norm(v) for v in t) for t in pub[[k.in_paper for k in keys]].itertuples(index=False))
    if len(frame):
        seen.update(
            dict.fromkeys(tuple(_norm(v) for v in t) for t in frame[[k.column for k in keys]].itertuples(index=False))
        )
    return list(seen)


def _number(value, count: bool) -> str:
    if _missing(value):
        return "-"
    return f"{int(round(float(value)))}" if count else f"{float(value):.2f}"


def _ours(value, sd, runs, usual_runs) -> str:
    text = f"{float(value):.2f}"
    if runs is not None and runs > 1 and not _missing(sd):
        text += f" ± {float(sd):.2f}"
    if runs is not None and usual_runs is not None and runs != usual_runs:
        text += f", n={runs}"
    return text


def _runs(record) -> int | None:
    runs = record.get("runs")
    return None if _missing(runs) else int(runs)


def paper_layout(n: int, frame: pd.DataFrame, absent: dict | None = None) -> pd.DataFrame:
    """Table `n`'s comparison frame (`tables.data_tables` / `tables.table`) as the paper prints it.

    Args:
        n: table number, 1-11.
        frame: the long comparison frame (one row per published number, our rows in Tables 7-11).
        absent: {dataset: why} for the datasets not run because their files are absent: every cell of
            ours there reads `ABSENT`. Table 5's cells count as its `attrs["ours_dataset"]`'s.

    Returns:
        One row per printed row (label columns headed as in the paper), one column per printed column,
        cells as text. `attrs`: `caption` (the frame's), `legend` (one Markdown line: the marks, what a
        cell holds, over how many runs), `verdicts` ({protocol column: {verdict: count}} of the cells
        shown), `table`, `synthetic`.
    """
    if n not in SPECS:
        raise ValueError(f"table {n!r}: the paper's layout is known for Tables {min(SPECS)}-{max(SPECS)}")
    spec, info = SPECS[n], paper.table_info(n)
    absent = dict(absent or {})
    count = info["quantity"] == "count"
    pub = paper.paper_table(n)
    frame = _with_paper_keys(frame, pub, [k.column for k in spec.rows + spec.columns])
    rows, columns = spec.rows, spec.columns
    for key in rows + columns:
        if key.in_paper not in pub.columns or key.column not in frame.columns:
            raise ValueError(
                f"Table {n}: key {key.column!r} is not a column of the frame {list(frame.columns)} "
                f"and the paper's table"
            )
    two_protocols = "ours_independent" in frame.columns
    labels = _paper_labels(n)

    records: dict = {}
    for record in frame.to_dict("records"):
        at = (tuple(_norm(record[k.column]) for k in rows), tuple(_norm(record[k.column]) for k in columns))
        if at in records:
            raise ValueError(
                f"Table {n}: several rows of the frame for {dict(zip([k.column for k in rows], at[0]))}"
                f", {dict(zip([k.column for k in columns], at[1]))}"
            )
        records[at] = record
    published = {
        (tuple(_norm(r[k.in_paper]) for k in rows), tuple(_norm(r[k.in_paper]) for k in columns)): r["value"]
        for r in pub.to_dict("records")
    }
    row_keys = _ordered(pub, frame, rows)
    column_keys = _ordered(_by_printed_column(pub, info), frame, columns) if columns else [()]

    runs = Counter(
        _runs(r) for r in records.values() if _runs(r) and not _missing(r.get("ours")) and r.get("verdict") != ""
    )
    usual_runs = runs.most_common(1)[0][0] if runs else None
    ours_dataset = frame.attrs.get("ours_dataset")
    table_dataset = info["keys"].get("dataset")
    verdicts: dict = {}

    def tally(column, verdict):
        verdicts.setdefault(column, Counter())[verdict] += 1

    def cell(row_key, column_key) -> str:
        keys = dict(zip([k.column for k in rows + columns], row_key + column_key))
        record = records.get((row_key, column_key))
        paper_value = published.get((row_key, column_key), record.get("paper") if record else None)
        if record is None and _missing(paper_value):
            return "-"
        ours_row = record is None or record.get("verdict", "x") != ""  # "": another method's row (7-11)
        if not ours_row:
            return _number(record["paper"], count)
        dataset = ours_dataset or keys.get("dataset") or (record or {}).get("dataset") or table_dataset
        if dataset in absent:
            tally("verdict", ABSENT)
            return ABSENT
        record = record or {}
        if two_protocols:
            lines = [f"paper {_number(paper_value, count)}"]
            shown = [
                (record.get(o), record.get(s), record.get(v) or "no result", name, v)
                for o, s, v, name in PROTOCOL_LINES
            ]
            for value, sd, verdict, name, column in shown:
                tally(column, verdict)
            if all(_missing(value) for value, *_ in shown):
                return "<br>".join(lines + [f"{MARKS['no result']} no result"])
            for value, sd, verdict, name, _ in shown:
                text = "no result" if _missing(value) else _ours(value, sd, _runs(record), usual_runs)
                lines.append(f"{MARKS[verdict]} {text} ({name})")
            return "<br>".join(lines)
        verdict = record.get("verdict") or "no result"
        tally("verdict", verdict)
        value = record.get("ours")
        if _missing(value):
            text = "no result"
        elif count:
            text = _number(value, True)
        else:
            text = _ours(value, record.get("ours_sd"), _runs(record), usual_runs)
        return f"{MARKS[verdict]} {text} (paper {_number(paper_value, count)})"

    if columns:
        headers = ["<br>".join(_label(k.column, v, labels) for k, v in zip(columns, ck)) for ck in column_keys]
    else:
        headers = [info["columns"][0]["label"]]
    out_rows = []
    for row_key in row_keys:
        label_cells = [_label(k.column, v, labels) for k, v in zip(rows, row_key)]
        out_rows.append(label_cells + [cell(row_key, ck) for ck in column_keys])
    out = pd.DataFrame(out_rows, columns=[k.header for k in rows] + headers)
    out.attrs = {
        "table": n,
        "caption": frame.attrs.get("caption", paper.table_caption(n)),
        "synthetic": bool(frame.attrs.get("synthetic", False)),
        "legend": legend(usual_runs, two_protocols, count),
        "verdicts": {c: dict(v) for c, v in verdicts.items()},
    }
    return out


def legend(runs: int | None, two_protocols: bool, count: bool) -> str:
    """One line under a table: what a cell holds and what each mark means."""
    marks = " · ".join(f"{mark} {name}" for name, mark in MARKS.items())
    if count:
        return (
            f"Each cell: our count (the paper's in brackets). {marks}; reproduced: the same count. "
            f'"{ABSENT}": the run skipped the dataset because its files are absent.'
        )
    spread = "ours: one run per number" if runs in (None, 1) else f"ours: mean ± sd over n = {runs} runs"
    spread += " (a cell with another n says so)"
    what = (
        "Each cell: the paper's number, then ours under the published protocol (the authors' evaluation: "
        "class-grouped test batches of 32) and the independent one (each image alone)"
        if two_protocols
        else "Other methods: the paper's numbers; our rows: ours with the paper's PAtt-Lite number in brackets"
    )
    return (
        f"{what}; {spread}. {marks}; reproduced: within {report.ACCURACY_TOLERANCE:g} point of the paper, "
        f"or {report.SPREAD_FACTOR:g} standard errors of our mean (sd/√n) when that is wider."
    )
