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
    done = subprocess.run([script] + TRAIN + ["--variant", "published", "--results", str(results)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)
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


@pytest.mark.parametrize("args, valid", [
    (["train", "--dataset", "imagenet", "--variant", "published", "--profile", "ci"],
     "valid datasets: ckplus, rafdb, fer2013, ferplus, synthetic"),
    (["train", "--dataset", "synthetic", "--variant", "mobilevit", "--profile", "ci"],
     "valid variants: published, no_mixing, pattlite"),
    (["train", "--dataset", "synthetic", "--variant", "published", "--profile", "fast"],
     "valid profiles: paper, demo, ci"),
    (["train", "--dataset", "synthetic", "--variant", "published", "--profile", "paper"],
     "needs a synthetic profile"),
])
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
    status, out, _ = run_cli(capsys, ["bench", "--parts", "cached", "--cached-samples", "24",
                                      "--extract-images", "8", "--image-size", "32"])
    assert status == 0
    payload = last_json(out)
    assert set(payload["training"]) == {"published", "pattlite"}
    for stages in payload["training"].values():
        assert set(stages) == {"stage1", "stage2_as_coded"}
        for timing in stages.values():
            assert timing["fast"]["samples"] == timing["plain"]["samples"] == 24
            assert timing["speedup"] == timing["fast"]["samples_per_s"] / timing["plain"]["samples_per_s"]
    assert payload["prediction"]["published"]["fast"]["samples_per_s"] > 0
    assert payload["extraction"]["images_per_s"] > 0
    assert "| cached training published stage1 | 8 |" in out


def test_bad_batch_sizes_exit_2(capsys):
    status, _, err = run_cli(capsys, ["bench", "--batch-sizes", "1,x"])
    assert status == 2 and "comma-separated integers" in err


@pytest.mark.slow
def test_bench_prints_a_table_and_json(capsys):
    status, out, _ = run_cli(capsys, ["bench", "--parts", "images", "--steps", "1", "--batch-sizes", "2",
                                      "--image-size", "32", "--train-batch-size", "2"])
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
