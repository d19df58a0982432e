"""Benchmark part `parallel`: heads trained on cached features by several processes at once.

What `pattlite grid run --executor ray --cpus-per-trial 1` does on a CPU: each trial is its own process
with one CPU and JAX on one thread (`pattlite.grid_ray.worker_env`). This measures whether that pays, on
random float16 features of the cut's shape (14x14x512) held in memory, with the package's fast
training loop (`pattlite.train.fit_in_order`, stage 1 of the `published` head, batch 8):

- `one process`: one training at a time with the backend's default threads (the local executor);
- `one process, 1 thread`: the same with JAX/XLA on one thread;
- `N processes, 1 thread each`: N trainings at once (each process its own features, its own epoch);
  their summed rate is the aggregate.

Each process builds its head, trains one untimed epoch (compilation), waits until every process is
ready, then times `repeats` epochs of `samples` features; the median epoch gives its rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
DEFAULT_SAMPLES = 4096
DEFAULT_PROCESSES = 2


def _worker(features_path: str, head: str, repeats: int, seed: int) -> None:
    """One training process: warm-up epoch, "ready" on stdout, waits for a line on stdin, then prints
    the JSON of its timed epochs."""
    import keras

    from pattlite import backends
    from pattlite.arrays import in_memory
    from pattlite.bench import FEATURE_SHAPE, NUM_CLASSES
    from pattlite.callbacks import balanced_class_weights
    from pattlite.model import build_head
    from pattlite.recipe import TrainConfig
    from pattlite.seeding import enable_determinism
    from pattlite.train import fit_in_order

    recipe = TrainConfig()
    features = in_memory(np.load(features_path, mmap_mode="r"))
    samples = len(features)
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, samples)
    weights = balanced_class_weights(labels, NUM_CLASSES)[labels].astype("float32")
    enable_determinism(seed)
    model = build_head(head, NUM_CLASSES, FEATURE_SHAPE)
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.stage1_learning_rate, global_clipnorm=recipe.global_clipnorm),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def epoch():
        fit_in_order(model, features, labels, weights, recipe.batch_size, 1, [], reshuffle_seed=seed)

    epoch()
    print("ready", flush=True)
    sys.stdin.readline()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"samples": samples, "seconds": seconds, "backend": backends.name()}), flush=True)


def _run_group(features_path: Path, processes: int, one_thread: bool, head: str, repeats: int, seed: int) -> dict:
    """`processes` workers started together; their timed epochs start at the same moment."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if one_thread:
        kept = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))
        ]
        env.update(
            XLA_FLAGS=" ".join(kept + ONE_THREAD_XLA_FLAGS.split()),
            OMP_NUM_THREADS="1",
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1",
        )
    command = [sys.executable, "-m", "pattlite.bench_parallel", str(features_path), head, str(repeats)]
    workers = [
        subprocess.Popen(
            command + [str(seed + i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    try:
        for worker in workers:
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(
                    f"benchmark worker {worker.args} did not start (it printed {line!r}; "
                    "run it by hand to see its error)"
                )
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        runs = [json.loads(worker.stdout.readline()) for worker in workers]
        for worker in workers:
            worker.wait(timeout=60)
    finally:
        for worker in workers:
            if worker.poll() is None:  # an error above, or a worker that did not exit
                worker.kill()
                worker.wait()
    rates = [run["samples"] / statistics.median(run["seconds"]) for run in runs]
    return {
        "processes": processes,
        "one_thread": one_thread,
        "per_process_samples_per_s": rates,
        "samples_per_s": float(sum(rates)),
        "backend": runs[0]["backend"],
    }


def run_parallel_benchmark(
    samples: int = DEFAULT_SAMPLES,
    processes: int = DEFAULT_PROCESSES,
    head: str = "published",
    repeats: int = 3,
    seed: int = 0,
    log=print,
) -> dict:
    """The three rows of this module's docstring; `speedup`: the N processes' aggregate over one process
    with default threads."""
    from pattlite.bench import FEATURE_SHAPE, _positive_int

    samples = _positive_int("samples", samples)
    processes = _positive_int("processes", processes)
    repeats = _positive_int("repeats", repeats)
    say = log or (lambda *_: None)
    started = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pattlite-bench-") as tmp:
        path = Path(tmp) / "features.npy"
        rng = np.random.default_rng(seed)
        np.save(path, rng.normal(0, 1, (samples,) + FEATURE_SHAPE).astype("float16"))
        for name, count, one_thread in (
            ("one process", 1, False),
            ("one process, 1 thread", 1, True),
            (f"{processes} processes, 1 thread each", processes, True),
        ):
            rows[name] = _run_group(path, count, one_thread, head, repeats, seed)
            say(
                f"  parallel training {head} stage 1, batch 8, {name}: {rows[name]['samples_per_s']:.0f} "
                "samples/s in all"
            )
    first, last = rows["one process"], rows[f"{processes} processes, 1 thread each"]
    return {
        "settings": {
            "samples": samples,
            "processes": processes,
            "head": head,
            "repeats": repeats,
            "feature_shape": list(FEATURE_SHAPE),
            "cpu_count": os.cpu_count(),
            "load_average_before": list(os.getloadavg()),
        },
        "rows": rows,
        "speedup": last["samples_per_s"] / first["samples_per_s"],
        "seconds": time.perf_counter() - started,
    }


def format_parallel_table(result: dict) -> str:
    lines = ["| measurement | batch | samples/s in all | per process | vs one process |", "|---|---:|---:|---:|---:|"]
    base = result["rows"]["one process"]["samples_per_s"]
    for name, row in result["rows"].items():
        per = ", ".join(f"{rate:.0f}" for rate in row["per_process_samples_per_s"])
        lines.append(
            f"| parallel training {result['settings']['head']} stage 1, {name} | 8 | "
            f"{row['samples_per_s']:.0f} | {per} | {row['samples_per_s'] / base:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # a worker process of `_run_group`
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
