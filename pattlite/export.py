"""`pattlite export` and `pattlite export-head`: a trained PAtt-Lite as a file that runs without TensorFlow.

    pattlite export --format onnx pattlite.onnx            # the shipped head, ImageNet backbone
    pattlite export --format openvino pattlite.xml         # OpenVINO IR (.xml + .bin)
    pattlite export --format savedmodel pattlite_savedmodel/
    pattlite export-head results/cpu_full/experiments/<key>.weights.h5 my_head.weights.h5

`export` writes the full image model (`pattlite.pretrained.load_pretrained`: input (N, size, size, 3)
pixel values 0..255 -> resize to 224 -> MobileNet preprocessing -> MobileNetV1 to the cut -> head ->
class probabilities) with Keras' `Model.export` on the TensorFlow backend (ONNX through tf2onnx,
OpenVINO through `openvino.convert_model`); on another Keras backend the export runs in a TensorFlow
child process (`python -m pattlite.export`). It then runs the exported file (`pattlite.runtime`:
ONNX Runtime, OpenVINO, TensorFlow) and Keras on the same `--check` images (synthetic faces prepared
as `pattlite predict --no-detect` prepares faces, batches of 32) and prints the largest absolute
difference of the probabilities; above `TOLERANCE` the command fails. `<OUT>.json` beside the export
(inside a SavedModel folder: `pattlite.json`) holds the head's sidecar (classes in output order, image
size, face preparation) and the check.

The `published` variant exports too (`--head` of a published head), with its batch-mixing attention:
an exported published model's outputs depend on the other images of the batch, as in Keras.

`export-head` turns a training's weights file (head + optimizer variables, beside its `<key>.json`)
into a head-only `.weights.h5` and its sidecar (`pattlite.pretrained.export_head`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pattlite.runtime import info_path

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "savedmodel": ""}
KERAS_FORMATS = {"onnx": "onnx", "openvino": "openvino", "savedmodel": "tf_saved_model"}
NEEDS = {"onnx": "tf2onnx and onnxruntime", "openvino": "openvino", "savedmodel": "tensorflow"}
DEFAULT_CHECK_IMAGES = 100
CHECK_BATCH = 32
TOLERANCE = 1e-4  # largest absolute difference of a probability between the export and Keras


class ExportError(RuntimeError):
    """An export that failed or whose outputs differ from Keras' beyond `TOLERANCE`."""


def check_out(out, fmt: str) -> Path:
    """The output path for `fmt`, checked: a `.onnx` / `.xml` file, or a folder for a SavedModel."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if FORMATS[fmt] and out.suffix != FORMATS[fmt]:
        raise ValueError(f"{out}: a {fmt} export must be named *{FORMATS[fmt]}")
    if not FORMATS[fmt] and out.suffix:
        raise ValueError(f"{out}: a SavedModel is a folder; give a name without a suffix")
    return out


def export_keras(model, out, fmt: str) -> Path:
    """`model.export` of a Keras model to `out` in `fmt` (TensorFlow backend only: tf2onnx and OpenVINO's
    converter read TensorFlow graphs)."""
    from pattlite import backends

    if not backends.current().TENSORFLOW_MODELS:
        raise ExportError(
            f"export_keras needs the TensorFlow backend, not {backends.name()!r}; "
            "export_pretrained runs it in a TensorFlow child process"
        )
    out = check_out(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    model(
        np.zeros((1, *model.inputs[0].shape[1:]), "float32"), training=False
    )  # Keras' ONNX export needs a called model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch probes np.object
            model.export(str(out), format=KERAS_FORMATS[fmt], verbose=False)
    except ImportError as error:
        raise ExportError(f"the {fmt} export needs {NEEDS[fmt]} (pip install 'pattlite[export]'): {error}") from error
    return out


def check_images(info, n: int, seed: int = 1) -> np.ndarray:
    """`n` synthetic faces prepared as `pattlite predict --no-detect` prepares a face for this head."""
    from pattlite.data.synthetic import generate_synthetic
    from pattlite.faces import face_input

    side = info.face_size or info.image_size
    images, _ = generate_synthetic(
        num_classes=8, image_size=max(16, side), n_train=0, n_val=0, n_test=n, seed=seed, progress=False
    )
    return np.stack([face_input(im, info.image_size, info.face_size, info.grayscale) for im in images])


def compare(model, run, images, batch_size: int = CHECK_BATCH) -> float:
    """Largest absolute difference between Keras' and the export's probabilities, batch by batch."""
    worst = 0.0
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype="float32")
        keras_p = np.asarray(model.predict_on_batch(batch))
        worst = max(worst, float(np.abs(keras_p - np.asarray(run(batch))).max()))
    return worst


def export_pretrained(
    out,
    fmt: str,
    head=None,
    backbone="imagenet",
    variant=None,
    check: int = DEFAULT_CHECK_IMAGES,
    log=print,
    loaded=None,
) -> dict:
    """Exports the trained model of `head` (default the shipped one; see `load_pretrained`) and checks it.

    `loaded`: the `Pretrained` of these arguments when the caller has it already (TensorFlow backend).

    Returns:
        {"path", "format", "variant", "classes", "input_shape", "check_images", "max_abs_diff",
        "tolerance", "seconds", "info"} (also written to `info_path(out)`). `ExportError` when the
        difference exceeds `TOLERANCE`.
    """
    from pattlite import backends

    out = check_out(out, fmt)
    if not backends.current().TENSORFLOW_MODELS:
        return _in_tensorflow(out, fmt, head, backbone, variant, check, log)
    from pattlite.pretrained import load_pretrained
    from pattlite.runtime import load_exported

    started = time.perf_counter()
    loaded = loaded or load_pretrained(head, backbone=backbone, variant=variant)
    export_keras(loaded.model, out, fmt)
    summary = {
        "path": str(out),
        "format": fmt,
        "variant": loaded.info.variant,
        "batch_dependent": loaded.info.batch_dependent,
        "classes": list(loaded.info.classes),
        "input_shape": [None, *loaded.input_shape],
        "input": "float32 pixel values 0..255",
        "head": str(loaded.head_path),
        "backbone": None if loaded.backbone is None else str(loaded.backbone),
        "check_images": int(check),
        "max_abs_diff": None,
        "tolerance": TOLERANCE,
    }
    if check:
        images = check_images(loaded.info, check)
        summary["max_abs_diff"] = compare(loaded.model, load_exported(out), images)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["info"] = asdict(loaded.info)
    from pattlite.files import write_json_atomic

    write_json_atomic(info_path(out), summary)
    if check and summary["max_abs_diff"] > TOLERANCE:
        raise ExportError(
            f"{out}: the exported model's probabilities differ from Keras' by up to "
            f"{summary['max_abs_diff']:.2e} on {check} images (tolerance {TOLERANCE:g})"
        )
    return summary


def _in_tensorflow(out, fmt, head, backbone, variant, check, log) -> dict:
    """`export_pretrained` in a child process on Keras' TensorFlow backend; its summary."""
    command = [
        sys.executable,
        "-m",
        "pattlite.export",
        str(out),
        "--format",
        fmt,
        "--check",
        str(check),
        "--backbone",
        "none" if backbone is None else str(backbone),
    ]
    command += ["--head", str(head)] if head is not None else []
    command += ["--model", variant] if variant is not None else []
    if log:
        log(
            f"exporting on Keras' TensorFlow backend in a child process (this process runs on "
            f"{os.environ.get('KERAS_BACKEND', 'another backend')})"
        )
    done = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND="tensorflow"), stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise ExportError(
            f"the export in a TensorFlow child process failed (status {done.returncode}); its error is printed above"
        )
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
# command line


def add_parsers(subparsers) -> None:
    """`pattlite export` and `pattlite export-head` (see the module docstring)."""
    from pattlite.predict import add_model_arguments

    p = subparsers.add_parser(
        "export",
        help="the trained model as ONNX, OpenVINO IR or a SavedModel, checked against Keras",
        description="Export the full trained model (resize, MobileNetV1 backbone, head) so that it runs without "
        "TensorFlow, and check its probabilities against Keras'.",
    )
    p.add_argument("out", metavar="OUT", help="model.onnx, model.xml (OpenVINO) or a SavedModel folder")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), help="onnx, openvino or savedmodel")
    add_model_arguments(p)
    p.add_argument(
        "--model",
        default=None,
        choices=("pattlite", "published"),
        help="the variant the head must be (default: whatever the head file holds)",
    )
    p.add_argument(
        "--check",
        type=int,
        default=DEFAULT_CHECK_IMAGES,
        help=f"synthetic faces to compare the export with Keras on (default {DEFAULT_CHECK_IMAGES}; 0: none)",
    )
    p.set_defaults(handler=cmd_export)
    h = subparsers.add_parser(
        "export-head",
        help="a training's head weights as a head-only .weights.h5 with its sidecar",
        description="Write the head-only weights (no optimizer) and a .json sidecar from a training's "
        "results/<profile>/experiments/<key>.weights.h5 (its <key>.json beside it).",
    )
    h.add_argument("source", metavar="SOURCE", help="<key>.weights.h5 of a training (or a head file)")
    h.add_argument("out", metavar="OUT", help="the new <name>.weights.h5 (the sidecar: <name>.json)")
    h.set_defaults(handler=cmd_export_head)


def _fail(command: str, message: str) -> int:
    print(f"pattlite {command}: error: {message}", file=sys.stderr)
    return 2


def cmd_export(args) -> int:
    from pattlite import backends
    from pattlite.predict import backbone_argument, load_model
    from pattlite.pretrained import SHIPPED_HEAD, read_info
    from pattlite.profiles import resolve_weights

    if args.check < 0:
        return _fail("export", f"--check {args.check}: expected an integer >= 0")
    loaded = None
    try:  # missing or unfitting weights fail here, named, before any export
        out = check_out(args.out, args.format)
        backbone = backbone_argument(args.backbone)
        if backends.current().TENSORFLOW_MODELS:
            loaded = load_model(args.head, backbone, args.model)
        else:  # the child process loads the model; check the files here
            read_info(Path(args.head or SHIPPED_HEAD).expanduser())
            resolve_weights(backbone)
    except (FileNotFoundError, ValueError) as error:
        return _fail("export", str(error))
    try:
        summary = export_pretrained(
            out, args.format, head=args.head, backbone=backbone, variant=args.model, check=args.check, loaded=loaded
        )
    except ExportError as error:
        return _fail("export", str(error))
    if summary["variant"] != "pattlite":
        print(
            f"pattlite export: warning: a {summary['variant']!r} model: its outputs depend on the other "
            "images of a batch (the corrected 'pattlite' model's do not)",
            file=sys.stderr,
        )
    print(
        f"exported {summary['variant']} ({len(summary['classes'])} classes, input {summary['input_shape']} "
        f"{summary['input']}) to {summary['path']} in {summary['seconds']:.1f} s"
    )
    if summary["max_abs_diff"] is not None:
        print(
            f"check: largest absolute difference from Keras' probabilities on {summary['check_images']} "
            f"synthetic faces: {summary['max_abs_diff']:.2e} (tolerance {summary['tolerance']:g})"
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "info"}))
    return 0


def cmd_export_head(args) -> int:
    from pattlite.pretrained import HeadWeightsError, export_head, sidecar_path

    try:
        path, info = export_head(args.source, args.out)
    except (HeadWeightsError, FileNotFoundError) as error:
        return _fail("export-head", str(error))
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {info.head_params:,} parameters) and "
        f"{sidecar_path(path)}: {info.variant} head, {info.dataset}, classes {', '.join(info.classes)}"
    )
    print(json.dumps({"path": str(path), "sidecar": str(sidecar_path(path)), **asdict(info)}))
    return 0


def main(argv=None) -> int:
    """`python -m pattlite.export OUT --format ...`: the export alone (the child process of another backend)."""
    import argparse

    from pattlite.console import quiet_backend_logs

    quiet_backend_logs()
    parser = argparse.ArgumentParser(prog="python -m pattlite.export")
    sub = parser.add_subparsers(dest="command")
    add_parsers(sub)
    args = parser.parse_args(["export", *(argv if argv is not None else sys.argv[1:])])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
