"""Drawing one synthetic face (`pattlite.data.synthetic`'s generator): the expression parameters and each class's
direction in them, an identity (`_draw_subject`: face shape, skin, hair, glasses, resting offsets), one image
(`_render`: expression, pose, lighting, noise, drawn with PIL at 4x and area-averaged down) and its occluders.
Any change to the drawing must bump `pattlite.data.synthetic.GENERATOR_VERSION`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

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
