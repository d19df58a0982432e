"""Tests of the `pattlite` console script: train (run, then load from the results folder), bad inputs,
the installed entry point, bench. Synthetic data, ci profile, temporary data and results folders."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from envvars import environment

from pattlite import cli

PROTOCOLS = ("published", "shuffled", "independent")
TRAIN = ["train", "--dataset", "synthetic", "--profile", "ci", "--seed", "3"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Temporary data (synthetic images, caches) and results folders, shared by this module's tests."""
    base = tmp_path_factory.mktemp("cli")
    with environment(PATTLITE_DATA_DIR=base / "data", PATTLITE_RESULTS_DIR=base / "results-from-env"):
        yield base


def run_cli(capsys, args):
    """Runs `pattlite ARGS` in-process; returns (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


def check_accuracies(payload):
    assert set(payload["accuracy"]) == set(PROTOCOLS)
    for protocol, value in payload["accuracy"].items():
        assert 0.0 <= value <= 1.0, (protocol, value)


def test_train_writes_then_loads_the_result(folders, capsys):
    results = folders / "results"
    status, out, _ = run_cli(capsys, TRAIN + ["--variant", "published", "--results", results])
    assert status == 0
    first = last_json(out)
    check_accuracies(first)
    assert first["cached"] is False
    assert first["synthetic"] is True and first["variant"] == "published" and first["seed"] == 3
    path = Path(first["result_path"])
    assert path.is_file() and path.parent == results / "ci" / "experiments"
    assert json.loads(path.read_text())["key"] == first["key"]

    status, out, _ = run_cli(capsys, TRAIN + ["--variant", "published", "--results", results])
    assert status == 0
    second = last_json(out)
    assert second["cached"] is True
    assert second["accuracy"] == first["accuracy"]
    assert second["result_path"] == first["result_path"]

    # The installed console script, in a fresh process, loads the same result file.
    script = shutil.which("pattlite") or str(Path(sys.executable).with_name("pattlite"))
    assert Path(script).is_file(), "the pattlite console script is not installed (pip install -e .)"
    done = subprocess.run(
        [script] + TRAIN + ["--variant", "published", "--results", str(results)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    third = last_json(done.stdout)
    assert third["cached"] is True and third["accuracy"] == first["accuracy"]


def test_train_pattlite_gives_one_accuracy_under_every_protocol(folders, capsys):
    status, out, _ = run_cli(capsys, TRAIN + ["--variant", "pattlite"])  # results from $PATTLITE_RESULTS_DIR
    assert status == 0
    payload = last_json(out)
    check_accuracies(payload)
    assert payload["cached"] is False
    assert Path(payload["result_path"]).is_relative_to(Path(os.environ["PATTLITE_RESULTS_DIR"]))
    assert len(set(payload["accuracy"].values())) == 1, payload["accuracy"]


@pytest.mark.parametrize(
    "args, valid",
    [
        (
            ["train", "--dataset", "imagenet", "--variant", "published", "--profile", "ci"],
            "valid datasets: ckplus, rafdb, fer2013, ferplus, synthetic",
        ),
        (
            ["train", "--dataset", "synthetic", "--variant", "mobilevit", "--profile", "ci"],
            "valid variants: published, no_mixing, pattlite",
        ),
        (
            ["train", "--dataset", "synthetic", "--variant", "published", "--profile", "fast"],
            "valid profiles: paper, cpu, cpu_full, demo, ci",
        ),
        (
            ["train", "--dataset", "synthetic", "--variant", "published", "--profile", "paper"],
            "needs a synthetic profile",
        ),
    ],
)
def test_bad_names_exit_2_listing_the_valid_ones(folders, capsys, args, valid):
    status, out, err = run_cli(capsys, args)
    assert status == 2
    assert valid in err
    assert out.strip() == ""


def test_missing_weights_file_exits_1_naming_it(folders, capsys, tmp_path):
    missing = tmp_path / "no_such.weights.h5"
    status, _, err = run_cli(capsys, TRAIN + ["--variant", "published", "--weights", missing])
    assert status == 1
    assert str(missing) in err and "does not exist" in err


@pytest.mark.slow
def test_bench_cached_part_compares_fast_and_plain_paths(capsys):
    status, out, _ = run_cli(
        capsys,
        [
            "bench",
            "--parts",
            "cached",
            "--cached-samples",
            "24",
            "--extract-images",
            "8",
            "--image-size",
            "32",
            "--repeats",
            "3",
        ],
    )
    assert status == 0
    payload = last_json(out)
    assert set(payload["training"]) == {"published", "pattlite"}
    for stages in payload["training"].values():
        assert set(stages) == {"stage1", "stage2_as_coded"}
        for timing in stages.values():
            assert timing["fast"]["samples"] == timing["plain"]["samples"] == 24
            assert timing["speedup"] == timing["fast"]["samples_per_s"] / timing["plain"]["samples_per_s"]
            # the median of 3 timed runs
            assert sorted(timing["fast"]["runs_samples_per_s"])[1] == pytest.approx(timing["fast"]["samples_per_s"])
    assert payload["prediction"]["published"]["fast"]["samples_per_s"] > 0
    assert len(payload["prediction"]["published"]["plain"]["runs_samples_per_s"]) == 3
    assert payload["extraction"]["images_per_s"] > 0
    assert payload["extraction"]["engine"] in ("openvino", "tensorflow")
    assert "| cached training published stage1 | 8 |" in out


@pytest.mark.slow
def test_bench_parallel_part_runs_processes_at_once(capsys, monkeypatch):
    """Each row's processes each report their own rate; the aggregate is their sum; the one-thread rows
    run their workers with JAX on one thread (the flag reaches them)."""
    from pattlite import bench_parallel

    seen = []
    popen = bench_parallel.subprocess.Popen

    def recording_popen(command, *args, **kwargs):
        if "pattlite.bench_parallel" in command:
            seen.append(kwargs["env"].get("XLA_FLAGS", ""))
        return popen(command, *args, **kwargs)

    monkeypatch.setattr(bench_parallel.subprocess, "Popen", recording_popen)
    status, out, _ = run_cli(capsys, ["bench", "--parts", "parallel", "--cached-samples", "16", "--repeats", "1"])
    assert status == 0
    payload = last_json(out)
    rows = payload["rows"]
    assert [row["processes"] for row in rows.values()] == [1, 1, 2]
    together = rows["2 processes, 1 thread each"]
    assert together["samples_per_s"] == pytest.approx(sum(together["per_process_samples_per_s"]))
    assert payload["speedup"] == pytest.approx(together["samples_per_s"] / rows["one process"]["samples_per_s"])
    assert ["intra_op_parallelism_threads=1" in flags for flags in seen] == [False, True, True, True]
    assert "| parallel training published stage 1, 2 processes, 1 thread each | 8 |" in out


def test_bad_batch_sizes_exit_2(capsys):
    status, _, err = run_cli(capsys, ["bench", "--batch-sizes", "1,x"])
    assert status == 2 and "comma-separated integers" in err
    status, _, err = run_cli(capsys, ["bench", "--parts", "cached", "--repeats", "0"])
    assert status == 2 and "--repeats" in err


@pytest.mark.slow
def test_bench_prints_a_table_and_json(capsys):
    status, out, _ = run_cli(
        capsys,
        [
            "bench",
            "--parts",
            "images",
            "--steps",
            "1",
            "--batch-sizes",
            "2",
            "--image-size",
            "32",
            "--train-batch-size",
            "2",
        ],
    )
    assert status == 0
    payload = last_json(out)
    assert set(payload["training"]) == {"stage1_frozen", "stage2_as_coded", "stage2_paper_59"}
    assert set(payload["inference"]) == {"published", "pattlite"}
    assert set(payload["inference"]["published"]) == {"2"}
    rows = list(payload["training"].values()) + [t for v in payload["inference"].values() for t in v.values()]
    for timing in rows:
        assert timing["images_per_s"] > 0 and 0.0 <= timing["feed_share"] < 1.0
        assert timing["steps"] == 1
    training = payload["training"]
    # As coded, stage 2 unfreezes no backbone weight; the paper's 59 layers do.
    assert training["stage2_as_coded"]["trainable_params"] == training["stage1_frozen"]["trainable_params"]
    assert training["stage2_paper_59"]["trainable_params"] > training["stage1_frozen"]["trainable_params"]
    assert "| training stage1_frozen |" in out


# ---------------------------------------------------------------------------------------------------
# Errors always reach the user; names and values are checked before TensorFlow is imported.

BAD_ARGUMENTS = [
    (["train", "--dataset", "imagenet", "--variant", "published", "--profile", "ci"], "--dataset: unknown dataset"),
    (["train", "--dataset", "synthetic", "--variant", "mobilevit", "--profile", "ci"], "--variant: unknown variant"),
    (["train", "--dataset", "synthetic", "--variant", "published", "--profile", "fast"], "--profile: unknown profile"),
    (
        ["train", "--dataset", "synthetic", "--variant", "published", "--profile", "ci", "--seed", "-1"],
        "--seed -1: expected an integer in 0..4294967295",
    ),
    (
        ["train", "--dataset", "rafdb", "--variant", "published", "--profile", "paper", "--fold", "2"],
        "--fold 2: only ckplus",
    ),
    (
        ["train", "--dataset", "ckplus", "--variant", "published", "--profile", "paper", "--fold", "10"],
        "--fold 10: expected a CK+ test fold 0..9",
    ),
    (["bench", "--batch-sizes", "1,0"], "--batch-sizes '1,0': expected positive integers"),
    (["bench", "--steps", "0"], "--steps 0: expected an integer >= 1"),
    (["audit", "--dataset", "synthetic", "--epochs", "0"], "--epochs 0: expected an integer >= 1"),
    (["audit", "--dataset", "synthetic", "--train-limit", "0"], "--train-limit 0: expected an integer >= 1"),
    (["audit", "--dataset", "synthetic", "--seeds", "0,4294967296"], "--seeds 4294967296: expected an integer"),
    (["audit", "--dataset", "synthetic", "--profile", "quick"], "--profile: unknown profile 'quick'"),
    (["audit", "--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
]

CHECK_WITHOUT_TENSORFLOW = """
import contextlib, io, json, sys
from pattlite import cli
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(args)
    out.append([status, err.getvalue()])
heavy = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
print(json.dumps({"results": out, "heavy": heavy}))
"""


def test_bad_values_name_their_flag_before_tensorflow_is_imported():
    done = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_TENSORFLOW, json.dumps([args for args, _ in BAD_ARGUMENTS])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = last_json(done.stdout)
    assert report["heavy"] == [], "TensorFlow / Keras imported before the arguments were checked"
    for (args, expected), (status, err) in zip(BAD_ARGUMENTS, report["results"]):
        assert status == 2, (args, err)
        assert err.startswith(f"pattlite {args[0]}: error: ") and expected in err, (args, err)


def _run_stderr_to(kind, argv, tmp_path, index):
    """Runs `python -m pattlite.cli ARGV` with stderr to a pipe, a file or a terminal; returns stderr."""
    command = [sys.executable, "-m", "pattlite.cli", *argv]
    if kind == "pipe":
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300).stderr
    if kind == "file":
        path = tmp_path / f"stderr-{index}.txt"
        with open(path, "wb") as f:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=f, timeout=300)
        return path.read_bytes()
    import pty

    main, secondary = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=secondary)
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=300)
    finally:
        os.close(main)
    return b"".join(chunks)


def test_an_error_is_printed_every_time_whatever_stderr_is(tmp_path):
    """The stderr filter once lost the last lines before exit on some runs (issue 9): 20 runs of a
    failing command, stderr a pipe, a file or a terminal, print the error 20 times."""
    kinds = ("pipe", "file", "terminal")
    for i in range(20):
        err = _run_stderr_to(kinds[i % 3], ["bench", "--batch-sizes", "x"], tmp_path, i)
        assert b"pattlite bench: error: --batch-sizes 'x'" in err, (i, kinds[i % 3], err)


def test_damaged_result_file_is_named_with_the_fix(folders, capsys, tmp_path):
    """Truncated, empty and `{}` result files: an error naming the file and --force (after TensorFlow is
    imported, in a fresh process too); --force then retrains and replaces the file."""
    results = folders / "results"
    status, out, _ = run_cli(capsys, TRAIN + ["--variant", "published", "--results", results])
    original = Path(last_json(out)["result_path"])  # trained by the first test, or now
    damaged = tmp_path / "results" / "ci" / "experiments" / original.name
    damaged.parent.mkdir(parents=True)
    text = original.read_text()
    for content, problem in ((text[: len(text) // 2], "is not valid JSON"), ("", "is empty"), ("{}", "lacks 'key'")):
        damaged.write_text(content)
        status, out, err = run_cli(capsys, TRAIN + ["--variant", "published", "--results", tmp_path / "results"])
        assert status == 2 and out.strip().splitlines()[-1].startswith("pattlite train:")
        assert f"result file {damaged} {problem}" in err and "--force" in err, err
    for i, kind in enumerate(("pipe", "terminal")):  # the same error from a fresh process, after the import
        err = _run_stderr_to(
            kind, TRAIN + ["--variant", "published", "--results", str(tmp_path / "results")], tmp_path, 100 + i
        )
        assert f"result file {damaged} lacks 'key'".encode() in err, (kind, err[-2000:])
    status, out, _ = run_cli(capsys, TRAIN + ["--variant", "published", "--results", tmp_path / "results", "--force"])
    assert status == 0 and last_json(out)["cached"] is False
    assert json.loads(damaged.read_text())["key"] == damaged.stem


def test_data_warnings_are_printed_and_hints_name_what_exists(folders, capsys, tmp_path):
    """A FER2013 sample with a repeated row and an unreadable one: the warning reaches the console as one
    line naming the file and line, and the error suggests nothing the command line does not offer."""
    lines = (Path(__file__).parent / "fixtures" / "fer2013" / "fer2013.csv").read_text().splitlines()
    lines.insert(10, lines[3])  # data row 2 again, as line 11
    emotion, _, usage = lines[5].split(",")
    lines[5] = ",".join([emotion, " ".join(["x"] * 2304), usage])  # 48x48 values, none a number
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    status, out, err = run_cli(
        capsys,
        [
            "train",
            "--dataset",
            "fer2013",
            "--root",
            tmp_path,
            "--variant",
            "published",
            "--profile",
            "paper",
            "--weights",
            "none",
            "--results",
            tmp_path / "results",
        ],
    )
    assert status == 2
    assert (
        f"pattlite train: warning: {tmp_path / 'fer2013.csv'}: 1 data row(s) repeat an earlier row exactly"
    ) in err and "line 11 repeats line 4" in err
    assert "1 of 169 images cannot be read" in err and "line 6: 'pixels' holds non-integer values" in err
    assert "skip_unreadable" not in err and "never skips images" in err


def test_variant_names_checked_without_keras_are_the_models():
    from pattlite import config
    from pattlite.model import VARIANTS

    assert config.VARIANTS == tuple(VARIANTS)
