"""The grid's Ray executor: each experiment a Ray task that reserves a GPU/CPU share and the memory its
features need, trains in a temporary folder and returns its result, weights and logs, which the driver writes
into the results folder (`store_returned`); a task whose worker died is retried. And the progress lines (done,
running, failed, time left) that both executors of `pattlite.grid.run_grid` print.
"""

from __future__ import annotations

import collections
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

from pattlite.files import physical_memory, pid_alive, write_atomic
from pattlite.runs import RunInterrupted, interruption

PROGRESS_EVERY_S = 600.0  # while no experiment ends, a progress line this often: a sign of life, not a log of repeats
RAY_INSTALL_HINT = "pip install -e .[ray]"
# Environment variables a Ray worker gets from the driver: dataset roots, weights, cache, backend.
FORWARDED_ENV_PREFIXES = ("PATTLITE_", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")


class RayNotInstalled(ValueError):
    """--executor ray without the `ray` package: a usage error here (the message says how to install it)."""


# ---------------------------------------------------------------------------------------------------
# Progress


def size_class(exp) -> tuple:
    """Experiments of one class take about the same time: same dataset, training-set limit and stage 1."""
    return (exp.dataset, exp.train_limit, exp.stage1)


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

    def finish(self, exp, seconds: float, trained_seconds: float | None = None) -> None:
        """`seconds` this run spent on `exp`; `trained_seconds` its result's training time, which counts
        the earlier runs' share of a training resumed from its checkpoint: the larger is what a fresh
        experiment of its kind costs, and what the time left is estimated from."""
        seconds = max(seconds, trained_seconds or 0.0)
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
            timed = [means[self.classes[key]] for key in self.left if self.classes[key] in means]
            untimed = len(self.left) - len(timed)
            text = (
                f"about {_duration(sum(timed) / parallel)} left (this run's mean time per kind of experiment, "
                f"{parallel} at once)"
            )
            if untimed:  # a kind not run yet can take many times the others: no guess
                text += f", plus {untimed} experiment(s) of kinds not timed yet"
            return text
        waves = math.ceil(left / parallel)
        return f"about {_duration(waves * mean)} left ({_duration(mean)} per experiment, {parallel} at once)"

    def line(self, parallel: int = 1) -> None:
        left = self.total - self.done - self.failed - self.running
        self.log(
            f"[grid] {self.done}/{self.total} done, {self.running} running, {self.failed} failed, "
            f"{left} left; {self.eta(parallel)}"
        )
        self.last_line = time.time()


def training_seconds(result) -> float | None:
    """A result's training time in all (`wall_time_s["total"]`: with a resumed training's earlier runs)."""
    total = (getattr(result, "wall_time_s", None) or {}).get("total")
    return float(total) if total is not None else None


def resumed_note(seconds: float, trained: float | None) -> str:
    """ "; resumed: 1,234 s of training in all" when the result's training outlasted this run's share."""
    if trained is None or trained <= seconds + 1.0:
        return ""
    return f"; resumed from its checkpoint: {trained:,.0f} s of training in all"


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
# The Ray executor


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


def trial_backend(exp) -> str | None:
    """The Keras backend a trial of `exp` must run on when it is not the grid's own: the profile's
    `exact_backend` for a trial that trains the full image model (stage1 "exact"), when it names a backend
    other than the running one (`pattlite.backends.name`); else None (the grid's backend)."""
    if exp.stage1 != "exact":
        return None
    from pattlite import backends
    from pattlite.profiles import PROFILES

    profile = PROFILES.get(exp.profile)
    wanted = None if profile is None else profile.exact_backend
    return wanted if wanted is not None and wanted != backends.name() else None


def ray_task(
    ray,
    cpus_per_trial: float,
    gpus_per_trial: float,
    max_retries: int,
    memory: int | None = None,
    checkpoint_root=None,
    backend: str | None = None,
):
    """The Ray remote function of one trial: its CPU/GPU share, the memory it reserves (bytes; None:
    none), retries of a dead worker (not of the experiment's own error) and environment (`worker_env`;
    `backend`: its KERAS_BACKEND, for a trial on another backend than the grid's, `trial_backend`: Ray
    starts such workers apart from the others).
    `checkpoint_root`: a folder the workers share with the driver (a Ray runtime on the driver's
    machine), where each trial keeps its training checkpoints (`<root>/<key>/`), so that a trial
    stopped with the run resumes where it was in the next run."""
    env = worker_env(cpus_per_trial, gpus_per_trial)
    if checkpoint_root is not None:
        env[CHECKPOINTS_ENV_VAR] = str(checkpoint_root)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
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
# The full image model's activations and gradients at batch 8 on top of that (a FERPlus trial of the
# contrast study, 35,887 images of 120 px, peaked at 2.5 GB resident on TensorFlow).
EXACT_MODEL_BYTES = 1 * 2**30
LOCAL_RAY_MEMORY_FRACTION = 0.85  # of this machine's memory, what a Ray runtime started here may reserve
# With a training limit, the images a trial reads besides its training rows are its validation and test
# images; their number needs the dataset's manifest (FER2013's takes half a minute to read), so this
# bounds it: at most a third of a benchmark's images (FER2013 and FERPlus 20%, a CK+ fold about 20%,
# RAF-DB 28% with its default validation draw).
HELD_OUT_SHARE_BOUND = 1 / 3


@functools.lru_cache(maxsize=None)
def _feature_bytes_per_image(cut: str, resize_to: int) -> int:
    """Bytes of one image's cached features at a cut (float16), from the backbone's output shape."""
    import numpy as np

    from pattlite.backbone import build_backbone
    from pattlite.extraction import FEATURE_DTYPE

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
    images' features read once (with a training limit on real data: at most `HELD_OUT_SHARE_BOUND` of
    the images), and `TRIAL_OVERHEAD_BYTES`; for a trial of the full image model (stage1
    "exact"), every image's pixels and `EXACT_MODEL_BYTES`. None when not known (a dataset not cached
    yet): the trial then reserves a whole node's memory."""
    images = _dataset_images(exp)
    if images is None:
        return None
    if exp.stage1 != "cached":
        # The full image model: every image's pixels in memory (uint8) and the model's activations.
        return TRIAL_OVERHEAD_BYTES + EXACT_MODEL_BYTES + images * exp.image_size**2 * 3
    from pattlite.model import variant_cut_layer

    train = images if exp.train_limit is None else min(images, int(exp.train_limit))
    held_out = images - train
    if exp.train_limit is not None and exp.source["dataset"] != "synthetic":
        held_out = min(held_out, math.ceil(images * HELD_OUT_SHARE_BOUND))  # not every unused training row
    views = int(exp.train.get("train_views", 1))
    try:
        cut = variant_cut_layer(exp.variant, **exp.model_options)
    except ValueError:  # a bad option: the trial's own error, reported by the trial
        return None
    per_image = _feature_bytes_per_image(cut, exp.resize_to)
    return TRIAL_OVERHEAD_BYTES + per_image * (train * views + held_out)


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
        kinds = {(memory.get(exp.key()), trial_backend(exp)) for exp in pending}
        tasks = {
            (size, backend): ray_task(ray, cpus_per_trial, gpus_per_trial, max_retries, size, checkpoints, backend)
            for size, backend in kinds
        }
        for backend in sorted({b for _, b in kinds if b is not None}):
            count = sum(trial_backend(exp) == backend for exp in pending)
            log(f"[grid] {count} trial(s) train the full image model on {backend} (the profile's exact_backend)")
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
                task = tasks[(memory.get(exp.key()), trial_backend(exp))]
                in_flight[task.remote(compute, pickle.dumps(exp))] = exp
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
                training = training_seconds(returned.get("result"))
                progress.finish(exp, returned["seconds"], training)
                note = resumed_note(returned["seconds"], training)
                log(f"[grid] done: {exp.label()} ({returned['seconds']:.1f} s on {returned['host']}{note})")
                continue
            progress.fail(exp)
            log(f"[grid] failed: {failed[exp.key()]}")
        if ready:
            progress.running = min(len(in_flight), _trial_slots(ray, cpus_per_trial, gpus_per_trial))
            progress.line(slots)
    return trained, failed


# ---------------------------------------------------------------------------------------------------
# Command line: `pattlite grid plan|run` and ./run_all.sh --executor
