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
12 epochs, batch 64, from scratch on 2 CPU cores, ~100 s) reaches 87.1% test accuracy with 7 classes
(92.9% on test images that are neither occluded nor turned, 77.2% occlusion, 78.5% pose30, 77.0%
pose45) and 82.3% with 8 classes (91.1% / 66.0% / 69.5% / 59.0%).

Generation is deterministic: image `i` of a split is drawn from its own random stream seeded by
(seed, split, i), and identity `k` from (seed, k), so the same options give byte-identical arrays in any
order. The first call writes `images.npy` and `manifest.csv` under
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
from PIL import Image, ImageDraw

from pattlite import config
from pattlite.data.common import SPLITS
from pattlite.data.errors import DatasetFormatError
from pattlite.files import json_digest

GENERATOR_VERSION = 1  # bump when the drawing changes, so cached datasets are regenerated
MANIFEST_COLUMNS = ("split", "label", "y", "path", "row", "image_id", "subject", "fold") + config.SUBSETS
SOURCE = "procedurally generated (synthetic)"

# Expression parameters, 0 = the identity's resting face.
PARAMETERS = (
    "brow_angle",
    "brow_raise",
    "eye_open",
    "mouth_curve",
    "mouth_open",
    "mouth_width",
    "mouth_asym",
    "nose_wrinkle",
)

# Each class at full intensity, loosely after FACS prototypes: brow_angle > 0 lowers the inner brow ends
# (AU4, anger), < 0 raises them (AU1, sadness/fear); mouth_asym is a one-sided lip corner (contempt, AU14).
EXPRESSION_PROFILES = {
    "anger": dict(
        brow_angle=1.0, brow_raise=-0.7, eye_open=-0.25, mouth_curve=-0.35, mouth_width=-0.35, nose_wrinkle=0.15
    ),
    "disgust": dict(
        brow_angle=0.45,
        brow_raise=-0.45,
        eye_open=-0.45,
        mouth_curve=-0.6,
        mouth_open=0.25,
        mouth_asym=0.25,
        nose_wrinkle=1.0,
    ),
    "fear": dict(brow_angle=-0.8, brow_raise=0.6, eye_open=0.5, mouth_curve=-0.3, mouth_open=0.45, mouth_width=0.45),
    "happiness": dict(brow_raise=0.1, eye_open=-0.3, mouth_curve=1.0, mouth_open=0.35, mouth_width=0.35),
    "neutral": dict(),
    "sadness": dict(brow_angle=-1.0, brow_raise=0.05, eye_open=-0.2, mouth_curve=-0.9, mouth_width=-0.1),
    "surprise": dict(brow_angle=-0.15, brow_raise=1.0, eye_open=0.65, mouth_open=1.0, mouth_width=-0.35),
    "contempt": dict(eye_open=-0.1, mouth_curve=-0.1, mouth_width=-0.1, mouth_asym=1.2),
}

# Resting-face offsets per identity (standard deviations), so one person's neutral resembles another's
# weak expression.
SUBJECT_OFFSET_SD = dict(
    brow_angle=0.1, brow_raise=0.1, eye_open=0.07, mouth_curve=0.1, mouth_width=0.1, mouth_asym=0.06
)

SKIN_LIGHT = np.array([236, 204, 180], float)
SKIN_DARK = np.array([92, 60, 42], float)
HAIR_COLORS = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 85, 50], [200, 170, 110], [150, 150, 150], [140, 60, 30]], float
)
OCCLUDERS = ("sunglasses", "hand", "mask", "block")
SUPERSAMPLE = 4  # draw at 4x and area-average down, for anti-aliased edges


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]))


def _split_offsets(n_train: int, n_val: int, n_test: int, images_per_subject: int):
    """First global subject index of each split; subjects never cross splits."""
    subjects = [math.ceil(n / images_per_subject) for n in (n_train, n_val, n_test)]
    return {"train": 0, "val": subjects[0], "test": subjects[0] + subjects[1]}


def _draw_subject(seed: int, subject_index: int) -> dict:
    rng = _stream(seed, 1, subject_index)
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * rng.beta(1.3, 1.6)
    hair = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.8, 1.15)
    return dict(
        skin=skin,
        hair=np.clip(hair, 0, 255),
        hair_style=int(rng.integers(4)),  # 0 bald, 1 short cap, 2 fringe, 3 long
        width=rng.uniform(0.86, 1.08),
        height=rng.uniform(0.92, 1.06),
        eye_spacing=rng.uniform(0.36, 0.46),
        eye_size=rng.uniform(0.85, 1.2),
        eye_y=rng.uniform(-0.2, -0.1),
        iris=np.array(rng.choice([[60, 40, 25], [40, 80, 120], [70, 110, 60], [30, 25, 20]]), float),
        brow_thickness=rng.uniform(0.06, 0.09),
        brow_gap=rng.uniform(0.16, 0.22),
        nose_length=rng.uniform(0.2, 0.3),
        mouth_y=rng.uniform(0.4, 0.5),
        mouth_width=rng.uniform(0.36, 0.44),
        lip=np.clip(skin * np.array([0.6, 0.3, 0.3]) + np.array([50, 0, 0]), 0, 255),
        glasses=bool(rng.random() < 0.15),
        offsets={k: rng.normal(0.0, sd) for k, sd in SUBJECT_OFFSET_SD.items()},
    )


def _expression(label: str, rng: np.random.Generator, subject: dict, min_intensity: float, expression_noise: float):
    intensity = 0.0 if label == "neutral" else rng.uniform(min_intensity, 1.0)
    profile = EXPRESSION_PROFILES[label]
    side = rng.choice([-1.0, 1.0])  # which mouth corner an asymmetric expression lifts
    params = {}
    for name in PARAMETERS:
        value = intensity * profile.get(name, 0.0) + subject["offsets"].get(name, 0.0)
        value += rng.normal(0.0, expression_noise)
        params[name] = value
    params["mouth_asym"] *= side
    params["mouth_open"] = max(params["mouth_open"], 0.0)
    params["nose_wrinkle"] = float(np.clip(params["nose_wrinkle"], 0.0, 1.0))
    return params, intensity


def _color(rgb) -> tuple:
    return tuple(int(round(v)) for v in np.clip(rgb, 0, 255))


def _render(
    size: int, subject: dict, params: dict, rng: np.random.Generator, yaw_degrees: float, occluder: str | None
) -> np.ndarray:
    canvas = size * SUPERSAMPLE
    background = rng.uniform(60, 200) + rng.normal(0, 25, 3)
    image = Image.new("RGB", (canvas, canvas), _color(background))
    draw = ImageDraw.Draw(image)

    scale = rng.uniform(0.9, 1.06) * canvas
    cx = canvas * (0.5 + rng.uniform(-0.05, 0.05))
    cy = canvas * (0.53 + rng.uniform(-0.05, 0.05))
    a = 0.38 * scale * subject["width"]  # face half-width
    b = 0.47 * scale * subject["height"]  # face half-height
    yaw = math.radians(yaw_degrees)

    def x_at(u: float) -> float:
        """Image x of a feature at horizontal face coordinate u (-1..1) on a cylinder turned by yaw."""
        theta = math.asin(max(-0.99, min(0.99, u)))
        # Past the silhouette a point is hidden; pin it to the edge so x stays monotonic in u.
        return cx + a * math.sin(max(-math.pi / 2, min(math.pi / 2, theta + yaw)))

    def foreshorten(u: float) -> float:
        theta = math.asin(max(-0.99, min(0.99, u)))
        return max(0.15, math.cos(theta + yaw))

    def y_at(v: float) -> float:
        return cy + b * v

    skin, hair = subject["skin"], subject["hair"]
    face_shift = a * 0.12 * math.sin(yaw)
    face_box = [
        cx - a * (0.92 + 0.08 * math.cos(yaw)) + face_shift,
        cy - b,
        cx + a * (0.92 + 0.08 * math.cos(yaw)) + face_shift,
        cy + b,
    ]

    style = subject["hair_style"]
    if style == 3:  # long hair behind the face
        draw.rounded_rectangle(
            [cx - a * 1.25, cy - b * 1.12, cx + a * 1.25, cy + b * 0.9], radius=a * 0.6, fill=_color(hair)
        )
    for side in (-1, 1):  # ears
        ex = cx + side * a * 0.97 * math.cos(yaw) + face_shift
        draw.ellipse([ex - a * 0.12, y_at(-0.15), ex + a * 0.12, y_at(0.15)], fill=_color(skin * 0.92))
    draw.ellipse(face_box, fill=_color(skin))
    if style in (1, 2):  # hair cap over the top of the head
        draw.chord(
            [face_box[0] - a * 0.05, cy - b * 1.1, face_box[2] + a * 0.05, cy + b * 0.2],
            start=180,
            end=360,
            fill=_color(hair),
        )
        if style == 2:  # fringe
            draw.polygon(
                [
                    (face_box[0] + a * 0.1, y_at(-0.5)),
                    (cx + face_shift, y_at(-0.35)),
                    (face_box[2] - a * 0.1, y_at(-0.5)),
                    (cx + face_shift, y_at(-0.75)),
                ],
                fill=_color(hair),
            )
        draw.chord(
            [face_box[0] + a * 0.05, y_at(-0.72), face_box[2] - a * 0.05, y_at(0.2)],
            start=200,
            end=340,
            fill=_color(skin),
        )

    # Eyes and brows.
    eye_y = subject["eye_y"]
    openness = float(np.clip(1.0 + params["eye_open"], 0.12, 2.0))
    eye_half_h = 0.085 * b * subject["eye_size"] * openness
    brow_base = eye_y - subject["brow_gap"] - 0.12 * params["brow_raise"]
    for side in (-1, 1):
        u = side * subject["eye_spacing"]
        ex = x_at(u)
        eye_half_w = 0.2 * a * subject["eye_size"] * foreshorten(u)
        ey = y_at(eye_y)
        draw.ellipse([ex - eye_half_w, ey - eye_half_h, ex + eye_half_w, ey + eye_half_h], fill=(245, 245, 240))
        iris_r = min(eye_half_w * 0.55, eye_half_h * 0.95)
        ix = ex + 0.25 * eye_half_w * math.sin(yaw)
        draw.ellipse([ix - iris_r, ey - iris_r, ix + iris_r, ey + iris_r], fill=_color(subject["iris"]))
        draw.ellipse(
            [ix - iris_r * 0.45, ey - iris_r * 0.45, ix + iris_r * 0.45, ey + iris_r * 0.45], fill=(10, 10, 10)
        )
        lid = max(1, int(0.02 * b))
        draw.arc(
            [ex - eye_half_w, ey - eye_half_h, ex + eye_half_w, ey + eye_half_h],
            start=180,
            end=360,
            fill=_color(skin * 0.45),
            width=lid,
        )
        # Brow: inner end lowered by brow_angle > 0, raised by < 0.
        inner_u, outer_u = side * 0.1, side * (subject["eye_spacing"] + 0.24)
        inner_v = brow_base + 0.12 * params["brow_angle"]
        outer_v = brow_base - 0.04 * params["brow_angle"]
        draw.line(
            [(x_at(inner_u), y_at(inner_v)), (x_at(outer_u), y_at(outer_v))],
            fill=_color(np.minimum(hair * 0.7, skin * 0.4)),
            width=max(2, int(subject["brow_thickness"] * b)),
            joint="curve",
        )

    # Nose (protrudes, so it shifts further with yaw) and disgust wrinkles.
    nose_top, nose_bottom = eye_y + 0.05, eye_y + 0.05 + subject["nose_length"]
    tip_x = x_at(0.0) + 0.25 * a * math.sin(yaw)
    nose_color = _color(skin * 0.7)
    draw.line([(x_at(0.0), y_at(nose_top)), (tip_x, y_at(nose_bottom))], fill=nose_color, width=max(1, int(0.025 * b)))
    nostril_w = 0.09 * a
    draw.line(
        [(tip_x - nostril_w, y_at(nose_bottom)), (tip_x + nostril_w, y_at(nose_bottom))],
        fill=nose_color,
        width=max(1, int(0.03 * b)),
    )
    wrinkle = params["nose_wrinkle"]
    if wrinkle > 0.1:
        shade = _color(skin * (1.0 - 0.45 * wrinkle))
        for k in range(3):
            v = eye_y + 0.06 + 0.045 * k
            draw.line([(x_at(-0.1), y_at(v)), (x_at(0.1), y_at(v + 0.015))], fill=shade, width=max(1, int(0.02 * b)))
        for side in (-1, 1):  # nasolabial folds
            draw.line(
                [(x_at(side * 0.12), y_at(nose_bottom - 0.05)), (x_at(side * 0.22), y_at(nose_bottom + 0.08))],
                fill=shade,
                width=max(1, int(0.02 * b)),
            )

    # Mouth: lip line y(u) = centre + corner offset * (u / w)^2; each corner has its own offset.
    mouth_v = subject["mouth_y"]
    half_w = subject["mouth_width"] * (1.0 + 0.3 * params["mouth_width"])
    curve_drop = -0.2 * params["mouth_curve"]
    asym = params["mouth_asym"]
    corner = {-1: curve_drop - 0.2 * max(asym, 0.0), 1: curve_drop - 0.2 * max(-asym, 0.0)}
    gap = 0.25 * params["mouth_open"]
    us = np.linspace(-1.0, 1.0, 17)
    upper, lower = [], []
    for t in us:
        offset = corner[-1 if t < 0 else 1] * t * t
        x = x_at(t * half_w)
        upper.append((x, y_at(mouth_v + offset - 0.2 * gap * (1 - t * t))))
        lower.append((x, y_at(mouth_v + offset + 0.8 * gap * (1 - t * t))))
    lip_width = max(2, int(0.055 * b))
    if gap > 0.02:
        draw.polygon(upper + lower[::-1], fill=(70, 20, 25), outline=_color(subject["lip"]))
        if params["mouth_curve"] > 0.3:  # teeth in an open smile
            teeth = [(x, y + 0.3 * (ly - y)) for (x, y), (_, ly) in zip(upper, lower)]
            draw.polygon(upper + teeth[::-1], fill=(235, 235, 225))
        draw.line(upper, fill=_color(subject["lip"]), width=lip_width, joint="curve")
        draw.line(lower, fill=_color(subject["lip"]), width=lip_width, joint="curve")
    else:
        draw.line(upper, fill=_color(subject["lip"]), width=lip_width, joint="curve")

    if subject["glasses"]:
        frame = (30, 30, 30)
        for side in (-1, 1):
            ex = x_at(side * subject["eye_spacing"])
            r = 0.2 * a * foreshorten(side * subject["eye_spacing"])
            draw.rectangle(
                [ex - r, y_at(eye_y) - 0.1 * b, ex + r, y_at(eye_y) + 0.1 * b],
                outline=frame,
                width=max(1, int(0.015 * b)),
            )

    if occluder is not None:
        _draw_occluder(draw, occluder, rng, x_at, y_at, a, b, subject, eye_y, mouth_v)

    small = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    # Lighting: global gain plus a linear gradient in a random direction, then sensor noise.
    grid = (np.arange(size) + 0.5) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]
    gain = rng.uniform(0.75, 1.15) * (1.0 + rng.uniform(0.0, 0.6) * ramp)
    pixels = pixels * gain[:, :, None] + rng.normal(0.0, rng.uniform(2.0, 8.0), pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _draw_occluder(draw, kind, rng, x_at, y_at, a, b, subject, eye_y, mouth_v):
    if kind == "sunglasses":
        shade = _color(rng.uniform(5, 50, 3))
        for side in (-1, 1):
            ex = x_at(side * subject["eye_spacing"])
            draw.rounded_rectangle(
                [ex - 0.26 * a, y_at(eye_y - 0.11), ex + 0.26 * a, y_at(eye_y + 0.12)], radius=0.08 * a, fill=shade
            )
        draw.line(
            [(x_at(-0.15), y_at(eye_y - 0.05)), (x_at(0.15), y_at(eye_y - 0.05))],
            fill=shade,
            width=max(1, int(0.03 * b)),
        )
    elif kind == "mask":
        color = _color(rng.choice([[210, 225, 240], [240, 240, 240], [60, 60, 70], [120, 170, 210]]))
        draw.rounded_rectangle([x_at(-0.78), y_at(eye_y + 0.2), x_at(0.78), y_at(0.85)], radius=0.2 * a, fill=color)
    elif kind == "hand":
        skin = subject["skin"] * rng.uniform(0.9, 1.1)
        target_v = rng.choice([eye_y, mouth_v])
        side = rng.choice([-1, 1])
        hx, hy = x_at(side * rng.uniform(0.1, 0.45)), y_at(target_v + rng.uniform(-0.05, 0.05))
        draw.ellipse([hx - 0.45 * a, hy - 0.28 * b, hx + 0.45 * a, hy + 0.3 * b], fill=_color(skin))
        for k in range(4):  # fingers
            fx = hx - 0.36 * a + k * 0.24 * a
            draw.rounded_rectangle(
                [fx - 0.09 * a, hy - 0.62 * b, fx + 0.09 * a, hy - 0.1 * b],
                radius=0.08 * a,
                fill=_color(skin * 0.97),
                outline=_color(skin * 0.75),
            )
    elif kind == "block":
        color = _color(rng.uniform(0, 255, 3))
        region = rng.integers(4)  # upper face, lower face, left half, right half
        if region == 0:
            box = [x_at(-0.95), y_at(eye_y - 0.3), x_at(0.95), y_at(eye_y + 0.12)]
        elif region == 1:
            box = [x_at(-0.95), y_at(mouth_v - 0.15), x_at(0.95), y_at(0.95)]
        elif region == 2:
            box = [x_at(-0.99), y_at(-0.9), x_at(-0.05), y_at(0.9)]
        else:
            box = [x_at(0.05), y_at(-0.9), x_at(0.99), y_at(0.9)]
        draw.rectangle(box, fill=color)
    else:
        raise ValueError(f"unknown occluder {kind!r}; valid occluders: {', '.join(OCCLUDERS)}")


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
