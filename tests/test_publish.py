"""`pattlite publish`: a finished run's report, tables, face-free figures and run record copied into a
folder, and the README's results block rewritten from the same results (ci profile, no training); an
incomplete or interrupted run refused (status 2, nothing written) unless allowed, and then said so; a
failing README rewrite leaves the published folder as it was."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pattlite import cli, config, pipeline, studies  # noqa: E402
from pattlite.experiments import result_path  # noqa: E402
from pattlite.results import ExperimentResult  # noqa: E402
from pattlite.studies import publish  # noqa: E402
from pattlite.studies.replication_report import planned_experiments  # noqa: E402


def _png(path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)


def _record(results, **status):
    pipeline.record_run(
        results,
        {
            "profile": "ci",
            "argv": [],
            "started_utc": "x",
            "seconds": 12.5,
            "grid_seconds": None,
            "notebook_seconds": {},
            **status,
        },
    )


def write_result(exp, results_dir, accuracy=0.6):
    """A result file in the engine's format with the same accuracy under every protocol."""
    classes = list(config.DATASET_CLASSES[exp.dataset])
    metrics = {
        "n": 10,
        "accuracy": accuracy,
        "per_class_accuracy": {c: accuracy for c in classes},
        "mean_class_accuracy": accuracy,
        "support": {c: 0 for c in classes},
        "confusion_matrix": [[0] * len(classes) for _ in classes],
    }
    ExperimentResult(
        key=exp.key(),
        config=exp.to_dict(),
        dataset=exp.dataset,
        source_dataset="synthetic",
        classes=classes,
        synthetic=exp.synthetic,
        data=None,
        stage1=exp.stage1,
        notes=[],
        weights={},
        split_sizes={},
        metrics={"all": {p: metrics for p in config.PROTOCOLS}},
        predictions={},
        history={},
        epochs={"stage1": 1, "stage2": 1},
        trainable_params={"stage1": 1, "stage2": 1},
        finetune=None,
        wall_time_s={"total": 1.0},
        provenance={"device": "CPU: test", "git_commit": "abc"},
    ).write(result_path(exp, results_dir))


@pytest.fixture
def finished_run(tmp_path):
    results, figures, tables = tmp_path / "results", tmp_path / "figures", tmp_path / "results" / "tables"
    for folder in (figures, tables):
        folder.mkdir(parents=True)
    for name in ("figure4", "figure6", "figure7", "audit"):
        _png(figures / f"{name}.png")
    (tables / "table4.csv").write_text("# Table 4.\nvariant,dataset\n")
    _record(results)
    _record(results)
    ctx = studies.notebook_context(
        "ci",
        results_dir=results,
        figures_dir=figures,
        tables_dir=tables,
        reports_dir=tmp_path / "reports",
        datasets="ferplus",
        run_experiments=False,
    )
    for exp in planned_experiments(ctx):
        write_result(exp, results)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Project\n\nbefore\n"
        + publish.README_START.format(profile="ci")
        + "\nOLD BLOCK\n"
        + publish.README_END.format(profile="ci")
        + "\nafter\n"
    )
    return ctx, readme, tmp_path / "docs" / "published"


def _cli(ctx, readme, out, *extra):
    return cli.main(
        [
            "publish",
            "--profile",
            "ci",
            "-p",
            f"results_dir={ctx.results_dir}",
            "-p",
            f"figures_dir={ctx.figures_dir}",
            "-p",
            f"tables_dir={ctx.tables_dir}",
            "-p",
            "datasets=ferplus",
            "--to",
            str(out),
            "--readme",
            str(readme),
            *extra,
        ]
    )


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_copies_the_run_without_faces(finished_run):
    ctx, readme, out = finished_run
    result = publish.publish(ctx, folder=out, readme=readme, log=None)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["audit.png", "figure4.png"]
    assert (out / "tables" / "table4.csv").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["total_seconds"] == 25.0 and len(record["runs"]) == 2
    assert record["runs"][0]["machine"]["cpu_count"] >= 1
    report_md = (out / "replication_report.md").read_text()
    assert "figure6" not in report_md and "figure7" not in report_md
    assert "Incomplete run" not in report_md and "planned experiments have no result" not in report_md
    assert ".tmp-" not in report_md and "docs/published/figures" in report_md  # the folder, not the staging one
    assert (out / "replication_report.html").is_file() and result["report"] == out / "replication_report.md"
    assert result["missing"] == 0 and result["unfinished"] is None
    text = readme.read_text()
    assert "OLD BLOCK" not in text and text.startswith("# Project\n\nbefore\n") and text.endswith("\nafter\n")
    assert "FERPlus" in text and "docs/published/replication_report.md" in text
    assert "Seeds run (from the result files): 0." in text
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")]
    # Every result file of the run is published (no weights: no Grad-CAM record here), so a fresh clone
    # resumes from them.
    planned = {f"{exp.key()}.json" for exp in planned_experiments(ctx)}
    assert {p.name for p in (out / "results").iterdir()} == planned


def test_publish_needs_the_run_record_and_the_readme_markers(finished_run):
    ctx, readme, out = finished_run
    (ctx.results_dir / "run_record.json").unlink()
    with pytest.raises(FileNotFoundError, match="run_record.json"):
        publish.publish(ctx, folder=out, readme=None, log=None)
    (ctx.results_dir / "run_record.json").write_text("{")
    with pytest.raises(ValueError, match="run_record.json: not valid JSON"):
        publish.publish(ctx, folder=out, readme=None, log=None)
    (ctx.results_dir / "run_record.json").unlink()
    _record(ctx.results_dir)
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no results block for profile 'ci'"):
        publish.publish(ctx, folder=out, readme=readme, log=None)
    assert not out.parent.exists()  # checked before anything was written


def test_an_incomplete_or_interrupted_run_is_refused_with_status_2_and_nothing_written(finished_run, capsys):
    ctx, readme, out = finished_run
    before = readme.read_text()
    exp = planned_experiments(ctx)[0]
    result_path(exp, ctx.results_dir).unlink()
    assert _cli(ctx, readme, out) == 2
    err = capsys.readouterr().err
    assert f"1 of {len(planned_experiments(ctx))} planned experiments have no result ({exp.label()})" in err
    assert "--allow-incomplete" in err
    assert not out.parent.exists() and readme.read_text() == before
    write_result(exp, ctx.results_dir)
    _record(ctx.results_dir, interrupted="during the grid")
    assert _cli(ctx, readme, out) == 2
    assert "its last recorded run did not finish (interrupted during the grid)" in capsys.readouterr().err
    assert not out.parent.exists() and readme.read_text() == before
    _record(
        ctx.results_dir,
        status="interrupted",
        interrupted={"signal": "SIGTERM", "stage": "notebooks", "notebook": "06_gradcam"},
    )
    assert _cli(ctx, readme, out) == 2
    assert "did not finish (interrupted (SIGTERM) during notebooks, notebook 06_gradcam)" in capsys.readouterr().err
    _record(ctx.results_dir, status="finished")  # the same command, resumed to the end: published
    assert _cli(ctx, readme, out) == 0 and (out / "replication_report.md").is_file()


def test_allow_incomplete_publishes_and_the_summary_counts_what_lacks_a_result(finished_run):
    ctx, readme, out = finished_run
    planned = planned_experiments(ctx)
    for exp in planned[:3]:
        result_path(exp, ctx.results_dir).unlink()
    _record(ctx.results_dir, failed="notebook 06_gradcam failed")
    result = publish.publish(ctx, folder=out, readme=readme, log=None, allow_incomplete=True)
    assert result["missing"] == 3 and result["planned"] == len(planned)
    report_md = (out / "replication_report.md").read_text()
    summary_part = report_md[: report_md.index("## Table 1")]
    assert "Incomplete run, published with --allow-incomplete" in summary_part
    assert "did not finish (failed: notebook 06_gradcam failed)" in summary_part
    assert f"3 of {len(planned)} planned experiments have no result" in summary_part
    # Every published number is counted once (synthetic data: not comparable).
    assert (
        "of 70 published accuracies, 70 concern the benchmarks run here: 0 reproduced, 0 not reproduced, "
        "0 without any result, 70 not comparable" in summary_part
    )
    assert "Incomplete run, published with --allow-incomplete" in readme.read_text()


def test_a_failing_readme_rewrite_leaves_the_published_folder_as_it_was(finished_run, monkeypatch):
    ctx, readme, out = finished_run
    publish.publish(ctx, folder=out, readme=readme, log=None)
    published, text = _tree(out), readme.read_text()
    _png(ctx.figures_dir / "figure5.png")  # the next publish would add it

    def no_space(path, payload):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(publish, "write_atomic", no_space)
    with pytest.raises(OSError, match="No space left"):
        publish.publish(ctx, folder=out, readme=readme, log=None)
    assert _tree(out) == published and readme.read_text() == text
    assert sorted(p.name for p in out.parent.iterdir()) == ["published"]  # no staging or previous folder left


def test_cli_allow_incomplete(finished_run, capsys):
    ctx, readme, out = finished_run
    planned = planned_experiments(ctx)
    result_path(planned[0], ctx.results_dir).unlink()
    assert _cli(ctx, readme, out) == 2 and not out.parent.exists()
    assert _cli(ctx, readme, out, "--allow-incomplete") == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["missing"] == 1 and last["planned"] == len(planned)
    assert "Incomplete run, published with --allow-incomplete" in (out / "replication_report.md").read_text()
