"""Tests of pattlite.grid: the plan (the notebooks' experiments), the local executor, and the Ray executor
on a local Ray runtime started here (2 CPUs, no GPU), ci profile, tiny grids of 2-3 experiments.

That `grid plan` agrees with what the notebooks load is checked in tests/test_notebooks.py, on the
notebooks' own ci run. The Ray tests need the `ray` package (the `dev` extra installs it, so CI runs
them); without it they skip, saying so.
"""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from envvars import environment

from pattlite import cli, grid, grid_ray, pipeline, studies
from pattlite.experiments import make_experiment, result_path, weights_path
from pattlite.results import ExperimentResult

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install -e .[ray]); the Ray executor is untested",
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Temporary data, cache and results folders; Ray workers get them too (PATTLITE_* is forwarded)."""
    base = tmp_path_factory.mktemp("grid")
    with environment(
        PATTLITE_DATA_DIR=base / "data", PATTLITE_CACHE_DIR=base / "cache", PATTLITE_RESULTS_DIR=base / "results"
    ):
        yield base


@pytest.fixture(scope="module")
def tiny(folders):
    """Two ci experiments of the notebooks' plan: different datasets, variants and seeds."""
    return [make_experiment("ci", "rafdb", "published", seed=3), make_experiment("ci", "fer2013", "baseline", seed=4)]


def grid_of(experiments, results_dir) -> grid.GridPlan:
    planned = tuple(grid.PlannedExperiment(e, ("test",), result_path(e, results_dir).is_file()) for e in experiments)
    return grid.GridPlan("ci", Path(results_dir), planned)


@pytest.fixture(scope="module")
def ray_runtime(folders):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e .[ray])")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="WARNING")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------------
# Plan


def test_plan_is_the_notebooks_plan_and_honours_their_parameters(folders):
    params = {"seeds": "5", "datasets": "rafdb,ferplus", "results_dir": str(folders / "planned")}
    grid_plan = grid.plan("ci", params)
    ctx = studies.notebook_context(
        "ci", seeds="5", datasets="rafdb,ferplus", results_dir=folders / "planned", run_experiments=False
    )
    expected = {e.key() for exps in studies.notebook_plan(ctx, "rafdb").values() for e in exps}
    keys = [p.experiment.key() for p in grid_plan.experiments]
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
    assert {p.experiment.seed for p in grid_plan.experiments} == {5}
    assert {p.experiment.dataset for p in grid_plan.experiments} == {"rafdb", "ferplus"}
    published = next(
        p
        for p in grid_plan.experiments
        if p.experiment.dataset == "rafdb" and p.experiment.variant == "published" and not p.experiment.model_options
    )
    assert set(published.studies) == {"table4", "table6", "main", "audit", "gradcam"}
    assert grid_plan.results_dir == folders / "planned" and not any(p.done for p in grid_plan.experiments)
    # Table 5's own points (the slowest on a CPU) come after everything the other tables need.
    only_table5 = [p.studies == ("table5",) for p in grid_plan.experiments]
    assert any(only_table5) and not all(only_table5) and only_table5 == sorted(only_table5)
    # Without rafdb, Table 5's grid and the Grad-CAM model fall to the next dataset of the profile's
    # order of preference that this run has (FERPlus), as in the notebooks.
    no_rafdb = grid.plan("ci", {"datasets": "ferplus"})
    assert {s for p in no_rafdb.experiments for s in p.studies} == {
        "table4",
        "table5",
        "table6",
        "main",
        "audit",
        "gradcam",
    }
    assert {p.experiment.dataset for p in no_rafdb.experiments} == {"ferplus"}


def test_plan_rejects_a_parameter_no_notebook_takes():
    with pytest.raises(ValueError, match="unknown notebook parameter.*'seed'.*seeds"):
        grid.plan("ci", {"seed": "1"})
    with pytest.raises(ValueError, match="ckplus, rafdb, fer2013, ferplus"):
        grid.plan("ci", {"datasets": "affectnet"})


def test_grid_plan_command_lists_experiments_and_marks_done(folders, tiny, local_run, capsys):
    results, _ = local_run  # holds the result of (rafdb, published, seed 3)
    status = cli.main(
        ["grid", "plan", "--profile", "ci", "-p", "seeds=3", "-p", "datasets=rafdb", "-p", f"results_dir={results}"]
    )
    out = capsys.readouterr().out
    assert status == 0
    rows = json.loads(out.strip().splitlines()[-1])["experiments"]
    assert {r["dataset"] for r in rows} == {"rafdb"} and {r["seed"] for r in rows} == {3}
    assert [r["key"] for r in rows if r["done"]] == [tiny[0].key()]
    assert all(r["key"] in out for r in rows) and "to run" in out
    assert f"{len(rows)} experiments: 1 done, {len(rows) - 1} to run" in out
    assert cli.main(["grid", "plan", "--profile", "nope"]) == 2
    assert "paper, cpu, cpu_full, demo, ci" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Local executor


@pytest.fixture(scope="module")
def local_run(folders, tiny):
    results = folders / "local"
    report = grid.run_grid(grid_of(tiny, results), "local")
    return results, report


def test_local_executor_runs_the_unfinished_and_reports_failures(folders, tiny, local_run):
    results, report = local_run
    assert sorted(report.trained) == sorted(e.key() for e in tiny) and not report.failed
    for exp in tiny:
        assert result_path(exp, results).is_file() and weights_path(exp, results).is_file()
    bad = make_experiment("ci", "ferplus", "published", kernel="NO_SUCH_KERNEL")
    lines = []
    again = grid.run_grid(grid_of([*tiny, bad], results), "local", log=lines.append)
    assert again.trained == [] and sorted(again.already_done) == sorted(e.key() for e in tiny)
    assert list(again.failed) == [bad.key()] and "NO_SUCH_KERNEL" in again.failed[bad.key()]
    assert any("FAILED" in line and bad.key() in line for line in lines)


def test_ray_executor_without_ray_says_how_to_install(monkeypatch, capsys, folders):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    status = cli.main(["grid", "run", "--profile", "ci", "--executor", "ray"])
    assert status == 2
    assert "pip install -e .[ray]" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Ray executor


def _comparable(path):
    result = ExperimentResult.read(path)
    return result.metrics, result.predictions, result.epochs


@needs_ray
def test_ray_grid_gives_the_local_executors_result_files(ray_runtime, folders, tiny, local_run):
    local_results, _ = local_run
    results = folders / "ray"
    lines = []
    report = grid.run_grid(grid_of(tiny, results), "ray", cpus_per_trial=1, log=lines.append)
    assert sorted(report.trained) == sorted(e.key() for e in tiny) and not report.failed
    for exp in tiny:
        assert _comparable(result_path(exp, results)) == _comparable(result_path(exp, local_results))
        assert weights_path(exp, results).stat().st_size > 0
        assert (results / "logs" / exp.key() / "stage1.csv").is_file()
    assert not list((results / "experiments").glob(".tmp-*")), "a temporary file was left behind"
    assert any("2/2 done, 0 running, 0 failed, 0 left" in line for line in lines)
    assert any("2 at once" in line for line in lines)
    assert any(line.startswith("[grid] memory reserved per trial") for line in lines)
    # A second run finds everything done and runs no task.
    again = grid.run_grid(grid_of(tiny, results), "ray", log=lines.append)
    assert again.trained == [] and len(again.already_done) == 2


def _killing_compute(marker_dir: Path, kill_first=(), kill_always=()):
    """A compute function for the Ray tasks that counts each experiment's attempts in a marker file in
    `marker_dir` and kills its own worker process (SIGKILL) on the first attempt of the keys in
    `kill_first` and on every attempt of those in `kill_always`; otherwise it does the real work."""

    def compute(exp):
        marker = marker_dir / exp.key()
        attempt = (marker.read_text().count("attempt") if marker.exists() else 0) + 1
        marker.write_text("attempt\n" * attempt)
        if exp.key() in kill_always or (exp.key() in kill_first and attempt == 1):
            os.kill(os.getpid(), signal.SIGKILL)
        return grid_ray.compute_on_worker(exp)

    return compute


def _attempts(marker_dir: Path, exp) -> int:
    return (marker_dir / exp.key()).read_text().count("attempt")


@needs_ray
def test_ray_task_whose_worker_kills_itself_on_first_attempt_is_retried(ray_runtime, folders, tiny):
    """The kill is simulated: the task SIGKILLs its own worker process on its first attempt (a marker
    file says which attempt it is), as the kernel's OOM killer or a lost node would end it."""
    markers = folders / "markers-once"
    markers.mkdir()
    compute = _killing_compute(markers, kill_first=(tiny[0].key(),))
    results = folders / "ray-killed"
    report = grid.run_grid(grid_of(tiny[:1], results), "ray", max_retries=1, compute=compute)
    assert report.trained == [tiny[0].key()] and not report.failed
    assert _attempts(markers, tiny[0]) == 2
    assert result_path(tiny[0], results).is_file() and weights_path(tiny[0], results).is_file()


@needs_ray
def test_ray_failures_are_reported_retries_bounded_and_the_others_finish(ray_runtime, folders, tiny):
    markers = folders / "markers-failures"
    markers.mkdir()
    killed = make_experiment("ci", "ferplus", "no_mixing", seed=9)  # its worker dies every time
    broken = make_experiment("ci", "ferplus", "published", kernel="NO_SUCH_KERNEL")  # raises ValueError
    compute = _killing_compute(markers, kill_first=(broken.key(),), kill_always=(killed.key(),))
    results = folders / "ray-failures"
    lines = []
    report = grid.run_grid(
        grid_of([killed, broken, tiny[1]], results), "ray", max_retries=2, compute=compute, log=lines.append
    )
    assert report.trained == [tiny[1].key()] and result_path(tiny[1], results).is_file()
    assert set(report.failed) == {killed.key(), broken.key()}
    assert "WorkerCrashedError" in report.failed[killed.key()]
    assert _attempts(markers, killed) == 3  # the first try and max_retries=2 retries, no more
    assert "NO_SUCH_KERNEL" in report.failed[broken.key()]
    assert _attempts(markers, broken) == 2  # its worker died once (retried), then its own error: not retried
    assert _attempts(markers, tiny[1]) == 1
    assert any("1/3 done, 0 running, 2 failed, 0 left" in line for line in lines)
    assert any(line.startswith("[grid] FAILED") and killed.key() in line for line in lines)
    assert not result_path(killed, results).exists() and not result_path(broken, results).exists()


# ---------------------------------------------------------------------------------------------------
# Where Ray workers import the project from; their temporary folders; interruptions

NAMESPACE_DRIVER = """
import json, pickle, sys

import ray

from pattlite import grid_ray

def probe(_):
    import pattlite
    from pattlite.data import load_manifest   # the clone folder would be a namespace package without it

    return pattlite.__file__

ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, logging_level="WARNING")
task = grid_ray.ray_task(ray, 1, 0, 0)   # what run_grid submits: its pattlite.grid_ray._ray_task, options, environment
try:
    print(json.dumps({"file": ray.get(task.remote(probe, pickle.dumps(None)))}))
except ray.exceptions.RayError as error:
    print(json.dumps({"error": str(error)[-500:]}))
"""


@needs_ray
def test_ray_workers_import_the_install_when_started_beside_a_clone_named_pattlite(tmp_path):
    """Issue 23: started from the folder that holds a clone named `pattlite`, every Ray task failed with
    "cannot import name 'load_manifest' from 'pattlite.data' (unknown location)": Ray puts the driver's
    folder on its workers' sys.path, and the clone folder was imported as a namespace package. A task
    as run_grid submits it, from such a folder, must import the installed package."""
    import pattlite

    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "pattlite").symlink_to(Path(pattlite.__file__).resolve().parents[1], target_is_directory=True)
    (tmp_path / "driver").mkdir()
    script = tmp_path / "driver" / "run.py"  # run as a script: the driver's own sys.path is clean
    script.write_text(NAMESPACE_DRIVER)
    done = subprocess.run([sys.executable, str(script)], cwd=parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"file": pattlite.__file__}, report


def test_worker_environment_puts_the_install_first_on_pythonpath(monkeypatch):
    import pattlite

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = grid_ray.worker_env(2, 0)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(Path(pattlite.__file__).resolve().parents[1]), "/somewhere/else"]
    assert env["OMP_NUM_THREADS"] == "2"
    assert "intra_op_parallelism_threads=2" in env["XLA_FLAGS"].split()


def test_one_cpu_trials_run_jax_on_one_thread_and_keep_the_drivers_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x intra_op_parallelism_threads=8")
    flags = grid_ray.worker_env(1, 0)["XLA_FLAGS"].split()
    assert "--xla_dump_to=/tmp/x" in flags and "--xla_cpu_multi_thread_eigen=false" in flags
    assert [f for f in flags if f.startswith("intra_op")] == ["intra_op_parallelism_threads=1"]


def test_memory_estimate_counts_each_view_of_the_training_features(monkeypatch):
    """Synthetic ci experiments: images known from the profile; the flip doubles the training rows; a
    trial on images (stage1 exact) holds every image's pixels and the full model; a dataset not cached
    yet is unknown (None)."""
    one = make_experiment("ci", "rafdb", "published")
    two = make_experiment("ci", "rafdb", "published", train_views=2)
    options = one.source["options"]
    images = options["n_train"] + options["n_val"] + options["n_test"]
    per_image = grid_ray._feature_bytes_per_image("conv_dw_9_relu", one.resize_to)
    assert per_image == 14 * 14 * 512 * 2  # float16 at the default cut, 224 pixels
    assert grid_ray.memory_estimate(one) == grid_ray.TRIAL_OVERHEAD_BYTES + per_image * images
    assert grid_ray.memory_estimate(two) - grid_ray.memory_estimate(one) == per_image * options["n_train"]
    exact = make_experiment("ci", "rafdb", "published", stage1="exact")
    pixels = images * exact.image_size**2 * 3  # uint8
    assert grid_ray.memory_estimate(exact) == grid_ray.TRIAL_OVERHEAD_BYTES + grid_ray.EXACT_MODEL_BYTES + pixels
    monkeypatch.setattr(grid_ray, "_dataset_images", lambda exp: None)
    assert grid_ray.memory_estimate(one) is None


def test_memory_estimate_of_a_training_subset_counts_held_out_images_not_unused_ones(monkeypatch, tmp_path):
    """Real data with a training limit (a Table 5 point): the trial holds its training rows (each view)
    and the validation and test images, bounded by a third of the dataset, not every row it leaves out."""
    images = 35_710  # FERPlus: 28,558 training, 7,152 validation and test images
    monkeypatch.setattr(grid_ray, "_dataset_images", lambda exp: images)
    nowhere = tmp_path / "nowhere"
    full = make_experiment("cpu_full", "ferplus", "published", root=nowhere)
    subset = make_experiment("cpu_full", "ferplus", "published", root=nowhere, train_limit=1000)
    per_image = grid_ray._feature_bytes_per_image("conv_dw_9_relu", full.resize_to)
    assert full.train["train_views"] == 2
    assert grid_ray.memory_estimate(full) == grid_ray.TRIAL_OVERHEAD_BYTES + per_image * images * 2
    held_out = math.ceil(images * grid_ray.HELD_OUT_SHARE_BOUND)
    assert grid_ray.memory_estimate(subset) == grid_ray.TRIAL_OVERHEAD_BYTES + per_image * (2 * 1000 + held_out)
    assert grid_ray.memory_estimate(subset) < 5 * 2**30 < grid_ray.memory_estimate(full)


def test_a_worker_on_the_drivers_machine_checkpoints_into_the_results_folder(monkeypatch, folders, tiny, tmp_path):
    """With $PATTLITE_GRID_CHECKPOINTS (set by `ray_task` for a runtime the grid started), a trial keeps
    its checkpoints at <results>/checkpoints/<key>/ (a stopped run resumes there); the driver removes
    them once it has stored the result."""
    from pattlite.experiments import checkpoint_path

    results = tmp_path / "results"
    exp = tiny[0]
    monkeypatch.setenv(grid_ray.CHECKPOINTS_ENV_VAR, str(checkpoint_path(exp, results).parent))
    returned = grid_ray.compute_on_worker(exp)
    assert any(checkpoint_path(exp, results).iterdir())
    grid_ray.store_returned(exp, returned, results)
    assert result_path(exp, results).is_file() and not checkpoint_path(exp, results).exists()


def test_memory_requests_never_exceed_the_largest_node(monkeypatch):
    class FakeRay:
        @staticmethod
        def nodes():
            return [
                {"Alive": True, "Resources": {"memory": 10.0 * 2**30}},
                {"Alive": False, "Resources": {"memory": 99.0 * 2**30}},
            ]

    small, large, unknown = (make_experiment("ci", "rafdb", "published", seed=s) for s in (1, 2, 3))
    sizes = {small.key(): 2 * 2**30, large.key(): 50 * 2**30, unknown.key(): None}
    monkeypatch.setattr(grid_ray, "memory_estimate", lambda exp: sizes[exp.key()])
    requests = grid_ray._memory_requests(FakeRay, [small, large, unknown])
    assert requests == {small.key(): 2 * 2**30, large.key(): 10 * 2**30, unknown.key(): 10 * 2**30}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_of_killed_workers_are_removed(monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{grid_ray.TEMP_PREFIX}{_dead_pid()}-abc"
    live = tmp_path / f"{grid_ray.TEMP_PREFIX}{os.getpid()}-def"
    old = tmp_path / f"{grid_ray.TEMP_PREFIX}k3j2h1g0"  # the name before the PID was in it
    other = tmp_path / "pattlite-openvino-xyz"
    for folder in (dead, live, old, other):
        (folder / "logs").mkdir(parents=True)
    lines = []
    removed = grid_ray.remove_stale_temporary(log=lines.append)
    assert sorted(removed) == sorted([dead, old])
    assert not dead.exists() and not old.exists() and live.is_dir() and other.is_dir()
    assert lines and "removed 2 temporary folder(s) left by killed workers" in lines[0]


def test_a_worker_interrupted_mid_task_removes_its_temporary_folder(monkeypatch, tmp_path, tiny):
    import tempfile

    from pattlite import experiments

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def interrupted(exp, progress=True, log_dir=None, **kwargs):
        seen.append(Path(log_dir).parent)
        assert seen[0].is_dir() and seen[0].name.startswith(f"{grid_ray.TEMP_PREFIX}{os.getpid()}-")
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "compute_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grid_ray.compute_on_worker(tiny[0])
    assert seen and not seen[0].exists() and not list(tmp_path.iterdir())


@needs_ray
def test_ray_grid_stopped_by_ctrl_c_cancels_its_tasks_and_says_where(ray_runtime, folders, tiny, tmp_path, monkeypatch):
    """SIGINT while two Ray tasks run: run_grid raises RunInterrupted naming the experiments in flight,
    and the cancelled tasks remove their temporary folders on the way out."""
    import threading

    # A longer grace than the default 3 s: on 2 cores shared with other work, a cancelled worker took
    # longer than 3 s to unwind (seen once in a full-suite run beside a training) and was force-killed.
    monkeypatch.setattr(grid_ray, "CANCEL_GRACE_S", 15.0)

    markers = tmp_path / "markers"
    markers.mkdir()

    def compute(exp):  # busy in Python, as training is between the backend's calls
        import tempfile
        import time as _time

        with tempfile.TemporaryDirectory(prefix=f"{grid_ray.TEMP_PREFIX}{os.getpid()}-") as tmp:
            (markers / exp.key()).write_text(tmp)
            end = _time.time() + 600  # longer than the wait for both: the interrupt finds them running
            while _time.time() < end:
                sum(range(1000))

    def interrupt_when_both_run():
        # Up to 5 minutes: on 2 cores busy with other work, starting two Ray workers took over a minute.
        for _ in range(3000):
            if len(list(markers.iterdir())) == 2:
                break
            threading.Event().wait(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_both_run, daemon=True).start()
    with pipeline.handle_signals(), pytest.raises(pipeline.RunInterrupted) as stopped:
        grid.run_grid(grid_of(tiny, tmp_path / "results"), "ray", cpus_per_trial=1, compute=compute)
    assert stopped.value.signal_name == "SIGINT" and stopped.value.stage == "grid"
    assert sorted(stopped.value.where["in_flight"]) == sorted(e.label() for e in tiny)
    folders_used = [Path(m.read_text()) for m in markers.iterdir()]
    assert len(folders_used) == 2
    left = [f for f in folders_used if f.exists()]
    if left:
        # A task that did not unwind within the grace (its worker starved of CPU, as in a full suite on 2
        # busy cores) was force-killed: its folder is then the next run's to remove, as documented.
        for _ in range(100):  # until Ray has killed those workers
            grid_ray.remove_stale_temporary()
            if not any(f.exists() for f in left):
                break
            threading.Event().wait(0.1)
    assert not any(f.exists() for f in folders_used)
    assert not (tmp_path / "results" / "experiments").exists()


@needs_ray
def test_a_ray_task_interrupted_on_its_worker_interrupts_the_grid(ray_runtime, folders, tiny, tmp_path):
    def compute(exp):
        raise KeyboardInterrupt

    with pytest.raises(pipeline.RunInterrupted) as stopped:
        grid.run_grid(grid_of(tiny[:1], tmp_path / "results"), "ray", cpus_per_trial=1, compute=compute)
    assert stopped.value.where == {"experiment": tiny[0].label(), "key": tiny[0].key()}


def test_plan_trains_the_headline_first_and_adopts_committed_results(tmp_path, monkeypatch):
    """The headline heads at the first seed come first, Table 5's own points last; a result committed
    under docs/results/<profile>/results/ counts as done and is copied into the results folder."""
    import shutil

    from pattlite import experiments
    from pattlite.results import result_file

    monkeypatch.setenv("PATTLITE_RESULTS_DIR", str(tmp_path / "results"))
    grid_plan = grid.plan("ci", {"datasets": "ferplus", "seeds": "0,1"})
    ranks = [grid._priority(p, 0) for p in grid_plan.experiments]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 3
    first = grid_plan.experiments[0].experiment
    assert first.seed == 0 and first.variant in ("published", "no_mixing", "pattlite")
    committed = tmp_path / "committed"
    committed.mkdir()
    source = next(p for p in grid_plan.experiments if p.experiment.key() == first.key())
    assert not source.done
    # A result file of that experiment, as publish commits it (made here without training: copied from
    # a fake one the results module reads).
    from test_publish import write_result

    write_result(first, tmp_path / "made")
    shutil.copy(result_file(tmp_path / "made", first.key()), committed / f"{first.key()}.json")
    monkeypatch.setattr(experiments, "committed_results_dir", lambda profile: committed)
    again = grid.plan("ci", {"datasets": "ferplus", "seeds": "0,1"})
    done = {p.experiment.key() for p in again.experiments if p.done}
    assert done == {first.key()} and result_file(again.results_dir, first.key()).is_file()


def test_ray_tasks_are_submitted_in_the_grids_order_a_window_at_a_time(monkeypatch, tmp_path):
    """Ray keeps no order among waiting tasks, so the grid submits its experiments in its own order,
    at most the trial slots plus `QUEUE_WINDOW` at a time, one more as each ends (a fake Ray runtime:
    2 CPUs, tasks end in submission order)."""
    experiments = [make_experiment("ci", "rafdb", "published", seed=s) for s in range(10)]
    submitted, in_flight_sizes = [], []

    class Ref:
        def __init__(self, exp):
            self.exp = exp

    class FakeTask:
        def remote(self, compute, experiment_pickle):
            import pickle

            ref = Ref(pickle.loads(experiment_pickle))
            submitted.append(ref)
            return ref

    class FakeRay:
        class exceptions:
            RayError = TaskCancelledError = RayTaskError = type("Never", (Exception,), {})

        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 2.0}}]

        @staticmethod
        def wait(refs, num_returns, timeout):
            in_flight_sizes.append(len(refs))
            return [min(refs, key=submitted.index)], []

        @staticmethod
        def get(ref):
            return {"seconds": 1.0, "host": "fake", "exp": ref.exp}

    monkeypatch.setattr(grid_ray, "ray_task", lambda *args, **kwargs: FakeTask())
    stored = []
    monkeypatch.setattr(grid_ray, "store_returned", lambda exp, returned, results_dir: stored.append(exp.key()))
    grid_ray._run_ray(FakeRay, experiments, tmp_path, None, 0.0, 1.0, 0, lambda line: None, compute=None)
    assert [ref.exp.key() for ref in submitted] == [e.key() for e in experiments]
    assert max(in_flight_sizes) == 2 + grid_ray.QUEUE_WINDOW
    assert stored == [e.key() for e in experiments]


def test_on_one_machine_the_grid_fills_each_slot_with_the_first_trial_that_fits(monkeypatch, tmp_path):
    """A Ray runtime the grid starts itself (one machine): a free slot takes the first experiment in the
    grid's order whose memory fits beside the trials running, so a slot never idles behind full-size
    trials that wait for memory, and the reservations never exceed the machine's (a fake runtime:
    2 CPUs, 20 GB; full-size trials 15 GB, small ones 2 GB; tasks end in submission order)."""
    experiments = [make_experiment("ci", "rafdb", "published", seed=s) for s in range(6)]
    big, small = 15 * 2**30, 2 * 2**30
    sizes = {e.key(): (big if i in (0, 1, 4) else small) for i, e in enumerate(experiments)}
    monkeypatch.setattr(grid_ray, "memory_estimate", lambda exp: sizes[exp.key()])
    submitted, running = [], []

    class FakeTask:
        def remote(self, compute, experiment_pickle):
            import pickle

            exp = pickle.loads(experiment_pickle)
            submitted.append(exp.key())
            running.append(exp.key())
            assert len(running) <= 2 and sum(sizes[k] for k in running) <= 20 * 2**30
            return exp.key()

    class FakeRay:
        class exceptions:
            RayError = TaskCancelledError = RayTaskError = type("Never", (Exception,), {})

        initialized = False

        @classmethod
        def is_initialized(cls):
            return cls.initialized

        @classmethod
        def init(cls, **options):
            cls.initialized = True

        @classmethod
        def shutdown(cls):
            cls.initialized = False

        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0, "memory": 20.0 * 2**30}

        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 20.0 * 2**30}}]

        @staticmethod
        def wait(refs, num_returns, timeout):
            first = min(refs, key=submitted.index)
            running.remove(first)
            return [first], []

        @staticmethod
        def get(ref):
            return {"seconds": 1.0, "host": "fake"}

    monkeypatch.setattr(grid_ray, "ray_task", lambda *args, **kwargs: FakeTask())
    monkeypatch.setattr(grid_ray, "store_returned", lambda exp, returned, results_dir: None)
    report = grid_ray._run_ray(FakeRay, experiments, tmp_path, None, 0.0, 1.0, 0, lambda line: None, compute=None)
    order = [experiments[i].key() for i in (0, 2, 1, 3, 4, 5)]
    assert submitted == order and sorted(report[0]) == sorted(sizes)


def test_time_left_sums_each_kind_of_experiments_own_mean_time():
    """A CK+ fold and a full-size training differ many-fold: the time left is the sum, over the
    experiments left, of this run's mean time for their kind, divided by the trainings at once."""
    small = [make_experiment("ci", "ckplus", "published", seed=s) for s in range(4)]
    large = [make_experiment("ci", "fer2013", "published", seed=s) for s in range(2)]
    lines = []
    progress = grid_ray.Progress(6, lines.append, small + large)
    assert progress.eta(2) == "time left: estimated after the first experiment"
    progress.finish(small[0], 10.0)
    progress.finish(large[0], 1000.0)
    progress.fail(small[1])
    # left: 2 CK+ (10 s each) and 1 FER2013 (1000 s), 2 at once
    assert progress.eta(2).startswith(f"about {grid_ray._duration((2 * 10 + 1000) / 2)} left")
    progress.line(2)
    assert lines[-1].startswith("[grid] 2/6 done, 0 running, 1 failed, 3 left; about 8 min left")
    assert "not timed yet" not in lines[-1]


def test_time_left_names_the_experiments_of_kinds_not_timed_yet():
    """Before a kind has run once, its time is unknown: the time left covers the timed kinds only and
    says how many experiments it leaves out (a CK+ fold's mean says nothing of a full-size training)."""
    small = [make_experiment("ci", "ckplus", "published", seed=s) for s in range(3)]
    large = [make_experiment("ci", "fer2013", "published", seed=s) for s in range(2)]
    progress = grid_ray.Progress(5, lambda line: None, small + large)
    progress.finish(small[0], 10.0)
    assert progress.eta(1) == (
        "about 20 s left (this run's mean time per kind of experiment, 1 at once), "
        "plus 2 experiment(s) of kinds not timed yet"
    )


def test_a_resumed_training_counts_its_whole_training_time_in_the_time_left():
    """A training resumed from its checkpoint ran only its last epochs in this run: the time left is
    estimated from its result's training time in all, and its done line says it was resumed."""
    experiments = [make_experiment("ci", "ckplus", "published", seed=s) for s in range(3)]
    progress = grid_ray.Progress(3, lambda line: None, experiments)
    progress.finish(experiments[0], 5.0, trained_seconds=100.0)  # 5 s here after 95 s in an earlier run
    assert progress.eta(1).startswith(f"about {grid_ray._duration(2 * 100.0)} left")
    assert grid_ray.resumed_note(5.0, 100.0) == "; resumed from its checkpoint: 100 s of training in all"
    assert grid_ray.resumed_note(100.4, 100.0) == ""  # not resumed: training is most of the run's time
    assert grid_ray.training_seconds(None) is None
