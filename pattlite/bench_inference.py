"""End-to-end inference benchmark (`pattlite bench --parts end_to_end`): the trained model from decoded
images to probabilities, on Keras and exported (ONNX Runtime, OpenVINO), with and without face detection.

Each row times one engine x face detection x batch size over `steps` steps, after one untimed warm-up
step:

- without detection: decoded 48x48 face crops (synthetic faces, as FER crops are stored) prepared as
  `pattlite predict --no-detect` prepares them (`pattlite.faces.face_input`: grey, 48, then the image
  size, 3 channels), then one model call on the batch;
- with detection: decoded 640x480 photos (a synthetic face of 160 px on a grey background, those in
  which the detector finds the face) through `pattlite.predict.Predictor.faces_of` (Haar cascade,
  crop, preparation), then one model call on the batch.

File reading and decoding are excluded (the images are held in memory). `ms_per_batch` is the median
step, `images_per_s` the images of all steps over their total time, `model_ms_per_batch` and
`model_images_per_s` the same for the model call alone. The model is the shipped head when it is present,
else a random `pattlite` head of the same shape (speed does not depend on the weights' values); the
exported engines need Keras' TensorFlow backend for the export (`pattlite.export.export_keras`) and
their packages (onnxruntime, openvino): a row that cannot run says why.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("keras", "onnxruntime", "openvino")
PHOTO_SHAPE = (480, 640)
FACE_IN_PHOTO = 160
DEFAULT_STEPS = 30


def _model(head, backbone):
    """(keras model, HeadInfo, description): the shipped / given head, else a random pattlite head."""
    from pattlite.pretrained import SHIPPED_HEAD, HeadInfo, load_pretrained

    path = Path(head or SHIPPED_HEAD)
    if path.is_file():
        loaded = load_pretrained(path, backbone=backbone)
        return loaded.model, loaded.info, f"head {path}"
    from pattlite.config import CLASSES
    from pattlite.model import build_model

    info = HeadInfo(variant="pattlite", classes=list(CLASSES), dataset="ferplus", image_size=120)
    model = build_model("pattlite", len(CLASSES), input_shape=(120, 120, 3), weights=backbone, augment=False)
    return model, info, "a random pattlite head (no head file; speed does not depend on the weights)"


def _images(count: int, seed: int = 0):
    """(48 px face crops, 640x480 photos in which the detector finds the face), `count` of each."""
    from PIL import Image

    from pattlite import faces
    from pattlite.data.synthetic import generate_synthetic

    crops, _ = generate_synthetic(
        num_classes=8, image_size=48, n_train=0, n_val=0, n_test=count, seed=seed, progress=False
    )
    photos, drawn = [], 0
    while len(photos) < count and drawn < 20 * count + 40:
        batch, _ = generate_synthetic(
            num_classes=8,
            image_size=FACE_IN_PHOTO,
            n_train=0,
            n_val=0,
            n_test=32,
            seed=seed + 1000 + drawn,
            progress=False,
        )
        drawn += 32
        for face in batch:
            photo = np.full((*PHOTO_SHAPE, 3), 128, np.uint8)
            top, left = (PHOTO_SHAPE[0] - FACE_IN_PHOTO) // 2, (PHOTO_SHAPE[1] - FACE_IN_PHOTO) // 2
            photo[top : top + FACE_IN_PHOTO, left : left + FACE_IN_PHOTO] = np.asarray(Image.fromarray(face))
            if len(photos) < count and faces.detect_faces(photo):
                photos.append(photo)
    if not photos:
        raise RuntimeError("the face detector found no face in the synthetic photos")
    return crops, photos


def _time(predictor, images, batch_size: int, steps: int, detect: bool) -> dict:
    """Times `steps` steps of `batch_size` images (one warm-up step first)."""
    from pattlite import faces

    info = predictor.info

    def step(index):
        batch = [images[(index * batch_size + i) % len(images)] for i in range(batch_size)]
        if detect:
            inputs = [predictor.faces_of(image)[0][1] for image in batch]
        else:
            inputs = [faces.face_input(image, info.image_size, info.face_size, info.grayscale) for image in batch]
        x = np.stack(inputs).astype("float32")
        start = time.perf_counter()
        predictor.predict_batch(x)
        return time.perf_counter() - start

    step(0)
    totals, models = [], []
    for index in range(1, steps + 1):
        start = time.perf_counter()
        models.append(step(index))
        totals.append(time.perf_counter() - start)
    images_done = batch_size * steps
    return {
        "batch_size": batch_size,
        "steps": steps,
        "detect": detect,
        "ms_per_batch": 1000 * float(np.median(totals)),
        "images_per_s": images_done / sum(totals),
        "model_ms_per_batch": 1000 * float(np.median(models)),
        "model_images_per_s": images_done / sum(models),
    }


def run_end_to_end_benchmark(
    batch_sizes=(1, 32), steps: int = DEFAULT_STEPS, head=None, backbone=None, engines=ENGINES, log=print
) -> dict:
    """Rows of end-to-end inference per engine, face detection off and on, and batch size.

    Returns:
        {"settings", "model", "rows": [{"engine", "detect", "batch_size", "ms_per_batch", "images_per_s",
        "model_ms_per_batch", "model_images_per_s", ...} or {"engine", "skipped": reason}], "machine",
        "seconds"}.
    """
    from pattlite import backends
    from pattlite.export import ExportError, export_keras
    from pattlite.predict import Predictor
    from pattlite.report import provenance
    from pattlite.runtime import load_exported

    say = log or (lambda *_: None)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    model, info, described = _model(head, backbone)
    crops, photos = _images(max(batch_sizes) * 2)
    result = {
        "settings": {
            "batch_sizes": list(batch_sizes),
            "steps": steps,
            "image_size": info.image_size,
            "photo": f"{PHOTO_SHAPE[1]}x{PHOTO_SHAPE[0]}, a {FACE_IN_PHOTO} px synthetic face",
            "crops": "48x48 synthetic faces",
            "decoding": "excluded (images in memory)",
        },
        "model": {
            "variant": info.variant,
            "classes": len(info.classes),
            "described": described,
            "backbone": None if backbone is None else str(backbone),
        },
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="pattlite-bench-") as tmp:
        for engine in engines:
            try:
                if engine == "keras":
                    run = model.predict_on_batch
                else:
                    fmt, suffix = ("onnx", ".onnx") if engine == "onnxruntime" else ("openvino", ".xml")
                    run = load_exported(export_keras(model, Path(tmp) / f"model{suffix}", fmt))
            except (ExportError, ImportError) as error:
                result["rows"].append({"engine": engine, "skipped": str(error)})
                say(f"  {engine}: skipped ({error})")
                continue
            predictor = Predictor(run, info)
            for detect in (False, True):
                for batch_size in batch_sizes:
                    row = {"engine": engine, **_time(predictor, photos if detect else crops, batch_size, steps, detect)}
                    result["rows"].append(row)
                    say(
                        f"  end-to-end {engine:11s} {'with' if detect else 'without'} detection, batch "
                        f"{batch_size:3d}: {row['ms_per_batch']:7.1f} ms per batch, {row['images_per_s']:7.1f} "
                        f"images/s (model alone {row['model_ms_per_batch']:.1f} ms, "
                        f"{row['model_images_per_s']:.0f} images/s)"
                    )
    result["machine"] = {
        k: v for k, v in provenance().items() if k in ("device", "keras", "keras_backend", "tensorflow", "git_commit")
    }
    result["machine"]["cpu_count"] = os.cpu_count()
    result["machine"]["keras_backend"] = backends.name()
    # 1-minute load averages before and after: other jobs on the cores slow every row
    result["machine"]["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["seconds"] = time.perf_counter() - started
    return result


def format_end_to_end_table(result: dict) -> str:
    """The end-to-end rows as a Markdown table."""
    lines = [
        "| engine | face detection | batch | ms per batch | images/s | model alone: ms per batch | "
        "model alone: images/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['engine']} | skipped: {row['skipped'][:120]} | | | | | |")
            continue
        lines.append(
            f"| {row['engine']} | {'included' if row['detect'] else 'excluded'} | {row['batch_size']} | "
            f"{row['ms_per_batch']:.1f} | {row['images_per_s']:.1f} | {row['model_ms_per_batch']:.1f} | "
            f"{row['model_images_per_s']:.1f} |"
        )
    return "\n".join(lines)
