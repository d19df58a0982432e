"""The gap table on fake results with known numbers: each line's mean ± sd over seeds, the runs
without augmentation kept apart from the profile's own recipe, the reduced profile read from its
committed summary, the steps as differences, and the figure; the HTML's verdict marks."""

import pandas as pd
import pytest

from pattlite import paper, report
from pattlite.studies import gap, summary, tables


def fake_rows(dataset, variant, seeds, views, profile="cpu_full"):
    rows = []
    for seed, (pub, ind) in enumerate(seeds):
        key = f"{dataset}-{variant}-{seed}-{views}"
        for protocol, accuracy in (("published", pub), ("independent", ind)):
            rows.append(
                {
                    "key": key,
                    "profile": profile,
                    "dataset": dataset,
                    "variant": variant,
                    "seed": seed,
                    "subset": "all",
                    "protocol": protocol,
                    "accuracy": accuracy,
                    "train_train_views": views,
                }
            )
    return rows


@pytest.fixture
def results():
    rows = (
        fake_rows("ferplus", "published", [(0.86, 0.70), (0.84, 0.70), (0.82, 0.70)], 2)
        + fake_rows("ferplus", "published", [(0.80, 0.67)], 1)
        + fake_rows("ferplus", "no_mixing", [(0.71, 0.71), (0.71, 0.71), (0.71, 0.71)], 2)
        + fake_rows("ferplus", "pattlite", [(0.69, 0.69), (0.70, 0.70), (0.71, 0.71)], 2)
    )
    return pd.DataFrame(rows)


def test_gap_lines_and_steps(results, tmp_path):
    summary_csv = tmp_path / "summary.csv"
    pd.DataFrame(
        [
            {"dataset": "FERPlus", gap.REDUCED_COLUMN: "81.93 ± 1.55 (n=3)"},
            {"dataset": "CK+", gap.REDUCED_COLUMN: "not run (dataset absent)"},
        ]
    ).to_csv(summary_csv, index=False)
    reduced = gap.read_reduced(summary_csv)
    assert reduced == {"ferplus": (81.93, 1.55, 3)}
    numbers = gap.gap_numbers(results, reduced, datasets=("ferplus",))
    row = numbers.iloc[0]
    assert row["paper"] == pytest.approx(paper.paper_value(4, variant="published", dataset="ferplus"))
    assert row["ours, authors' protocol"] == pytest.approx(84.0) and row["ours, authors' protocol sd"] == pytest.approx(
        2.0
    )
    assert row["ours, authors' protocol, no augmentation"] == pytest.approx(80.0)  # the one run without the flip
    assert row["ours, authors' protocol, no augmentation runs"] == 1
    assert row["published model, each image alone"] == pytest.approx(70.0)
    assert row["corrected model (pattlite)"] == pytest.approx(70.0)
    table = gap.gap_table(numbers)
    assert table.iloc[0]["ours, authors' protocol"] == "84.00 ± 2.00 (n=3)"
    assert table.iloc[0]["reduced cpu profile, authors' protocol"] == "81.93 ± 1.55 (n=3)"
    steps = gap.gap_steps(numbers).set_index("step")["FERPlus"]
    # paired by seed: the run without the flip is seed 0's (80), the flipped seed 0 scored 86; the
    # difference of the lines' means (84 - 80) would mix in the spread between seeds
    assert steps["flip augmentation"] == "+6.00 (n=1)"
    assert steps["full size vs the reduced cpu profile"] == "-1.93"  # other trainings: a difference of means
    assert steps["batch composition (authors' protocol vs each image alone)"] == "+14.00 ± 2.00 (n=3)"
    assert steps["corrected model vs the head without mixing"] == "-1.00 ± 1.00 (n=3)"
    assert steps["remaining gap to the paper"] == f"{row['paper'] - 84.0:+.2f}"
    fig = gap.gap_figure(numbers)
    assert len(fig.axes[0].patches) == 1 + len(gap.GAP_LINES)  # one benchmark: a bar per line and the paper


def test_steps_pair_ck_plus_runs_by_seed_and_fold():
    """CK+ runs are paired by seed and fold; runs only one line has are left out of the step."""
    rows = []
    for fold, (flip, plain) in enumerate([(0.90, 0.85), (0.80, 0.78), (0.70, None)]):
        for views, accuracy in ((2, flip), (1, plain)):
            if accuracy is None:
                continue
            for row in fake_rows("ckplus", "published", [(accuracy, accuracy)], views):
                rows.append({**row, "key": f"{row['key']}-{fold}", "fold": float(fold)})
    numbers = gap.gap_numbers(pd.DataFrame(rows), {}, datasets=("ckplus",))
    assert numbers.iloc[0]["ours, authors' protocol runs"] == 3
    steps = gap.gap_steps(numbers).set_index("step")["CK+"]
    assert steps["flip augmentation"] == "+3.50 ± 2.12 (n=2)"  # folds 0 and 1: +5 and +2
    assert steps["full size vs the reduced cpu profile"] == "-"  # no reduced line


def test_runs_without_augmentation_stay_out_of_the_other_tables(results):
    """The gap study's published runs (train_views 1 on a profile whose recipe has 2) are not averaged
    into the headline or Tables 4-11."""
    numbers = summary.headline_numbers(results, datasets=("ferplus",)).iloc[0]
    assert numbers["published/published"] == pytest.approx(84.0) and numbers["published/published runs"] == 3
    assert set(tables.standard_rows(results)["train_train_views"]) == {2}


def test_html_verdict_marks_show_without_an_emoji_font():
    mark = report.VERDICT_MARKS["not reproduced"][0]
    page = f"<table><tr><td>paper 95.55<br>{mark} 84.00 (published)</td><td>plain</td></tr></table><p>{mark} legend</p>"
    html = report.html_verdict_marks(page)
    assert mark not in html
    assert html.count('title="not reproduced"') == 2
    assert f'<td style="background:{report.VERDICT_MARKS["not reproduced"][2]}">' in html
    assert "<td>plain</td>" in html


def _readme_block(results, **options):
    """The cpu_full README block of FERPlus from `results`, the reduced profile's line given."""
    from pathlib import Path

    from pattlite.studies import publish

    numbers = gap.gap_numbers(results, {"ferplus": (81.93, 1.55, 3)}, datasets=("ferplus",))
    return publish.readme_block(
        "cpu_full",
        "full size",
        summary.headline_table(results, datasets=("ferplus",)),
        Path("docs/results/cpu_full/replication_report.md"),
        {"runs": []},
        gap_tables=(gap.gap_table(numbers), gap.gap_steps(numbers)),
        **options,
    )


def test_readme_block_puts_the_gap_first(results):
    block = _readme_block(results)
    assert block.index(gap.CAPTION) < block.index("published model, published protocol")
    assert "| flip augmentation" in block and "+6.00 (n=1)" in block
    assert "gap.png" not in block  # no figure published, none linked


def test_readme_block_shows_the_published_gap_figure_under_the_gap_tables(results):
    block = _readme_block(
        results, figures=("confusion_ferplus.png", f"{gap.FIGURE}.png"), backends=("jax", "tensorflow")
    )
    link = "(docs/results/cpu_full/figures/gap.png)"
    assert link in block
    assert block.index("| flip augmentation") < block.index(link) < block.index("published model, published protocol")
    assert "trained on the jax and tensorflow backends. Full report" in block
