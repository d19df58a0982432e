"""`pattlite publish`: a finished run's report, tables, face-free figures and run record copied into a
folder, and the README's results block rewritten from the same results (ci profile, no training)."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pattlite import pipeline, studies  # noqa: E402
from pattlite.studies import publish  # noqa: E402


def _png(path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture
def finished_run(tmp_path):
    results, figures, tables = tmp_path / "results", tmp_path / "figures", tmp_path / "results" / "tables"
    for folder in (figures, tables):
        folder.mkdir(parents=True)
    for name in ("figure4", "figure6", "figure7", "audit"):
        _png(figures / f"{name}.png")
    (tables / "table4.csv").write_text("# Table 4.\nvariant,dataset\n")
    pipeline.record_run(results, {"profile": "ci", "argv": [], "started_utc": "x", "seconds": 12.5,
                                  "grid_seconds": None, "notebook_seconds": {}})
    pipeline.record_run(results, {"profile": "ci", "argv": [], "started_utc": "y", "seconds": 7.5,
                                  "grid_seconds": None, "notebook_seconds": {}})
    ctx = studies.notebook_context("ci", results_dir=results, figures_dir=figures, tables_dir=tables,
                                   reports_dir=tmp_path / "reports", datasets="ferplus", run_experiments=False)
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\nbefore\n" + publish.README_START.format(profile="ci") + "\nold\n"
                      + publish.README_END.format(profile="ci") + "\nafter\n")
    return ctx, readme, tmp_path / "published"


def test_publish_copies_the_run_without_faces(finished_run):
    ctx, readme, out = finished_run
    result = publish.publish(ctx, folder=out, readme=readme, log=None)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["audit.png", "figure4.png"]
    assert (out / "tables" / "table4.csv").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["total_seconds"] == 20.0 and len(record["runs"]) == 2
    assert record["runs"][0]["machine"]["cpu_count"] >= 1
    report_md = (out / "replication_report.md").read_text()
    assert "figure6" not in report_md and "figure7" not in report_md
    assert (out / "replication_report.html").is_file() and result["report"] == out / "replication_report.md"
    text = readme.read_text()
    assert "old" not in text and text.startswith("# Project\n\nbefore\n") and text.endswith("\nafter\n")
    assert "FERPlus" in text and "published/replication_report.md" in text


def test_publish_needs_the_run_record_and_the_readme_markers(finished_run):
    ctx, readme, out = finished_run
    (ctx.results_dir / "run_record.json").unlink()
    with pytest.raises(FileNotFoundError, match="run_record.json"):
        publish.publish(ctx, folder=out, readme=None, log=None)
    pipeline.record_run(ctx.results_dir, {"profile": "ci", "argv": [], "started_utc": "x", "seconds": 1.0,
                                          "grid_seconds": None, "notebook_seconds": {}})
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no results block for profile 'ci'"):
        publish.publish(ctx, folder=out, readme=readme, log=None)
