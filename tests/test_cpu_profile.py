"""The `cpu` profile: which benchmarks it runs (those found), which experiments it plans, the line that
names what it skipped, and the Keras backend each notebook runs on. Uses the small real samples in
tests/fixtures; nothing is trained."""

import json
import os

import pandas as pd
import pytest

from pattlite import pipeline, studies
from pattlite.data.errors import DatasetNotFoundError
from pattlite.profiles import PROFILES, get_profile

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def only_fer(monkeypatch, tmp_path):
    """FER2013 and FERPlus present (the fixtures), CK+ and RAF-DB absent (an empty data folder)."""
    monkeypatch.setenv("PATTLITE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PATTLITE_FER2013_ROOT", os.path.join(FIXTURES, "fer2013"))
    monkeypatch.setenv("PATTLITE_FERPLUS_ROOT", os.path.join(FIXTURES, "ferplus"))
    for name in ("CKPLUS", "RAFDB"):
        monkeypatch.delenv(f"PATTLITE_{name}_ROOT", raising=False)
    return tmp_path


def test_cpu_profile_runs_the_datasets_found_and_names_the_others(only_fer, capsys):
    ctx = studies.notebook_context("cpu", results_dir=only_fer / "results", run_experiments=False)
    assert ctx.datasets == ("fer2013", "ferplus")
    assert set(ctx.skipped) == {"ckplus", "rafdb"}
    line = capsys.readouterr().out
    assert "not run (dataset absent)" in line and "ckplus" in line and "rafdb" in line
    assert str(only_fer / "data" / "rafdb") in ctx.skipped["rafdb"]


def test_cpu_profile_plan(only_fer):
    ctx = studies.notebook_context("cpu", results_dir=only_fer / "results", run_experiments=False)
    plan = studies.notebook_plan(ctx, gradcam=True)
    every = [e for exps in plan.values() for e in exps]
    assert {e.dataset for e in every} == {"fer2013", "ferplus"}
    assert all(e.stage1 == "cached" and e.finetune == "as_coded" and e.weights == "imagenet" for e in every)
    # Table 4: four ablation rows x two datasets x three seeds.
    assert len(plan["table4"]) == 4 * 2 * 3
    assert {e.seed for e in plan["table4"]} == {0, 1, 2}
    # Table 5: FERPlus as RAF-DB's stand-in, the published cut x five kernels, one seed, 1,000 images.
    t5 = plan["table5"]
    assert len(t5) == 5 and {e.dataset for e in t5} == {"ferplus"}
    assert {e.model_options["cut_layer"] for e in t5} == {29} and {e.seed for e in t5} == {0}
    assert {e.train_limit for e in t5} == {1000}
    assert [e.dataset for e in plan["gradcam"]] == ["ferplus"]
    # The audit's heads on both datasets, three seeds each; shared experiments have one key.
    assert len(plan["audit"]) == 3 * 2 * 3
    # Tables 4 and 5, then what the other studies add: patch_attention, pattlite, no_mixing.
    assert len({e.key() for e in every}) == 24 + 5 + 3 * (2 * 3)


def test_a_dataset_asked_for_by_name_must_be_present(only_fer):
    ctx = studies.notebook_context(
        "cpu", results_dir=only_fer / "results", datasets="rafdb,ferplus", run_experiments=False
    )
    assert ctx.datasets == ("rafdb", "ferplus") and ctx.skipped == {}
    with pytest.raises(DatasetNotFoundError, match="rafdb"):
        studies.benchmark_manifests(ctx.profile, ["rafdb"])


def test_table5_and_gradcam_fall_to_the_first_dataset_present(only_fer):
    """RAF-DB, the paper's (first in the order of preference), is absent: both fall to FERPlus, the next
    present, and say so; the grid plans the same (nothing for RAF-DB)."""
    from pattlite import grid
    from pattlite.studies.plan import dataset_choice

    ctx = studies.notebook_context("cpu", results_dir=only_fer / "results", run_experiments=False)
    assert ctx.profile.table5_datasets[:2] == ("rafdb", "ferplus") == ctx.profile.gradcam_datasets[:2]
    for study in ("table5", "gradcam"):
        choice = dataset_choice(ctx, study)
        assert choice.dataset == "ferplus" and choice.passed_over == {"rafdb": "dataset absent"}
        assert "ours on FERPlus" in choice.sentence() and "stands in for RAF-DB" in choice.sentence()
    assert {e.dataset for e in studies.study_experiments(ctx, "table5")} == {"ferplus"}
    assert studies.gradcam_experiment(ctx).dataset == "ferplus"
    planned = grid.plan("cpu", {"results_dir": str(only_fer / "results")})
    by_study = {}
    for p in planned.experiments:
        for study in p.studies:
            by_study.setdefault(study, set()).add(p.experiment.dataset)
    assert by_study["table5"] == {"ferplus"} and by_study["gradcam"] == {"ferplus"}
    assert set().union(*by_study.values()) == {"fer2013", "ferplus"}
    # Another order of preference: FER2013 before FERPlus.
    ctx = studies.notebook_context(
        "cpu", results_dir=only_fer / "results", run_experiments=False, table5_datasets=("rafdb", "fer2013", "ferplus")
    )
    assert {e.dataset for e in studies.study_experiments(ctx, "table5")} == {"fer2013"}


def test_a_preferred_dataset_with_its_files_is_chosen_and_an_empty_folder_is_passed_over(only_fer, monkeypatch):
    """A profile built with dataclasses.replace: RAF-DB's label file present (the fixture) is the
    paper's choice, no stand-in; an empty RAF-DB folder is passed over, naming the folder."""
    import dataclasses

    from pattlite.studies.plan import dataset_choice, dataset_found

    monkeypatch.setenv("PATTLITE_RAFDB_ROOT", os.path.join(FIXTURES, "rafdb"))
    base = studies.notebook_context("cpu", results_dir=only_fer / "results", run_experiments=False)
    assert base.datasets == ("rafdb", "fer2013", "ferplus") and dataset_found(base.profile, "rafdb") is None
    ctx = dataclasses.replace(base, profile=dataclasses.replace(base.profile, gradcam_datasets=("rafdb", "ckplus")))
    choice = dataset_choice(ctx, "gradcam")
    assert choice.dataset == "rafdb" and choice.passed_over == {}
    assert "stands in" not in choice.sentence()
    empty = only_fer / "empty_rafdb"
    empty.mkdir()
    monkeypatch.setenv("PATTLITE_RAFDB_ROOT", str(empty))
    assert "no dataset files in" in dataset_found(ctx.profile, "rafdb") and str(empty) in dataset_found(
        ctx.profile, "rafdb"
    )
    choice = dataset_choice(ctx, "table5")
    assert choice.dataset == "ferplus" and str(empty) in choice.passed_over["rafdb"]
    assert dataset_choice(ctx, "gradcam").dataset is None  # ("rafdb", "ckplus"): neither is present


def test_with_no_dataset_present_table5_and_gradcam_are_not_run_and_the_report_is_written(only_fer, monkeypatch):
    from pattlite import grid
    from pattlite.studies import replication_report, tables
    from pattlite.studies.plan import NO_DATASET, dataset_choice

    for name in ("FER2013", "FERPLUS"):
        monkeypatch.delenv(f"PATTLITE_{name}_ROOT")
    monkeypatch.setattr(tables, "model_param_count", lambda variant, classes: 1_000_000)  # no model built
    ctx = studies.notebook_context(
        "cpu",
        results_dir=only_fer / "results",
        figures_dir=only_fer / "figures",
        reports_dir=only_fer / "reports",
        run_experiments=False,
    )
    assert ctx.datasets == ()
    for study in ("table5", "gradcam"):
        assert dataset_choice(ctx, study).dataset is None and NO_DATASET in dataset_choice(ctx, study).sentence()
    assert studies.study_experiments(ctx, "table5") == [] and "gradcam" not in studies.notebook_plan(ctx, gradcam=True)
    with pytest.raises(ValueError, match="no dataset present"):
        studies.gradcam_experiment(ctx)
    assert grid.plan("cpu", {"results_dir": str(only_fer / "results")}).experiments == ()
    sections = dict(studies.report_sections(ctx))
    assert any(isinstance(b, str) and "Table 5's grid: not run (no dataset present)" in b for b in sections["Table 5"])
    assert not any(isinstance(b, pd.DataFrame) for b in sections["Table 5"])
    gradcam = "\n".join(b for b in sections["Figures 6-7 (Grad-CAM)"] if isinstance(b, str))
    assert "Figures 6-7 (Grad-CAM): not run (no dataset present)" in gradcam
    md, html = replication_report.write_report(ctx, list(sections.items()))
    assert "not run (no dataset present)" in md.read_text() and html.is_file()


def test_the_report_names_the_stand_in_and_the_dataset_the_gradcam_figures_show(only_fer, monkeypatch):
    """Report rendering from a results frame: Table 5's section and the Grad-CAM section say which dataset
    ours is on (the record notebook 06 writes beside its figures wins over the plan's choice)."""
    import json

    from pattlite.studies import replication_report, tables

    monkeypatch.setattr(tables, "model_param_count", lambda variant, classes: 1_000_000)
    monkeypatch.setattr(replication_report, "report_results", lambda ctx, every=None: pd.DataFrame())
    figures = only_fer / "figures"
    figures.mkdir()
    ctx = studies.notebook_context(
        "cpu",
        results_dir=only_fer / "results",
        figures_dir=figures,
        reports_dir=only_fer / "reports",
        run_experiments=False,
    )
    sections = dict(studies.report_sections(ctx, include_faces=False))
    table5 = " ".join(b for b in sections["Table 5"] if isinstance(b, str))
    assert "a stand-in for RAF-DB" in table5 and "Table 5's grid: ours on FERPlus" in table5
    gradcam = " ".join(b for b in sections["Figures 6-7 (Grad-CAM)"] if isinstance(b, str))
    assert "Figures 6-7 (Grad-CAM): ours on FERPlus" in gradcam and "Ours on FERPlus, a stand-in for RAF-DB" in gradcam
    (figures / "gradcam.json").write_text(
        json.dumps(
            {"key": "k", "dataset": "fer2013", "variant": "published", "seed": 0, "fold": None, "figures": [6, 7]}
        )
    )
    gradcam = " ".join(
        b
        for b in dict(studies.report_sections(ctx, include_faces=False))["Figures 6-7 (Grad-CAM)"]
        if isinstance(b, str)
    )
    assert "ours on FER2013, the published model of seed 0 (drawn by notebook 06)" in gradcam
    (figures / "gradcam.json").write_text("{")
    with pytest.raises(ValueError, match="gradcam.json: not valid JSON"):
        studies.report_sections(ctx, include_faces=False)


def test_cpu_profile_needs_no_gpu_warning(monkeypatch):
    monkeypatch.setattr(studies.compute, "accelerator_names", lambda: [])
    assert studies.warn_if_no_accelerator("cpu") is None


def test_notebook_backends(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    cpu = PROFILES["cpu"]
    assert pipeline.notebook_backend(cpu, "02_ablation") == "jax"
    assert pipeline.notebook_backend(cpu, "06_gradcam") == "tensorflow"  # tf-keras-vis
    assert pipeline.notebook_backend(PROFILES["demo"], "02_ablation") is None
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # the user's choice wins
    assert pipeline.notebook_backend(cpu, "02_ablation") == "tensorflow"


def test_run_all_trains_on_the_profiles_backend_then_gives_each_notebook_its_own(monkeypatch, tmp_path):
    """./run_all.sh --profile cpu: the grid on JAX in the process, then Grad-CAM's kernel on TensorFlow
    (the grid's backend must not leak into the notebooks as if the user had chosen it)."""
    from types import SimpleNamespace

    from pattlite import grid

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    seen = {}
    monkeypatch.setattr(grid, "plan", lambda profile, params: None)
    monkeypatch.setattr(
        grid,
        "run_grid",
        lambda *a, **k: seen.update(grid=os.environ.get("KERAS_BACKEND")) or SimpleNamespace(failed={}, seconds=1.0),
    )

    def run_notebooks(profile, only, params, timings=None):
        seen.update(gradcam=pipeline.notebook_backend(PROFILES[profile], "06_gradcam"))
        done = [("06_gradcam", 2.0)]
        if timings is not None:  # the caller's list, filled as notebooks finish (kept when one is stopped)
            timings.extend(done)
        return done

    monkeypatch.setattr(pipeline, "run_notebooks", run_notebooks)
    assert pipeline.main(["--profile", "cpu", "-p", f"results_dir={tmp_path}"]) == 0
    assert seen == {"grid": "jax", "gradcam": "tensorflow"} and "KERAS_BACKEND" not in os.environ
    record = json.loads((tmp_path / "run_record.json").read_text())["runs"][0]
    assert record["keras_backends"] == {"grid": "jax", "06_gradcam": "tensorflow"}
    # A failing notebook is recorded too, and the status says so.
    monkeypatch.setattr(pipeline, "run_notebooks", lambda *a, **k: (_ for _ in ()).throw(pipeline.NotebookFailed("x")))
    assert pipeline.main(["--profile", "cpu", "-p", f"results_dir={tmp_path}"]) == 1
    assert json.loads((tmp_path / "run_record.json").read_text())["runs"][1]["failed"] == "x"


def test_run_all_refuses_a_chosen_backend_that_grad_cam_cannot_run_on_before_training(monkeypatch, tmp_path, capsys):
    from pattlite import grid

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setattr(grid, "plan", lambda *a, **k: pytest.fail("planned before the backends were checked"))
    with pytest.raises(SystemExit) as stopped:
        pipeline.main(["--profile", "cpu", "-p", f"results_dir={tmp_path}"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "KERAS_BACKEND=jax is set, but notebook 06_gradcam needs TensorFlow" in message
    assert "Unset KERAS_BACKEND" in message
    # Without Grad-CAM's notebook, or on TensorFlow, the same choice is accepted.
    pipeline.check_notebook_backends(pipeline.resolve_notebooks("02,08"))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    pipeline.check_notebook_backends(pipeline.resolve_notebooks(None))


def test_profile_rejects_unknown_datasets_and_backends():
    with pytest.raises(ValueError, match="benchmark"):
        get_profile("cpu", table5_datasets=("ferplus", "affectnet"))
    with pytest.raises(ValueError, match="non-empty tuple"):
        get_profile("cpu", gradcam_datasets="rafdb")
    with pytest.raises(ValueError, match="listed twice"):
        get_profile("cpu", gradcam_datasets=("rafdb", "rafdb"))
    with pytest.raises(ValueError, match="Keras backend"):
        get_profile("cpu", keras_backend="torch")


def test_saved_tables_carry_the_profile_note(tmp_path):
    from pattlite.studies import tables

    note = PROFILES["cpu"].table_note
    assert "augmentation" in note and "fine-tunes no backbone weight" in note
    df = tables.table4(pd.DataFrame())
    paths = tables.save(df, 4, tmp_path, synthetic=False, note=note)
    first_line = open(paths["csv"], encoding="utf-8").readline()
    assert first_line.startswith("# Table 4.") and note in first_line


def test_table5_caption_says_what_the_profile_ran_of_the_grid():
    from pattlite.studies.replication_report import table5_settings

    assert table5_settings(PROFILES["cpu"]) == "Ours: cut layer(s) 29, 1,000 training images per point, seed(s) 0."
    assert "17, 23, 29, 35, 41, 47, the full training split" in table5_settings(PROFILES["paper"])
