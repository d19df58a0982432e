"""The gap to the paper taken apart: per benchmark, the paper's accuracy beside ours at each step from
the authors' protocol down to the corrected model, and how many points each step accounts for.

Lines (each the mean ± sd over runs; CK+ over folds x seeds):

- the paper's PAtt-Lite number (Table 4);
- ours at the profile's recipe, authors' protocol (published head, class-grouped test batches of 32),
  with the profile's augmentation (`cpu_full`: the horizontal flip on cached features);
- the same without augmentation (the `gap` study: the published head with `train_views=1`, run only
  by profiles that augment);
- the reduced `cpu` profile (5,000-image subsets, capped epochs, no augmentation), read from its
  committed summary (`docs/results/cpu/summary.csv`, made by `pattlite publish` from its result files);
- the published head with each image predicted alone; the head without batch mixing; the corrected
  `pattlite` model (independent protocol).

A step between two lines of ours is paired: the mean ± sd, over the runs both lines have (the same seed
and CK+ fold), of the difference between the two runs. The lines can hold different runs (the line
without augmentation has only the gap study's seed), and a difference of their means would then mix the
step with the spread between seeds. A step to the paper or to the reduced profile (whose runs are other
trainings) is the difference of the two lines' means.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config, paper, report
from pattlite.config import DATASET_NAMES
from pattlite.results import WHOLE_TEST, fold_label
from pattlite.studies.context import BENCHMARKS
from pattlite.studies.summary import NOT_RUN, format_spread
from pattlite.studies.tables import ours_accuracy, standard_rows

# (column, variant, protocol, rows): rows "standard" = the profile's own recipe, "no_augmentation" =
# the gap study's published head trained without augmentation.
GAP_LINES = (
    ("ours, authors' protocol", "published", "published", "standard"),
    ("ours, authors' protocol, no augmentation", "published", "published", "no_augmentation"),
    ("reduced cpu profile, authors' protocol", None, None, "reduced"),
    ("published model, each image alone", "published", "independent", "standard"),
    ("without batch mixing", "no_mixing", "independent", "standard"),
    ("corrected model (pattlite)", "pattlite", "independent", "standard"),
)
# (step, minuend column, subtrahend column): the points each step accounts for.
GAP_STEPS = (
    ("remaining gap to the paper", "paper", "ours, authors' protocol"),
    ("flip augmentation", "ours, authors' protocol", "ours, authors' protocol, no augmentation"),
    (
        "full size vs the reduced cpu profile",
        "ours, authors' protocol, no augmentation",
        "reduced cpu profile, authors' protocol",
    ),
    (
        "batch composition (authors' protocol vs each image alone)",
        "ours, authors' protocol",
        "published model, each image alone",
    ),
    (
        "batch-mixing head vs the same head without mixing, each image alone",
        "published model, each image alone",
        "without batch mixing",
    ),
    ("corrected model vs the head without mixing", "corrected model (pattlite)", "without batch mixing"),
)
REDUCED_SUMMARY = config.PROJECT_ROOT / "docs" / "results" / "cpu" / "summary.csv"
REDUCED_COLUMN = "published model, published protocol"
FIGURE = "gap"  # the figure's file stem (`gap.png`), which the README block shows too

CAPTION = (
    "The gap to the paper taken apart. Accuracy (%) on the test split, mean ± sd over runs (n); the "
    "steps below are in points."
)
STEPS_CAPTION = (
    "Points each step accounts for: between two lines of ours, the mean ± sd of the difference between "
    "runs of the same seed (and CK+ fold), over the n runs both lines have; to the paper and to the "
    "reduced cpu profile (its line from docs/results/cpu/summary.csv), the difference of the two lines' means."
)


def no_augmentation_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The gap study's rows: variants at default options trained with one view (no flip) by a profile
    whose recipe has two."""
    if results.empty or "train_train_views" not in results.columns:
        return results.iloc[0:0]
    rows = standard_rows(results, recipe=False)
    views = pd.to_numeric(rows["train_train_views"], errors="coerce").fillna(1)
    return rows[(views == 1) & (rows["profile"].map(_profile_views) == 2)]


def _profile_views(name) -> int:
    from pattlite.profiles import PROFILES

    return PROFILES[name].train_views if name in PROFILES else 1


def read_reduced(path=REDUCED_SUMMARY) -> dict:
    """{benchmark: (mean, sd, runs)} of the reduced cpu profile's published model under the published
    protocol, from its committed summary (empty when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str)
    names = {v: k for k, v in DATASET_NAMES.items()}
    out = {}
    for row in frame.to_dict("records"):
        match = re.match(r"^\s*([0-9.]+)(?:\s*±\s*([0-9.]+))?\s*\(n=(\d+)\)", str(row.get(REDUCED_COLUMN, "")))
        if match and row.get("dataset") in names:
            sd = float(match.group(2)) if match.group(2) else np.nan
            out[names[row["dataset"]]] = (float(match.group(1)), sd, int(match.group(3)))
    return out


def gap_numbers(results: pd.DataFrame, reduced: dict | None = None, datasets=BENCHMARKS) -> pd.DataFrame:
    """One row per benchmark: `paper`, and per line of `GAP_LINES` its mean, `<line> sd` and
    `<line> runs` (NaN / 0 where there is none), and for each line of ours `<line> per run`:
    {(seed, fold): accuracy (%)}, which `gap_steps` pairs."""
    reduced = read_reduced() if reduced is None else reduced
    published = paper.paper_table(4).query("variant == 'published'").set_index("dataset")["value"]
    frames = {"standard": results, "no_augmentation": no_augmentation_rows(results)}
    cache = {}
    rows = []
    for dataset in datasets:
        row = {"dataset": dataset, "paper": float(published.get(dataset, np.nan))}
        for column, variant, protocol, source in GAP_LINES:
            if source == "reduced":
                mean, sd, runs = reduced.get(dataset, (np.nan, np.nan, 0))
                row[f"{column} per run"] = None
            else:
                key = (source, protocol)
                if key not in cache:
                    cache[key] = ours_accuracy(
                        frames[source], protocol, WHOLE_TEST, ["dataset", "variant"], standard=source == "standard"
                    )
                ours = cache[key]
                match = ours[(ours["dataset"] == dataset) & (ours["variant"] == variant)]
                mean, sd, runs = (
                    (float(match["value"].iloc[0]), float(match["sd"].iloc[0]), int(match["runs"].iloc[0]))
                    if len(match)
                    else (np.nan, np.nan, 0)
                )
                row[f"{column} per run"] = _per_run(
                    frames[source], dataset, variant, protocol, standard=source == "standard"
                )
            row[column], row[f"{column} sd"], row[f"{column} runs"] = mean, sd, runs
        rows.append(row)
    return pd.DataFrame(rows)


def _per_run(results: pd.DataFrame, dataset: str, variant: str, protocol: str, standard: bool) -> dict:
    """{(seed, fold): accuracy (%)} of one line's runs (fold "" outside CK+), the rows `ours_accuracy`
    averages for it."""
    if results.empty:
        return {}
    rows = standard_rows(results) if standard else results
    rows = rows[
        (rows["dataset"] == dataset)
        & (rows["variant"] == variant)
        & (rows["protocol"] == protocol)
        & (rows["subset"] == WHOLE_TEST)
    ]
    folds = rows["fold"] if "fold" in rows.columns else pd.Series("", index=rows.index)
    runs = pd.Series(
        100.0 * pd.to_numeric(rows["accuracy"], errors="raise").to_numpy(dtype=float),
        index=pd.MultiIndex.from_arrays([rows["seed"].astype(str).to_numpy(), folds.map(fold_label).to_numpy()]),
    )
    return runs.groupby(level=[0, 1]).mean().to_dict()  # one value per run, as `ours_accuracy` averages them


def gap_table(numbers: pd.DataFrame, absent: dict | None = None) -> pd.DataFrame:
    """`gap_numbers` for display: "mean ± sd (n=runs)" cells; "not run" where there is no result."""
    absent = absent or {}
    out = []
    for row in numbers.to_dict("records"):
        line = {"dataset": DATASET_NAMES[row["dataset"]], "paper": f"{row['paper']:.2f}"}
        for column, *_ in GAP_LINES:
            line[column] = (
                NOT_RUN
                if row["dataset"] in absent
                else "not run"
                if not row[f"{column} runs"]
                else format_spread(row[column], row[f"{column} sd"], row[f"{column} runs"])
            )
        out.append(line)
    return pd.DataFrame(out)


def gap_steps(numbers: pd.DataFrame) -> pd.DataFrame:
    """Points each step of `GAP_STEPS` accounts for, per benchmark (see `STEPS_CAPTION`): "+1.23 ± 0.45
    (n=3)" for a step between two lines of ours, paired by seed and fold; "+1.23" for a difference of
    means; "-" where a line (or a pair) has no result."""
    out = []
    for step, minuend, subtrahend in GAP_STEPS:
        line = {"step": step}
        for row in numbers.to_dict("records"):
            first, second = row.get(f"{minuend} per run"), row.get(f"{subtrahend} per run")
            if first is not None and second is not None:
                cell = _paired(first, second)
            else:
                value = row[minuend] - row[subtrahend]
                cell = f"{value:+.2f}" if np.isfinite(value) else "-"
            line[DATASET_NAMES[row["dataset"]]] = cell
        out.append(line)
    return pd.DataFrame(out)


def _paired(first: dict, second: dict) -> str:
    """The mean ± sd of first - second over the runs both have, "+x.xx ± s.ss (n=k)"."""
    shared = sorted(set(first) & set(second))
    if not shared:
        return "-"
    differences = np.array([first[run] - second[run] for run in shared])
    if len(differences) == 1:
        return f"{differences[0]:+.2f} (n=1)"
    return f"{differences.mean():+.2f} ± {differences.std(ddof=1):.2f} (n={len(differences)})"


def gap_figure(numbers: pd.DataFrame, ctx=None, synthetic: bool = False):
    """Grouped bars per benchmark with results: the paper and each line of ours, error bars = sd over
    runs (saved as `gap` in the context's figures folder when `ctx` is given)."""
    import matplotlib.pyplot as plt

    shown = numbers[[bool(row[f"{GAP_LINES[0][0]} runs"]) for row in numbers.to_dict("records")]]
    columns = ["paper"] + [column for column, *_ in GAP_LINES]
    fig, ax = plt.subplots(figsize=(3.0 + 2.6 * max(1, len(shown)), 4.6))
    width = 0.84 / len(columns)
    x = np.arange(len(shown))
    for i, column in enumerate(columns):
        values = shown[column].to_numpy(dtype=float)
        errors = None if column == "paper" else np.nan_to_num(shown[f"{column} sd"].to_numpy(dtype=float))
        ax.bar(
            x + i * width - 0.42 + width / 2,
            values,
            width,
            yerr=errors,
            capsize=2,
            label=column,
            color="black" if column == "paper" else None,
        )
    ax.set_xticks(x, [DATASET_NAMES[d] for d in shown["dataset"]])
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("The gap to the paper, step by step (error bars: sd over runs)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if ctx is not None:
        report.save_figure(fig, FIGURE, ctx.figures_dir, synthetic=ctx.synthetic or synthetic)
    return fig
