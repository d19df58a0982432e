"""Run the notebooks in order with papermill: the engine behind ./run_all.sh.

Each notebook gets the profile (and any extra parameters) through its `parameters` cell, runs with
the notebooks folder as working directory and the kernel of the Python that runs this module, and is
written executed to results/<profile>/notebooks/. The first failure stops the run, naming the notebook
and the failing cell. Finished experiments are read back from result files, so a rerun resumes.
With `--executor local|ray` the experiment grid (`pattlite.grid`) runs first, and the notebooks then
only assemble tables and figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from . import config

NOTEBOOKS = (
    "01_datasets",          # Tables 1-3
    "02_ablation",          # Table 4
    "03_patch_grid",        # Table 5
    "04_patch_attention",   # Table 6, Figures 2-5
    "05_main_results",      # Tables 7-11, Figures 8-10
    "06_gradcam",           # Figures 6-7
    "07_audit",             # batch-composition audit
    "08_report",            # the replication report
)
NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"
# tf-keras-vis (Grad-CAM) runs on TensorFlow only, whatever backend a profile trains on.
TENSORFLOW_ONLY = ("06_gradcam",)


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


def _failing_cell(nb_path: Path) -> str:
    """Describe the first cell of an executed notebook that raised."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return (f"code cell {code_index} ({first_line[:80]!r}): "
                        f"{out.get('ename')}: {out.get('evalue')}")
    return "unknown cell"


def run_notebooks(profile: str = "demo", only=None, parameters: dict | None = None,
                  output_dir: Path | None = None, log=print) -> list[tuple[str, float]]:
    """Execute the notebooks (all, or those named in `only`) for `profile`; return (name, seconds)."""
    import papermill as pm

    from .profiles import PROFILES
    config.check_name("profile", profile, tuple(PROFILES))
    names = list(NOTEBOOKS)
    if only:
        wanted = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
        resolved = []
        for w in wanted:
            match = [n for n in NOTEBOOKS if n == w or n.split("_", 1)[1] == w or n.startswith(w + "_")]
            if not match:
                raise ValueError(f"unknown notebook {w!r}; valid: {', '.join(NOTEBOOKS)} "
                                 "(full name, number or the part after the number)")
            resolved += match
        names = [n for n in NOTEBOOKS if n in resolved]
    output_dir = Path(output_dir or config.results_dir(profile) / "notebooks")
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
    params = {"profile": profile, **(parameters or {})}
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
            pm.execute_notebook(str(src), str(dst), parameters=params, cwd=str(NOTEBOOKS_DIR),
                                kernel_name="python3", progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as err:
            where = _failing_cell(dst) if dst.exists() else f"cell {err.exec_count}"
            raise NotebookFailed(f"notebook {name} failed at {where}\n  executed copy: {dst}") from None
        finally:
            if previous is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = previous
        elapsed = time.time() - start
        timings.append((name, elapsed))
        log(f"[{i}/{len(names)}] {name} done in {elapsed:.1f} s")
    log(f"all {len(names)} notebooks done in {time.time() - total_start:.1f} s; "
        f"executed notebooks in {output_dir}")
    if "08_report" in names:
        reports = Path(params.get("reports_dir") or config.reports_dir(profile))
        log(f"report: {reports / 'replication_report.md'} (and .html)")
    return timings


RUN_RECORD = "run_record.json"


def record_run(results_dir, entry: dict) -> Path:
    """Append one run of `./run_all.sh` (profile, start, end, seconds, the grid's and each notebook's
    time, machine, versions, commit) to `<results_dir>/run_record.json`. A resumed run appends another
    entry, so the record's total is the time the whole result set took."""
    import json

    from .files import write_json_atomic
    from .report import provenance

    path = Path(results_dir) / RUN_RECORD
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    machine = {"cpu_count": os.cpu_count(), **provenance()}
    machine.pop("keras_backend")  # this process's, not the training's: the entry says which ran where
    runs.append({**entry, "machine": machine})
    write_json_atomic(path, {"runs": runs, "total_seconds": round(sum(r["seconds"] for r in runs), 1)})
    return path


def parse_parameters(items) -> dict:
    """`-p NAME=VALUE` items as {NAME: VALUE} (strings; the notebooks parse them)."""
    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--parameter expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key] = value
    return params


def main(argv=None) -> int:
    from . import grid
    from .console import data_warning_printer, quiet_backend_logs

    quiet_backend_logs()  # the kernels inherit the filtered stderr
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo",
                        help="demo (default, synthetic data), cpu (real data on a CPU), paper (GPU) or ci")
    parser.add_argument("--only", default=None,
                        help="comma-separated notebooks to run, e.g. 01_datasets,report or 02,08")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="extra notebook parameter (repeatable), e.g. -p rafdb_root=/data/raf")
    parser.add_argument("--executor", choices=grid.EXECUTORS, default=None,
                        help="run the experiment grid first (pattlite grid run) with this executor; "
                             "default: the notebooks train what they miss, one after another")
    grid.add_run_options(parser)
    args = parser.parse_args(argv)
    try:
        params = parse_parameters(args.parameter)
    except ValueError as err:
        parser.error(str(err))
    from .profiles import PROFILES

    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile!r}; valid profiles: {', '.join(PROFILES)}")
    profile = PROFILES[args.profile]
    # -p run_experiments=false assembles tables and figures from the result files there are: no grid.
    # (Parsed here, not with studies.parse_bool: importing the studies would import Keras before the
    # profile's backend is set below.)
    training = str(params.get("run_experiments", True)).strip().lower() not in ("false", "0", "no")
    executor = args.executor or ("local" if profile.train_first and training else None)
    users_backend = os.environ.get("KERAS_BACKEND")
    grid_backend = users_backend or profile.keras_backend or "tensorflow"
    # A stopped run (Ctrl-C, or `kill`'s SIGTERM) is recorded too: its trained experiments are kept
    # and count towards the time the result set took.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    grid_seconds, timings, interrupted, failed = None, [], None, None
    try:
        if executor is not None:
            interrupted = "during the grid"
            # The grid trains in this process, on the profile's backend (Keras reads it at import);
            # afterwards each notebook gets its own (`notebook_backend`), so the variable is put back.
            os.environ["KERAS_BACKEND"] = grid_backend
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = data_warning_printer("run_all.sh")
                    report = grid.run_grid(grid.plan(args.profile, params), executor, address=args.address,
                                           gpus_per_trial=args.gpus_per_trial,
                                           cpus_per_trial=args.cpus_per_trial, max_retries=args.max_retries)
            finally:
                if users_backend is None:
                    os.environ.pop("KERAS_BACKEND", None)
            if report.failed:
                raise NotebookFailed(f"{len(report.failed)} experiment(s) of the grid failed (listed above); "
                                     "the notebooks did not run")
            grid_seconds = report.seconds
        interrupted = "during the notebooks"
        timings = run_notebooks(args.profile, args.only, params)
        interrupted = None
    except (NotebookFailed, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        failed = str(err).splitlines()[0]
    except KeyboardInterrupt:
        print(f"run_all.sh: interrupted {interrupted}; the same command resumes it (finished experiments "
              "are kept)", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    results_dir = Path(params.get("results_dir") or config.results_dir(args.profile))
    path = record_run(results_dir, {
        "profile": args.profile, "argv": list(sys.argv[1:] if argv is None else argv),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1), "grid_seconds": grid_seconds,
        "notebook_seconds": {name: round(seconds, 1) for name, seconds in timings},
        "keras_backends": {"grid": grid_backend if executor is not None else None,
                           **{name: notebook_backend(profile, name) or "default" for name, _ in timings}},
        **({"failed": failed} if failed else {"interrupted": interrupted} if interrupted else {})})
    print(f"run recorded in {path} ({time.time() - started:.0f} s)")
    return 1 if failed else 130 if interrupted else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run the way Ctrl-C does, so it is recorded


if __name__ == "__main__":
    sys.exit(main())
