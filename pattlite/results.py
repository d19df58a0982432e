"""The result file of one experiment: what it holds, and the one place that writes and reads it.

`pattlite.experiments.run_experiment` writes `<results dir>/experiments/<key>.json` once, atomically;
every reader (`pattlite.experiments.collect_results`, the audit, the CLI, the grid) goes through
`ExperimentResult.read`, which checks the file and names it when it cannot be read.

Format versions (`format_version` in the file):

- 1: the first format, without a `format_version` field (and with a stored `"cached": false`). Its
  fields are those of version 2, so it is read as it is; `format_version` is then 1.
- 2: the second format.
- 3: this format (`RESULT_FORMAT_VERSION`); versions 1 and 2 are still read.

A file of a later version is an error naming the file and the versions this code reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from pattlite.files import write_json_atomic

RESULT_FORMAT_VERSION = 3  # 3: test_probe and extraction added (optional)
READABLE_VERSIONS = (1, 2, 3)
RESULT_FILE_NAME = re.compile(r"^[0-9a-f]{16}\.json$")  # <key>.json; never the .tmp-* files of a write
WHOLE_TEST = "all"  # the subset of `metrics` and `predictions` that is the whole test split


class DamagedResultError(ValueError):
    """A result file that cannot be read as a result; the message names it and says what to do."""


@dataclasses.dataclass
class ExperimentResult:
    """Everything one trained-and-evaluated experiment produced (the content of its result file).

    Attributes:
        key: `Experiment.key()`; the file is `<key>.json`.
        config: `Experiment.to_dict()`: everything that determined the experiment.
        dataset: the benchmark; source_dataset: the reader that supplied its data ("synthetic" for a
            stand-in); classes: class names in label order; synthetic: True for synthetic data.
        data: root, fingerprint, content digest, files and bytes of the dataset read (None for synthetic data).
        stage1: "exact" or "cached"; notes: what a reader must know (e.g. no augmentation on features).
        weights: {"spec", "used", "random_init"}: the backbone weights asked for and used.
        split_sizes: images per split ("train", "val", "test").
        metrics: {subset: {protocol: metrics}}: subset "all" is the test split, the others the
            challenging subsets present; metrics as `pattlite.evaluate.evaluate` returns them
            (n, accuracy, per_class_accuracy, mean_class_accuracy, support, confusion_matrix).
        predictions: {subset: {"image_id", "y", <protocol>: predicted labels}}.
        history: {"stage1": {metric: [per epoch], "epoch": [...]}, "stage2": {...}}.
        epochs: {"stage1", "stage2", "stage2_initial_epoch"}.
        trainable_params: {"stage1", "stage2"}.
        finetune: `pattlite.model.set_finetune_trainable`'s report for stage 2 (None when not run).
        wall_time_s: {"stage1", "stage2", "total", "experiment"} seconds.
        provenance: package versions, device, git commit (`pattlite.provenance.provenance`).
        extraction: {"engine", "version"} of the library that computed the cached features (None when
            stage 1 ran on pixels).
        test_probe: {stage-2 epochs run: {protocol: test accuracy}} at the experiment's
            `test_probe_epochs`, for the analysis of an epoch cap only (never used to pick a model).
        format_version: the file's format (`RESULT_FORMAT_VERSION` when written now).
        cached: True when read from a file rather than computed now (not stored).
        path: where the file is, once written or read (not stored).
    """

    key: str
    config: dict
    dataset: str
    source_dataset: str | None
    classes: list
    synthetic: bool
    data: dict | None
    stage1: str
    notes: list
    weights: dict
    split_sizes: dict
    metrics: dict
    predictions: dict
    history: dict
    epochs: dict
    trainable_params: dict
    finetune: dict | None
    wall_time_s: dict
    provenance: dict
    extraction: dict | None = None
    test_probe: dict = dataclasses.field(default_factory=dict)
    format_version: int = RESULT_FORMAT_VERSION
    cached: bool = dataclasses.field(default=False, compare=False)
    path: str | None = dataclasses.field(default=None, compare=False)

    NOT_STORED = ("cached", "path")

    @classmethod
    def stored_fields(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.NOT_STORED)

    @classmethod
    def required_fields(cls) -> tuple:
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )

    def to_dict(self) -> dict:
        """The file's content: every stored field, JSON types only, `format_version` first."""
        content = {"format_version": self.format_version}
        content.update({name: getattr(self, name) for name in self.stored_fields() if name != "format_version"})
        return jsonable(content)

    def write(self, path) -> Path:
        """Writes the result file atomically (temporary file + `os.replace`); sets `path`."""
        path = write_json_atomic(path, self.to_dict())
        self.path = str(path)
        return path

    @property
    def test_metrics(self) -> dict:
        """{protocol: metrics} on the whole test split (`metrics["all"]`)."""
        return self.metrics[WHOLE_TEST]

    def rows(self) -> list[dict]:
        """The result as table rows, one per subset x protocol (`pattlite.experiments.collect_results`).

        Columns: key, the experiment's fields (model options as `opt_<name>`, training settings as
        `train_<name>`, source as `source_dataset`, data as `data_root` and `data_content`),
        epochs_stage1, epochs_stage2, trainable_params_stage1/2, wall_time_s (total), subset ("all" =
        the test split), protocol, n, accuracy, mean_class_accuracy, `acc_<class>` per class, and on
        the whole-test rows `probe_<epochs>` (the test probe's accuracy after that many stage-2 epochs).
        """
        base = {"key": self.key}
        for name, value in self.config.items():
            if name == "model_options":
                base.update({f"opt_{k}": v for k, v in value.items()})
            elif name == "train":
                base.update({f"train_{k}": v for k, v in value.items()})
            elif name == "source":
                base["source_dataset"] = value["dataset"]
            elif name == "data":
                base.update(data_root=value["root"], data_content=value.get("content"))
            elif name == "protocols":
                continue
            else:
                base[name] = value
        base.update(
            epochs_stage1=self.epochs["stage1"],
            epochs_stage2=self.epochs["stage2"],
            trainable_params_stage1=self.trainable_params["stage1"],
            trainable_params_stage2=self.trainable_params["stage2"],
            wall_time_s=self.wall_time_s["total"],
        )
        rows = []
        for subset, by_protocol in self.metrics.items():
            for protocol, m in by_protocol.items():
                row = dict(
                    base,
                    subset=subset,
                    protocol=protocol,
                    n=m["n"],
                    accuracy=m["accuracy"],
                    mean_class_accuracy=m["mean_class_accuracy"],
                )
                row.update({f"acc_{c}": v for c, v in m["per_class_accuracy"].items()})
                if subset == WHOLE_TEST:
                    row.update(
                        {
                            f"probe_{epochs}": by_protocol_probe[protocol]
                            for epochs, by_protocol_probe in self.test_probe.items()
                            if protocol in by_protocol_probe
                        }
                    )
                rows.append(row)
        return rows

    @classmethod
    def read(cls, path, key: str | None = None) -> "ExperimentResult":
        """Reads and checks a result file; `DamagedResultError` naming the file when it is not a
        readable result.

        Args:
            path: the `<key>.json` file.
            key: the key it must hold (default: its file name's).
        """
        path = Path(path)
        key = path.stem if key is None else key
        fix = "Delete it, or retrain with `pattlite train ... --force` (force=True in Python), which replaces it"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DamagedResultError(f"result file {path} is not UTF-8 text ({error}). {fix}") from None
        if not text.strip():
            raise DamagedResultError(f"result file {path} is empty. {fix}")
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise DamagedResultError(
                f"result file {path} is not valid JSON (truncated or edited?): {error}. {fix}"
            ) from None
        if not isinstance(content, dict):
            raise DamagedResultError(
                f"result file {path} holds a JSON {type(content).__name__}, not a result object. {fix}"
            )
        version = content.get("format_version", 1)
        if version not in READABLE_VERSIONS:
            raise DamagedResultError(
                f"result file {path} has format version {version!r}; this pattlite reads result format "
                f"versions {', '.join(map(str, READABLE_VERSIONS))} (written now: {RESULT_FORMAT_VERSION}). "
                f"Read it with the pattlite that wrote it, or retrain with --force"
            )
        if version == 1:
            content = {name: value for name, value in content.items() if name != "cached"}
        content["format_version"] = version
        missing = [name for name in cls.required_fields() if name not in content]
        if missing:
            raise DamagedResultError(
                f"result file {path} lacks {', '.join(map(repr, missing))}; a result "
                f"(format version {version}) has {', '.join(cls.stored_fields())}. {fix}"
            )
        unknown = sorted(set(content) - set(cls.stored_fields()))
        if unknown:
            raise DamagedResultError(
                f"result file {path} has field(s) {', '.join(map(repr, unknown))}, which "
                f"a result of format version {version} does not have. {fix}"
            )
        if content["key"] != key:
            raise DamagedResultError(
                f"result file {path} holds the result of key {content['key']!r}, not {key!r}. {fix}"
            )
        if not isinstance(content["metrics"], dict) or WHOLE_TEST not in content["metrics"]:
            raise DamagedResultError(f"result file {path}: 'metrics' lacks the test split ('all'). {fix}")
        return cls(**content, cached=True, path=str(path))


def jsonable(value):
    """`value` with NumPy arrays and scalars, tuples and paths turned into JSON types (dict keys as str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def fold_label(value) -> str:
    """A CK+ fold as tables print it ("3"); "" for no fold (None, NaN or "", as result frames hold it)."""
    return "" if value is None or value == "" or value != value else str(int(float(value)))


def result_file(results_dir, key: str) -> Path:
    """Where the result of the experiment with `key` lives in a results folder."""
    return Path(results_dir) / "experiments" / f"{key}.json"


def result_files(results_dir) -> list[Path]:
    """The result files of a results folder (`<results_dir>/experiments/<key>.json`), sorted; never the
    `.tmp-*` files of an unfinished write or the weights beside them."""
    folder = Path(results_dir) / "experiments"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if RESULT_FILE_NAME.match(p.name))
