"""Faces in photos: reading images, finding faces (OpenCV's Haar cascade) and preparing each face as the
training images were prepared.

Detector: OpenCV's frontal-face Haar cascade (`haarcascade_frontalface_default.xml`), which ships inside
the `opencv-python-headless` wheel (4.x: the 5.x wheels no longer carry the cascade files): a maintained
wheel, no model to download at run time, no GUI libraries. It finds upright frontal faces; turned,
tilted or small faces are often missed (`predict` then says "no face found"). Detection runs on the
histogram-equalised grey image, shrunk so that its longer side is at most `DETECT_MAX_SIDE` pixels.

Preparation (`face_input`), after how the training data look: FER2013 and FERPlus faces are 48x48 grey
crops, resized by the pixel cache (PIL, bilinear) to the profile's image size (120) and repeated to 3
channels; the model resizes them to 224 itself. On the 167 FERPlus sample images in tests/fixtures the
cascade's box covers a median 0.96 of the crop's side (126 of them found), so a face's box is widened by
`DEFAULT_MARGIN` (2% of its side) on each side, padded by repeating the edge pixels where it leaves the
image, made grey, resized to the dataset's face size (48) and then to the image size, as the training
images were.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_MARGIN = 0.02
DEFAULT_MIN_FACE = 48  # pixels: smaller faces hold less detail than any FER training image
DETECT_MAX_SIDE = 1280
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
CASCADE_WINDOW = 24  # the cascade's own window: no smaller face can be found
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
_RESIZE = Image.Resampling.BILINEAR  # pattlite.data.pixels' filter


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def read_image(path) -> np.ndarray:
    """The image at `path` as uint8 RGB (height, width, 3): any format and mode PIL reads (the first
    frame of an animation; 16-bit images scaled to 8 bits), turned as its EXIF orientation says (so face
    boxes are in the upright image's pixels). `UnreadableImageError` names the file."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)  # phone photos: turned upright as their EXIF says
            if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                values = np.asarray(image, dtype=np.float64)
                if image.mode != "I" or values.max(initial=0) > 255:
                    values = values / 257.0
                return _rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
            if image.mode == "F":
                raise UnreadableImageError(f"{path}: a floating-point image (mode F); expected 8- or 16-bit pixels")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnreadableImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        reason = "not an image PIL can read" if isinstance(error, UnidentifiedImageError) else str(error)
        raise UnreadableImageError(f"{path}: {reason}") from None


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)


def grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 grey (height, width) of an RGB image, by PIL's "L" conversion (ITU-R 601-2 luma)."""
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    path = Path(cv2.data.haarcascades) / CASCADE
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise RuntimeError(f"OpenCV could not load its face cascade {path}; reinstall opencv-python-headless<5")
    return classifier


def detect_faces(rgb: np.ndarray, min_face: int = DEFAULT_MIN_FACE) -> list[tuple[int, int, int, int]]:
    """Frontal faces in an RGB image as (x, y, w, h) boxes in its pixels, left to right.

    Args:
        rgb: uint8 (height, width, 3).
        min_face: the smallest face side to look for, in the image's pixels.
    """
    import cv2

    image = grey(rgb)
    height, width = image.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if scale < 1.0:
        image = cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    side = max(CASCADE_WINDOW, int(round(min_face * scale)))
    if min(image.shape) < side:
        return []
    found = _cascade().detectMultiScale(
        cv2.equalizeHist(image), scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(side, side)
    )
    boxes = [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def crop(rgb: np.ndarray, box, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The square crop around `box` (x, y, w, h) widened by `margin` x its side on each side; where it
    leaves the image, the edge pixels are repeated."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    size = max(1, int(round(side)))
    height, width = rgb.shape[:2]
    pad = max(0, -left, -top, left + size - width, top + size - height)
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        left, top = left + pad, top + pad
    return rgb[top : top + size, left : left + size]


def face_input(face_rgb: np.ndarray, image_size: int, face_size: int | None = 48, grayscale: bool = True) -> np.ndarray:
    """A face crop as the model's input: uint8 (image_size, image_size, 3).

    Grey (when the training images were), resized to `face_size` (the side the dataset stored its faces
    at; None: straight to image_size), then to `image_size`, with PIL's bilinear filter as
    `pattlite.data.pixels` resizes; grey is repeated to 3 channels.
    """
    image = Image.fromarray(face_rgb).convert("L" if grayscale else "RGB")
    for side in (face_size, image_size) if face_size else (image_size,):
        if image.size != (side, side):
            image = image.resize((side, side), _RESIZE)
    return _rgb(np.asarray(image, dtype=np.uint8))


def image_files(paths) -> list[Path]:
    """The files to read for command-line `paths`: a file as given, a folder's image files (by suffix,
    `IMAGE_SUFFIXES`, in sorted order, sub-folders included). `FileNotFoundError` names a missing path."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files
