"""Ctrl-C and `kill` stop a run at every stage, and the run says where (issue 23).

Real signals to real runs in subprocesses, on the ci profile's synthetic data: `pattlite grid run` and
`./run_all.sh --executor local` stopped while an experiment trains (a harness keeps the grid to the
plan's first two experiments and prints a marker when training starts), and ./run_all.sh stopped in
a notebook. Ctrl-C is sent as a terminal sends it, to the whole process group (the notebook kernel and
any child process get it too); `kill` sends SIGTERM to the driver alone; a supervisor's SIGTERM goes to
the whole group. Each run must end with 130
(SIGINT) or 143 (SIGTERM), be recorded in run_record.json as interrupted with the stage and the
experiment or notebook, leave no process behind, and a rerun must finish what is left.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# The first two experiments of the real plan (a small grid), and a marker line when training starts.
HARNESS = """
import dataclasses, sys
from pattlite import experiments, grid

real_plan = grid.plan
def first_two(profile, params):
    full = real_plan(profile, params)
    return dataclasses.replace(full, experiments=full.experiments[:2])
grid.plan = first_two

real_train = experiments.train
def train(*args, **kwargs):
    print("TRAINING STARTED", flush=True)
    return real_train(*args, **kwargs)
experiments.train = train

if sys.argv[1] == "grid":
    from pattlite import cli
    sys.exit(cli.main(sys.argv[2:]))
from pattlite import pipeline
sys.exit(pipeline.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Data and cache folders shared by this module's runs (synthetic images and features made once)."""
    return tmp_path_factory.mktemp("interrupts")


def start(args, shared, marker):
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PATTLITE_DATA_DIR=str(shared / "data"),
        PATTLITE_CACHE_DIR=str(shared / "cache"),
        PATTLITE_TEST_RUN=marker,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def wait_for(proc, text, timeout=240):
    """Reads the run's stdout until a line holds `text`; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
        assert time.time() < deadline, f"no {text!r} within {timeout} s:\n{''.join(lines)[-3000:]}"
    proc.wait(timeout=60)
    raise AssertionError(
        f"the run ended (status {proc.returncode}) before {text!r}:\n{''.join(lines)[-3000:]}"
        f"\n{proc.stderr.read()[-3000:]}"
    )


def stop(proc, how):
    """Ctrl-C as a terminal sends it (the process group), `kill`'s SIGTERM to the driver alone, or
    SIGTERM to the whole group (systemd, Slurm's scancel: the stderr filter process gets it too)."""
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "term-group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    return out, err


def processes_left(marker) -> list:
    """Processes still running with this run's marker in their environment (kernels, children)."""
    left = []
    for _ in range(20):
        left = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if f"PATTLITE_TEST_RUN={marker}".encode() in (proc / "environ").read_bytes():
                    left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except OSError:
                continue
        if not left:
            return []
        time.sleep(0.5)
    return left


def last_run(results: Path) -> dict:
    return json.loads((results / "run_record.json").read_text())["runs"][-1]


@pytest.mark.parametrize("how, status, name", [("ctrl-c", 130, "SIGINT"), ("kill", 143, "SIGTERM")])
def test_grid_run_stopped_while_training_is_recorded_and_resumes(shared, tmp_path, how, status, name):
    results = tmp_path / "results"
    args = ["grid", "grid", "run", "--profile", "ci", "-p", "datasets=ferplus", "-p", f"results_dir={results}"]
    marker = uuid.uuid4().hex
    proc = start(args, shared, marker)
    wait_for(proc, "TRAINING STARTED")
    time.sleep(0.5)
    out, err = stop(proc, how)
    assert proc.returncode == status, err[-3000:]
    assert "pattlite grid run: interrupted during the grid, training ferplus" in err and f"({name})" in err
    assert "the same command resumes it" in err and "Traceback" not in err, err[-3000:]
    run = last_run(results)
    assert run["command"] == "pattlite grid run" and run["status"] == "interrupted" and "failed" not in run
    stopped = run["interrupted"]
    assert stopped["signal"] == name and stopped["stage"] == "grid" and stopped["experiment"].startswith("ferplus ")
    assert json.loads(out.strip().splitlines()[-1]) == {"interrupted": stopped}
    assert not list(results.glob("experiments/.tmp-*")), "a temporary file was left behind"
    assert processes_left(marker) == []
    if how == "kill":
        return
    # The same command finishes what is left, keeping what was done.
    done_before = len(list(results.glob("experiments/*.json")))
    again = start(args, shared, marker)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["already_done"] == done_before and summary["trained"] == 2 - done_before
    assert len(list(results.glob("experiments/*.json"))) == 2
    assert last_run(results)["status"] == "finished"


def test_run_all_stopped_in_the_grid_is_recorded_with_the_experiment(shared, tmp_path):
    results = tmp_path / "results"
    proc = start(
        ["run_all", "--profile", "ci", "--executor", "local", "-p", "datasets=ferplus", "-p", f"results_dir={results}"],
        shared,
        uuid.uuid4().hex,
    )
    wait_for(proc, "TRAINING STARTED")
    out, err = stop(proc, "term-group")  # the stderr filter must outlive it to pass on the message
    assert proc.returncode == 143, err[-3000:]
    assert "run_all.sh: interrupted during the grid, training ferplus" in err and "(SIGTERM)" in err
    run = last_run(results)
    assert run["status"] == "interrupted" and run["interrupted"]["stage"] == "grid"
    assert run["interrupted"]["signal"] == "SIGTERM" and "key" in run["interrupted"]
    assert run["notebook_seconds"] == {} and out.strip().splitlines()[-1].startswith("run recorded in ")


def test_run_all_stopped_in_a_notebook_names_it_and_leaves_no_kernel(shared, tmp_path):
    results = tmp_path / "results"
    marker = uuid.uuid4().hex
    proc = start(
        [
            "run_all",
            "--profile",
            "ci",
            "--only",
            "01_datasets",
            "-p",
            "datasets=ferplus",
            "-p",
            f"results_dir={results}",
            "-p",
            f"figures_dir={tmp_path / 'figures'}",
            "-p",
            f"reports_dir={tmp_path / 'reports'}",
        ],
        shared,
        marker,
    )
    wait_for(proc, "01_datasets (profile ci) ...")
    time.sleep(3)  # the kernel is starting or running the set-up cell
    out, err = stop(proc, "ctrl-c")
    assert proc.returncode == 130, err[-3000:]
    assert "run_all.sh: interrupted in notebook 01_datasets" in err and "(SIGINT)" in err
    run = last_run(results)
    assert run["status"] == "interrupted" and "failed" not in run
    assert run["interrupted"]["stage"] == "notebooks" and run["interrupted"]["notebook"] == "01_datasets"
    assert run["interrupted"]["cell"]  # "the kernel's start" or the code cell that was running
    assert (results / "notebooks" / "01_datasets.ipynb").is_file()
    assert processes_left(marker) == [], "a notebook kernel or child process outlived the run"
