"""The experiment grid: every experiment the notebooks of a run need, planned once, run in parallel.

The notebooks train what they miss one experiment after another. The grid runs the same experiments
before them, spread over every GPU (or CPU share) of a machine or a cluster; the notebooks then find
every result file and only assemble tables and figures.

- `plan(profile, parameters)` lists the experiments of `pattlite.studies.notebook_plan` for the
  notebooks' parameters (the `-p NAME=VALUE` of ./run_all.sh): the one plan the notebooks use.
- `run_grid(grid_plan, executor)` runs the unfinished ones: `"local"` one after another in this process
  (`pattlite.experiments.run_experiment`), `"ray"` as Ray tasks that each reserve a GPU/CPU share. A Ray
  worker trains in a temporary folder and returns the result record, the trained weights and the
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

import collections
import dataclasses
import functools
import json
import math
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path

from pattlite import config
from pattlite.files import physical_memory, pid_alive, write_atomic

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2  # retries of a task whose worker died (not of an experiment's own error)
PROGRESS_EVERY_S = 60.0  # a progress line at least this often while tasks run
RAY_INSTALL_HINT = "pip install -e .[ray]"
# Environment variables a Ray worker gets from the driver: dataset roots, weights, cache, backend.
FORWARDED_ENV_PREFIXES = ("PATTLITE_", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")


class RayNotInstalled(ValueError):
    """--executor ray without the `ray` package: a usage error here (the message says how to install it)."""


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
    points last: each trains a large convolution (2-9M parameters), minutes apiece on a CPU (570 s for
    one point of the cpu profile). An interrupted run then has the numbers that matter most."""
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
    df["fold"] = df["fold"].map(lambda f: "" if f is None or f != f else str(int(f)))
    df["done"] = df["done"].map({True: "done", False: "to run"})
    return df.to_string(index=False)


# ---------------------------------------------------------------------------------------------------
# Progress


def size_class(exp) -> tuple:
    """Experiments of one class take about the same time: same dataset, training-set limit and stage 1
    (None for what an object does not say)."""
    return tuple(getattr(exp, name, None) for name in ("dataset", "train_limit", "stage1"))


class Progress:
    """done / running / failed / left, and the time left: with the experiments known, the sum over those
    left of this run's mean time for their `size_class` (a CK+ fold and a full-size FERPlus training
    differ 30-fold), else of its mean time per experiment."""

    def __init__(self, total: int, log=print, experiments=()):
        self.total, self.log = total, log
        self.done = self.failed = self.running = 0
        self.seconds: list[float] = []
        self.classes = {exp.key(): size_class(exp) for exp in experiments}
        self.left = set(self.classes)
        self.by_class: dict[tuple, list[float]] = {}
        self.start = self.last_line = time.time()

    def finish(self, exp, seconds: float) -> None:
        self.done += 1
        self.seconds.append(seconds)
        self.by_class.setdefault(size_class(exp), []).append(seconds)
        self.left.discard(exp.key())

    def fail(self, exp) -> None:
        self.failed += 1
        self.left.discard(exp.key())

    def eta(self, parallel: int) -> str:
        left = self.total - self.done - self.failed
        if left == 0:
            return "0 s left"
        if not self.seconds:
            return "time left: estimated after the first experiment"
        mean = sum(self.seconds) / len(self.seconds)
        parallel = max(parallel, 1)
        if self.classes:
            means = {c: sum(t) / len(t) for c, t in self.by_class.items()}
            seconds = sum(means.get(self.classes[key], mean) for key in self.left) / parallel
            return f"about {_duration(seconds)} left (this run's mean time per kind of experiment, {parallel} at once)"
        waves = math.ceil(left / parallel)
        return f"about {_duration(waves * mean)} left ({_duration(mean)} per experiment, {parallel} at once)"

    def line(self, parallel: int = 1) -> None:
        left = self.total - self.done - self.failed - self.running
        self.log(
            f"[grid] {self.done}/{self.total} done, {self.running} running, {self.failed} failed, "
            f"{left} left; {self.eta(parallel)}"
        )
        self.last_line = time.time()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return "\n".join(lines[-n:]) if lines else "(no message)"


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
        executor: "local" (one after another in this process) or "ray".
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
                run_experiment(exp, results_dir=results_dir, progress=False)
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
                progress.finish(exp, time.time() - t0)
                log(f"[grid] done: {exp.label()} ({time.time() - t0:.1f} s)")
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


def import_ray():
    """The `ray` module, or `RayNotInstalled` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalled(
            f"--executor ray needs Ray, which is not installed in this environment "
            f"({sys.executable}); install the extra: {RAY_INSTALL_HINT}  (or "
            "pip install 'ray>=2.40,<3'), or use --executor local"
        ) from None
    return ray


def worker_env(cpus_per_trial: float, gpus_per_trial: float) -> dict:
    """Environment variables of a Ray task: the driver's pattlite/Keras settings, thread counts that
    match the task's CPU share so that trials sharing a machine do not oversubscribe its cores, and
    PYTHONPATH led by the folder holding the installed `pattlite` package.

    Why PYTHONPATH: Ray puts the driver's current folder first on its workers' `sys.path`. Started from
    the folder that holds a clone named `pattlite`, a worker would import that clone folder (which has
    no `__init__.py`) as a namespace package, and `pattlite.data` as the clone's `data/` folder. A
    regular package anywhere on `sys.path` wins over a namespace one, so naming the install's folder
    makes every worker import the package the driver imports (on other nodes: when installed at the
    same path, as the dataset paths must be too).
    """
    import pattlite

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    package_parent = str(Path(pattlite.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    )
    threads = str(max(1, int(cpus_per_trial)))
    env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads, OMP_NUM_THREADS=threads)
    # JAX's CPU thread pool too (XLA_FLAGS; the driver's own flags kept): at batch 8 one thread trains a
    # head nearly as fast as two, so two one-CPU trials share 2 cores (`pattlite bench --parts parallel`).
    xla = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))
    ]
    if threads == "1":
        xla.append("--xla_cpu_multi_thread_eigen=false")
    env["XLA_FLAGS"] = " ".join(xla + [f"intra_op_parallelism_threads={threads}"])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if 0 < gpus_per_trial < 1:
        # Several trials on one GPU: each takes GPU memory as it needs it, not all of it up front.
        env.update(TF_FORCE_GPU_ALLOW_GROWTH="true", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    return env


CHECKPOINTS_ENV_VAR = "PATTLITE_GRID_CHECKPOINTS"  # set for Ray workers on the driver's machine


def ray_task(
    ray, cpus_per_trial: float, gpus_per_trial: float, max_retries: int, memory: int | None = None, checkpoint_root=None
):
    """The Ray remote function of one trial: its CPU/GPU share, the memory it reserves (bytes; None:
    none), retries of a dead worker (not of the experiment's own error) and environment (`worker_env`).
    `checkpoint_root`: a folder the workers share with the driver (a Ray runtime on the driver's
    machine), where each trial keeps its training checkpoints (`<root>/<key>/`), so that a trial
    stopped with the run resumes where it was in the next run."""
    env = worker_env(cpus_per_trial, gpus_per_trial)
    if checkpoint_root is not None:
        env[CHECKPOINTS_ENV_VAR] = str(checkpoint_root)
    return ray.remote(_ray_task).options(
        num_cpus=cpus_per_trial,
        num_gpus=gpus_per_trial,
        max_retries=max_retries,
        retry_exceptions=False,
        runtime_env={"env_vars": env},
        **({} if memory is None else {"memory": int(memory)}),
    )


def _ray_task(compute, experiment_pickle: bytes) -> dict:
    """What a Ray task runs. The experiment travels pickled, and is unpickled only here: unpickling
    imports TensorFlow, whose start-up lines must meet the stderr filter first."""
    from pattlite.console import quiet_backend_logs

    quiet_backend_logs()
    return compute(pickle.loads(experiment_pickle))


TEMP_PREFIX = "pattlite-grid-"  # + the worker's PID + "-": a folder whose process is gone is stale


def remove_stale_temporary(log=None) -> list:
    """Removes this user's `pattlite-grid-<pid>-*` folders in the temporary folder whose process is no
    longer alive (a worker killed before it could clean up: SIGKILL, out of memory, a lost node's
    restart), and the `pattlite-grid-*` folders of versions that did not put the PID in the name.
    Returns the removed paths; `log` (when given) gets one line saying so."""
    import shutil

    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        pid = path.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed and log is not None:
        log(
            f"[grid] removed {len(removed)} temporary folder(s) left by killed workers: "
            f"{', '.join(str(p) for p in removed[:3])}{', ...' if len(removed) > 3 else ''}"
        )
    return removed


def compute_on_worker(exp) -> dict:
    """A Ray task's work: train and evaluate in a temporary folder (its training checkpoints under
    `$PATTLITE_GRID_CHECKPOINTS` when the driver set it, see `ray_task`); return what the driver stores.

    The folder is removed on every way out of the task that runs Python (an error, a cancelled task's
    KeyboardInterrupt); one left by a killed worker is removed by the next task on that machine
    (`remove_stale_temporary`)."""
    from pattlite.experiments import compute_experiment

    remove_stale_temporary(log=print)
    start = time.time()
    root = os.environ.get(CHECKPOINTS_ENV_VAR)
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        log_dir = Path(tmp) / "logs"
        result, weights = compute_experiment(
            exp, progress=False, log_dir=log_dir, checkpoint_dir=None if root is None else Path(root) / exp.key()
        )
        logs = {str(p.relative_to(log_dir)): p.read_bytes() for p in sorted(log_dir.rglob("*")) if p.is_file()}
    return {
        "result": result,
        "weights": weights,
        "logs": logs,
        "host": socket.gethostname(),
        "seconds": time.time() - start,
    }


def store_returned(exp, returned: dict, results_dir) -> Path:
    """Writes a Ray task's return into the results folder: logs, then weights and result (atomically)."""
    from pattlite.checkpoints import TrainingCheckpoint
    from pattlite.experiments import checkpoint_path, logs_path, store_experiment

    log_dir = logs_path(exp, results_dir)
    for name, payload in returned["logs"].items():
        write_atomic(log_dir / name, payload)
    stored = store_experiment(exp, returned["result"], returned["weights"], results_dir)
    TrainingCheckpoint(checkpoint_path(exp, results_dir)).remove()  # its worker's, if it kept any
    return stored


def _trial_slots(ray, cpus: float, gpus: float) -> int:
    """How many trials the cluster runs at once with this share (for the progress line)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0) // cpus) if cpus > 0 else 10**6
    if gpus > 0:
        slots = min(slots, int(total.get("GPU", 0) // gpus))
    return max(slots, 0)


def _check_feasible(ray, cpus: float, gpus: float) -> None:
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes) or "no node"
        raise ValueError(
            f"no node of the Ray cluster has {cpus:g} CPU and {gpus:g} GPU for one trial "
            f"(nodes: {have}); lower --cpus-per-trial / --gpus-per-trial"
        )


# ---------------------------------------------------------------------------------------------------
# Memory: trials that share a machine must fit its memory together

TRIAL_OVERHEAD_BYTES = 2 * 2**30  # a trial's process besides its features (libraries, model, buffers)
LOCAL_RAY_MEMORY_FRACTION = 0.85  # of this machine's memory, what a Ray runtime started here may reserve


@functools.lru_cache(maxsize=None)
def _feature_bytes_per_image(cut: str, resize_to: int) -> int:
    """Bytes of one image's cached features at a cut (float16), from the backbone's output shape."""
    import numpy as np

    from pattlite.features import FEATURE_DTYPE
    from pattlite.model import build_backbone

    shape = build_backbone(weights=None, cut_layer=cut, resize_to=resize_to).output.shape[1:]
    return int(np.prod(shape)) * np.dtype(FEATURE_DTYPE).itemsize


def _dataset_images(exp) -> int | None:
    """Images of an experiment's dataset: a synthetic stand-in's sizes, else the largest pixel cache of
    the dataset at its image size (None before any cache exists)."""
    options = exp.source.get("options", {})
    if exp.source["dataset"] == "synthetic":
        return int(sum(options.get(k, 0) for k in ("n_train", "n_val", "n_test")))
    from pattlite.data.pixels import pixels_cache_dir

    rows = []
    for path in Path(pixels_cache_dir()).glob(f"{exp.source['dataset']}_{exp.image_size}px_*.json"):
        try:
            rows.append(int(json.loads(path.read_text(encoding="utf-8"))["rows"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(rows) if rows else None


def memory_estimate(exp) -> int | None:
    """Bytes a trial of `exp` holds at most: its training features in memory (each view), the other
    images' features read once, and `TRIAL_OVERHEAD_BYTES`; None when not known (a trial on images
    rather than cached features, or a dataset not cached yet): it then reserves a whole node's memory."""
    if exp.stage1 != "cached":
        return None
    images = _dataset_images(exp)
    if images is None:
        return None
    from pattlite.model import variant_cut_layer

    train = images if exp.train_limit is None else min(images, int(exp.train_limit))
    views = int(exp.train.get("train_views", 1))
    try:
        cut = variant_cut_layer(exp.variant, **exp.model_options)
    except ValueError:  # a bad option: the trial's own error, reported by the trial
        return None
    per_image = _feature_bytes_per_image(cut, exp.resize_to)
    return TRIAL_OVERHEAD_BYTES + per_image * (train * views + images - train)


def _largest_node_memory(ray) -> int:
    """Bytes of Ray's `memory` resource on the largest live node (0: none reported)."""
    return int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def _memory_requests(ray, pending) -> dict:
    """{key: bytes of Ray's `memory` resource} per experiment: its `memory_estimate`, at most the
    largest node's memory (all of it when unknown), so no trial is unschedulable."""
    largest = _largest_node_memory(ray)
    if largest <= 0:
        return {}
    out = {}
    for exp in pending:
        estimate = memory_estimate(exp)
        out[exp.key()] = int(largest if estimate is None else min(estimate, largest))
    return out


def next_fitting(queue, running: list, memory: dict, capacity: int):
    """The first experiment of `queue` whose memory (`memory[key]`) fits in `capacity` beside the
    `running` reservations; None when none does."""
    free = capacity - sum(running)
    return next((exp for exp in queue if memory[exp.key()] <= free), None)


def _run_ray(ray, pending, results_dir, address, gpus_per_trial, cpus_per_trial, max_retries, log, compute):
    if cpus_per_trial is None or cpus_per_trial <= 0:
        raise ValueError(f"--cpus-per-trial {cpus_per_trial!r}: expected a positive number")
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial!r}: expected 0 or more")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"--max-retries {max_retries!r}: expected an integer >= 0")
    started_here = not ray.is_initialized()
    if started_here:
        options = {}
        if address is None and physical_memory():
            # Ray's default reserves about 65% of the memory for tasks; trials here are sized by their
            # features (`memory_estimate`), so let them use most of it.
            options["_memory"] = int(LOCAL_RAY_MEMORY_FRACTION * physical_memory())
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=True,
            logging_level="WARNING",
            configure_logging=True,
            **options,
        )
    elif address is not None:
        log(f"[grid] note: Ray is already initialised in this process; --address {address} is not used")
    try:
        resources = ray.cluster_resources()
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        _check_feasible(ray, cpus_per_trial, gpus_per_trial)
        log(
            f"[grid] Ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; each "
            f"trial reserves {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU; "
            f"{_trial_slots(ray, cpus_per_trial, gpus_per_trial)} at once; worker deaths retried up to "
            f"{max_retries} times"
        )
        memory = _memory_requests(ray, pending)
        # On a runtime started for this machine, workers share the driver's results folder.
        local = address is None and started_here
        from pattlite.experiments import checkpoint_path

        checkpoints = checkpoint_path(pending[0], results_dir).parent if local and pending else None
        tasks = {
            size: ray_task(ray, cpus_per_trial, gpus_per_trial, max_retries, size, checkpoints)
            for size in set(memory.values()) | {None}
        }
        if memory:
            log(
                "[grid] memory reserved per trial (its cached features and the process): "
                + ", ".join(
                    f"{size / 2**30:.1f} GB x {count}"
                    for size, count in sorted(collections.Counter(memory.values()).items(), reverse=True)
                )
            )
        queue = list(pending)  # in the grid's order (`_priority`): Ray itself keeps no order among tasks
        in_flight = {}
        slots = max(1, _trial_slots(ray, cpus_per_trial, gpus_per_trial))
        # One machine (a runtime started here): the grid fills its trial slots itself, each with the
        # first experiment in its order whose memory fits beside those running, so a slot never idles
        # behind trials that wait for memory. A cluster: a window of tasks beyond the slots, which Ray
        # places; a trial that waits for memory there lets one of the next few start.
        capacity = _largest_node_memory(ray) if local and memory else None

        def submit(count: int) -> None:
            """Up to `count` more tasks (a cluster's window); on one machine, as many as fit the free slots."""
            while queue and (count > 0 or capacity is not None):
                if capacity is None:
                    exp = queue.pop(0)
                else:
                    running = [memory[e.key()] for e in in_flight.values()]
                    exp = next_fitting(queue, running, memory, capacity) if len(running) < slots else None
                    if exp is None:
                        return
                    queue.remove(exp)
                in_flight[tasks[memory.get(exp.key())].remote(compute, pickle.dumps(exp))] = exp
                count -= 1

        submit(slots + QUEUE_WINDOW)
        try:
            return _collect_ray(
                ray,
                in_flight,
                results_dir,
                cpus_per_trial,
                gpus_per_trial,
                max_retries,
                log,
                experiments=pending,
                submit=submit,
            )
        except BaseException as error:  # noqa: B036 - interrupted: stop the tasks in flight first
            _cancel(ray, in_flight)
            from pattlite.runs import as_interruption

            stopped = as_interruption(error, "grid", in_flight=[exp.label() for exp in in_flight.values()])
            if stopped is not None:
                raise stopped from error
            raise
    finally:
        if started_here:
            ray.shutdown()


QUEUE_WINDOW = 4  # Ray tasks submitted beyond the trial slots (see `_run_ray`)
CANCEL_GRACE_S = 3.0  # how long an interrupted grid lets its cancelled Ray tasks unwind


def _cancel(ray, in_flight: dict) -> None:
    """Stops the tasks in flight. A plain cancel raises KeyboardInterrupt in a task that is running
    Python (training returns to Python every batch), which then removes its temporary folder; after
    CANCEL_GRACE_S a forced cancel kills the workers of those still busy (e.g. blocked in C), so that
    nothing keeps a cluster's GPUs after the driver stopped. Their folders are removed by the next
    task on that machine (`remove_stale_temporary`)."""
    refs = list(in_flight)
    if not refs:
        return
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # already finished, or the runtime is going away: nothing to stop
            pass
    try:
        time.sleep(CANCEL_GRACE_S)  # ray.wait would not do: a cancelled task counts as ready at once
    except BaseException:  # noqa: B036 - a second Ctrl-C: stop waiting
        pass
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:
            pass


def _collect_ray(
    ray, in_flight, results_dir, cpus_per_trial, gpus_per_trial, max_retries, log, experiments=None, submit=None
):
    """Waits for the tasks in flight (removed from `in_flight` as they end), storing each result;
    `submit(n)` adds up to n more tasks to `in_flight` (one per task ended), out of `experiments` in all
    (default: those in flight)."""
    from pattlite.runs import RunInterrupted, interruption

    experiments = list(in_flight.values()) if experiments is None else list(experiments)
    progress = Progress(len(experiments), log, experiments)
    trained, failed = [], {}
    progress.last_line = 0.0  # a line at once
    while in_flight:
        # Ray tells which tasks are running only through its state API (the dashboard); here
        # "running" is the tasks in flight that the cluster has trial slots for.
        slots = _trial_slots(ray, cpus_per_trial, gpus_per_trial)
        progress.running = min(len(in_flight), slots)
        if time.time() - progress.last_line >= PROGRESS_EVERY_S:
            progress.line(slots)
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=10.0)
        for ref in ready:
            exp = in_flight.pop(ref)
            if submit is not None:
                submit(1)
            try:
                returned = ray.get(ref)
            except ray.exceptions.RayError as error:
                # A KeyboardInterrupt in the task (Ray reports it as the task's cancellation), or any error
                # once this process got SIGINT/SIGTERM: the run is interrupted, not the experiment failed.
                cancelled = any(
                    isinstance(e, ray.exceptions.TaskCancelledError) for e in (error, getattr(error, "cause", None))
                )
                if cancelled or interruption(error):
                    raise RunInterrupted(
                        interruption(error) or "SIGINT", "grid", experiment=exp.label(), key=exp.key()
                    ) from error
                if isinstance(error, ray.exceptions.RayTaskError):  # the experiment raised: not retried
                    failed[exp.key()] = f"{exp.label()}: {_first_lines(error)}"
                else:  # the worker died, retries used up
                    failed[exp.key()] = (
                        f"{exp.label()}: {type(error).__name__} after {max_retries} retries: {_first_lines(error, 3)}"
                    )
            else:
                store_returned(exp, returned, results_dir)
                trained.append(exp.key())
                progress.finish(exp, returned["seconds"])
                log(f"[grid] done: {exp.label()} ({returned['seconds']:.1f} s on {returned['host']})")
                continue
            progress.fail(exp)
            log(f"[grid] failed: {failed[exp.key()]}")
        if ready:
            progress.running = min(len(in_flight), _trial_slots(ray, cpus_per_trial, gpus_per_trial))
            progress.line(slots)
    return trained, failed


# ---------------------------------------------------------------------------------------------------
# Command line: `pattlite grid plan|run` and ./run_all.sh --executor


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
        p.add_argument("--profile", required=True, help="paper, cpu, demo or ci")
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
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None
