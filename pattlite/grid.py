"""The experiment grid: every experiment the notebooks of a run need, planned once, run in parallel.

The notebooks train what they miss one experiment after another. The grid runs the same experiments
before them, spread over every GPU (or CPU share) of a machine or a cluster; the notebooks then find
every result file and only assemble tables and figures.

- `plan(profile, parameters)` lists the experiments of `pattlite.studies.notebook_plan` for the
  notebooks' parameters (the `-p NAME=VALUE` of ./run_all.sh): the one plan the notebooks use.
- `run_grid(grid_plan, executor)` runs the unfinished ones: `"local"` one after another in this process
  (`pattlite.experiments.run_experiment`; a trial on another Keras backend, `trial_backend`, in a child
  process, `run_on_backend`), `"ray"` (`pattlite.grid_ray`) as Ray tasks that each reserve a
  GPU/CPU share. A Ray worker trains in a temporary folder and returns the result record, the trained weights and the
  per-epoch logs; the driver writes them into the results folder atomically
  (`pattlite.experiments.store_experiment`), so no shared filesystem is needed and no half result is
  ever written. A task whose worker dies (killed, out of memory) is retried `max_retries` times; an
  error raised by the experiment itself is not retried. Either way the failure is reported with its
  error and the other experiments go on.

    pattlite grid plan --profile ci
    pattlite grid run --profile paper --executor ray --gpus-per-trial 1

See docs/grid.md for Kaggle's two T4s, a multi-GPU machine and a Ray cluster (Slurm included).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from pattlite import config
from pattlite.grid_ray import (
    Progress,
    _duration,
    _first_lines,
    _run_ray,
    compute_on_worker,
    import_ray,
    remove_stale_temporary,
    resumed_note,
    training_seconds,
    trial_backend,
)

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2  # retries of a task whose worker died (not of an experiment's own error)


@dataclasses.dataclass(frozen=True)
class PlannedExperiment:
    """One experiment of the grid: which studies use it, and whether its result file exists."""

    experiment: object  # pattlite.experiments.Experiment
    studies: tuple
    done: bool

    def row(self) -> dict:
        exp = self.experiment
        return {
            "key": exp.key(),
            "studies": ",".join(self.studies),
            "dataset": exp.dataset,
            "variant": exp.variant,
            "options": " ".join(f"{k}={v}" for k, v in sorted(exp.model_options.items())),
            "seed": exp.seed,
            "fold": exp.fold,
            "done": self.done,
        }


@dataclasses.dataclass(frozen=True)
class GridPlan:
    profile: str
    results_dir: Path
    experiments: tuple  # of PlannedExperiment, in the notebooks' order, Table 5's own points last

    @property
    def pending(self) -> list:
        return [p.experiment for p in self.experiments if not p.done]


@dataclasses.dataclass
class GridReport:
    """What `run_grid` did: keys trained now, keys that were already done, {key: error} of failures."""

    executor: str
    trained: list
    already_done: list
    failed: dict
    seconds: float

    def summary(self) -> dict:
        return {
            "executor": self.executor,
            "trained": len(self.trained),
            "already_done": len(self.already_done),
            "failed": len(self.failed),
            "failures": self.failed,
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------------------------------------------
# Planning: the notebooks' parameters -> their experiments


def notebook_parameters() -> dict:
    """{name: default} of the notebooks' `parameters` cells (all notebooks together)."""
    from pattlite.parameters import parameter_cells

    params = {}
    for declared in parameter_cells().values():
        params.update(declared)
    return params


def notebook_context(profile: str, parameters: dict | None = None):
    """The `NotebookContext` the notebooks build from these parameters (their set-up cell), and the
    Grad-CAM notebook's (dataset, variant).

    Raises:
        ValueError: a parameter no notebook takes (the message lists the valid ones), or a bad value
            (`pattlite.parameters.check_parameters`, before anything heavy is imported).
    """
    from pattlite.parameters import check_parameters

    params = check_parameters(dict(parameters or {}))
    from pattlite import studies

    known = notebook_parameters()
    known.pop("profile")  # --profile, not a -p parameter
    values = {name: params.get(name, default) for name, default in known.items()}
    roots = {name: values.pop(f"{name}_root", None) for name in studies.BENCHMARKS}
    gradcam = (values.pop("gradcam_dataset"), values.pop("gradcam_variant"))
    for name in [n for n in values if n.startswith("gradcam_")] + ["include_faces"]:
        values.pop(name)  # figure sizes and what the report links: they decide no experiment
    values["run_experiments"] = False  # planning trains nothing (and prints no CPU warning)
    return studies.notebook_context(profile, dataset_roots=roots, **values), gradcam


def plan(profile: str, parameters: dict | None = None) -> GridPlan:
    """Every experiment the notebooks of a run with these parameters train or load, each once, in the
    notebooks' order except that the points only Table 5 uses come last, with the studies that use it
    and whether its result file exists."""
    from pattlite import studies
    from pattlite.experiments import adopt_committed, result_path
    from pattlite.files import remove_stale_temporaries

    ctx, (gradcam_dataset, gradcam_variant) = notebook_context(profile, parameters)
    for folder in (Path(ctx.results_dir), Path(ctx.results_dir) / "experiments"):
        if folder.is_dir():  # partial `.tmp-*` files of killed writes
            remove_stale_temporaries(folder)
    by_key, users = {}, {}
    for study, exps in studies.notebook_plan(ctx, gradcam_dataset, gradcam_variant, gradcam=True).items():
        for exp in exps:
            by_key.setdefault(exp.key(), exp)
            users.setdefault(exp.key(), []).append(study)
    # Results a published run committed (docs/results/<profile>/results/) are this run's too: keys hold
    # what the data are, so a fresh clone resumes the published run without retraining it.
    planned = [
        PlannedExperiment(
            exp,
            tuple(dict.fromkeys(users[key])),
            adopt_committed(exp, ctx.results_dir) or result_path(exp, ctx.results_dir).is_file(),
        )
        for key, exp in by_key.items()
    ]
    planned.sort(key=lambda p: _priority(p, ctx.seeds[0]))
    return GridPlan(ctx.profile.name, Path(ctx.results_dir), tuple(planned))


def _priority(planned: PlannedExperiment, first_seed: int) -> int:
    """The order a grid trains in: the headline heads (the audit's published, no-mixing and corrected
    models) at the first seed, then at the other seeds with the uncapped reference runs (`reference`
    study), then the ablations and the rest; Table 5's own
    points last: each trains a large convolution (2-9M parameters), the longest trainings on a CPU. An
    interrupted run then has the numbers that matter most."""
    if planned.studies == ("table5",):
        return 3
    if planned.studies == ("reference",):  # the uncapped runs that measure what a stage-2 cap costs
        return 1
    if {"main", "audit"} & set(planned.studies):
        return 0 if planned.experiment.seed == first_seed else 1
    return 2


def format_plan(grid_plan: GridPlan) -> str:
    import pandas as pd

    df = pd.DataFrame([p.row() for p in grid_plan.experiments])
    if df.empty:
        return "(no experiments)"
    from pattlite.results import fold_label

    df["fold"] = df["fold"].map(fold_label)
    df["done"] = df["done"].map({True: "done", False: "to run"})
    return df.to_string(index=False)


# ---------------------------------------------------------------------------------------------------
# Executors


def run_grid(
    grid_plan: GridPlan,
    executor: str = "local",
    address: str | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    log=print,
    compute=None,
) -> GridReport:
    """Runs the unfinished experiments of a plan.

    Args:
        grid_plan: from `plan`.
        executor: "local" (one after another in this process; a trial on another backend in a child
            process) or "ray".
        address: Ray cluster to join ("auto", "HOST:6379", "ray://HOST:10001"); default: a Ray
            runtime already started in this process, else a new local one using this machine.
        gpus_per_trial: GPUs each Ray task reserves (fractions share a GPU); default 1 when the cluster
            has GPUs, else 0.
        cpus_per_trial: CPUs each Ray task reserves (also its TensorFlow thread count).
        max_retries: Ray retries of a task whose worker died; an experiment's own error is not retried.
        log: where progress lines go.
        compute: the function a Ray task runs (default `compute_on_worker`); it takes an Experiment.

    Returns:
        A `GridReport`; failures are in it, not raised.
    """
    config.check_name("executor", executor, EXECUTORS)
    start = time.time()
    already = [p.experiment.key() for p in grid_plan.experiments if p.done]
    pending = grid_plan.pending
    log(
        f"[grid] profile {grid_plan.profile}: {len(grid_plan.experiments)} experiments, {len(already)} "
        f"already done, {len(pending)} to run ({executor} executor); results in {grid_plan.results_dir}"
    )
    if executor == "ray":
        ray = import_ray()  # before anything else: a missing Ray is a clear message, not a traceback
        remove_stale_temporary(log)  # of this machine's killed workers; each task cleans its own machine
    elif address is not None or gpus_per_trial is not None:
        log("[grid] note: --address and --gpus-per-trial apply to --executor ray only; ignored")
    if not pending:
        trained, failed = [], {}
    elif executor == "ray":
        trained, failed = _run_ray(
            ray,
            pending,
            grid_plan.results_dir,
            address,
            gpus_per_trial,
            cpus_per_trial,
            max_retries,
            log,
            compute or compute_on_worker,
        )
    else:
        trained, failed = _run_local(pending, grid_plan.results_dir, log)
    report = GridReport(executor, trained, already, failed, time.time() - start)
    log(
        f"[grid] finished in {_duration(report.seconds)}: {len(trained)} trained, {len(already)} already "
        f"done, {len(failed)} failed"
    )
    for key, error in failed.items():
        log(f"[grid] FAILED {key}: {error}")
    return report


def _run_local(pending, results_dir, log):
    from pattlite.experiments import run_experiment
    from pattlite.runs import RunInterrupted, as_interruption, received_signal

    progress = Progress(len(pending), log, pending)
    trained, failed = [], {}
    try:
        for exp in pending:
            progress.running = 1
            progress.line()
            t0 = time.time()
            try:
                backend = trial_backend(exp)
                if backend is None:
                    result = run_experiment(exp, results_dir=results_dir, progress=False)
                else:
                    run_on_backend(exp, results_dir, backend)
                    result = _stored_result(exp, results_dir)
            except BaseException as error:  # noqa: B036 - an interruption stops the grid; a failure is reported
                stopped = as_interruption(error, "grid", experiment=exp.label(), key=exp.key())
                if stopped is not None:
                    raise stopped from error
                if not isinstance(error, Exception):
                    raise
                failed[exp.key()] = f"{exp.label()}: {type(error).__name__}: {_first_lines(error)}"
                progress.fail(exp)
                log(f"[grid] failed: {failed[exp.key()]}")
            else:
                trained.append(exp.key())
                seconds, training = time.time() - t0, training_seconds(result)
                progress.finish(exp, seconds, training)
                log(f"[grid] done: {exp.label()} ({seconds:.1f} s{resumed_note(seconds, training)})")
            progress.running = 0
            if received_signal():  # a signal whose KeyboardInterrupt something swallowed: stop all the same
                raise RunInterrupted(received_signal(), "grid", experiment=exp.label(), key=exp.key())
        if pending:
            progress.line()
    except KeyboardInterrupt as error:  # between two experiments (a progress line): none was cut short
        stopped = as_interruption(
            error, "grid", step=f"between experiments, {progress.done + progress.failed} of {len(pending)} run"
        )
        raise stopped from (None if stopped is error else error)
    return trained, failed


def _stored_result(exp, results_dir):
    """The result file a child process wrote for `exp` (None where there is none: the time-left
    estimate then counts this run's seconds only)."""
    from pattlite.experiments import result_path
    from pattlite.results import ExperimentResult

    path = result_path(exp, results_dir)
    return ExperimentResult.read(path) if path.is_file() else None


def run_on_backend(exp, results_dir, backend: str) -> None:
    """Runs one experiment in a child Python process on another Keras backend (`trial_backend`: e.g. the
    full image model on TensorFlow while the grid's heads train on JAX); its result file and checkpoints
    go where an in-process run puts them, so a stopped child resumes in the next run.

    Raises:
        RuntimeError: the child failed (its traceback went to stderr).
    """
    env = dict(os.environ, KERAS_BACKEND=backend)
    code = "from pattlite.grid import _run_pickled_experiment; _run_pickled_experiment()"
    child = subprocess.run([sys.executable, "-c", code, str(results_dir)], input=pickle.dumps(exp), env=env)
    if child.returncode != 0:
        raise RuntimeError(f"the {backend} process of {exp.label()} exited with status {child.returncode}")


def _run_pickled_experiment() -> None:
    """`run_on_backend`'s child: the pickled experiment on stdin, the results folder as argv[1]."""
    from pattlite.console import quiet_backend_logs

    quiet_backend_logs()
    exp = pickle.loads(sys.stdin.buffer.read())
    from pattlite.experiments import run_experiment

    run_experiment(exp, results_dir=sys.argv[1], progress=False)


def add_run_options(parser) -> None:
    """The options of `pattlite grid run` that ./run_all.sh takes too."""
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join, e.g. auto or HEAD_IP:6379 (default: start a Ray runtime on this machine)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs each Ray trial reserves (0.5: two trials share a GPU); default 1 when the cluster has GPUs, else 0",
    )
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="CPUs each Ray trial reserves, also its TensorFlow thread count (default 1)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries of a Ray trial whose worker died (default {DEFAULT_MAX_RETRIES}); an "
        "experiment's own error is reported, not retried",
    )


def add_parser(subparsers) -> None:
    """`pattlite grid plan|run` (see the module docstring)."""
    from pattlite.profiles import PROFILES

    grid_parser = subparsers.add_parser(
        "grid",
        help="plan or run every experiment the notebooks need (locally or on Ray)",
        description="The experiment grid: the experiments of the notebooks for a profile and notebook "
        "parameters, run one after another or as Ray tasks over every GPU of a machine or cluster.",
    )
    actions = grid_parser.add_subparsers(dest="grid_command", required=True, metavar="{plan,run}")
    for name, help_text in (
        ("plan", "list every experiment of the notebooks and whether it is done"),
        ("run", "run the experiments that are not done yet"),
    ):
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--profile", required=True, help=", ".join(PROFILES))
        p.add_argument(
            "-p",
            "--parameter",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="notebook parameter as for ./run_all.sh (repeatable), e.g. -p seeds=0,1 -p datasets=rafdb",
        )
        if name == "run":
            p.add_argument(
                "--executor", choices=EXECUTORS, default="local", help="local (default: one after another here) or ray"
            )
            add_run_options(p)
        p.set_defaults(handler=cmd_grid)


def cmd_grid(args) -> int:
    """`pattlite grid plan|run`. `run` holds the results folder's lock (`runs.results_lock`) and
    appends to its run record, as ./run_all.sh does; SIGINT / SIGTERM end it with status 130 / 143,
    recorded as interrupted with the experiment it stopped at."""
    from pattlite import parameters, runs
    from pattlite.profiles import PROFILES

    config.check_name("profile", args.profile, tuple(PROFILES))
    params = parameters.check_parameters(parameters.parse_parameters(args.parameter))  # before any heavy import
    if args.grid_command == "plan":
        grid_plan = plan(args.profile, params)
        print(format_plan(grid_plan))
        done = sum(p.done for p in grid_plan.experiments)
        print(
            f"{len(grid_plan.experiments)} experiments: {done} done, {len(grid_plan.experiments) - done} to "
            f"run; results folder {grid_plan.results_dir}"
        )
        print(
            json.dumps(
                {
                    "profile": grid_plan.profile,
                    "results_dir": str(grid_plan.results_dir),
                    "experiments": [p.row() for p in grid_plan.experiments],
                }
            )
        )
        return 0
    if args.executor == "ray":
        import_ray()  # says how to install Ray before the plan is made
    argv = [
        "grid",
        "run",
        "--profile",
        args.profile,
        "--executor",
        args.executor,
        *[a for item in args.parameter for a in ("-p", item)],
    ]
    results_dir = parameters.results_folder(args.profile, params)
    started = time.time()
    report, stopped, failed, at = None, None, None, {"step": "planning the experiments"}
    with runs.handle_signals(), runs.results_lock(results_dir, "pattlite " + " ".join(argv)):
        try:
            grid_plan = plan(args.profile, params)
            at = {}
            report = run_grid(
                grid_plan,
                args.executor,
                address=args.address,
                gpus_per_trial=args.gpus_per_trial,
                cpus_per_trial=args.cpus_per_trial,
                max_retries=args.max_retries,
            )
            if report.failed:
                failed = f"{len(report.failed)} experiment(s) of the grid failed"
        except BaseException as error:  # noqa: B036 - recorded, then reported
            stopped = runs.as_interruption(error, "grid", **at)
            if stopped is None:
                failed = f"{type(error).__name__}: {error}".splitlines()[0]
                raise
            runs.say_interrupted("pattlite grid run", stopped)
        finally:
            with runs.deferred_signals():
                path = runs.record_run(
                    results_dir,
                    {
                        "command": "pattlite grid run",
                        "profile": args.profile,
                        "argv": argv,
                        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                        "seconds": round(time.time() - started, 1),
                        "grid_seconds": round(report.seconds, 1) if report else None,
                        "notebook_seconds": {},
                        "keras_backends": {"grid": _keras_backend()},
                        "executor": args.executor,
                        **({"grid": report.summary()} if report else {}),
                        **runs.outcome_fields(failed, stopped),
                    },
                )
                print(f"run recorded in {path}", file=sys.stderr if stopped or failed else sys.stdout)
    if stopped is not None:
        print(json.dumps({"interrupted": stopped.record()}))
        return stopped.status
    print(json.dumps(report.summary()))
    return 1 if report.failed else 0


def _keras_backend() -> str | None:
    """The backend Keras trained on in this process (None: Keras was not imported)."""
    from pattlite import backends

    return backends.name() if "keras" in sys.modules else None
