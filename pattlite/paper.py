"""The paper's published numbers (Tables 1-11) and the text claims the report quotes.

Everything comes from one transcription, `pattlite/resources/paper_results.json`, checked number by number
against the paper's text by `tests/test_paper.py`. Tables are stored there as printed (rows x columns,
"-" as null); this module turns them into tidy frames, one row per published number.

Example:

```python
from pattlite import paper
paper.paper_value(4, variant="published", dataset="rafdb")   # 95.05
paper.paper_table(2).query("dataset == 'ferplus' and subset == 'pose45'")
paper.figure_points(9)  # Fig. 9: Table 8's methods, RAF-DB accuracy against # Params
```
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pandas as pd

RESULTS_PATH = Path(__file__).resolve().parent / "resources" / "paper_results.json"
TABLE_NUMBERS = tuple(range(1, 12))

# Columns of every tidy table, first; table-specific keys (dataset, class, subset, split, variant,
# attention_classifier, patch_extraction, layer, kernel, method, ref, params, params_text) follow.
BASE_COLUMNS = ("table", "row_group", "row", "column_group", "column")


@functools.lru_cache(maxsize=1)
def load_results() -> dict:
    """The whole transcription (tables, claims, figures) as a dict, read once."""
    with open(RESULTS_PATH, encoding="utf-8") as f:
        return json.load(f)


def _check_table_number(n) -> str:
    if isinstance(n, bool) or not isinstance(n, int) or n not in TABLE_NUMBERS:
        raise ValueError(f"unknown paper table {n!r}; the paper has Tables {TABLE_NUMBERS[0]}-{TABLE_NUMBERS[-1]}")
    return str(n)


def table_info(n: int) -> dict:
    """Caption, quantity, unit, row header, columns, rows (as printed) and notes of Table `n` (a copy)."""
    return copy.deepcopy(load_results()["tables"][_check_table_number(n)])


def table_caption(n: int) -> str:
    """The caption as the paper prints it, prefixed "Table N." (for `report.save_table`)."""
    return f"Table {n}. {table_info(n)['caption']}"


@functools.lru_cache(maxsize=None)
def _tidy(n: int) -> pd.DataFrame:
    info = table_info(n)
    records = []
    for row in info["rows"]:
        row_keys = {k: v for k, v in row.items() if k not in ("label", "group", "values")}
        for column, value in zip(info["columns"], row["values"], strict=True):
            if value is None:  # "-" in the paper: nothing was published
                continue
            column_keys = {k: v for k, v in column.items() if k not in ("label", "group")}
            records.append(
                {
                    "table": n,
                    "row_group": row.get("group"),
                    "row": row["label"],
                    "column_group": column.get("group"),
                    "column": column["label"],
                    **info["keys"],
                    **row_keys,
                    **column_keys,
                    "value": float(value),
                    "quantity": info["quantity"],
                    "unit": info["unit"],
                }
            )
    df = pd.DataFrame.from_records(records)
    for name in ("ref", "layer"):  # integer keys with gaps (PAtt-Lite has no reference number)
        if name in df:
            df[name] = df[name].astype("Int64")
    df.attrs.update(table=n, caption=table_caption(n), notes=list(info["notes"]))
    return df


def paper_table(n: int) -> pd.DataFrame:
    """Table `n` of the paper as a tidy frame, one row per published number.

    Columns: `table`, `row_group`, `row`, `column_group`, `column` (labels as printed), the table's keys
    (e.g. `dataset`, `class`, `subset`, `split`, `variant`, `method`, `ref`, `params`, `params_text`,
    `layer`, `kernel`), `value` (float), `quantity` ("accuracy" or "count") and `unit` ("%" or "images").
    Cells printed as "-" have no row. `df.attrs` holds `caption` and `notes`.

    Args:
        n: table number, 1 to 11.

    Returns:
        A new pandas DataFrame (safe to modify).
    """
    _check_table_number(n)
    cached = _tidy(n)
    df = cached.copy()
    df.attrs = {**cached.attrs, "notes": list(cached.attrs["notes"])}
    return df


def paper_value(table: int, **keys) -> float:
    """The one number of Table `table` selected by `keys` (column=value pairs of `paper_table(table)`).

    Example: `paper_value(11, method="PAtt-Lite", dataset="ferplus", subset="pose30")` -> 96.07.

    Raises:
        ValueError: a key is not a column of the table, or the keys select no number or more than one
            (the message lists what the table holds).
    """
    df = paper_table(table)
    mask = pd.Series(True, index=df.index)
    for name, wanted in keys.items():
        if name not in df.columns:
            raise ValueError(f"Table {table} has no key {name!r}; its keys are: {', '.join(df.columns)}")
        mask &= df[name] == wanted
    found = df[mask]
    if len(found) != 1:
        hint = {name: sorted(map(str, df[name].dropna().unique())) for name in keys}
        raise ValueError(
            f"Table {table}: {keys} selects {len(found)} numbers, expected exactly 1; values present: {hint}"
        )
    return float(found["value"].iloc[0])


def claim(name: str):
    """The value of a text claim (e.g. "params", "finetune_layers", "batch_size"); see `claims()`."""
    all_claims = load_results()["claims"]
    if name not in all_claims:
        raise ValueError(f"unknown paper claim {name!r}; valid claims: {', '.join(all_claims)}")
    return copy.deepcopy(all_claims[name]["value"])


def claims() -> dict:
    """All text claims: name -> {value, where, quote (verbatim from the paper)} (a copy)."""
    return copy.deepcopy(load_results()["claims"])


def figure_points(figure: int) -> pd.DataFrame:
    """Data points of Fig. 9 (RAF-DB) or Fig. 10 (FERPlus): Table 8's methods, accuracy against params.

    Returns columns `method` (row label as printed, e.g. "RAN [5]"), `params` (count, NaN where the
    paper prints "-"), `params_text`, `accuracy` (%), `is_pattlite` (the paper's own point).
    """
    figures = load_results()["figures"]
    info = figures.get(str(figure))
    if info is None or info["kind"] != "accuracy_vs_params":
        valid = [k for k, v in figures.items() if v["kind"] == "accuracy_vs_params"]
        raise ValueError(f"figure {figure!r} has no accuracy-vs-params data; valid figures: {', '.join(valid)}")
    df = paper_table(info["data"]["table"])
    df = df[df["dataset"] == info["data"]["column"]]
    return pd.DataFrame(
        {
            "method": df["row"].to_numpy(),
            "params": df["params"].astype(float).to_numpy(),
            "params_text": df["params_text"].to_numpy(),
            "accuracy": df["value"].to_numpy(),
            "is_pattlite": (df["method"] == "PAtt-Lite").to_numpy(),
        }
    )


PAPER_PARAMS: float = claim("params")  # 1.10M, as printed (the exact count is not in the paper)
PAPER_PARAMS_TEXT: str = load_results()["claims"]["params"]["text"]
PAPER_FINETUNE_LAYERS: dict = dict(claim("finetune_layers"))
PAPER_INPUT_SIZE: int = claim("input_size")
PAPER_BATCH_SIZE: int = claim("batch_size")
