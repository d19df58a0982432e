"""What the stage-2 cap costs, on fake result rows with known numbers: the uncapped reference runs at
their end and at their probe, a run that stopped before the cap counted at its end, the capped runs
of the same seed beside them, and the reference runs kept out of every other table."""

import numpy as np
import pandas as pd
import pytest

from pattlite.profiles import get_profile
from pattlite.studies import cap, summary, tables

PROFILE = get_profile("cpu_full")  # stage 2 capped at 50 epochs, reference seed 0


def rows(dataset, accuracy, probe50, epochs, cap_epochs, seed=0, fold=None, variant="published"):
    key = f"{dataset}-{variant}-{seed}-{fold}-{cap_epochs}"
    return [
        {
            "key": key,
            "profile": "cpu_full",
            "dataset": dataset,
            "variant": variant,
            "seed": seed,
            "fold": fold,
            "subset": "all",
            "protocol": protocol,
            "accuracy": accuracy[i],
            "probe_50": probe50[i],
            "epochs_stage2": epochs,
            "train_train_views": 2,
            "train_stage2_max_epochs": cap_epochs,
        }
        for i, protocol in enumerate(("published", "independent"))
    ]


@pytest.fixture
def results():
    return pd.DataFrame(
        rows("ferplus", (0.90, 0.75), (0.91, 0.74), 141, None)  # uncapped reference
        + rows("ferplus", (0.905, 0.745), (0.905, 0.745), 50, 50)  # the capped run, seed 0
        + rows("ferplus", (0.80, 0.70), (0.80, 0.70), 50, 50, seed=1)  # another seed: not compared
        + rows("ckplus", (0.90, 0.90), (np.nan, np.nan), 30, None, fold=0)  # stopped before the cap
        + rows("ckplus", (1.00, 0.96), (0.98, 0.98), 70, None, fold=1)
    )


def test_cap_cost_from_the_reference_runs(results):
    numbers = cap.cap_numbers(results, PROFILE).set_index(["dataset", "protocol"])
    ferplus = numbers.loc[("ferplus", "published")]
    assert ferplus["uncapped"] == pytest.approx(90.0) and ferplus["at the cap"] == pytest.approx(91.0)
    assert ferplus["cost"] == pytest.approx(1.0) and ferplus["capped runs"] == pytest.approx(90.5)
    assert ferplus["capped n"] == 1  # seed 1 is not a reference seed
    ckplus = numbers.loc[("ckplus", "independent")]
    assert ckplus["runs"] == 2 and (ckplus["epochs min"], ckplus["epochs max"]) == (30, 70)
    # fold 0 stopped at 30 epochs: at the cap it is its own end (0.90); fold 1's probe says 0.98
    assert ckplus["at the cap"] == pytest.approx(94.0) and ckplus["uncapped"] == pytest.approx(93.0)
    table = cap.cap_table(cap.cap_numbers(results, PROFILE), 50).set_index(["dataset", "protocol"])
    assert table.loc[("CK+", "published"), "capped runs, same seed(s)"] == "not run yet"
    assert table.loc[("FERPlus", "published"), "cost by the probe"] == "+1.00"
    assert table.loc[("FERPlus", "published"), "cost by the capped runs"] == "+0.50"  # 90.5 - 90.0
    assert table.loc[("CK+", "published"), "cost by the capped runs"] == "-"  # no capped twins yet
    assert table.loc[("CK+", "published"), "stage-2 epochs run uncapped"] == "30-70"


def test_no_cap_no_table(results):
    assert cap.cap_numbers(results, get_profile("cpu")).empty


def test_reference_runs_stay_out_of_the_other_tables(results):
    """The headline averages the capped runs only (the profile's own recipe)."""
    own = tables.standard_rows(results)
    assert set(own["train_stage2_max_epochs"]) == {50}
    headline = summary.headline_numbers(results, datasets=("ferplus",)).iloc[0]
    assert headline["published/published"] == pytest.approx(85.25)  # (90.5 + 80) / 2
    assert headline["published/published runs"] == 2


def test_result_rows_carry_the_test_probe(tmp_path):
    """A committed full-size result file (FERPlus, uncapped reference run): its whole-test rows carry
    `probe_<epochs>` per protocol; the challenging-subset rows do not."""
    import json
    import shutil

    from pattlite import config
    from pattlite.experiments import collect_results

    source = config.PROJECT_ROOT / "docs" / "results" / "cpu_full" / "results" / "457c75787eec86d1.json"
    if not source.is_file():
        pytest.skip(f"{source} is not in this checkout")
    (tmp_path / "experiments").mkdir()
    shutil.copy(source, tmp_path / "experiments" / source.name)
    probe = json.loads(source.read_text())["test_probe"]
    frame = collect_results(tmp_path)
    whole = frame[frame["subset"] == "all"].set_index("protocol")
    for epochs, by_protocol in probe.items():
        for protocol, accuracy in by_protocol.items():
            assert whole.loc[protocol, f"probe_{epochs}"] == pytest.approx(accuracy)
    assert frame[frame["subset"] != "all"]["probe_50"].isna().all()
