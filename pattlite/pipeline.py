"""Run the notebooks in order with papermill: the engine behind ./run_all.sh.

Each notebook gets the profile and the `-p NAME=VALUE` parameters its `parameters` cell declares
(`PARAMETERS`: every parameter, what a value must be and which notebooks take it; all are checked
here, before anything heavy is imported or any kernel starts). It runs with the notebooks folder as
working directory and the kernel of the Python that runs this module, and is written executed to
<results_dir>/notebooks/. The first failure stops the run, naming the notebook and the failing cell.
Finished experiments are read back from result files, so a rerun resumes.
With `--executor local|ray` the experiment grid (`pattlite.grid`) runs first, and the notebooks then
only assemble tables and figures.

The notebooks and their parameters are `pattlite.parameters`; the results-folder lock, the interruption handling
and the run record, shared with `pattlite grid run` and `pattlite train`, are `pattlite.runs`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from pattlite import config, grid
from pattlite.console import data_warning_printer, quiet_backend_logs

# The parameter table and the run-level rules moved to `pattlite.parameters` and `pattlite.runs`; their names stay
# importable from here.
from pattlite.parameters import (  # noqa: F401
    NOTEBOOKS,
    NOTEBOOKS_DIR,
    PARAMETERS,
    STUDY_NOTEBOOKS,
    ParameterError,
    _optional_path,
    check_parameter_table,
    check_parameters,
    notebook_parameters,
    parameter_cells,
    parse_parameters,
    results_folder,
)
from pattlite.profiles import PROFILES
from pattlite.runs import (  # noqa: F401
    RUN_RECORD,
    ResultsFolderBusy,
    RunInterrupted,
    _on_signal,
    as_interruption,
    deferred_signals,
    handle_signals,
    interruption,
    outcome_fields,
    received_signal,
    record_run,
    results_lock,
    say_interrupted,
)

# tf-keras-vis (Grad-CAM) runs on TensorFlow only, whatever backend a profile trains on.
TENSORFLOW_ONLY = ("06_gradcam",)


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


def check_notebook_backends(names) -> None:
    """Refuse, before any training, a run whose notebooks include a `TENSORFLOW_ONLY` one while the user
    chose another backend (`$KERAS_BACKEND`, which `notebook_backend` obeys): else it would fail only
    after the grid, hours later."""
    chosen = os.environ.get("KERAS_BACKEND")
    needing = [name for name in names if name in TENSORFLOW_ONLY]
    if chosen and chosen != "tensorflow" and needing:
        raise ValueError(
            f"KERAS_BACKEND={chosen} is set, but notebook {', '.join(needing)} needs TensorFlow (tf-keras-vis). "
            "Unset KERAS_BACKEND (./run_all.sh then trains on the profile's backend and runs each notebook "
            "on the one it needs), set KERAS_BACKEND=tensorflow, or leave the notebook out with --only"
        )


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
        from pattlite.studies import warn_if_no_accelerator  # heavy: only for a real-data profile

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
# ./run_all.sh


def main(argv=None) -> int:
    quiet_backend_logs()  # the kernels inherit the filtered stderr
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        default="demo",
        help=f"one of {', '.join(PROFILES)}; default demo (synthetic data); see the README for each",
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
    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile!r}; valid profiles: {', '.join(PROFILES)}")
    # Every parameter and --only are checked here: before a kernel starts or Keras is imported.
    try:
        params = check_parameters(parse_parameters(args.parameter))
        check_notebook_backends(resolve_notebooks(args.only))
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
