"""`pattlite predict IMAGE_OR_FOLDER...`: the facial expression of every face in some images.

    pattlite predict photos/ me.jpg                 # CSV on stdout, one row per face
    pattlite predict faces/ --no-detect --format jsonl
    pattlite predict photo.jpg --head my_head.weights.h5 --backbone mobilenet_1_0_224_imagenet_no_top.weights.h5
    pattlite predict photos/ --exported pattlite.onnx    # an export of `pattlite export`, on ONNX Runtime

Each image is read (`pattlite.faces.read_image`), its faces found by OpenCV's Haar cascade (or, with
`--no-detect`, the whole image taken as one pre-cropped face), each face prepared as the training images
were (`pattlite.faces.face_input`) and the model (`pattlite.pretrained.load_pretrained`: the shipped
head, or `--head`; or with `--exported` an export of `pattlite export`, run by `pattlite.runtime` without
Keras) gives its class probabilities. Faces are predicted `--batch-size` at a time; with the
corrected `pattlite` model (the default) a face's probabilities never depend on the others.

Output, one row per face (CSV with a header, or `--format jsonl`: one JSON object a line), in the order
of the files: `file`, `face` (0, 1, ... left to right), the box `x`, `y`, `w`, `h` in the image's pixels
(with `--no-detect` the whole image), `status` (`ok`, `no_face`, `unreadable`), `predicted` (the class
of highest probability), one column per class with its probability (`classes` of the head's sidecar, in
label order) and `message` (why there is no prediction). An image without a face gets one `no_face` row,
an unreadable file one `unreadable` row naming the reason; neither stops the run. Rows go to stdout (or
`--output FILE`); progress, warnings and a last summary line (JSON) go to stderr.

Exit status: 0 when every file was processed (rows say which had no face or could not be read), 2 for
bad usage, a missing path, or a missing or unfitting weights file (the message names the path and how to
give one).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pattlite import faces

FORMATS = ("csv", "jsonl")
MODELS = ("pattlite", "published")
STATUSES = ("ok", "no_face", "unreadable")
DEFAULT_BATCH_SIZE = 32
NO_FACE = "no face found"
NO_FACE_SMALL = "no face found (a pre-cropped face? use --no-detect)"
PUBLISHED_WARNING = (
    "the 'published' model is the authors' code: its attention mixes each face with the other faces of its "
    "batch, so a face's probabilities depend on which images are predicted with it ({batch}); the corrected "
    "'pattlite' model (the default) never mixes"
)


@dataclass
class FaceRow:
    """One output row: a face with its probabilities, or an image without a prediction."""

    file: str
    status: str
    face: int | None = None
    box: tuple | None = None
    predicted: str | None = None
    probabilities: dict | None = None
    message: str = ""

    def as_json(self) -> dict:
        row = {
            "file": self.file,
            "face": self.face,
            "box": None if self.box is None else list(self.box),
            "status": self.status,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
        }
        if self.message:
            row["message"] = self.message
        return row

    def as_csv(self, classes) -> list:
        box = list(self.box) if self.box is not None else [""] * 4
        probs = [f"{self.probabilities[c]:.6f}" for c in classes] if self.probabilities else [""] * len(classes)
        return [
            self.file,
            "" if self.face is None else self.face,
            *box,
            self.status,
            self.predicted or "",
            *probs,
            self.message,
        ]


def csv_header(classes) -> list:
    return ["file", "face", "x", "y", "w", "h", "status", "predicted", *classes, "message"]


class Predictor:
    """Faces of image files -> `FaceRow`s, with any batch model.

    Args:
        predict_batch: (N, image_size, image_size, 3) float32 pixel values 0..255 -> (N, classes)
            probabilities (a Keras model's `predict_on_batch`, or an exported model's runner).
        info: the head's `pattlite.pretrained.HeadInfo` (classes, image_size, face_size, grayscale).
        detect: find faces (False: each image is one pre-cropped face).
        margin, min_face: see `pattlite.faces.crop` and `pattlite.faces.detect_faces`.
        batch_size: faces per model call.
    """

    def __init__(
        self,
        predict_batch,
        info,
        detect: bool = True,
        margin: float = faces.DEFAULT_MARGIN,
        min_face: int = faces.DEFAULT_MIN_FACE,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.predict_batch, self.info = predict_batch, info
        self.detect, self.margin, self.min_face, self.batch_size = detect, margin, min_face, batch_size

    def faces_of(self, rgb: np.ndarray) -> list[tuple[tuple, np.ndarray]]:
        """[(box, model input)] for the faces of one RGB image."""
        height, width = rgb.shape[:2]
        boxes = faces.detect_faces(rgb, self.min_face) if self.detect else [(0, 0, width, height)]
        crops = [faces.crop(rgb, box, self.margin) if self.detect else rgb for box in boxes]
        return [
            (box, faces.face_input(c, self.info.image_size, self.info.face_size, self.info.grayscale))
            for box, c in zip(boxes, crops)
        ]

    def predict_inputs(self, inputs: list) -> np.ndarray:
        """Probabilities for a list of model inputs, `batch_size` at a time."""
        out = []
        for start in range(0, len(inputs), self.batch_size):
            batch = np.stack(inputs[start : start + self.batch_size]).astype("float32")
            out.append(np.asarray(self.predict_batch(batch), dtype="float64"))
        return np.concatenate(out) if out else np.zeros((0, len(self.info.classes)))

    def rows(self, files, progress: bool = False):
        """Yields `FaceRow`s for `files` in order (a batch of faces is predicted as soon as it is full)."""
        from tqdm.auto import tqdm

        pending, inputs = [], []
        for path in tqdm(files, desc="predicting", unit="image", disable=not progress, file=sys.stderr):
            name = str(path)
            try:
                rgb = faces.read_image(path)
            except faces.UnreadableImageError as error:
                pending.append((FaceRow(name, "unreadable", message=str(error)), None))
            else:
                found = self.faces_of(rgb)
                if not found:
                    small = max(rgb.shape[:2]) < 2 * self.min_face
                    pending.append((FaceRow(name, "no_face", message=NO_FACE_SMALL if small else NO_FACE), None))
                for index, (box, face) in enumerate(found):
                    pending.append((FaceRow(name, "ok", face=index, box=tuple(int(v) for v in box)), len(inputs)))
                    inputs.append(face)
            if len(inputs) >= self.batch_size:
                yield from self._flush(pending, inputs)
                pending, inputs = [], []
        yield from self._flush(pending, inputs)

    def _flush(self, pending, inputs):
        probabilities = self.predict_inputs(inputs)
        classes = list(self.info.classes)
        for row, index in pending:
            if index is not None:
                p = probabilities[index]
                row.probabilities = {c: float(v) for c, v in zip(classes, p)}
                row.predicted = classes[int(np.argmax(p))]
            yield row


def write_rows(rows, stream, fmt: str, classes) -> dict:
    """Writes rows as CSV (header first) or JSON lines; returns the count per status."""
    counts = dict.fromkeys(STATUSES, 0)
    writer = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow(csv_header(classes))
    for row in rows:
        counts[row.status] += 1
        if writer:
            writer.writerow(row.as_csv(classes))
        else:
            stream.write(json.dumps(row.as_json()) + "\n")
        stream.flush()
    return counts


# ---------------------------------------------------------------------------------------------------
# command line


def add_parser(subparsers) -> None:
    """`pattlite predict` (see the module docstring)."""
    p = subparsers.add_parser(
        "predict",
        help="the facial expression of every face in images or folders (CSV / JSON lines)",
        description="Find the faces in images (OpenCV's Haar cascade) and print one row per face: file, box, "
        "predicted class and every class's probability.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help=f"image files or folders (searched recursively for {', '.join(faces.IMAGE_SUFFIXES)})",
    )
    add_model_arguments(p)
    p.add_argument(
        "--exported",
        default=None,
        help="run an export of `pattlite export` instead (model.onnx on ONNX Runtime, model.xml on "
        "OpenVINO, or a SavedModel folder), without Keras",
    )
    p.add_argument(
        "--model",
        default=None,
        choices=MODELS,
        help="the variant the head must be (default: whatever the head file holds)",
    )
    p.add_argument("--format", default="csv", choices=FORMATS, help="csv (default) or jsonl")
    p.add_argument("--output", default=None, help="write the rows to this file instead of stdout")
    p.add_argument("--no-detect", action="store_true", help="each image is one pre-cropped face")
    p.add_argument(
        "--margin",
        type=float,
        default=faces.DEFAULT_MARGIN,
        help=f"widen each face box by this fraction of its side on each side (default {faces.DEFAULT_MARGIN})",
    )
    p.add_argument(
        "--min-face",
        type=int,
        default=faces.DEFAULT_MIN_FACE,
        help=f"smallest face side looked for, in pixels (default {faces.DEFAULT_MIN_FACE})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"faces per model call (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on folders")
    p.set_defaults(handler=cmd_predict)


def _error(message: str) -> int:
    print(f"pattlite predict: error: {message}", file=sys.stderr)
    return 2


def add_model_arguments(parser) -> None:
    """--head and --backbone, the trained model of `predict`, `export` and `crossdataset` (read them with
    `load_model(args.head, backbone_argument(args.backbone))`)."""
    parser.add_argument(
        "--head",
        default=None,
        help="trained head weights (.weights.h5 with its .json sidecar); "
        "default: the shipped pattlite_ferplus.weights.h5",
    )
    parser.add_argument(
        "--backbone",
        default="imagenet",
        help="MobileNetV1 weights: imagenet (default: $PATTLITE_WEIGHTS, data/weights/, else Keras' "
        "download), a .weights.h5 path, or none (random: for tests only)",
    )


def backbone_argument(value: str):
    """--backbone: "none" -> None, "imagenet", or a path."""
    return None if value.lower() == "none" else value if value == "imagenet" else str(Path(value).expanduser())


def load_model(head, backbone, variant=None):
    """`pattlite.pretrained.load_pretrained`, with Keras' download failure turned into an error that
    says how to give the ImageNet weights offline."""
    from pattlite.pretrained import load_pretrained
    from pattlite.profiles import WEIGHTS_ENV_VAR, WEIGHTS_FILE_NAME, resolve_weights

    offline = backbone == "imagenet" and resolve_weights("imagenet") == "imagenet"
    try:
        return load_pretrained(head, backbone=backbone, variant=variant)
    except Exception as error:
        if offline and not isinstance(error, (ValueError, FileNotFoundError)):
            raise FileNotFoundError(
                f"the ImageNet MobileNetV1 weights could not be downloaded by Keras ({type(error).__name__}: "
                f"{error}); set ${WEIGHTS_ENV_VAR} to a local {WEIGHTS_FILE_NAME} or pass --backbone PATH"
            ) from error
        raise


def _keras(args):
    """(batch -> probabilities, HeadInfo, batch dependent, files used) of the Keras model."""
    loaded = load_model(args.head, backbone_argument(args.backbone), args.model)
    model = loaded.model
    return (
        model.predict_on_batch,
        loaded.info,
        loaded.info.batch_dependent,
        {"head": str(loaded.head_path), "backbone": None if loaded.backbone is None else str(loaded.backbone)},
    )


def _exported(args):
    """The same for an export of `pattlite export` (its .json beside it), without Keras or TensorFlow."""
    from pattlite.pretrained import HeadInfo, HeadWeightsError
    from pattlite.runtime import info_path, load_exported

    if args.head is not None or args.backbone != "imagenet":
        raise ValueError("--exported holds the whole model: drop --head and --backbone")
    path = Path(args.exported).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"exported model {path} does not exist (make one with `pattlite export`)")
    sidecar = info_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"exported model {path}: its {sidecar} (written by `pattlite export`: classes, image "
            "size, face preparation) does not exist"
        )
    summary = json.loads(sidecar.read_text(encoding="utf-8"))
    if not isinstance(summary, dict) or not isinstance(summary.get("info"), dict):
        raise ValueError(f"{sidecar} is not the .json of `pattlite export` (it has no 'info' object)")
    info = HeadInfo(**{k: v for k, v in summary["info"].items() if k in HeadInfo.__dataclass_fields__})
    if args.model is not None and args.model != info.variant:
        raise HeadWeightsError(f"exported model {path} holds a {info.variant!r} model, not {args.model!r}")
    return (
        load_exported(path),
        info,
        summary.get("batch_dependent", info.variant != "pattlite"),
        {"exported": str(path), "backbone": summary.get("backbone", "")},
    )


def cmd_predict(args) -> int:
    if args.batch_size < 1:
        return _error(f"--batch-size {args.batch_size}: expected an integer >= 1")
    if not 0.0 <= args.margin <= 1.0:
        return _error(f"--margin {args.margin}: expected a fraction in [0, 1]")
    if args.min_face < 1:
        return _error(f"--min-face {args.min_face}: expected an integer >= 1 (pixels)")
    try:
        files = faces.image_files(args.paths)
    except FileNotFoundError as error:
        return _error(str(error))
    if not files:
        return _error(f"no image files ({', '.join(faces.IMAGE_SUFFIXES)}) under {', '.join(args.paths)}")
    started = time.perf_counter()
    try:  # missing or unfitting weights: named by the message
        run, info, batch_dependent, source = _exported(args) if args.exported else _keras(args)
    except (FileNotFoundError, ValueError) as error:
        return _error(str(error))
    except ImportError as error:  # --exported without its runtime
        return _error(f"--exported {args.exported}: {error} (pip install 'pattlite[export]')")
    if batch_dependent:
        batch = (
            "here each face alone: --batch-size 1"
            if args.batch_size == 1
            else f"here batches of {args.batch_size}; --batch-size 1 predicts each face alone"
        )
        print(f"pattlite predict: warning: {PUBLISHED_WARNING.format(batch=batch)}", file=sys.stderr)
    if source.get("backbone", "") is None:
        print(
            "pattlite predict: warning: random backbone (--backbone none): the predictions mean nothing",
            file=sys.stderr,
        )
    if info.synthetic:
        print("pattlite predict: warning: this head was trained on synthetic faces", file=sys.stderr)
    predictor = Predictor(
        run, info, detect=not args.no_detect, margin=args.margin, min_face=args.min_face, batch_size=args.batch_size
    )
    progress = not args.no_progress and any(Path(p).is_dir() for p in args.paths)
    stream = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        counts = write_rows(predictor.rows(files, progress=progress), stream, args.format, info.classes)
    finally:
        if stream is not sys.stdout:
            stream.close()
    summary = {
        "files": len(files),
        "faces": counts["ok"],
        "no_face": counts["no_face"],
        "unreadable": counts["unreadable"],
        "variant": info.variant,
        **source,
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


def rows_as_text(rows, fmt: str, classes) -> str:
    """The rows as the command prints them (for notebooks and tests)."""
    buffer = io.StringIO()
    write_rows(rows, buffer, fmt, classes)
    return buffer.getvalue()
