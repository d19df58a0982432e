"""`pattlite crossdataset`: a trained model on a dataset it was not trained on, each image predicted alone.

    pattlite crossdataset --dataset ckplus [--head my_head.weights.h5] [--output crossdataset.json]
    pattlite crossdataset --dataset fer2013 --root data/fer2013 --output crossdataset.json

The model (`pattlite.pretrained.load_pretrained`: the shipped FERPlus head, or `--head`) predicts every
image of the target under the `independent` protocol of `pattlite.evaluate` (no prediction depends on
another image, whatever the variant: the published head's batch mixing is switched off). The images
are read by the project's readers and pixel cache (`pattlite.data.load_manifest`, `load_pixels`) at the
head's image size, as its training images were. Targets (`TARGETS`): every CK+ image (981 in CK+48;
CK+ has contempt and no neutral) and the FER2013 test split (PrivateTest, 3,589 images; no contempt).
FER2013's test faces are FERPlus' test faces with FER2013's original labels: that number
measures agreement with those labels, not accuracy on unseen faces.

Classes are matched by name (`CLASS_MAPS`, written out once; the readers have already turned the
datasets' own names, e.g. FER2013's "Happy" and CK+'s "happy" folder, into the canonical "happiness").
Two accuracies per dataset:

- `restricted` ("as the labels allow"): the argmax over the model's classes that the target has;
- `unrestricted`: the plain argmax; a prediction of a class the target lacks (neutral on CK+, contempt on
  FER2013) counts as wrong; `predicted_absent` counts them.

Each with its per-class recall and confusion matrix (rows: the target's classes; columns: the target's
classes, or for `unrestricted` the model's). `--output FILE.json` adds the result to FILE (one entry per
dataset; an earlier entry for the same dataset is replaced), with the head's key, seed and commit and
`pattlite.provenance.provenance()`. Exit status as the other commands: 1 for a missing dataset or weights file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pattlite import config

TARGETS = ("ckplus", "fer2013")
# The split evaluated: CK+ is small and nobody trains on all of it, so every image; FER2013's test split.
TARGET_SPLITS = {"ckplus": None, "fer2013": "test"}
_SAME_7 = {c: c for c in ("anger", "disgust", "fear", "happiness", "sadness", "surprise")}
# For each target: each model class (canonical name) -> the target's class of that name, None when the
# target has no such class. Checked against config.DATASET_CLASSES by tests/test_crossdataset.py.
CLASS_MAPS = {
    "ckplus": {**_SAME_7, "contempt": "contempt", "neutral": None},
    "fer2013": {**_SAME_7, "neutral": "neutral", "contempt": None},
}
FORMAT, FORMAT_VERSION = "pattlite-crossdataset", 1
# The shipped model's numbers, committed (the model card and notebooks/09_use_the_model.ipynb read them).
COMMITTED_RESULTS = config.PROJECT_ROOT / "docs" / "results" / "model" / "crossdataset.json"
DEFAULT_BATCH_SIZE = 32


def class_map(model_classes, target: str) -> np.ndarray:
    """For each model class, the index of its class in the target's labels, or -1 when the target lacks it."""
    config.check_name("cross-dataset target", target, TARGETS)
    unknown = [c for c in model_classes if c not in CLASS_MAPS[target]]
    if unknown:
        raise ValueError(
            f"model class(es) {unknown} have no entry in the {target} class map "
            f"(pattlite.crossdataset.CLASS_MAPS knows {sorted(CLASS_MAPS[target])})"
        )
    labels = config.DATASET_CLASSES[target]
    return np.array(
        [-1 if CLASS_MAPS[target][c] is None else labels.index(CLASS_MAPS[target][c]) for c in model_classes],
        dtype=np.int64,
    )


def _recall(confusion: np.ndarray, correct_column, classes) -> dict:
    """{class: recall}; None for a class without images, 0 for one the model cannot predict (column -1)."""
    recall = {}
    for i, c in enumerate(classes):
        support, column = confusion[i].sum(), correct_column[i]
        recall[c] = None if not support else float(confusion[i, column] / support) if column >= 0 else 0.0
    return recall


def _scores(y, predicted, confusion, correct_column, classes, columns) -> dict:
    recall = _recall(confusion, correct_column, classes)
    present = [r for r in recall.values() if r is not None]
    return {
        "accuracy": float(np.mean(predicted == y)) if len(y) else float("nan"),
        "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": recall,
        "confusion_matrix": confusion.tolist(),
        "confusion_columns": list(columns),
    }


def score(probabilities, y, model_classes, target: str) -> dict:
    """{"n", "support", "restricted", "unrestricted"} of the model's probabilities (N, model classes)
    against the target's integer labels y (see the module docstring)."""
    index = class_map(model_classes, target)
    labels = list(config.DATASET_CLASSES[target])
    probabilities, y = np.asarray(probabilities, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if probabilities.ndim != 2 or probabilities.shape != (len(y), len(model_classes)):
        raise ValueError(f"probabilities of shape {probabilities.shape}: expected ({len(y)}, {len(model_classes)})")
    shared = np.flatnonzero(index >= 0)
    restricted = index[shared[np.argmax(probabilities[:, shared], axis=1)]]
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (y, restricted), 1)
    out = {
        "n": int(len(y)),
        "support": dict(zip(labels, np.bincount(y, minlength=len(labels)).tolist())),
        "restricted": _scores(y, restricted, confusion, list(range(len(labels))), labels, labels),
    }
    free = probabilities.argmax(axis=1)
    confusion = np.zeros((len(labels), len(model_classes)), dtype=np.int64)
    np.add.at(confusion, (y, free), 1)
    column = [int(np.flatnonzero(index == i)[0]) if (index == i).any() else -1 for i in range(len(labels))]
    out["unrestricted"] = _scores(y, index[free], confusion, column, labels, model_classes)
    out["unrestricted"]["predicted_absent"] = {
        c: int((free == j).sum()) for j, c in enumerate(model_classes) if index[j] < 0
    }
    return out


def evaluation_images(dataset: str, root=None):
    """The target's manifest rows evaluated (`TARGET_SPLITS`), attrs kept. `DatasetNotFoundError` (a
    `FileNotFoundError`) names the folder tried and `$PATTLITE_<NAME>_ROOT` when the dataset is absent."""
    from pattlite.data import load_manifest

    config.check_name("cross-dataset target", dataset, TARGETS)
    manifest = load_manifest(dataset, root)
    split = TARGET_SPLITS[dataset]
    if split is not None:
        attrs = dict(manifest.attrs)
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
        manifest.attrs = attrs
    if manifest.empty:
        raise ValueError(f"{dataset}: no {split + ' ' if split else ''}images in {manifest.attrs.get('source')}")
    return manifest


@dataclass
class CrossDatasetResult:
    """One target's numbers (`score`) with what produced them; `asdict` of it is the JSON entry."""

    dataset: str
    split: str
    n: int
    classes: list
    model_classes: list
    class_map: dict
    support: dict
    restricted: dict
    unrestricted: dict
    protocol: str = "independent"
    head: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    seconds: float | None = None


def run_crossdataset(
    dataset: str,
    head=None,
    backbone="imagenet",
    root=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    loaded=None,
) -> CrossDatasetResult:
    """Evaluates the trained model of `head` (default the shipped one; or `loaded`, a `Pretrained`) on
    `dataset` (`TARGETS`), each image alone. The head's sidecar and the dataset are checked before the
    model is built."""
    from pattlite import evaluate, report
    from pattlite.data import load_pixels
    from pattlite.pretrained import HOW_TO_GIVE, SHIPPED_HEAD, HeadWeightsNotFoundError, read_info

    started = time.perf_counter()
    if loaded is None and head is None and not SHIPPED_HEAD.is_file():
        raise HeadWeightsNotFoundError(f"the shipped weights file {SHIPPED_HEAD} does not exist; {HOW_TO_GIVE}")
    head_path = Path(loaded.head_path if loaded is not None else (head or SHIPPED_HEAD)).expanduser()
    info = loaded.info if loaded is not None else read_info(head_path)
    index = class_map(info.classes, dataset)
    manifest = evaluation_images(dataset, root)
    pixels = load_pixels(manifest, info.image_size, progress=progress)
    if loaded is None:
        from pattlite.predict import load_model

        loaded = load_model(head_path, backbone)
    probabilities = evaluate.predict(
        loaded.model, pixels, manifest["y"].to_numpy(), "independent", batch_size=batch_size
    )
    scores = score(probabilities, manifest["y"].to_numpy(), info.classes, dataset)
    labels = list(config.DATASET_CLASSES[dataset])
    identity = manifest.attrs.get("data") or {}
    return CrossDatasetResult(
        dataset=dataset,
        split=TARGET_SPLITS[dataset] or "all",
        n=scores["n"],
        classes=labels,
        model_classes=list(info.classes),
        support=scores["support"],
        class_map={c: (labels[i] if i >= 0 else None) for c, i in zip(info.classes, index)},
        restricted=scores["restricted"],
        unrestricted=scores["unrestricted"],
        head={
            "path": str(head_path),
            "variant": info.variant,
            "dataset": info.dataset,
            "seed": info.seed,
            "profile": info.profile,
            "experiment_key": info.experiment_key,
            "source_commit": info.source_commit,
            "weights_sha256": info.weights_sha256,
            "synthetic": info.synthetic,
            "backbone": None if loaded.backbone is None else str(loaded.backbone),
        },
        data={
            "source": manifest.attrs.get("source"),
            "root": identity.get("root"),
            "content": identity.get("content"),
            "image_size": info.image_size,
            "synthetic": bool(manifest.attrs.get("synthetic")),
        },
        provenance=report.provenance(),
        seconds=round(time.perf_counter() - started, 1),
    )


def read_results(path) -> dict:
    """{dataset: result dict} of a file written by `write_result` (`ValueError` naming a malformed file)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if (
        not isinstance(content, dict)
        or content.get("format") != FORMAT
        or not isinstance(content.get("datasets"), dict)
    ):
        raise ValueError(f"{path} is not a file of `pattlite crossdataset --output` (format {FORMAT!r})")
    if content.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {content.get('format_version')!r}; this pattlite reads {FORMAT_VERSION}"
        )
    return content["datasets"]


def write_result(path, result) -> Path:
    """Adds `result` to the file `path` (created when missing), replacing an entry of the same dataset."""
    from pattlite.files import write_json_atomic

    entry = asdict(result) if isinstance(result, CrossDatasetResult) else dict(result)
    datasets = read_results(path) if Path(path).exists() else {}
    datasets[entry["dataset"]] = entry
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(
        path,
        {"format": FORMAT, "format_version": FORMAT_VERSION, "datasets": {k: datasets[k] for k in sorted(datasets)}},
    )


def summary_table(results: dict):
    """One row per dataset: images, the two accuracies and mean class recalls (%), absent-class predictions."""
    import pandas as pd

    rows = []
    for name, r in results.items():
        absent = r["unrestricted"].get("predicted_absent", {})
        rows.append(
            {
                "dataset": config.DATASET_NAMES.get(name, name),
                "images": r["n"],
                "accuracy, classes it has (%)": round(100 * r["restricted"]["accuracy"], 2),
                "accuracy, all outputs (%)": round(100 * r["unrestricted"]["accuracy"], 2),
                "mean class recall, classes it has (%)": round(100 * r["restricted"]["mean_class_accuracy"], 2),
                "predicted a class it lacks": ", ".join(f"{c} {k}" for c, k in absent.items()) or "-",
                "model": f"{r['head'].get('variant')} on {r['head'].get('dataset')}, seed {r['head'].get('seed')}, "
                f"key {r['head'].get('experiment_key')}",
            }
        )
    return pd.DataFrame(rows)


def recall_table(results: dict, which: str = "restricted"):
    """Per-class recall (%): one row per class, one column per dataset (empty where it has no such class)."""
    import pandas as pd

    return (
        pd.DataFrame(
            {
                config.DATASET_NAMES.get(name, name): {
                    c: (None if v is None else round(100 * v, 2)) for c, v in r[which]["per_class_recall"].items()
                }
                for name, r in results.items()
            }
        )
        .reindex(list(config.CLASSES))
        .dropna(how="all")
    )


# ---------------------------------------------------------------------------------------------------
# command line


def add_parser(subparsers) -> None:
    """`pattlite crossdataset` (see the module docstring)."""
    from pattlite.predict import add_model_arguments

    p = subparsers.add_parser(
        "crossdataset",
        help="a trained model's accuracy on CK+ or FER2013, each image predicted alone",
        description="Evaluate a trained model (the shipped FERPlus head, or --head) on every CK+ image or the "
        "FER2013 test split, each image alone: accuracy over the classes the dataset has and over all "
        "the model's classes, per-class recall, confusion matrices.",
    )
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(TARGETS)}")
    add_model_arguments(p)
    p.add_argument("--root", default=None, help="dataset folder (default $PATTLITE_<NAME>_ROOT, else data/<name>/)")
    p.add_argument("--output", default=None, help="add the result to this JSON file (one entry per dataset)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per model call (default {DEFAULT_BATCH_SIZE}; each is still predicted alone)",
    )
    p.set_defaults(handler=cmd_crossdataset)


def format_result(r: CrossDatasetResult) -> str:
    """The human summary the command prints: per-class recall and both accuracies."""
    absent = r.unrestricted["predicted_absent"]
    lines = [f"{'class':10s} {'images':>6s}  recall, classes it has  recall, all outputs"]
    for c in r.classes:
        pair = [r.restricted["per_class_recall"][c], r.unrestricted["per_class_recall"][c]]
        lines.append(
            f"{c:10s} {r.support[c]:6d}  " + "  ".join(f"{'-' if v is None else f'{100 * v:.2f}%':>20s}" for v in pair)
        )
    lines.append(
        f"accuracy: {100 * r.restricted['accuracy']:.2f}% over the {len(r.classes)} classes "
        f"{config.DATASET_NAMES[r.dataset]} has, {100 * r.unrestricted['accuracy']:.2f}% over all "
        f"{len(r.model_classes)} outputs (predicted a class it lacks: "
        + (", ".join(f"{c} {k}" for c, k in absent.items()) or "none")
        + ")"
    )
    return "\n".join(lines)


def cmd_crossdataset(args) -> int:
    from pattlite.predict import backbone_argument

    result = run_crossdataset(
        args.dataset,
        head=args.head,
        backbone=backbone_argument(args.backbone),
        root=args.root,
        batch_size=args.batch_size,
        progress=True,
    )
    h = result.head
    print(
        f"pattlite crossdataset: {config.DATASET_NAMES[result.dataset]}, {result.n} images ({result.split}; "
        f"{result.data['source']}), each predicted alone; model {h['variant']} trained on {h['dataset']} "
        f"(seed {h['seed']}, key {h['experiment_key']}; {h['path']})",
        flush=True,
    )
    print(format_result(result))
    if h["backbone"] is None or h["synthetic"] or result.data["synthetic"]:
        print(
            "note: a random backbone, a synthetic head or synthetic data: these numbers mean nothing", file=sys.stderr
        )
    if args.output:
        print(f"written to {write_result(Path(args.output).expanduser(), result)}")
    print(json.dumps(asdict(result)), flush=True)
    return 0
