"""Tests of the run level shared by ./run_all.sh (`pattlite.pipeline`), `pattlite grid run` and
`pattlite train`: `-p` parameters checked in the driver before anything heavy is imported, each
notebook given only the parameters it declares, the executed notebooks under `-p results_dir`, the
results-folder lock, and how an error is told to be an interruption. No notebook kernel starts here
(papermill is replaced where a test runs notebooks); signals sent to real runs are in
tests/test_interrupts.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pattlite import cli, pipeline

# ---------------------------------------------------------------------------------------------------
# -p parameters

CHECK_IN_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from pattlite import cli, pipeline
    out = {}
    for name, call in (("run_all", lambda: pipeline.main(["--profile", "ci", "-p", "seeds=abc"])),
                       ("grid", lambda: cli.main(["grid", "run", "--profile", "ci", "-p", "seeds=abc"])),
                       ("publish", lambda: cli.main(["publish", "--profile", "ci", "-p", "datasets=raf"]))):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                status = call()
            except SystemExit as exit:
                status = exit.code
        out[name] = [status, err.getvalue()]
    heavy = sorted(m for m in ("tensorflow", "keras", "jax", "papermill", "nbclient") if m in sys.modules)
    print(json.dumps({"results": out, "heavy": heavy}))
""")


def test_bad_parameters_are_named_before_anything_heavy_is_imported():
    done = subprocess.run([sys.executable, "-c", CHECK_IN_DRIVER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], "TensorFlow / Keras / JAX / papermill imported before -p was checked"
    expected = "-p seeds='abc': expected a comma-separated list of integers in 0..4294967295"
    status, err = report["results"]["run_all"]
    assert status == 2 and f"run_all.sh: error: {expected}" in err and "'abc' is not an integer" in err
    status, err = report["results"]["grid"]
    assert status == 2 and f"pattlite grid: error: {expected}" in err
    status, err = report["results"]["publish"]
    assert status == 2 and "-p datasets='raf': expected a comma-separated list of ckplus, rafdb" in err


def test_run_all_sh_names_a_bad_parameter_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-m", "pattlite.pipeline", "--profile", "ci", "-p", "seeds=abc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "-p seeds='abc': expected a comma-separated list of integers" in done.stderr


@pytest.mark.parametrize(
    "params, message",
    [
        ({"seeds": "0,-1"}, "-p seeds='0,-1': expected a comma-separated list of integers in 0..4294967295"),
        ({"seeds": "4294967296"}, "(seed 4294967296: expected an integer in 0..4294967295 (2**32 - 1))"),
        (
            {"seeds": ""},
            "-p seeds='': expected a comma-separated list of integers in 0..4294967295 (2**32 - 1), "
            "e.g. 0,1,2, or none for the profile's (the value is empty)",
        ),
        ({"datasets": "rafdb,affectnet"}, "('affectnet' is not one of them)"),
        ({"stage1": "fast"}, "-p stage1='fast': expected one of exact, cached"),
        ({"finetune": "all"}, "-p finetune='all': expected one of as_coded, paper"),
        ({"run_experiments": "maybe"}, "-p run_experiments='maybe': expected true or false"),
        ({"include_faces": "2"}, "-p include_faces='2': expected true or false"),
        ({"gradcam_true": "-3"}, "-p gradcam_true='-3': expected an integer >= 0"),
        ({"gradcam_dataset": "raf"}, "-p gradcam_dataset='raf': expected one of ckplus, rafdb, fer2013, ferplus"),
        ({"gradcam_variant": "mobilevit"}, "-p gradcam_variant='mobilevit': expected one of published,"),
        ({"profile": "ci"}, "-p profile='ci': the profile is chosen with --profile"),
        ({"seed": "1"}, "unknown notebook parameter(s) ['seed']; the notebooks take ckplus_root, datasets,"),
    ],
)
def test_each_bad_value_is_named_with_what_was_expected(params, message):
    with pytest.raises(pipeline.ParameterError) as error:
        pipeline.check_parameters(params)
    assert message in str(error.value)


def test_paths_are_checked_and_every_bad_value_is_listed(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(pipeline.ParameterError) as error:
        pipeline.check_parameters(
            {
                "weights": str(tmp_path / "none.weights.h5"),
                "rafdb_root": str(tmp_path / "raf"),
                "results_dir": str(a_file),
            }
        )
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    assert f"-p weights='{tmp_path / 'none.weights.h5'}': expected imagenet, an existing .weights.h5 file" in lines[0]
    assert f"-p rafdb_root='{tmp_path / 'raf'}': expected an existing folder" in lines[1]
    assert f"(no such folder '{tmp_path / 'raf'}')" in lines[1]
    assert f"({a_file} exists and is not a folder)" in lines[2]
    good = {
        "seeds": "0, 1,2",
        "datasets": "rafdb,ferplus",
        "weights": "imagenet",
        "rafdb_root": str(tmp_path),
        "results_dir": str(tmp_path / "new"),
        "run_experiments": "False",
        "gradcam_true": "0",
        "figures_dir": "none",
        "stage1": "cached",
    }
    assert pipeline.check_parameters(good) == good


def test_the_parameter_table_is_the_notebooks_parameters_cells():
    """PARAMETERS lists, for each parameter, exactly the notebooks whose cell declares it, and each
    cell's default passes the table's check (so the table cannot refuse what the notebooks take)."""
    pipeline.check_parameter_table()
    cells = pipeline.parameter_cells()
    assert {name for declared in cells.values() for name in declared} == set(pipeline.PARAMETERS) | {"profile"}
    assert pipeline.PARAMETERS["gradcam_true"].notebooks == ("06_gradcam",)
    assert pipeline.PARAMETERS["include_faces"].notebooks == ("08_report",)
    for notebook, declared in cells.items():
        for name, default in declared.items():
            if name != "profile" and default is not None:
                pipeline.check_parameters({name: str(default)})


def test_a_notebook_is_given_only_the_parameters_it_declares_and_is_written_under_results_dir(monkeypatch, tmp_path):
    """run_notebooks with papermill replaced: 06 gets the Grad-CAM parameters and not include_faces, 08
    the other way round; every notebook gets the shared ones; the executed copies go to
    <results_dir>/notebooks/ when -p results_dir is given (issue 23: they stayed in results/<profile>/)."""
    import papermill

    passed = {}

    def execute(src, dst, parameters=None, **kwargs):
        passed[Path(src).stem] = dict(parameters)
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setenv("PATTLITE_RESULTS_DIR", str(tmp_path / "default"))
    results = tmp_path / "elsewhere"
    params = {
        "results_dir": str(results),
        "seeds": "3",
        "gradcam_true": "2",
        "gradcam_variant": "published",
        "include_faces": "false",
    }
    timings = pipeline.run_notebooks("ci", "06,08", params, log=lambda *_: None)
    assert [name for name, _ in timings] == ["06_gradcam", "08_report"]
    assert passed["06_gradcam"] == {
        "profile": "ci",
        "results_dir": str(results),
        "seeds": "3",
        "gradcam_true": "2",
        "gradcam_variant": "published",
    }
    assert passed["08_report"] == {"profile": "ci", "results_dir": str(results), "seeds": "3", "include_faces": "false"}
    assert sorted(p.name for p in (results / "notebooks").iterdir()) == ["06_gradcam.ipynb", "08_report.ipynb"]
    assert not (tmp_path / "default").exists()  # nothing in results/<profile>/notebooks/


# ---------------------------------------------------------------------------------------------------
# Interruption or failure


def test_an_error_is_an_interruption_when_its_chain_holds_one():
    def chained(inner, outer=RuntimeError("OpConversionFailure: conversion failed")):
        try:
            try:
                raise inner
            except BaseException:
                raise outer
        except BaseException as error:
            return error

    assert pipeline.interruption(ValueError("bad data")) is None
    assert pipeline.interruption(KeyboardInterrupt()) == "SIGINT"
    assert pipeline.interruption(chained(KeyboardInterrupt("SIGTERM"))) == "SIGTERM"  # raised while handling it
    assert pipeline.interruption(chained(ValueError("x"))) is None
    wrapped = RuntimeError("extraction failed")
    wrapped.__cause__ = subprocess.CalledProcessError(-signal.SIGTERM, ["python"])
    assert pipeline.interruption(wrapped) == "SIGTERM"
    assert pipeline.interruption(subprocess.CalledProcessError(130, ["sh"])) == "SIGINT"
    assert pipeline.interruption(subprocess.CalledProcessError(1, ["sh"])) is None

    class KernelError(Exception):  # papermill's PapermillExecutionError carries the kernel's `ename`
        ename = "KeyboardInterrupt"

    class TaskError(Exception):  # ray.exceptions.RayTaskError carries the task's exception as `cause`
        cause = KeyboardInterrupt()

    assert pipeline.interruption(KernelError()) == "SIGINT" and pipeline.interruption(TaskError()) == "SIGINT"
    stopped = pipeline.as_interruption(wrapped, "grid", experiment="ferplus published seed 0", key="abc")
    assert stopped.status == 143 and stopped.record() == {
        "signal": "SIGTERM",
        "stage": "grid",
        "experiment": "ferplus published seed 0",
        "key": "abc",
    }
    assert stopped.describe() == "during the grid, training ferplus published seed 0 (key abc) (SIGTERM)"
    assert pipeline.as_interruption(ValueError("x"), "grid") is None


def test_after_a_signal_every_error_is_the_interruption():
    """A library may turn the KeyboardInterrupt into an error of its own (OpenVINO's conversion did):
    once SIGTERM arrived, whatever comes up is recorded as the interruption, not as a failure."""
    with pipeline.handle_signals():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert pipeline.received_signal() == "SIGTERM"
        assert pipeline.interruption(RuntimeError("OpConversionFailure")) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not pipeline._on_signal  # the previous handlers are back
    assert pipeline.interruption(RuntimeError("OpConversionFailure")) is None  # and the signal is forgotten


def test_a_stopped_notebook_is_recorded_with_where(monkeypatch, tmp_path, capsys):
    """A KeyboardInterrupt out of papermill (here a stand-in) ends ./run_all.sh with 130 and a record
    naming the notebook; the notebooks done before it keep their times; the lock is released."""
    import papermill

    def execute(src, dst, parameters=None, **kwargs):
        if Path(src).stem == "02_ablation":
            raise KeyboardInterrupt
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    status = pipeline.main(["--profile", "ci", "--only", "01,02,08", "-p", f"results_dir={tmp_path}"])
    assert status == 130
    err = capsys.readouterr().err
    assert "run_all.sh: interrupted in notebook 02_ablation (SIGINT); the same command resumes it" in err
    run = json.loads((tmp_path / "run_record.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted" and run["command"] == "run_all.sh"
    assert run["interrupted"] == {"signal": "SIGINT", "stage": "notebooks", "notebook": "02_ablation"}
    assert list(run["notebook_seconds"]) == ["01_datasets"] and "failed" not in run
    with pipeline.results_lock(tmp_path, "test"):  # released
        pass


# ---------------------------------------------------------------------------------------------------
# One run per results folder

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pattlite import pipeline
    with pipeline.results_lock(sys.argv[1], "run_all.sh --profile ci (a test holding the lock)"):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def held_lock(tmp_path):
    """A results folder whose lock another process holds; yields (folder, that process)."""
    folder = tmp_path / "results" / "ci"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_second_run_on_a_results_folder_is_refused_naming_the_holder(held_lock, capsys):
    folder, holder = held_lock
    with pytest.raises(pipeline.ResultsFolderBusy) as error:
        with pipeline.results_lock(folder, "second"):
            pass
    message = str(error.value)
    assert f"results folder {folder} is in use by another run (PID {holder.pid}: run_all.sh --profile ci" in message
    assert "-p results_dir=DIR" in message
    # ./run_all.sh and `pattlite grid run` refuse before planning anything; nothing is recorded.
    assert pipeline.main(["--profile", "ci", "--executor", "local", "-p", f"results_dir={folder}"]) == 1
    assert (
        f"run_all.sh: error: results folder {folder} is in use by another run (PID {holder.pid}"
        in capsys.readouterr().err
    )
    assert cli.main(["grid", "run", "--profile", "ci", "-p", f"results_dir={folder}"]) == 1
    assert f"pattlite grid: error: results folder {folder} is in use" in capsys.readouterr().err
    assert not (folder / "run_record.json").exists()


def test_pattlite_train_refuses_to_train_into_a_folder_in_use(held_lock, capsys, tmp_path, monkeypatch):
    folder, holder = held_lock
    monkeypatch.setenv("PATTLITE_DATA_DIR", str(tmp_path / "data"))
    status = cli.main(
        [
            "train",
            "--dataset",
            "synthetic",
            "--variant",
            "published",
            "--profile",
            "ci",
            "--results",
            str(folder.parent),
        ]
    )
    assert status == 1
    assert (
        f"pattlite train: error: results folder {folder} is in use by another run (PID {holder.pid}"
        in capsys.readouterr().err
    )
    assert not (folder / "experiments").exists()


def test_a_lock_left_by_a_killed_run_does_not_block(held_lock):
    folder, holder = held_lock
    holder.kill()
    holder.wait()
    with pipeline.results_lock(folder, "after the kill") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_an_interruption_between_experiments_or_while_planning_says_so(monkeypatch, tmp_path, capsys):
    from pattlite import experiments, grid

    class Exp:  # what the local grid reads of an experiment
        dataset, train_limit, stage1 = "ferplus", None, "cached"

        def __init__(self, name):
            self.name = name

        def label(self):
            return f"ferplus {self.name} seed 0"

        def key(self):
            return self.name

    monkeypatch.setattr(experiments, "run_experiment", lambda exp, **kwargs: None)

    def log(line):  # Ctrl-C while the progress line after the first experiment is printed
        if "1/2 done" in line:
            raise KeyboardInterrupt

    with pytest.raises(pipeline.RunInterrupted) as stopped:
        grid._run_local([Exp("a"), Exp("b")], tmp_path, log)
    assert stopped.value.describe() == "during the grid, between experiments, 1 of 2 run (SIGINT)"

    def planning(profile, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid, "plan", planning)
    assert pipeline.main(["--profile", "ci", "--executor", "local", "-p", f"results_dir={tmp_path}"]) == 130
    assert "run_all.sh: interrupted during the grid, planning the experiments (SIGINT)" in capsys.readouterr().err
    run = json.loads((tmp_path / "run_record.json").read_text())["runs"][-1]
    assert run["interrupted"] == {"signal": "SIGINT", "stage": "grid", "step": "planning the experiments"}
