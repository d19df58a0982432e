"""The report's summary on fake results with known numbers: headline accuracies with their spread over
seeds, the batch gain, verdict counts (absent datasets counted as not run), and the spread-aware
verdict."""

import numpy as np
import pandas as pd
import pytest

from pattlite import paper, report
from pattlite.studies import summary, tables

# Per seed: published protocol / independent protocol accuracy (fractions) of each variant on FERPlus.
FERPLUS = {
    "published": [(0.80, 0.66), (0.82, 0.67), (0.78, 0.65)],
    "no_mixing": [(0.68, 0.68), (0.69, 0.69), (0.70, 0.70)],
    "pattlite": [(0.66, 0.66), (0.67, 0.67), (0.68, 0.68)],
}


def fake_results(per_variant, dataset="ferplus"):
    rows = []
    for variant, seeds in per_variant.items():
        for seed, (pub, ind) in enumerate(seeds):
            key = f"{dataset}-{variant}-{seed}"
            for protocol, accuracy in (("published", pub), ("shuffled", (pub + ind) / 2), ("independent", ind)):
                rows.append(
                    {
                        "key": key,
                        "dataset": dataset,
                        "variant": variant,
                        "seed": seed,
                        "subset": "all",
                        "protocol": protocol,
                        "accuracy": accuracy,
                    }
                )
    return pd.DataFrame(rows)


def test_headline_numbers_mean_sd_and_batch_gain():
    numbers = summary.headline_numbers(fake_results(FERPLUS), datasets=("ferplus",)).iloc[0]
    assert numbers["paper"] == pytest.approx(paper.paper_value(4, variant="published", dataset="ferplus"))
    assert numbers["published/published"] == pytest.approx(80.0)
    assert numbers["published/published sd"] == pytest.approx(2.0)
    assert numbers["published/published runs"] == 3
    assert numbers["published/independent"] == pytest.approx(66.0)
    assert numbers["no_mixing/independent"] == pytest.approx(69.0)
    assert numbers["pattlite/independent"] == pytest.approx(67.0)
    # Per-seed gains 14, 15, 13: mean 14, sd 1.
    assert numbers["batch_gain"] == pytest.approx(14.0)
    assert numbers["batch_gain_sd"] == pytest.approx(1.0)


def test_headline_table_marks_absent_datasets():
    table = summary.headline_table(fake_results(FERPLUS), absent={"rafdb": "no folder"}, datasets=("rafdb", "ferplus"))
    rafdb, ferplus = table.iloc[0], table.iloc[1]
    assert rafdb["dataset"] == "RAF-DB" and ferplus["dataset"] == "FERPlus"
    assert rafdb["corrected model (pattlite)"] == summary.NOT_RUN
    assert rafdb["batch gain (points)"] == summary.NOT_RUN
    assert ferplus["published model, published protocol"] == "80.00 ± 2.00 (n=3)"
    assert ferplus["batch gain (points)"] == "+14.00 ± 1.00"


def test_verdict_counts_and_summary_text():
    results = fake_results(FERPLUS)
    t4 = tables.table4(results)
    counts = summary.verdict_counts({"Table 4": t4}, absent={"rafdb": "x", "ckplus": "x"})
    row = counts.iloc[0]
    published = paper.paper_table(4)
    assert row["published numbers"] == len(published)
    # CK+ and RAF-DB rows are not run; FERPlus' published row is far from the paper; the other FERPlus
    # rows (baseline, ...) and all FER2013 rows have no result.
    assert row["not run"] == int(published["dataset"].isin(["rafdb", "ckplus"]).sum())
    assert row["not reproduced"] == 1 and row["reproduced"] == 0
    assert row["no result"] == row["published numbers"] - row["not run"] - 1
    diff = 80.0 - paper.paper_value(4, variant="published", dataset="ferplus")
    assert row["diffs"] == [pytest.approx(diff)]
    text = summary.summary_markdown(
        counts, summary.headline_numbers(results, ("ferplus",)), absent={"rafdb": "x", "ckplus": "x"}
    )
    assert "Accuracies (Tables 4-11)" in text and "Data (Tables 1-3)" not in text
    assert f"{diff:+.2f}" in text
    assert "+14.00 points" in text and "66.00%" in text and "67.00%" in text
    assert "CK+" in text and "dataset absent" in text


def test_spread_widens_the_tolerance():
    paper_df = pd.DataFrame({"k": ["a", "b", "c"], "value": [90.0, 90.0, 90.0]})
    # Tolerance max(1, 2 sd / sqrt(runs)): 2 x 2 / sqrt(4) = 2; max(1, 2 x 0.5 / 1) = 1; 2 x 3 / sqrt(9) = 2.
    ours = pd.DataFrame({"k": ["a", "b", "c"], "value": [91.5, 91.5, 87.0], "sd": [2.0, 0.5, 3.0], "runs": [4, 1, 9]})
    out = report.compare(paper_df, ours, on=["k"])
    assert list(out["tolerance"]) == [2.0, 1.0, 2.0]
    assert list(out["verdict"]) == ["reproduced", "not reproduced", "not reproduced"]
    assert list(out["ours_sd"]) == [2.0, 0.5, 3.0] and "runs" not in out.columns
    one_run = pd.DataFrame({"k": ["a"], "value": [91.5], "sd": [np.nan]})
    assert report.compare(paper_df, one_run, on=["k"])["verdict"].iloc[0] == "not reproduced"


def ckplus_results(folds=10, seeds=(0,)):
    """The published model on CK+: one result per fold and seed, the batch gain 10 + fold points."""
    rows = []
    for fold in range(folds):
        for seed in seeds:
            pub, ind = 0.9, 0.8 - fold / 100
            for protocol, accuracy in (("published", pub), ("independent", ind)):
                rows.append(
                    {
                        "key": f"ckplus-{fold}-{seed}",
                        "dataset": "ckplus",
                        "variant": "published",
                        "seed": seed,
                        "fold": fold,
                        "subset": "all",
                        "protocol": protocol,
                        "accuracy": accuracy,
                    }
                )
    return pd.DataFrame(rows)


def test_the_spread_says_folds_for_ckplus_and_seeds_elsewhere():
    assert summary.runs_phrase(10, 1, 10) == "10 folds (1 seed)"
    assert summary.runs_phrase(30, 3, 10) == "10 folds x 3 seeds"
    assert summary.runs_phrase(25, 3, 10) == "25 runs (10 folds, 3 seeds)"
    assert summary.runs_phrase(3, 3, 0) == "3 seeds"
    one_seed = ckplus_results()
    numbers = summary.headline_numbers(one_seed, datasets=("ckplus",))
    assert (numbers["seeds"].iloc[0], numbers["folds"].iloc[0], numbers["published/published runs"].iloc[0]) == (
        1,
        10,
        10,
    )
    counts = summary.verdict_counts({"Table 4": tables.table4(one_seed)})
    text = summary.summary_markdown(counts, numbers)
    sd = np.std(np.arange(10), ddof=1)  # gains 10..19 points
    assert f"(sd {sd:.2f} over 10 folds (1 seed))" in text and "seeds)" not in text
    three_seeds = ckplus_results(seeds=(0, 1, 2))
    text = summary.summary_markdown(counts, summary.headline_numbers(three_seeds, datasets=("ckplus",)))
    assert "over 10 folds x 3 seeds)" in text
    text = summary.summary_markdown(counts, summary.headline_numbers(fake_results(FERPLUS), datasets=("ferplus",)))
    assert "(sd 1.00 over 3 seeds)" in text


def test_the_seeds_shown_are_those_of_the_result_files():
    """A run made with -p seeds=0 on a profile of three seeds: the report shows seed 0, not "3 seeds"."""
    from pattlite.profiles import PROFILES

    one = fake_results({"published": FERPLUS["published"][:1]})
    assert summary.runs_line(one) == "Seeds run (from the result files): 0."
    assert (
        summary.runs_line(pd.concat([one, ckplus_results(folds=2, seeds=(4,))]))
        == "Seeds run (from the result files): 0, 4; CK+ folds: 0, 1."
    )
    assert summary.runs_line(pd.DataFrame()) == "No result files yet."
    cpu = PROFILES["cpu"]  # its description and table note leave the seeds to the run
    assert "3 seeds" not in cpu.description and "3 seeds" not in cpu.table_note


def test_the_summary_counts_planned_experiments_without_a_result():
    """Every published number has a mean (seed 0 ran) while 2 of 3 seeds are missing: the summary says so."""
    one = fake_results({"published": FERPLUS["published"][:1]})
    counts = summary.verdict_counts({"Table 4": tables.table4(one)})
    text = summary.summary_markdown(counts, summary.headline_numbers(one, ("ferplus",)), missing=2, planned=3)
    assert text.startswith("- **2 of 3 planned experiments have no result yet**")
    row = counts.iloc[0]
    assert (
        row["reproduced"] + row["not reproduced"] + row["no result"] + row["not comparable"] + row["not run"]
        == row["published numbers"]
    )
