"""The notebooks end to end: the `ci` profile through `pattlite.pipeline.run_notebooks`.

One run of all nine notebooks (module-scoped), with papermill parameters that move every output to a
temporary folder and change the seed, then checks on what it wrote: every table (1-11) and figure (2-10)
in the report, the synthetic banner, the parameters taking effect.
"""

import importlib.util
import json
import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nbformat  # noqa: E402
import pytest  # noqa: E402

from pattlite import config, grid, pipeline, report  # noqa: E402

SEED = 7  # not the ci profile's default (0): the parameter must reach every experiment


def run_parameters(out) -> dict:
    return {
        "results_dir": str(out / "results"),
        "figures_dir": str(out / "figures"),
        "reports_dir": str(out / "reports"),
        "seeds": str(SEED),
    }


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci_run")
    params = run_parameters(out)
    start = time.time()
    timings = pipeline.run_notebooks("ci", parameters=params, output_dir=out / "notebooks", log=print)
    print(f"ci notebooks: {time.time() - start:.1f} s;", ", ".join(f"{n} {s:.1f} s" for n, s in timings))
    return out, timings


def test_notebooks_are_clean_and_parameterised():
    for name in pipeline.NOTEBOOKS:
        nb = nbformat.read(pipeline.NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert 'profile = "demo"' in tagged[0].source
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} stores outputs"


@pytest.mark.slow
def test_ci_profile_runs_every_notebook(ci_run):
    out, timings = ci_run
    assert [name for name, _ in timings] == list(pipeline.NOTEBOOKS)
    declared = pipeline.parameter_cells()
    for name in pipeline.NOTEBOOKS:
        executed = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f'results_dir = "{out / "results"}"' in injected[0].source
        if "seeds" in declared[name]:  # 09 (the shipped model) trains nothing: no seeds
            assert f'seeds = "{SEED}"' in injected[0].source


@pytest.mark.slow
def test_parameters_override_outputs_and_seeds(ci_run):
    out, _ = ci_run
    files = sorted((out / "results" / "experiments").glob("*.json"))
    assert files, "no result files in the results_dir given as a parameter"
    seeds = {json.loads(p.read_text())["config"]["seed"] for p in files}
    assert seeds == {SEED}
    for n in range(1, 12):
        assert (out / "results" / "tables" / f"table{n}.csv").is_file(), n
    for n in range(2, 11):
        assert (out / "figures" / f"figure{n}.png").is_file(), n
        assert (out / "figures" / f"figure{n}.pdf").is_file(), n


@pytest.mark.slow
def test_report_holds_every_table_and_figure_with_banner(ci_run):
    out, _ = ci_run
    md = (out / "reports" / "replication_report.md").read_text(encoding="utf-8")
    html = (out / "reports" / "replication_report.html").read_text(encoding="utf-8")
    for n in range(1, 12):
        assert f"**Table {n}. " in md, f"Table {n} missing from the report"
        assert f"Table {n}. " in html
    for n in range(2, 11):
        assert f"**Figure {n}. " in md, f"Figure {n} missing from the report"
        assert f"figure{n}.png)" in md  # a Markdown image link
        assert "not produced yet" not in md
    assert html.count("data:image/png;base64,") >= 9
    assert report.SYNTHETIC_BANNER in md and report.SYNTHETIC_BANNER in html
    assert md.count(report.SYNTHETIC_BANNER) >= 11, "every table of the report carries the banner"
    assert "not comparable" in md
    assert not re.search(r"\|\s*(not )?reproduced\s*\|", md), "a synthetic run got a verdict"
    for section in ("The batch-composition audit", "Deviations and interpretation", "Provenance"):
        assert f"## {section}" in md
    table4 = (out / "results" / "tables" / "table4.md").read_text(encoding="utf-8")
    assert report.SYNTHETIC_BANNER in table4 and "Table 4. Ablation study" in table4
    # Nothing was written to the default folders' report for this run's seed.
    default_report = config.reports_dir("ci") / "replication_report.md"
    assert not default_report.exists() or f"seeds: {SEED}" not in default_report.read_text(encoding="utf-8")


@pytest.mark.slow
def test_grid_plan_is_what_the_notebooks_trained_and_loaded(ci_run):
    """The notebooks ran into an empty results folder: its result files are exactly the experiments they
    needed, and `pattlite grid plan` with the same parameters lists exactly those, all done."""
    out, _ = ci_run
    grid_plan = grid.plan("ci", run_parameters(out))
    written = {p.stem for p in (out / "results" / "experiments").glob("*.json")}
    planned = [p.experiment.key() for p in grid_plan.experiments]
    assert len(planned) == len(set(planned)) and set(planned) == written
    assert all(p.done for p in grid_plan.experiments)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install -e .[ray]); run_all.sh --executor ray is untested",
)
def test_run_all_with_the_ray_executor_runs_the_grid_then_the_notebooks(ci_run, capsys):
    """./run_all.sh --executor ray: the grid first (here every experiment is already done, so no task
    runs), then the notebooks (here only the report), ending with the report's path."""
    out, _ = ci_run
    params = dict(run_parameters(out), reports_dir=str(out / "reports-ray"))
    argv = ["--profile", "ci", "--executor", "ray", "--only", "08", "--cpus-per-trial", "1"]
    argv += [a for name, value in params.items() for a in ("-p", f"{name}={value}")]
    assert pipeline.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    grid_lines = [i for i, line in enumerate(lines) if line.startswith("[grid]")]
    notebook_lines = [i for i, line in enumerate(lines) if "08_report" in line]
    assert grid_lines and notebook_lines and max(grid_lines) < min(notebook_lines)
    assert any("0 trained" in lines[i] and "0 failed" in lines[i] for i in grid_lines)
    assert lines[-2].startswith("report: ") and str(out / "reports-ray") in lines[-2]
    assert (out / "reports-ray" / "replication_report.md").is_file()
    # The run is recorded: its time, the grid's, the notebook's, and the machine.
    assert lines[-1].startswith("run recorded in ") and "run_record.json" in lines[-1]
    record = json.loads((out / "results" / "run_record.json").read_text())
    last = record["runs"][-1]
    assert last["grid_seconds"] is not None and list(last["notebook_seconds"]) == ["08_report"]
    assert last["machine"]["cpu_count"] >= 1 and record["total_seconds"] >= last["seconds"]


def test_a_stopped_run_is_recorded_and_says_how_to_resume(tmp_path):
    """`kill` (SIGTERM) during the grid: the run ends with status 143 and its time is in the run record."""
    import signal
    import subprocess
    import sys

    results = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pattlite.pipeline",
            "--profile",
            "ci",
            "--executor",
            "local",
            "-p",
            f"results_dir={results}",
            "-p",
            "datasets=ferplus",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # the progress line arrives at once
    for line in proc.stdout:  # the grid has started: its first experiment is running
        if "[grid] 0/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "run_all.sh: interrupted during the grid" in err and "(SIGTERM); the same command resumes it" in err
    record = json.loads((results / "run_record.json").read_text())
    run = record["runs"][0]
    assert run["status"] == "interrupted" and run["interrupted"]["signal"] == "SIGTERM"
    assert run["interrupted"]["stage"] == "grid" and run["seconds"] > 0
    assert run["keras_backends"]["grid"] and run["notebook_seconds"] == {}
