"""Procedurally drawn synthetic faces: a stand-in dataset that lets the demo and the tests run anywhere.

Every image is a cartoon face drawn with PIL from a small set of facial "action" parameters (brow angle
and height, eye openness, mouth curvature / openness / width / asymmetry, nose wrinkle). Each class is a
direction in that parameter space, scaled by a random intensity and perturbed by noise, so weak
expressions of different classes overlap with each other and with neutral. Identities (`subject`) vary
face shape, skin tone, hair, glasses and resting feature offsets (a resting frown, a lopsided mouth);
images vary position, scale, head yaw, lighting gradient and sensor noise.

Like RAF-DB and FERPlus, the test split carries occlusion and pose subsets (`occlusion`, `pose30`,
`pose45` flags, True only on test rows): occluded images have sunglasses, a hand, a mask or a block over
part of the face; turned images are drawn with a yaw of 30-60 degrees (`pose30`), those over 45 degrees
also being `pose45`, so pose45 is a subset of pose30. Training and validation images get such variants
too, at a lower rate and unflagged, as in the real datasets whose lists cover only test images.

Difficulty (measured with the defaults: 4,900 train / 700 test images at 48x48, seed 0): a 3-layer CNN
(Conv-BN-ReLU-MaxPool x 3 with 32/64/128 filters, dropout 0.3, Adam with cosine decay from 1e-3,
12 epochs, batch 64, from scratch) reaches 87.1% test accuracy with 7 classes
(92.9% on test images that are neither occluded nor turned, 77.2% occlusion, 78.5% pose30, 77.0%
pose45) and 82.3% with 8 classes (91.1% / 66.0% / 69.5% / 59.0%).

The drawing lives in `pattlite.data.synthetic_faces`. Generation is deterministic: image `i` of a split is
drawn from its own random stream seeded by (seed, split, i), and identity `k` from (seed, k), so the same
options give byte-identical arrays in any order. The first call writes `images.npy` and `manifest.csv` under
`<synthetic root>/<key>/` (root: argument, `$PATTLITE_SYNTHETIC_ROOT`, else `config.data_dir()/synthetic`;
key: the options); later calls read them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.data.common import SPLITS
from pattlite.data.errors import DatasetFormatError
from pattlite.data.synthetic_faces import OCCLUDERS, _draw_subject, _expression, _render, _stream
from pattlite.files import json_digest

GENERATOR_VERSION = 1  # bump when the drawing changes, so cached datasets are regenerated
MANIFEST_COLUMNS = ("split", "label", "y", "path", "row", "image_id", "subject", "fold") + config.SUBSETS
SOURCE = "procedurally generated (synthetic)"


def _split_offsets(n_train: int, n_val: int, n_test: int, images_per_subject: int):
    """First global subject index of each split; subjects never cross splits."""
    subjects = [math.ceil(n / images_per_subject) for n in (n_train, n_val, n_test)]
    return {"train": 0, "val": subjects[0], "test": subjects[0] + subjects[1]}


def _check_options(num_classes, image_size, n_train, n_val, n_test, images_per_subject, rates):
    if num_classes not in (7, 8):
        raise ValueError(
            f"num_classes must be 7 (FER2013/RAF-DB classes) or 8 (+ contempt, FERPlus), got {num_classes!r}"
        )
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16 (pixels), got {image_size!r}")
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if not isinstance(images_per_subject, (int, np.integer)) or images_per_subject < 1:
        raise ValueError(f"images_per_subject must be a positive integer, got {images_per_subject!r}")
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {rate!r}")


def generate_synthetic(
    num_classes: int = 7,
    image_size: int = 48,
    n_train: int = 4900,
    n_val: int = 700,
    n_test: int = 700,
    seed: int = 0,
    images_per_subject: int | None = None,
    min_intensity: float = 0.5,
    expression_noise: float = 0.1,
    occlusion_rate: float = 0.2,
    pose_rate: float = 0.25,
    train_variant_rate: float = 0.25,
    progress: bool = True,
):
    """Draws the synthetic face dataset in memory.

    Args:
        num_classes: 7 (`config.CLASSES[:7]`, the FER2013 / RAF-DB classes) or 8 (adds contempt, as in
            FERPlus).
        image_size: side of the square RGB images, in pixels.
        n_train, n_val, n_test: images per split. Labels cycle through the classes, so each split is
            balanced to within one image per class.
        seed: the random seed; the same options give byte-identical images.
        images_per_subject: images per identity (defaults to `2 * num_classes`, each identity showing
            every expression twice). Identities never cross splits.
        min_intensity: lowest expression intensity (0 = neutral face, 1 = full prototype); lower values
            make classes overlap more.
        expression_noise: standard deviation of the per-image noise on every expression parameter.
        occlusion_rate: probability that a test image is occluded (flagged `occlusion`).
        pose_rate: probability that a test image is turned by 30-60 degrees of yaw (flagged `pose30`;
            about half of them, those over 45 degrees, also `pose45`).
        train_variant_rate: probability of an unflagged occluder, and independently of an unflagged
            30-60 degree turn, on a training or validation image.
        progress: show a tqdm progress bar while drawing.

    Returns:
        `(images, metadata)`: a uint8 array `(N, image_size, image_size, 3)` with the train, val and
        test images in that order, and a DataFrame with one row per image holding the manifest columns
        (`path` empty, `row` the index into `images`) plus `intensity`, `yaw_degrees` and `occluder`.
    """
    if images_per_subject is None:
        images_per_subject = 2 * num_classes
    _check_options(
        num_classes,
        image_size,
        n_train,
        n_val,
        n_test,
        images_per_subject,
        dict(
            occlusion_rate=occlusion_rate,
            pose_rate=pose_rate,
            train_variant_rate=train_variant_rate,
            min_intensity=min_intensity,
        ),
    )
    classes = config.CLASSES[:num_classes]
    counts = {"train": n_train, "val": n_val, "test": n_test}
    first_subject = _split_offsets(n_train, n_val, n_test, images_per_subject)
    total = n_train + n_val + n_test
    images = np.empty((total, image_size, image_size, 3), np.uint8)
    records, subjects = [], {}

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"drawing synthetic faces ({image_size}px)", disable=not progress, unit="img")
    row = 0
    for split_code, split in enumerate(SPLITS):
        for i in range(counts[split]):
            subject_index = first_subject[split] + i // images_per_subject
            if subject_index not in subjects:
                subjects[subject_index] = _draw_subject(seed, subject_index)
            rng = _stream(seed, 2, split_code, i)
            y = i % num_classes
            params, intensity = _expression(classes[y], rng, subjects[subject_index], min_intensity, expression_noise)
            is_test = split == "test"
            occluded = rng.random() < (occlusion_rate if is_test else train_variant_rate)
            turned = rng.random() < (pose_rate if is_test else train_variant_rate)
            # Turns: 30-45 degrees (pose30 only) or 45-60 (both); other images jitter within 15 degrees.
            yaw = rng.uniform(30.0, 60.0) if turned else rng.uniform(-15.0, 15.0)
            if turned:
                yaw *= rng.choice([-1.0, 1.0])
            occluder = OCCLUDERS[rng.integers(len(OCCLUDERS))] if occluded else None
            images[row] = _render(image_size, subjects[subject_index], params, rng, yaw, occluder)
            records.append(
                dict(
                    split=split,
                    label=classes[y],
                    y=y,
                    path="",
                    row=row,
                    image_id=f"{split}_{i:05d}",
                    subject=f"synthetic_s{subject_index:04d}",
                    fold=subject_index % 10,
                    occlusion=bool(is_test and occluded),
                    pose30=bool(is_test and turned),
                    pose45=bool(is_test and turned and abs(yaw) > 45.0),
                    intensity=float(intensity),
                    yaw_degrees=float(yaw),
                    occluder=occluder or "",
                )
            )
            row += 1
            bar.update(1)
    bar.close()
    metadata = pd.DataFrame.from_records(
        records, columns=list(MANIFEST_COLUMNS) + ["intensity", "yaw_degrees", "occluder"]
    )
    return images, metadata


def synthetic_key(**options) -> str:
    """Folder name for one set of generator options: readable sizes plus a hash of everything."""
    digest = json_digest({"version": GENERATOR_VERSION, **options}, length=10)
    return (
        f"synthetic_c{options['num_classes']}_{options['image_size']}px_"
        f"{options['n_train']}-{options['n_val']}-{options['n_test']}_seed{options['seed']}_{digest}"
    )


def load_synthetic_manifest(
    root=None,
    num_classes: int = 7,
    image_size: int = 48,
    n_train: int = 4900,
    n_val: int = 700,
    n_test: int = 700,
    seed: int = 0,
    images_per_subject: int | None = None,
    min_intensity: float = 0.5,
    expression_noise: float = 0.1,
    occlusion_rate: float = 0.2,
    pose_rate: float = 0.25,
    train_variant_rate: float = 0.25,
    progress: bool = True,
) -> pd.DataFrame:
    """Returns the manifest of the synthetic face dataset, generating it on first use.

    The images live in one `images.npy` (each manifest row's `path` is that file, `row` its index),
    next to `manifest.csv`, in `<root>/<key>/` where root is the argument, `$PATTLITE_SYNTHETIC_ROOT`,
    else `config.data_dir()/synthetic`, and key encodes every option (see `synthetic_key`). The folder is
    written to a temporary name and renamed, so concurrent or interrupted runs never leave half a
    dataset. Options are those of `generate_synthetic`.

    Returns:
        A DataFrame with the manifest columns of docs/architecture.md and `attrs` dataset="synthetic",
        classes (`config.CLASSES[:num_classes]`), synthetic=True, source, and options (the generator
        options).
    """
    if images_per_subject is None:
        images_per_subject = 2 * num_classes
    options = dict(
        num_classes=num_classes,
        image_size=image_size,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=seed,
        images_per_subject=images_per_subject,
        min_intensity=min_intensity,
        expression_noise=expression_noise,
        occlusion_rate=occlusion_rate,
        pose_rate=pose_rate,
        train_variant_rate=train_variant_rate,
    )
    folder = config.dataset_root("synthetic", root) / synthetic_key(**options)
    images_path, manifest_path = folder / "images.npy", folder / "manifest.csv"
    if not (images_path.exists() and manifest_path.exists()):
        images, metadata = generate_synthetic(progress=progress, **options)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            np.save(staging / "images.npy", images)
            metadata.drop(columns=["path"]).to_csv(staging / "manifest.csv", index=False)
            (staging / "options.json").write_text(
                json.dumps({"generator_version": GENERATOR_VERSION, **options}, indent=1)
            )
            try:
                os.rename(staging, folder)
            except OSError:
                if not images_path.exists():  # not a concurrent writer that finished first
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    manifest = pd.read_csv(
        manifest_path, dtype={"subject": str, "image_id": str, "occluder": str}, keep_default_na=False
    )
    required = [c for c in MANIFEST_COLUMNS if c != "path"]
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise DatasetFormatError(
            manifest_path,
            1,
            f"missing columns {missing}; expected {required}. Delete the folder {folder} to regenerate it.",
        )
    shape = np.load(images_path, mmap_mode="r").shape
    expected = (len(manifest), image_size, image_size, 3)
    if shape != expected:
        raise DatasetFormatError(
            images_path,
            None,
            f"array shape {shape} does not match {manifest_path} "
            f"(expected {expected}). Delete the folder {folder} to regenerate it.",
        )
    manifest["path"] = str(images_path.resolve())
    for column in config.SUBSETS:
        if manifest[column].dtype != bool:
            raise DatasetFormatError(
                manifest_path,
                None,
                f"column {column!r} must hold True/False, found "
                f"{sorted(set(manifest[column].astype(str)))[:5]}. Delete the folder "
                f"{folder} to regenerate it.",
            )
    manifest = manifest[list(MANIFEST_COLUMNS)].astype({"y": int, "row": int, "fold": int})
    manifest.attrs.update(
        dataset="synthetic", classes=tuple(config.CLASSES[:num_classes]), synthetic=True, source=SOURCE, options=options
    )
    return manifest
