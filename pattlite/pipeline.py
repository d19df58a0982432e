"""Run the notebooks in order with papermill: the engine behind ./run_all.sh.

Each notebook gets the profile and the `-p NAME=VALUE` parameters its `parameters` cell declares
(`PARAMETERS`: every parameter, what a value must be and which notebooks take it; all are checked
here, before anything heavy is imported or any kernel starts). It runs with the notebooks folder as
working directory and the kernel of the Python that runs this module, and is written executed to
<results_dir>/notebooks/. The first failure stops the run, naming the notebook and the failing cell.
Finished experiments are read back from result files, so a rerun resumes.
With `--executor local|ray` the experiment grid (`pattlite.grid`) runs first, and the notebooks then
only assemble tables and figures.

The run-level rules that `pattlite grid run` and `pattlite train` share live here too:

- `results_lock`: a run holds `<results_dir>/.lock`; a second run on the same folder is refused,
  naming the process that holds it (a lock of a dead process never blocks: the system drops it).
- `handle_signals`, `interruption`, `RunInterrupted`: Ctrl-C (SIGINT) and `kill` (SIGTERM) stop a run
  at any stage; whatever error the interruption turns into on its way up, the run is recorded in
  `<results_dir>/run_record.json` as interrupted, with where, and ends with status 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from . import config

NOTEBOOKS = (
    "01_datasets",  # Tables 1-3
    "02_ablation",  # Table 4
    "03_patch_grid",  # Table 5
    "04_patch_attention",  # Table 6, Figures 2-5
    "05_main_results",  # Tables 7-11, Figures 8-10
    "06_gradcam",  # Figures 6-7
    "07_audit",  # batch-composition audit
    "08_report",  # the replication report
    "09_use_the_model",  # the shipped model: predict, ONNX export, cross-dataset accuracy
)
# 01-08 build the replication and share most parameters; 09 takes only results_dir and weights.
STUDY_NOTEBOOKS = NOTEBOOKS[:8]
NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"
# tf-keras-vis (Grad-CAM) runs on TensorFlow only, whatever backend a profile trains on.
TENSORFLOW_ONLY = ("06_gradcam",)
RUN_RECORD = "run_record.json"
LOCK_FILE = ".lock"


# ---------------------------------------------------------------------------------------------------
# Notebook parameters: one table, checked in the driver


class ParameterError(ValueError):
    """A bad `-p NAME=VALUE`: the message names the parameter, the value and what was expected."""


def _none(value: str) -> bool:
    return value.strip().lower() == "none"


def _check_seeds(value: str) -> None:
    if _none(value):
        return
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ValueError("no seed in it")
    for part in parts:
        try:
            seed = int(part)
        except ValueError:
            raise ValueError(f"{part!r} is not an integer") from None
        config.check_seed(seed)


def _check_datasets(value: str) -> None:
    if _none(value):
        return
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ValueError("no dataset in it")
    for part in parts:
        if part not in config.REAL_DATASETS:
            raise ValueError(f"{part!r} is not one of them")


def _check_weights(value: str) -> None:
    if _none(value) or value == "imagenet":
        return
    if not Path(value).expanduser().is_file():
        raise ValueError(f"no such file {str(Path(value).expanduser())!r}")


def _check_output_folder(value: str) -> None:
    if _none(value):
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")


def _check_dataset_folder(value: str) -> None:
    if _none(value):
        return
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"no such folder {str(path)!r}")


def _one_of(valid) -> Callable:
    def check(value: str) -> None:
        if value not in valid:
            raise ValueError("")

    return check


BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no")


def _check_bool(value: str) -> None:
    if value.strip().lower() not in BOOLEAN_WORDS:
        raise ValueError("")


def _check_count(value: str) -> None:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("") from None
    if number < 0:
        raise ValueError("")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A `-p NAME=VALUE` notebook parameter: what a value must be (`expected`, said in the error;
    `check` raises a ValueError, its message a detail or empty) and which notebooks take it."""

    expected: str
    check: Callable
    notebooks: tuple = STUDY_NOTEBOOKS


_OUTPUT_FOLDER = "a folder (created when missing), or none for the default"
_DATASET_FOLDER = "an existing folder, or none for the default ($PATTLITE_<NAME>_ROOT, else data/<name>/)"

# Every parameter of the notebooks' `parameters` cells except `profile` (--profile). The notebooks'
# cells declare them (papermill injects only declared names without a warning); `check_parameter_table`
# and tests/test_pipeline.py keep this table and the cells the same.
PARAMETERS = {
    "results_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder, NOTEBOOKS),
    "tables_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "figures_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "reports_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "seeds": Parameter(
        f"a comma-separated list of integers in 0..{config.MAX_SEED} (2**32 - 1), e.g. 0,1,2, "
        "or none for the profile's",
        _check_seeds,
    ),
    "datasets": Parameter(
        f"a comma-separated list of {', '.join(config.REAL_DATASETS)}, or none for the default", _check_datasets
    ),
    "weights": Parameter(
        "imagenet, an existing .weights.h5 file, or none for the profile's", _check_weights, NOTEBOOKS
    ),
    "stage1": Parameter(f"one of {', '.join(config.STAGE1_MODES)}", _one_of(config.STAGE1_MODES)),
    "finetune": Parameter(f"one of {', '.join(config.FINETUNE_MODES)}", _one_of(config.FINETUNE_MODES)),
    **{f"{name}_root": Parameter(_DATASET_FOLDER, _check_dataset_folder) for name in config.REAL_DATASETS},
    "run_experiments": Parameter("true or false (or 1/0, yes/no)", _check_bool),
    "gradcam_dataset": Parameter(
        f"one of {', '.join(config.REAL_DATASETS)}", _one_of(config.REAL_DATASETS), ("06_gradcam",)
    ),
    "gradcam_variant": Parameter(f"one of {', '.join(config.VARIANTS)}", _one_of(config.VARIANTS), ("06_gradcam",)),
    "gradcam_true": Parameter("an integer >= 0", _check_count, ("06_gradcam",)),
    "gradcam_false": Parameter("an integer >= 0", _check_count, ("06_gradcam",)),
    "include_faces": Parameter("true or false (or 1/0, yes/no)", _check_bool, ("08_report",)),
}


def parse_parameters(items) -> dict:
    """`-p NAME=VALUE` items as {NAME: VALUE} (strings; the notebooks parse them)."""
    params = {}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"--parameter expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value
    return params


def check_parameters(params: dict) -> dict:
    """Every `-p NAME=VALUE` against `PARAMETERS`, without importing anything heavy; returns `params`.

    Raises:
        ParameterError: a name no notebook takes (the message lists the valid ones), or bad values
            (one line each: `-p seeds='abc': expected ...`).
    """
    if "profile" in params:
        raise ParameterError(
            f"-p profile={params['profile']!r}: the profile is chosen with --profile, not as a parameter"
        )
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter(s) {unknown}; the notebooks take "
            f"{', '.join(sorted(PARAMETERS))} (and --profile)"
        )
    errors = []
    for name, value in params.items():
        spec = PARAMETERS[name]
        if not isinstance(value, str):
            value = str(value)
        try:
            if not value.strip():
                raise ValueError("the value is empty")
            spec.check(value)
        except ValueError as error:
            detail = f" ({error})" if str(error) else ""
            errors.append(f"-p {name}={value!r}: expected {spec.expected}{detail}")
    if errors:
        raise ParameterError("\n".join(errors))
    return params


def parameter_cells(notebooks=NOTEBOOKS) -> dict:
    """{notebook: {name: default}} of the notebooks' `parameters` cells (read as JSON: no nbformat)."""
    import ast

    cells = {}
    for name in notebooks:
        nb = json.loads((NOTEBOOKS_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
        declared = {}
        for cell in nb["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                for node in ast.parse(source).body:
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                        declared[node.targets[0].id] = ast.literal_eval(node.value)
        cells[name] = declared
    return cells


def check_parameter_table(notebooks=NOTEBOOKS) -> None:
    """`PARAMETERS` must say exactly which notebooks declare each parameter (else a parameter would be
    passed to a notebook that lacks it, or withheld from one that takes it).

    Raises:
        RuntimeError: naming the notebook and the parameters that disagree.
    """
    problems = []
    for notebook, declared in parameter_cells(notebooks).items():
        declared = set(declared) - {"profile"}
        listed = {name for name, spec in PARAMETERS.items() if notebook in spec.notebooks}
        if declared != listed:
            problems.append(
                f"{notebook}: declared but not listed {sorted(declared - listed)}, listed but not "
                f"declared {sorted(listed - declared)}"
            )
    if problems:
        raise RuntimeError(
            "pattlite.pipeline.PARAMETERS disagrees with the notebooks' parameters cells: "
            + "; ".join(problems)
            + ". Update the table beside the cells."
        )


def notebook_parameters(notebook: str, profile: str, params: dict) -> dict:
    """What papermill passes to `notebook`: the profile and the parameters it declares."""
    return {"profile": profile, **{k: v for k, v in params.items() if notebook in PARAMETERS[k].notebooks}}


def _optional_path(value) -> Path | None:
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return Path(value).expanduser()


def results_folder(profile: str, params: dict) -> Path:
    """The results folder of a run: `-p results_dir=...`, else `config.results_dir(profile)`."""
    return _optional_path(params.get("results_dir")) or config.results_dir(profile)


# ---------------------------------------------------------------------------------------------------
# Interruptions: SIGINT and SIGTERM end a run, recorded with where


SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How a child process ended by a signal reports it: -N from Python's subprocess, 128+N from a shell.
_SIGNAL_STATUSES = {**{-s: s.name for s in SIGNALS}, **{128 + s: s.name for s in SIGNALS}}
_received: list = []
_deferred = {"on": False}


def exit_status(signal_name: str) -> int:
    """130 for SIGINT, 143 for SIGTERM: the shell's status of a process ended by that signal."""
    return 128 + int(signal.Signals[signal_name])


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM (`kill`), and where: the stage ("start", "grid",
    "notebooks") and, when known, the experiment being trained or the notebook and cell being run.
    A KeyboardInterrupt, so that code catching `Exception` lets it through."""

    def __init__(self, signal_name: str, stage: str, **where):
        super().__init__(f"{signal_name} during {stage}")
        self.signal_name, self.stage = signal_name, stage
        self.where = {k: v for k, v in where.items() if v is not None}

    @property
    def status(self) -> int:
        return exit_status(self.signal_name)

    def describe(self) -> str:
        """E.g. "during the grid, training ferplus published seed 0 (key 1a2b...) (SIGTERM)"."""
        w = self.where
        if "notebook" in w:
            text = f"in notebook {w['notebook']}" + (f", {w['cell']}" if "cell" in w else "")
        else:
            text = {
                "grid": "during the grid",
                "notebooks": "during the notebooks",
                "start": "before the grid or a notebook started",
            }.get(self.stage, f"during {self.stage}")
        if "experiment" in w:
            text += f", training {w['experiment']}" + (f" (key {w['key']})" if "key" in w else "")
        elif w.get("in_flight"):
            text += f", {len(w['in_flight'])} experiment(s) in flight: {', '.join(w['in_flight'][:5])}" + (
                ", ..." if len(w["in_flight"]) > 5 else ""
            )
        elif "step" in w:
            text += f", {w['step']}"
        return f"{text} ({self.signal_name})"

    def record(self) -> dict:
        return {"signal": self.signal_name, "stage": self.stage, **self.where}


def _on_signal(signum, frame):
    _received.append(signal.Signals(signum).name)
    if not _deferred["on"]:
        raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def handle_signals():
    """While inside: SIGINT and SIGTERM raise KeyboardInterrupt in this process (SIGTERM's default
    would end it on the spot, recording nothing), and the first one is remembered (`received_signal`),
    so that whatever error the interruption becomes on its way up (a library may wrap it, a child
    process may die of it) the run is recorded as interrupted. Nested uses share the outer one."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _on_signal:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()  # outside, errors are judged by their own chain again


@contextlib.contextmanager
def deferred_signals():
    """While inside (writing the run record), SIGINT and SIGTERM are only remembered."""
    before = _deferred["on"]
    _deferred["on"] = True
    try:
        yield
    finally:
        _deferred["on"] = before


def received_signal() -> str | None:
    """The first SIGINT / SIGTERM received under `handle_signals` ("SIGINT", "SIGTERM"), else None."""
    return _received[0] if _received else None


def interruption(error: BaseException | None) -> str | None:
    """The signal ("SIGINT" or "SIGTERM") behind `error`, or None when it is a failure of its own.

    An error is an interruption when this process received SIGINT or SIGTERM under `handle_signals`,
    or when its chain of causes and contexts holds a KeyboardInterrupt, a child process ended by
    SIGINT or SIGTERM (an exception whose `returncode` is -2/-15/130/143, e.g. CalledProcessError), a
    notebook kernel's KeyboardInterrupt (papermill's `ename`) or a Ray task's `cause` that is one.
    """
    if received_signal():
        return received_signal()
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RunInterrupted):
            return e.signal_name
        if isinstance(e, KeyboardInterrupt):
            return str(e) if str(e) in ("SIGINT", "SIGTERM") else "SIGINT"
        status = getattr(e, "returncode", None)
        if isinstance(status, int) and not isinstance(status, bool) and status in _SIGNAL_STATUSES:
            return _SIGNAL_STATUSES[status]
        if getattr(e, "ename", None) == "KeyboardInterrupt":
            return "SIGINT"
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError: the task's own exception
        stack += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    return None


def as_interruption(error: BaseException, stage: str, **where) -> RunInterrupted | None:
    """`error` as a `RunInterrupted` at `stage` (an existing one is kept: it knows more), or None."""
    if isinstance(error, RunInterrupted):
        return error
    name = interruption(error)
    return None if name is None else RunInterrupted(name, stage, **where)


# ---------------------------------------------------------------------------------------------------
# One run per results folder


class ResultsFolderBusy(RuntimeError):
    """Another process holds the results folder's lock."""


@contextlib.contextmanager
def results_lock(results_dir, command: str):
    """Hold `<results_dir>/.lock` (an exclusive `flock`) while inside; the file says who holds it.

    The system drops the lock when its process ends, however it ends, so a lock left by a killed run
    never blocks the next one. The file itself stays (removing it would race with a starting run).

    Raises:
        ResultsFolderBusy: another process holds it; the message names the folder, the PID and the
            command holding it.
    """
    import fcntl

    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultsFolderBusy(
                f"results folder {folder} is in use by another run ({_lock_holder(path)}; lock file {path}); "
                "wait for it to end or stop it, or give this run another folder (-p results_dir=DIR, or "
                "--results for pattlite train)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            (
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "command": command,
                        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
                + "\n"
            ).encode(),
        )
        yield path
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(path: Path) -> str:
    for _ in range(20):  # the holder writes its PID right after taking the lock
        try:
            holder = json.loads(path.read_text())
            return f"PID {holder['pid']}: {holder['command']}, started {holder['started_utc']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "PID not recorded in the lock file"


# ---------------------------------------------------------------------------------------------------
# Notebooks


def notebook_backend(profile, name: str) -> str | None:
    """The Keras backend a notebook's kernel runs on: $KERAS_BACKEND when set (the user's choice),
    else TensorFlow for `TENSORFLOW_ONLY` notebooks, else the profile's `keras_backend` (None: Keras'
    default)."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if name in TENSORFLOW_ONLY:
        return "tensorflow" if profile.keras_backend else None
    return profile.keras_backend


class NotebookFailed(RuntimeError):
    pass


def _code_cells(nb_path: Path):
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _cell_name(index: int, cell) -> str:
    first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    return f"code cell {index} ({first_line[:80]!r})"


def _failing_cell(nb_path: Path) -> str:
    """Describe the first cell of an executed notebook that raised."""
    for index, cell in enumerate(_code_cells(nb_path), 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{_cell_name(index, cell)}: {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


def _running_cell(nb_path: Path) -> str | None:
    """Where a stopped notebook was, from the copy papermill saves as it goes: the last code cell that
    started (papermill may mark an interrupted cell completed; the gap between two cells is
    milliseconds), "the kernel's start" when none had, None when the copy cannot be read."""
    try:
        cells = _code_cells(nb_path)
    except Exception:  # a copy saved half-way: where is a detail, the interruption is recorded anyway
        return None
    started = [
        (index, cell)
        for index, cell in enumerate(cells, 1)
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return _cell_name(*started[-1]) if started else "the kernel's start"


def _quiet_event_loop() -> None:
    """After an interruption cut papermill's event loop short, its half-run tasks would each print a
    traceback ("Task exception was never retrieved") when collected at exit: the run's own message
    says what happened."""
    import asyncio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.get_event_loop().set_exception_handler(lambda loop, context: None)
    except RuntimeError:  # no event loop: nothing to quiet
        pass


def resolve_notebooks(only) -> list[str]:
    """The notebooks `--only` names (full name, number or the part after the number), in run order."""
    if not only:
        return list(NOTEBOOKS)
    wanted = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    resolved = []
    for w in wanted:
        match = [n for n in NOTEBOOKS if n == w or n.split("_", 1)[1] == w or n.startswith(w + "_")]
        if not match:
            raise ValueError(
                f"unknown notebook {w!r}; valid: {', '.join(NOTEBOOKS)} "
                "(full name, number or the part after the number)"
            )
        resolved += match
    return [n for n in NOTEBOOKS if n in resolved]


def run_notebooks(
    profile: str = "demo", only=None, parameters: dict | None = None, output_dir: Path | None = None, log=print
) -> list[tuple[str, float]]:
    """Execute the notebooks (all, or those named in `only`) for `profile`; return (name, seconds).

    Each notebook gets `profile` and the parameters it declares (`notebook_parameters`). The executed
    copies go to `output_dir`, default `<results_dir>/notebooks/` (`-p results_dir=` moves them too).

    Raises:
        NotebookFailed: a notebook raised (the message names it, the cell and the executed copy).
        RunInterrupted: SIGINT / SIGTERM (here or in the kernel), naming the notebook and cell.
        Either carries `timings`: the (name, seconds) of the notebooks done before it.
    """
    import papermill as pm

    from .profiles import PROFILES

    config.check_name("profile", profile, tuple(PROFILES))
    names = resolve_notebooks(only)
    params = check_parameters(dict(parameters or {}))
    check_parameter_table(names)
    output_dir = Path(output_dir or results_folder(profile, params) / "notebooks")
    output_dir.mkdir(parents=True, exist_ok=True)
    # TensorFlow's INFO lines (the oneDNN notice) would clutter every notebook; oneDNN itself stays on.
    # The kernels inherit this environment variable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if not PROFILES[profile].synthetic:
        from .studies import warn_if_no_accelerator

        with warnings.catch_warnings():  # printed once here, as a log line; each notebook warns too
            warnings.simplefilter("ignore")
            message = warn_if_no_accelerator(profile)
        if message:
            log(f"WARNING: {message}")
    timings = []
    total_start = time.time()
    for i, name in enumerate(names, 1):
        src = NOTEBOOKS_DIR / f"{name}.ipynb"
        dst = output_dir / f"{name}.ipynb"
        log(f"[{i}/{len(names)}] {name} (profile {profile}) ...")
        start = time.time()
        backend = notebook_backend(PROFILES[profile], name)
        previous = os.environ.get("KERAS_BACKEND")
        if backend:
            os.environ["KERAS_BACKEND"] = backend  # the kernel inherits it
        try:
            pm.execute_notebook(
                str(src),
                str(dst),
                parameters=notebook_parameters(name, profile, params),
                cwd=str(NOTEBOOKS_DIR),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
            )
        except BaseException as err:  # noqa: B036 - an interruption is told from a failure here
            stopped = as_interruption(
                err, "notebooks", notebook=name, cell=_running_cell(dst) if dst.exists() else None
            )
            if stopped is not None:
                _quiet_event_loop()
                stopped.timings = timings
                raise stopped from None
            if isinstance(err, pm.PapermillExecutionError):
                where = _failing_cell(dst) if dst.exists() else f"cell {err.exec_count}"
                failed = NotebookFailed(f"notebook {name} failed at {where}\n  executed copy: {dst}")
                failed.timings = timings
                raise failed from None
            raise
        finally:
            if previous is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = previous
        elapsed = time.time() - start
        timings.append((name, elapsed))
        log(f"[{i}/{len(names)}] {name} done in {elapsed:.1f} s")
    log(f"all {len(names)} notebooks done in {time.time() - total_start:.1f} s; executed notebooks in {output_dir}")
    if "08_report" in names:
        reports = _optional_path(params.get("reports_dir")) or config.reports_dir(profile)
        log(f"report: {reports / 'replication_report.md'} (and .html)")
    return timings


# ---------------------------------------------------------------------------------------------------
# The run record


def record_run(results_dir, entry: dict) -> Path:
    """Append one run (`./run_all.sh` or `pattlite grid run`: command, profile, start, seconds, the
    grid's and each notebook's time, status and, when it did not finish, why or where it stopped;
    machine, versions, commit) to `<results_dir>/run_record.json`. A resumed run appends another
    entry, so the record's total is the time the whole result set took."""
    from .files import write_json_atomic

    path = Path(results_dir) / RUN_RECORD
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs.append({**entry, "machine": {"cpu_count": os.cpu_count(), **_machine()}})
    write_json_atomic(path, {"runs": runs, "total_seconds": round(sum(r["seconds"] for r in runs), 1)})
    return path


def _machine() -> dict:
    """`report.provenance()` without its `keras_backend` (this process's, not the training's: the entry
    says which ran where). When this process has not imported Keras (the training ran in notebook
    kernels, or the run stopped before it), the same fields from package metadata, `nvidia-smi` and
    the CPU model instead: importing Keras for them would take seconds, and a run stopped by SIGTERM
    must be recorded within the grace its supervisor gives (`docker stop`: 10 s)."""
    import platform
    import subprocess

    from . import report

    if "keras" in sys.modules:
        machine = report.provenance()
        machine.pop("keras_backend")
        return machine
    commit = report._git("rev-parse", "HEAD")
    status = report._git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        gpus = [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        gpus = []
    return {
        "git_commit": commit or "unknown",
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        **{name: report._version(name) for name in ("keras", "tensorflow", "numpy", "pandas", "pattlite")},
        "device": ", ".join(gpus) if gpus else f"CPU: {report._cpu_model()}",
        "platform": f"{platform.system()} {platform.machine()}; {sys.implementation.name}",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }


def outcome_fields(failed: str | None, interrupted: RunInterrupted | None) -> dict:
    """The record's status fields: "finished", or "failed" (with the first line of the error) or
    "interrupted" (with `RunInterrupted.record`: signal, stage, experiment or notebook)."""
    if interrupted is not None:
        return {"status": "interrupted", "interrupted": interrupted.record()}
    if failed is not None:
        return {"status": "failed", "failed": failed}
    return {"status": "finished"}


def say_interrupted(command: str, stopped: RunInterrupted) -> None:
    print(
        f"{command}: interrupted {stopped.describe()}; the same command resumes it (finished experiments are kept)",
        file=sys.stderr,
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------
# ./run_all.sh


def main(argv=None) -> int:
    from . import grid
    from .console import data_warning_printer, quiet_backend_logs

    quiet_backend_logs()  # the kernels inherit the filtered stderr
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", default="demo", help="demo (default, synthetic data), cpu (real data on a CPU), paper (GPU) or ci"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated notebooks to run, e.g. 01_datasets,report or 02,08"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter (repeatable), e.g. -p rafdb_root=/data/raf; each notebook "
        "gets those its parameters cell declares",
    )
    parser.add_argument(
        "--executor",
        choices=grid.EXECUTORS,
        default=None,
        help="run the experiment grid first (pattlite grid run) with this executor; "
        "default: the notebooks train what they miss, one after another",
    )
    grid.add_run_options(parser)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    from .profiles import PROFILES

    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile!r}; valid profiles: {', '.join(PROFILES)}")
    # Every parameter and --only are checked here: before a kernel starts or Keras is imported.
    try:
        params = check_parameters(parse_parameters(args.parameter))
        resolve_notebooks(args.only)
    except ValueError as err:
        parser.error(str(err))
    profile = PROFILES[args.profile]
    # -p run_experiments=false assembles tables and figures from the result files there are: no grid.
    training = params.get("run_experiments", "true").strip().lower() in ("true", "1", "yes")
    executor = args.executor or ("local" if profile.train_first and training else None)
    users_backend = os.environ.get("KERAS_BACKEND")
    grid_backend = users_backend or profile.keras_backend or "tensorflow"
    results_dir = results_folder(args.profile, params)
    started = time.time()
    grid_seconds, timings, stopped, failed = None, [], None, None
    stage, at = "start", {}
    with handle_signals():
        try:
            with results_lock(results_dir, "run_all.sh " + " ".join(argv)):
                try:
                    if executor is not None:
                        stage = "grid"
                        # The grid trains in this process, on the profile's backend (Keras reads it at
                        # import); afterwards each notebook gets its own (`notebook_backend`).
                        os.environ["KERAS_BACKEND"] = grid_backend
                        try:
                            with warnings.catch_warnings():
                                warnings.showwarning = data_warning_printer("run_all.sh")
                                at = {"step": "planning the experiments"}
                                grid_plan = grid.plan(args.profile, params)
                                at = {}
                                report = grid.run_grid(
                                    grid_plan,
                                    executor,
                                    address=args.address,
                                    gpus_per_trial=args.gpus_per_trial,
                                    cpus_per_trial=args.cpus_per_trial,
                                    max_retries=args.max_retries,
                                )
                        finally:
                            if users_backend is None:
                                os.environ.pop("KERAS_BACKEND", None)
                        if report.failed:
                            raise NotebookFailed(
                                f"{len(report.failed)} experiment(s) of the grid failed (listed "
                                "above); the notebooks did not run"
                            )
                        grid_seconds = report.seconds
                    stage = "notebooks"
                    timings = run_notebooks(args.profile, args.only, params)
                except BaseException as err:  # noqa: B036 - recorded, then reported
                    timings = getattr(err, "timings", timings)  # the notebooks done before it
                    stopped = as_interruption(err, stage, **at)
                    if stopped is not None:
                        say_interrupted("run_all.sh", stopped)
                    elif not isinstance(err, Exception):
                        raise
                    else:
                        # Errors with a message for the user (a failed notebook or experiment, a bad value,
                        # a missing dataset, a full disk, a damaged cache) print it; anything else is a
                        # bug: its traceback too.
                        told = isinstance(err, (NotebookFailed, ValueError, OSError))
                        failed = (str(err) if told else f"{type(err).__name__}: {err}").splitlines()[0]
                        print(f"ERROR: {err}", file=sys.stderr)
                        if not told:
                            import traceback

                            traceback.print_exc()
                finally:
                    with deferred_signals():
                        path = record_run(
                            results_dir,
                            {
                                "command": "run_all.sh",
                                "profile": args.profile,
                                "argv": argv,
                                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                                "seconds": round(time.time() - started, 1),
                                "grid_seconds": grid_seconds,
                                "notebook_seconds": {name: round(seconds, 1) for name, seconds in timings},
                                "keras_backends": {
                                    "grid": grid_backend if executor is not None else None,
                                    **{name: notebook_backend(profile, name) or "default" for name, _ in timings},
                                },
                                **outcome_fields(failed, stopped),
                            },
                        )
                        print(f"run recorded in {path} ({time.time() - started:.0f} s)")
        except ResultsFolderBusy as err:
            print(f"run_all.sh: error: {err}", file=sys.stderr)
            return 1
    return 1 if failed else stopped.status if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
