"""What a profile's stage-2 cap costs, measured rather than assumed.

A profile that caps stage 2 (`Profile.stage2_max_epochs`) also trains the published head with stage 2
uncapped at its `reference_seeds` (the `reference` study of `pattlite.studies.plan`). Every run records
its test accuracy after a few stage-2 epoch counts (`TrainConfig.test_probe_epochs`, never used to pick
or stop a model), so a reference run tells what it would have scored had it stopped at the cap. Per
benchmark and protocol this module puts side by side: the reference runs' accuracy at their uncapped end,
the same runs at the cap (their probe; a run whose early stopping fired before the cap is its own end),
and the capped runs of the same seeds. A capped run trains exactly as its reference run up to the cap
(its probes repeat the reference's), but ends with EarlyStopping's best weights on training accuracy
(Keras 3 restores them at the end of training, stopped early or not), so its accuracy can differ from the
probe at the cap: the cost is given both ways.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pattlite.config import DATASET_NAMES
from pattlite.results import WHOLE_TEST
from pattlite.studies.context import BENCHMARKS
from pattlite.studies.tables import standard_rows

PROTOCOLS_SHOWN = ("published", "independent")
CAPTION = (
    "What the stage-2 cap costs. The published head at the reference seed(s), trained with stage 2 "
    "uncapped, against the same runs' test accuracy after the cap's number of stage-2 epochs (their "
    "test probe) and the capped runs of the same seed(s), which end with EarlyStopping's best "
    "weights. Accuracy (%) on the test split, mean over runs (CK+: over folds); costs in points: "
    "the probe at the cap - uncapped, and the capped runs - uncapped."
)


def _published_rows(results: pd.DataFrame, profile, capped: bool) -> pd.DataFrame:
    """Whole-test rows of the published head at default options and the profile's augmentation: the
    capped runs (the profile's own recipe) or the uncapped reference runs."""
    if results.empty or "train_stage2_max_epochs" not in results.columns:
        return results.iloc[0:0]
    rows = results[
        (results["profile"] == profile.name) & (results["variant"] == "published") & (results["subset"] == WHOLE_TEST)
    ]
    if capped:
        rows = standard_rows(rows)
    else:
        rows = standard_rows(rows, recipe=False)
        rows = rows[rows["train_stage2_max_epochs"].isna()]
        views = pd.to_numeric(rows.get("train_train_views", 1), errors="coerce")
        rows = rows[pd.Series(views, index=rows.index).fillna(1) == profile.train_views]
    seeds = tuple(profile.reference_seeds)
    return rows[rows["seed"].isin(seeds)] if seeds else rows.iloc[0:0]


def _at_cap(row: dict, cap: int) -> float:
    """A reference run's accuracy after `cap` stage-2 epochs: its probe at the cap, or its end when its
    early stopping fired first (NaN when it ran past the cap without a probe there)."""
    if int(row["epochs_stage2"]) <= cap:
        return float(row["accuracy"])
    value = row.get(f"probe_{cap}", np.nan)
    return float(value) if value is not None and np.isfinite(value) else np.nan


def cap_numbers(results: pd.DataFrame, profile, datasets=BENCHMARKS) -> pd.DataFrame:
    """One row per benchmark x protocol with reference runs: `runs`, `stage-2 epochs uncapped` (min and
    max over the runs), `uncapped`, `at the cap`, `capped runs` (means, percent; NaN where none) and
    `cost` (at the cap - uncapped, points). Empty for a profile without a cap."""
    cap = profile.stage2_max_epochs
    columns = [
        "dataset",
        "protocol",
        "runs",
        "epochs min",
        "epochs max",
        "uncapped",
        "at the cap",
        "capped runs",
        "capped n",
        "cost",
        "cost capped",
    ]
    if cap is None:
        return pd.DataFrame(columns=columns)
    reference = _published_rows(results, profile, capped=False)
    capped = _published_rows(results, profile, capped=True)
    out = []
    for dataset in datasets:
        for protocol in PROTOCOLS_SHOWN:
            ref = reference[(reference["dataset"] == dataset) & (reference["protocol"] == protocol)]
            if ref.empty:
                continue
            records = ref.to_dict("records")
            at_cap = np.array([_at_cap(r, cap) for r in records])
            mine = capped[(capped["dataset"] == dataset) & (capped["protocol"] == protocol)]
            uncapped = 100 * float(ref["accuracy"].mean())
            at = 100 * float(at_cap.mean()) if np.isfinite(at_cap).all() else np.nan
            # The capped runs' cost only once every reference run has its capped twin (same seed, fold).
            twins = len(mine) == len(ref)
            capped_mean = 100 * float(mine["accuracy"].mean()) if len(mine) else np.nan
            out.append(
                {
                    "dataset": dataset,
                    "protocol": protocol,
                    "runs": len(ref),
                    "epochs min": int(ref["epochs_stage2"].min()),
                    "epochs max": int(ref["epochs_stage2"].max()),
                    "uncapped": uncapped,
                    "at the cap": at,
                    "capped runs": capped_mean,
                    "capped n": len(mine),
                    "cost": at - uncapped,
                    "cost capped": capped_mean - uncapped if twins else np.nan,
                }
            )
    return pd.DataFrame(out, columns=columns)


def cap_table(numbers: pd.DataFrame, cap: int) -> pd.DataFrame:
    """`cap_numbers` for display ("-" where a value is missing, "not run yet" for capped runs to come)."""

    def pct(value):
        return f"{value:.2f}" if np.isfinite(value) else "-"

    rows = []
    for row in numbers.to_dict("records"):
        epochs = (
            str(row["epochs min"])
            if row["epochs min"] == row["epochs max"]
            else f"{row['epochs min']}-{row['epochs max']}"
        )
        rows.append(
            {
                "dataset": DATASET_NAMES[row["dataset"]],
                "protocol": row["protocol"],
                "runs": row["runs"],
                "stage-2 epochs run uncapped": epochs,
                "uncapped": pct(row["uncapped"]),
                f"after {cap} stage-2 epochs": pct(row["at the cap"]),
                "capped runs, same seed(s)": pct(row["capped runs"]) if row["capped n"] else "not run yet",
                "cost by the probe": f"{row['cost']:+.2f}" if np.isfinite(row["cost"]) else "-",
                "cost by the capped runs": (f"{row['cost capped']:+.2f}" if np.isfinite(row["cost capped"]) else "-"),
            }
        )
    return pd.DataFrame(rows)
