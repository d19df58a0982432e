"""The report's one-minute summary: how many of the paper's numbers hold, the accuracy each model really
has, and what the batch composition adds.

- `headline_table(results, absent)`: per benchmark, the paper's PAtt-Lite accuracy beside ours under the
  published protocol and with each image predicted alone, the model without batch mixing and the
  corrected model (mean ± sd over seeds, n), and the batch gain. The README's "Results on real data"
  table is this frame.
- `verdict_counts(tables, absent)`: per table, how many published numbers are reproduced, not
  reproduced, without a result, or not run (dataset absent), and by how much the others miss.
- `summary_markdown(...)`: the paragraph that opens the report.
- `runs_line(results)`: the seeds (and CK+ folds) the result files hold, which is what was run (a
  run's `-p seeds=` may differ from its profile's default).

Spreads count what they average: over seeds, or for CK+ over folds (x seeds): `runs_phrase`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pattlite import paper, report
from pattlite.config import DATASET_NAMES
from pattlite.results import WHOLE_TEST
from pattlite.studies.context import BENCHMARKS
from pattlite.studies.layout import ABSENT
from pattlite.studies.tables import OUR_ROWS, batch_gains, ours_accuracy, standard_rows

NOT_RUN = ABSENT  # the cell text of a dataset the run skipped, as in the tables
DATA_TABLES = ("Table 1", "Table 2", "Table 3")  # counts; the other tables hold accuracies

# (column, variant, protocol) of the headline table.
HEADLINE_COLUMNS = (
    ("published model, published protocol", "published", "published"),
    ("published model, each image alone", "published", "independent"),
    ("without batch mixing", "no_mixing", "independent"),
    ("corrected model (pattlite)", "pattlite", "independent"),
)


HEADLINE_CAPTION = (
    "Accuracy (%) on the test split, mean ± sd over runs (n: one run per seed; CK+: one per fold and seed)."
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def runs_phrase(runs: int, seeds: int, folds: int) -> str:
    """What `runs` results averaged are: "3 seeds", "10 folds (1 seed)", "10 folds x 3 seeds", or
    "25 runs (10 folds, 3 seeds)" when not every fold has every seed."""
    runs, seeds, folds = int(runs), int(seeds), int(folds)
    if folds <= 1:
        return _plural(seeds, "seed") if runs == seeds else f"{_plural(runs, 'run')} ({_plural(seeds, 'seed')})"
    if runs == seeds * folds:
        return f"{folds} folds ({_plural(seeds, 'seed')})" if seeds == 1 else f"{folds} folds x {seeds} seeds"
    return f"{_plural(runs, 'run')} ({_plural(folds, 'fold')}, {_plural(seeds, 'seed')})"


def _distinct(rows: pd.DataFrame, column: str) -> list:
    if column not in rows.columns:
        return []
    return sorted({int(v) for v in rows[column].dropna()})


def runs_line(results: pd.DataFrame) -> str:
    """The seeds the result files hold (and CK+'s folds): what the run ran, whatever its profile says."""
    if results.empty:
        return "No result files yet."
    text = f"Seeds run (from the result files): {', '.join(map(str, _distinct(results, 'seed'))) or 'none'}"
    ck = results[results["dataset"] == "ckplus"] if "dataset" in results.columns else results.iloc[0:0]
    folds = _distinct(ck, "fold")
    if folds:
        text += f"; CK+ folds: {', '.join(map(str, folds))}"
    return text + "."


def format_spread(mean, sd, runs) -> str:
    """ "72.31 ± 0.42 (n=3)"; the sd is left out for one run, "-" when there is no result."""
    if mean is None or not np.isfinite(mean):
        return "-"
    if runs is not None and runs > 1 and sd is not None and np.isfinite(sd):
        return f"{mean:.2f} ± {sd:.2f} (n={int(runs)})"
    return f"{mean:.2f} (n={int(runs) if runs else 1})"


def headline_numbers(results: pd.DataFrame, datasets=BENCHMARKS) -> pd.DataFrame:
    """The headline as numbers: one row per benchmark with `paper` (Table 4's PAtt-Lite value), and
    `<variant>/<protocol>` mean, `sd` and `runs` columns for each of `HEADLINE_COLUMNS`, plus
    `batch_gain` and `batch_gain_sd` (published minus independent protocol, per run, of the published
    model), and `seeds` and `folds` (distinct seeds and CK+ folds among the published model's runs
    under the published protocol, which `batch_gain_sd` spreads over)."""
    published = paper.paper_table(4).query("variant == 'published'").set_index("dataset")["value"]
    rows = []
    gains = batch_gains(results) if not results.empty else pd.DataFrame(columns=["mean", "sd"])
    by_protocol = {
        protocol: ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"])
        for protocol in {protocol for _, _, protocol in HEADLINE_COLUMNS}
    }
    for dataset in datasets:
        row = {"dataset": dataset, "paper": float(published.get(dataset, np.nan))}
        for _, variant, protocol in HEADLINE_COLUMNS:
            ours = by_protocol[protocol]
            match = ours[(ours["dataset"] == dataset) & (ours["variant"] == variant)]
            name = f"{variant}/{protocol}"
            row[name] = float(match["value"].iloc[0]) if len(match) else np.nan
            row[f"{name} sd"] = float(match["sd"].iloc[0]) if len(match) else np.nan
            row[f"{name} runs"] = int(match["runs"].iloc[0]) if len(match) else 0
        mine = _published_runs(results, dataset)
        row["seeds"], row["folds"] = len(_distinct(mine, "seed")), len(_distinct(mine, "fold"))
        row["batch_gain"] = float(gains["mean"].get(dataset, np.nan)) if len(gains) else np.nan
        row["batch_gain_sd"] = float(gains["sd"].get(dataset, np.nan)) if len(gains) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _published_runs(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The rows of the published model's runs on `dataset` (whole test split, published protocol)."""
    if results.empty:
        return results
    rows = standard_rows(results)
    return rows[
        (rows["dataset"] == dataset)
        & (rows["variant"] == "published")
        & (rows["subset"] == WHOLE_TEST)
        & (rows["protocol"] == "published")
    ]


def headline_table(results: pd.DataFrame, absent: dict | None = None, datasets=BENCHMARKS) -> pd.DataFrame:
    """The headline for display: one row per benchmark (the paper's names), text cells "mean ± sd (n)";
    a benchmark in `absent` reads "not run (dataset absent)" in every column of ours."""
    absent = absent or {}
    numbers = headline_numbers(results, datasets)
    out = []
    for row in numbers.to_dict("records"):
        line = {"dataset": DATASET_NAMES[row["dataset"]], "paper (PAtt-Lite)": f"{row['paper']:.2f}"}
        for column, variant, protocol in HEADLINE_COLUMNS:
            name = f"{variant}/{protocol}"
            line[column] = (
                NOT_RUN
                if row["dataset"] in absent
                else format_spread(row[name], row[f"{name} sd"], row[f"{name} runs"])
            )
        gain_runs = row["published/published runs"]
        line["batch gain (points)"] = (
            NOT_RUN
            if row["dataset"] in absent
            else (
                "-"
                if not np.isfinite(row["batch_gain"])
                else f"{row['batch_gain']:+.2f}" + (f" ± {row['batch_gain_sd']:.2f}" if gain_runs > 1 else "")
            )
        )
        out.append(line)
    return pd.DataFrame(out)


def verdict_counts(tables: dict, absent: dict | None = None) -> pd.DataFrame:
    """Per table, the published numbers by verdict under the published protocol (the authors' own
    evaluation), with the diffs of those not reproduced.

    Args:
        tables: {name: comparison frame} (`data_tables`, `table(n, ...)`); frames need `paper` and
            `verdict`, and `dataset` for the absent ones to be counted as not run. In Tables 7-11 (a
            `method` column) only our row under the authors' protocol counts: each PAtt-Lite number once.
        absent: {dataset: reason}: numbers of these datasets count as "not run (dataset absent)".

    Returns:
        Columns `table`, `published numbers`, `reproduced`, `not reproduced`, `no result`, `not comparable`
        (synthetic data, a stand-in dataset), `not run`, `median diff` and `diffs` (list, ours minus paper,
        of the numbers not reproduced). The verdicts of a table add up to its published numbers.
    """
    absent = absent or {}
    rows = []
    for name, frame in tables.items():
        if not {"paper", "verdict"} <= set(frame.columns):
            continue
        checked = frame[frame["paper"].notna() & (frame["verdict"].astype(str) != "")]
        if "method" in checked:  # Tables 7-11: PAtt-Lite's number once, against ours under its protocol
            checked = checked[checked["method"] == OUR_ROWS[0][0]]
        if checked.empty:
            continue
        is_absent = checked["dataset"].isin(list(absent)) if "dataset" in checked else pd.Series(False, checked.index)
        verdicts = checked["verdict"].where(~is_absent, NOT_RUN)
        missed = checked[(verdicts == "not reproduced")]
        rows.append(
            {
                "table": name,
                "published numbers": len(checked),
                "reproduced": int((verdicts == "reproduced").sum()),
                "not reproduced": int((verdicts == "not reproduced").sum()),
                "no result": int((verdicts == "no result").sum()),
                "not comparable": int((verdicts == "not comparable").sum()),
                "not run": int((verdicts == NOT_RUN).sum()),
                "median diff": float(missed["diff"].median()) if len(missed) else np.nan,
                "diffs": [float(d) for d in missed["diff"]],
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "table",
            "published numbers",
            "reproduced",
            "not reproduced",
            "no result",
            "not comparable",
            "not run",
            "median diff",
            "diffs",
        ],
    )


def summary_markdown(
    counts: pd.DataFrame,
    numbers: pd.DataFrame,
    absent: dict | None = None,
    synthetic: bool = False,
    missing: int = 0,
    planned: int | None = None,
) -> str:
    """The opening paragraph: verdict counts, each model's real accuracy, the batch gain; numbers from
    `verdict_counts` and `headline_numbers`. `missing` of `planned` experiments without a result file
    are said first: a published number averages the runs there are, so it can have a result while
    runs of it are missing."""
    absent = absent or {}
    lines = []
    if synthetic:
        lines.append(f"> **{report.SYNTHETIC_BANNER}**: the counts below say nothing about the paper.\n")
    if missing:
        lines.append(
            f"- **{missing} of {planned} planned experiments have no result yet**: a number below "
            'averages the runs there are (its n says how many), and one with none says "no result".'
        )
    is_data = counts["table"].astype(str).isin(list(DATA_TABLES))
    names = ", ".join(DATASET_NAMES.get(d, d) for d in absent)
    for label, part, unit in (
        ("Data (Tables 1-3)", counts[is_data], "counts"),
        ("Accuracies (Tables 4-11)", counts[~is_data], "accuracies"),
    ):
        if part.empty:
            continue
        total, not_run = int(part["published numbers"].sum()), int(part["not run"].sum())
        text = (
            f"- **{label}:** of {total} published {unit}, {total - not_run} concern the benchmarks run "
            f"here: {int(part['reproduced'].sum())} reproduced, {int(part['not reproduced'].sum())} not "
            f"reproduced, {int(part['no result'].sum())} without any result"
        )
        not_comparable = int(part["not comparable"].sum())
        if not_comparable:
            text += f", {not_comparable} not comparable (synthetic data or a stand-in dataset)"
        if not_run:
            text += f"; {not_run} are not run ({names}: dataset absent)"
        text += "."
        diffs = [d for ds in part["diffs"] for d in ds]
        if diffs and unit == "accuracies":
            text += (
                f" Those not reproduced miss by a median of {np.median(diffs):+.2f} points (from "
                f"{min(diffs):+.2f} to {max(diffs):+.2f}; ours minus paper, the authors' protocol)."
            )
        elif diffs:
            text += f" The counts that differ are off by {min(diffs):+.0f} to {max(diffs):+.0f} images."
        lines.append(text)
    for row in numbers.to_dict("records"):
        if row["dataset"] in absent or not np.isfinite(row.get("published/published", np.nan)):
            continue
        name = DATASET_NAMES.get(row["dataset"], row["dataset"])
        parts = [
            f"- **{name}:** the paper reports {row['paper']:.2f}%. The published model scores "
            f"{row['published/published']:.2f}% under the authors' protocol (class-grouped test batches) "
            f"and {row['published/independent']:.2f}% with each image predicted alone"
        ]
        if np.isfinite(row.get("batch_gain", np.nan)):
            parts.append(f": batch composition adds {row['batch_gain']:+.2f} points")
            runs = int(row["published/published runs"])
            if runs > 1 and np.isfinite(row.get("batch_gain_sd", np.nan)):
                over = runs_phrase(runs, row.get("seeds") or runs, row.get("folds") or 0)
                parts.append(f" (sd {row['batch_gain_sd']:.2f} over {over})")
        if np.isfinite(row.get("pattlite/independent", np.nan)):
            parts.append(f". The corrected model scores {row['pattlite/independent']:.2f}%")
        if np.isfinite(row.get("no_mixing/independent", np.nan)):
            parts.append(f", the model without batch mixing {row['no_mixing/independent']:.2f}%")
        lines.append("".join(parts) + ".")
    return "\n".join(lines)
