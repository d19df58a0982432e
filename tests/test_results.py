"""The result file schema (pattlite.results): round trip, the first format, damaged and unknown files.
Results are built by hand (no training)."""

import json

import numpy as np
import pandas as pd
import pytest

from pattlite import experiments as X
from pattlite.results import RESULT_FORMAT_VERSION, DamagedResultError, ExperimentResult

KEY = "0123456789abcdef"


def _result(key=KEY) -> ExperimentResult:
    exp = X.make_experiment("ci", "fer2013", "published")
    metrics = {
        "n": 4,
        "accuracy": np.float64(0.5),
        "mean_class_accuracy": 0.25,
        "per_class_accuracy": {"anger": 1.0, "disgust": float("nan")},
        "support": {"anger": 2, "disgust": 0},
        "confusion_matrix": np.array([[2, 0], [2, 0]]),
    }
    return ExperimentResult(
        key=key,
        config=exp.to_dict(),
        dataset="fer2013",
        source_dataset="synthetic",
        classes=["anger", "disgust"],
        synthetic=True,
        data=None,
        stage1="cached",
        notes=[],
        weights={"spec": None, "used": "w", "random_init": True},
        split_sizes={"train": 8, "val": 4, "test": 4},
        metrics={"all": {"published": metrics}},
        predictions={"all": {"image_id": ["a", "b", "c", "d"], "y": [0, 0, 1, 1], "published": [0, 0, 0, 0]}},
        history={"stage1": {"accuracy": [0.5], "epoch": [0]}, "stage2": {}},
        epochs={"stage1": 1, "stage2": 0, "stage2_initial_epoch": None},
        trainable_params={"stage1": 10, "stage2": None},
        finetune=None,
        wall_time_s={"stage1": 1.0, "stage2": 0.0, "total": 1.0, "experiment": 2.0},
        provenance={"device": "CPU"},
    )


def test_round_trip(tmp_path):
    result = _result()
    path = result.write(tmp_path / "experiments" / f"{KEY}.json")
    assert result.path == str(path) and not list(path.parent.glob(".tmp-*"))
    stored = json.loads(path.read_text())
    assert stored["format_version"] == RESULT_FORMAT_VERSION == 3
    assert "cached" not in stored and "path" not in stored  # where it came from is not content
    loaded = ExperimentResult.read(path)
    assert loaded.cached and loaded.path == str(path) and loaded.format_version == RESULT_FORMAT_VERSION
    assert loaded.to_dict() == json.loads(json.dumps(result.to_dict()))  # NumPy values as JSON types
    assert loaded.test_metrics["published"]["confusion_matrix"] == [[2, 0], [2, 0]]
    rows = pd.DataFrame(loaded.rows())
    assert rows[["subset", "protocol", "n", "accuracy", "acc_anger"]].values.tolist() == [
        ["all", "published", 4, 0.5, 1.0]
    ]
    assert rows.loc[0, "key"] == KEY and rows.loc[0, "train_stage1_epochs"] == result.config["train"]["stage1_epochs"]
    assert X.collect_results(tmp_path)["key"].tolist() == [KEY]


def test_first_format_without_a_version_loads(tmp_path):
    """Files written before the format had a version (and stored "cached": false) are read as they are."""
    content = _result().to_dict()
    del content["format_version"]
    content["cached"] = False
    path = tmp_path / f"{KEY}.json"
    path.write_text(json.dumps(content))
    loaded = ExperimentResult.read(path)
    assert loaded.format_version == 1 and loaded.cached is True
    del content["cached"]
    assert json.dumps(loaded.to_dict()) == json.dumps({"format_version": 1, **content})


def test_second_format_loads_without_the_fields_the_third_added(tmp_path):
    """Format 2 files (before the extraction engine and the test probes were recorded) still load."""
    content = _result().to_dict()
    content.update(format_version=2)
    del content["extraction"], content["test_probe"]
    path = tmp_path / f"{KEY}.json"
    path.write_text(json.dumps(content))
    loaded = ExperimentResult.read(path)
    assert loaded.format_version == 2 and loaded.extraction is None and loaded.test_probe == {}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c.update(format_version=4),
            "has format version 4; this pattlite reads result format versions 1, 2, 3",
        ),
        (lambda c: c.pop("metrics"), "lacks 'metrics'"),
        (lambda c: c.update(accuracy=0.5), "has field(s) 'accuracy', which a result of format version 3 does not have"),
        (lambda c: c.update(key="fedcba9876543210"), "holds the result of key 'fedcba9876543210'"),
        (lambda c: c["metrics"].pop("all"), "'metrics' lacks the test split"),
    ],
)
def test_damaged_or_unknown_files_are_named(tmp_path, change, message):
    content = _result().to_dict()
    change(content)
    path = tmp_path / f"{KEY}.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DamagedResultError) as caught:
        ExperimentResult.read(path)
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "--force" in str(caught.value)


def test_unfinished_writes_and_weights_are_not_results(tmp_path):
    folder = tmp_path / "experiments"
    _result().write(folder / f"{KEY}.json")
    (folder / f".tmp-1-{KEY}.json").write_text("{")
    (folder / f"{KEY}.weights.h5").write_bytes(b"\0")
    assert len(X.collect_results(tmp_path)) == 1
