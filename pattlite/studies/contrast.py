"""What the authors' random contrast changes, measured rather than assumed.

The authors' model augments inside the graph with `RandomFlip("horizontal")` and
`RandomContrast(0.3)` (a factor drawn in [0.7, 1.3] per image and step). A profile that trains heads on
cached features reproduces the flip exactly (features of every mirror image cached,
`TrainConfig.train_views`), but no finite cache reproduces a continuous contrast draw. So a profile with
`contrast_seeds` trains, on `contrast_train_limit` training images of `contrast_dataset`, stage 1 only
(stage 2 as coded trains the same head on the same frozen features), both ways at each seed:

- "exact": the full image model with the authors' flip and contrast layers (`stage1="exact"`);
- "cached": the head on cached features with the flip only (the profile's own path).

Per protocol this module gives each arm's test accuracy (mean ± sd over seeds) and the paired difference
exact - cached. The difference holds more than the contrast: the exact arm computes the backbone in
float32 on every step (the cached arm's features are float16, from `Experiment.extraction_engine`), and
draws its flip per step rather than per epoch; the table says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pattlite.config import DATASET_NAMES
from pattlite.results import WHOLE_TEST

PROTOCOLS_SHOWN = ("published", "independent")
ARMS = ("exact", "cached")
CAPTION = (
    "What the authors' random contrast changes. Stage 1 only, on {limit:,} {dataset} training images, "
    "published head: the full image model with the authors' flip and contrast layers (exact) against the "
    "head on cached features with the flip only (cached), same seeds. Accuracy (%) on the test split, "
    "mean ± sd over seeds; the difference is exact - cached per seed, in points. It also holds float32 "
    "against float16 backbone features and a flip drawn per step against per epoch."
)


def contrast_rows(results: pd.DataFrame, profile) -> pd.DataFrame:
    """Whole-test rows of the contrast study's runs, with an `arm` column ("exact" or "cached")."""
    needed = {"stage1", "train_limit", "train_stage2"}
    if results.empty or not profile.contrast_seeds or not needed <= set(results.columns):
        return results.iloc[0:0].assign(arm=pd.Series(dtype=str))
    rows = results[
        (results["profile"] == profile.name)
        & (results["dataset"] == profile.contrast_dataset)
        & (results["variant"] == "published")
        & (results["subset"] == WHOLE_TEST)
        & (pd.to_numeric(results["train_limit"], errors="coerce") == profile.contrast_train_limit)
        & (results["train_stage2"] == False)  # noqa: E712 (a column of True/False/NaN)
        & (results["seed"].isin(tuple(profile.contrast_seeds)))
    ]
    return rows.assign(arm=rows["stage1"])


def contrast_numbers(results: pd.DataFrame, profile) -> pd.DataFrame:
    """One row per protocol: runs per arm, each arm's mean and sd (percent), the paired difference
    exact - cached (mean, sd, points) over the seeds both arms have."""
    columns = ["protocol", "seeds", "exact", "exact sd", "cached", "cached sd", "difference", "difference sd"]
    rows = contrast_rows(results, profile)
    out = []
    for protocol in PROTOCOLS_SHOWN:
        mine = rows[rows["protocol"] == protocol]
        if mine.empty:
            continue
        by_arm = {arm: mine[mine["arm"] == arm].set_index("seed")["accuracy"] * 100 for arm in ARMS}
        paired = sorted(set(by_arm["exact"].index) & set(by_arm["cached"].index))
        diff = (by_arm["exact"].loc[paired] - by_arm["cached"].loc[paired]) if paired else pd.Series(dtype=float)

        def stats(values):
            values = np.asarray(values, float)
            mean = float(values.mean()) if len(values) else np.nan
            sd = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            return mean, sd

        exact, exact_sd = stats(by_arm["exact"])
        cached, cached_sd = stats(by_arm["cached"])
        difference, difference_sd = stats(diff)
        out.append(
            {
                "protocol": protocol,
                "seeds": len(paired),
                "exact": exact,
                "exact sd": exact_sd,
                "cached": cached,
                "cached sd": cached_sd,
                "difference": difference,
                "difference sd": difference_sd,
                "exact n": len(by_arm["exact"]),
                "cached n": len(by_arm["cached"]),
            }
        )
    return pd.DataFrame(out, columns=columns + ["exact n", "cached n"])


def contrast_table(numbers: pd.DataFrame) -> pd.DataFrame:
    """`contrast_numbers` for display ("-" where a value is missing)."""

    def pct(mean, sd, n):
        if not np.isfinite(mean):
            return "-"
        return f"{mean:.2f} ± {sd:.2f} (n={n})" if np.isfinite(sd) else f"{mean:.2f} (n={n})"

    rows = []
    for row in numbers.to_dict("records"):
        diff = row["difference"]
        rows.append(
            {
                "protocol": row["protocol"],
                "exact: flip + contrast, full model": pct(row["exact"], row["exact sd"], row["exact n"]),
                "cached: flip only, head on features": pct(row["cached"], row["cached sd"], row["cached n"]),
                "exact - cached (points, paired seeds)": (
                    "-"
                    if not np.isfinite(diff)
                    else f"{diff:+.2f} ± {row['difference sd']:.2f} (n={row['seeds']})"
                    if np.isfinite(row["difference sd"])
                    else f"{diff:+.2f} (n={row['seeds']})"
                ),
            }
        )
    return pd.DataFrame(rows)


def caption(profile) -> str:
    return CAPTION.format(
        limit=profile.contrast_train_limit,
        dataset=DATASET_NAMES.get(profile.contrast_dataset, profile.contrast_dataset),
    )
