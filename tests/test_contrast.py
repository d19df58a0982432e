"""The contrast study: its plan (stage 1 only, the full image model with the authors' flip and contrast
against the cached flip-only head, same seeds), its numbers on fake result rows with known accuracies,
its runs kept out of every other table, and the grid running its full-model trials on the profile's
`exact_backend`."""

import pandas as pd
import pytest

from pattlite import backends, grid, grid_ray
from pattlite.experiments import make_experiment
from pattlite.profiles import get_profile
from pattlite.studies import contrast, plan, tables

PROFILE = get_profile("cpu_full")  # contrast seeds 0-2, 5,000 FERPlus training images, exact on TensorFlow


def test_the_plan_pairs_the_exact_and_cached_arms_per_seed():
    experiments = plan.contrast_experiments(PROFILE, datasets=("ferplus", "fer2013"))
    arms = {(e.stage1, e.seed) for e in experiments}
    assert arms == {(stage1, seed) for stage1 in ("exact", "cached") for seed in (0, 1, 2)}
    for e in experiments:
        assert (e.dataset, e.variant, e.train_limit, e.train["stage2"]) == ("ferplus", "published", 5000, False)
        assert e.train["train_views"] == (1 if e.stage1 == "exact" else 2)  # the exact arm flips in the model
        assert e.model_options == {}  # the published head, its augmentation layers included on the exact arm
    assert plan.contrast_experiments(PROFILE, datasets=("fer2013",)) == []  # its dataset absent
    assert plan.contrast_experiments(get_profile("cpu"), datasets=("ferplus",)) == []  # no contrast seeds


def row(stage1, seed, protocol, accuracy, stage2=False, train_limit=5000):
    return {
        "key": f"{stage1}-{seed}-{stage2}",
        "profile": "cpu_full",
        "dataset": "ferplus",
        "variant": "published",
        "seed": seed,
        "fold": None,
        "subset": "all",
        "protocol": protocol,
        "accuracy": accuracy,
        "stage1": stage1,
        "train_limit": train_limit,
        "train_stage2": stage2,
        "train_train_views": 1 if stage1 == "exact" else 2,
        "train_stage2_max_epochs": 50,
    }


@pytest.fixture
def results():
    accuracies = {("exact", 0): 0.68, ("exact", 1): 0.66, ("cached", 0): 0.65, ("cached", 1): 0.64, ("cached", 2): 0.6}
    rows = [row(arm, seed, "independent", acc) for (arm, seed), acc in accuracies.items()]
    rows.append(row("cached", 0, "independent", 0.75, stage2=True, train_limit=None))  # a run of the recipe
    return pd.DataFrame(rows)


def test_contrast_numbers_pair_the_seeds_both_arms_have(results):
    numbers = contrast.contrast_numbers(results, PROFILE).set_index("protocol")
    independent = numbers.loc["independent"]
    assert independent["exact"] == pytest.approx(67.0) and independent["exact n"] == 2
    assert independent["cached"] == pytest.approx((65 + 64 + 60) / 3) and independent["cached n"] == 3
    # paired over seeds 0 and 1: +3 and +2 points
    assert independent["seeds"] == 2 and independent["difference"] == pytest.approx(2.5)
    assert independent["difference sd"] == pytest.approx(0.70710678, rel=1e-6)
    table = contrast.contrast_table(contrast.contrast_numbers(results, PROFILE)).set_index("protocol")
    assert table.loc["independent", "exact - cached (points, paired seeds)"] == "+2.50 ± 0.71 (n=2)"
    assert "published" not in numbers.index  # no row of that protocol


def test_the_contrast_runs_stay_out_of_every_other_table(results):
    kept = tables.standard_rows(results)
    assert list(kept["key"]) == ["cached-0-True"]
    assert list(tables.standard_rows(results, recipe=False)["key"]) == ["cached-0-True"]


def test_full_model_trials_run_on_the_profiles_exact_backend(monkeypatch):
    exact = make_experiment(PROFILE, "ferplus", "published", stage1="exact", train_views=1, stage2=False)
    cached = make_experiment(PROFILE, "ferplus", "published")
    monkeypatch.setattr(backends, "name", lambda: "jax")
    assert grid_ray.trial_backend(exact) == "tensorflow" and grid_ray.trial_backend(cached) is None
    monkeypatch.setattr(backends, "name", lambda: "tensorflow")
    assert grid_ray.trial_backend(exact) is None  # already the backend it wants: in process

    monkeypatch.setattr(backends, "name", lambda: "jax")
    ran = []
    monkeypatch.setattr(grid, "run_on_backend", lambda exp, results_dir, backend: ran.append((exp.stage1, backend)))
    monkeypatch.setattr("pattlite.experiments.run_experiment", lambda exp, **kwargs: ran.append((exp.stage1, None)))
    trained, failed = grid._run_local([exact, cached], "unused", lambda line: None)
    assert ran == [("exact", "tensorflow"), ("cached", None)] and not failed and len(trained) == 2


def test_a_full_model_trial_reserves_its_pixels_and_model(monkeypatch):
    exact = make_experiment(PROFILE, "ferplus", "published", stage1="exact", train_views=1, stage2=False)
    monkeypatch.setattr(grid_ray, "_dataset_images", lambda exp: 1000)
    expected = grid_ray.TRIAL_OVERHEAD_BYTES + grid_ray.EXACT_MODEL_BYTES + 1000 * 120 * 120 * 3
    assert grid_ray.memory_estimate(exact) == expected
