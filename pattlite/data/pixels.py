"""The uint8 pixel cache: a manifest's images decoded, resized and stored once, then memory-mapped.

`load_pixels(manifest, size)` returns a read-only `numpy.memmap` of shape `(N, size, size, 3)`, RGB,
row `i` holding manifest row `i`. The first call decodes every image and writes
`<cache dir>/pixels/<dataset>_<size>px_<hash>.npy` (hash of the dataset name, size, resize filter,
each row's `path`, `row` and `image_id`, and the fingerprint of the files they are read from: name, size
and modification time, `pattlite.data.fingerprint`); later calls only map that file, so a second run
starts in seconds, and a repaired or edited image or CSV is decoded again. The array is written row by
row (ordinary positioned writes into space reserved first: a full disk is a `NoSpaceError` naming the
file, never a SIGBUS) into a temporary file that is renamed when complete, so building a full FERPlus at
120x120 (1.5 GB) holds one image in memory, not the array, and an interrupted build never leaves a
truncated cache; the temporary file is removed on every exit path, and those of killed runs at the next
`load_pixels`. The `.json` beside the array, written last, records the array's size and SHA-256; the
array is checked against it when opened (the size every time, the content once per process,
`pattlite.files.check_file`), and a damaged cache raises `DamagedCacheError` naming the two files to
delete.

Sources, by the manifest's `path` and `row`:

- an image file (`row == -1`): any format and mode PIL reads; grayscale is replicated to 3 channels,
  alpha is dropped, 16-bit and 32-bit integer images are scaled to 8 bits by 257 (65535 -> 255);
- a CSV container (`.csv`, `row` = data row index, 0 = first line after the header) with a `pixels`
  column of space-separated 0-255 values of a square grayscale image (FER2013's `fer2013.csv`); the file
  is streamed once per path, parsing only the requested rows;
- a `.npy` container (`row` = index along the first axis) of uint8 images `(M, H, W)`, `(M, H, W, 1)`
  or `(M, H, W, 3)`, memory-mapped.

Images are resized to `size x size` with PIL's bilinear filter (`RESIZE_FILTER`), which antialiases
when shrinking; the aspect ratio is not kept (the datasets are square face crops).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pattlite import config
from pattlite.data.errors import DatasetFormatError
from pattlite.data.fingerprint import fingerprint_files
from pattlite.files import (
    DamagedCacheError,
    NpyWriter,
    check_file,
    mark_verified,
    read_json,
    remove_stale_temporaries,
    temporary_path,
    write_atomic,
)

# Bump when decoding or resizing changes, so old caches are not reused (3: the .json records the array's
# digest).
CACHE_VERSION = 3
RESIZE_FILTER = "bilinear"
_PIL_FILTER = Image.Resampling.BILINEAR
CSV_SUFFIXES = (".csv",)
NPY_SUFFIXES = (".npy",)


# What to do about unreadable images, for callers of load_pixels (which offers skip_unreadable).
SKIP_HINT = (
    "Fix or replace them (edited files are read again), or pass skip_unreadable=True to load_pixels to drop them."
)


class UnreadableImagesError(DatasetFormatError):
    """Some images of a manifest cannot be decoded; `unreadable` lists (position, path, row, reason)."""

    def __init__(self, unreadable, total: int, hint: str = SKIP_HINT):
        self.unreadable, self.total = list(unreadable), total
        first = "; ".join(
            f"{path}" + (f" (row {row})" if row >= 0 else "") + f": {reason}"
            for _, path, row, reason in self.unreadable[:10]
        )
        more = f" (and {len(self.unreadable) - 10} more)" if len(self.unreadable) > 10 else ""
        super().__init__(
            self.unreadable[0][1],
            None,
            f"{len(self.unreadable)} of {total} images cannot be read: {first}{more}. {hint}",
        )


def pixels_cache_dir(cache_dir=None) -> Path:
    """The folder holding pixel caches: `cache_dir/pixels`, default `config.cache_dir()/pixels`."""
    return Path(cache_dir if cache_dir is not None else config.cache_dir()).expanduser() / "pixels"


def cache_key(manifest: pd.DataFrame, size: int) -> str:
    """File stem of a manifest's cache: `<dataset>_<size>px_<hash of dataset, size, rows and the
    fingerprint of their files>`."""
    dataset = _dataset_name(manifest)
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "dataset": dataset,
                "size": int(size),
                "filter": RESIZE_FILTER,
                "rows": len(manifest),
                "files": fingerprint_files(manifest["path"].astype(str).unique()),
            }
        ).encode()
    )
    # One pass over the three identifying columns; a change to any row changes the key.
    for path, row, image_id in zip(
        manifest["path"].astype(str), manifest["row"].astype("int64"), manifest["image_id"].astype(str)
    ):
        digest.update(f"{path}\x1f{row}\x1f{image_id}\x1e".encode())
    return f"{dataset}_{int(size)}px_{digest.hexdigest()[:16]}"


def _dataset_name(manifest) -> str:
    name = str(manifest.attrs.get("dataset", "")) if hasattr(manifest, "attrs") else ""
    if not name:
        raise ValueError(
            "manifest.attrs['dataset'] is missing; pass a manifest from "
            "pattlite.data.load_manifest (the cache is keyed by the dataset name)"
        )
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _check_manifest(manifest, size) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame, got {type(manifest).__name__}")
    missing = [c for c in ("path", "row", "image_id") if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks column(s) {missing}; expected the columns of "
            f"docs/architecture.md (path, row, image_id, ...)"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")


def load_pixels(
    manifest: pd.DataFrame, size: int, progress: bool = True, cache_dir=None, skip_unreadable: bool = False
):
    """Returns a manifest's images as uint8 RGB `(N, size, size, 3)`, memory-mapped from a disk cache.

    Args:
        manifest: a manifest DataFrame (docs/architecture.md); uses `attrs["dataset"]` and the columns
            `path`, `row`, `image_id`.
        size: side of the square output images, in pixels.
        progress: show a tqdm progress bar while the cache is built.
        cache_dir: root of the caches; default `config.cache_dir()` (the files go in its `pixels/`).
        skip_unreadable: what to do with images that cannot be decoded. False (default): raise
            `UnreadableImagesError` (a `DatasetFormatError`) listing them. True: drop them, warn with
            their count and paths, and return `(pixels, kept_manifest)` instead of `pixels`, where
            `kept_manifest` holds the manifest rows that were read (original index kept, attrs copied),
            row `i` of `pixels` being row `i` of `kept_manifest`.

    Returns:
        A read-only `numpy.memmap` of dtype uint8, or `(pixels, kept_manifest)` when
        `skip_unreadable=True`.

    Raises:
        UnreadableImagesError: some images cannot be read and `skip_unreadable` is False.
        DatasetFormatError: a container is malformed (a CSV without `pixels` column, a .npy of the
            wrong dtype or shape, a row index past its end).
        DamagedCacheError: the cache files are truncated, unreadable or no longer match their digest
            (the message names the two files to delete).
        NoSpaceError: the disk filled up while building the cache (the message names the file).
    """
    _check_manifest(manifest, size)
    folder = pixels_cache_dir(cache_dir)
    stem = cache_key(manifest, size)
    array_path, info_path = folder / f"{stem}.npy", folder / f"{stem}.json"
    remove_stale_temporaries(folder)
    if not (array_path.exists() and info_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        _build_cache(manifest, int(size), array_path, info_path, progress)

    hint = (
        f"delete {array_path} and {info_path} (rm '{array_path}' '{info_path}'): the next run decodes the images again"
    )
    info = read_json(info_path, hint)
    if not isinstance(info, dict) or not isinstance(info.get("unreadable"), list) or "digest" not in info:
        raise DamagedCacheError(f"{info_path} lacks the fields of a pixel cache record; {hint}")
    check_file(array_path, info["digest"], hint)
    unreadable = [tuple(item) for item in info["unreadable"]]
    try:
        pixels = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise DamagedCacheError(f"{array_path} cannot be read ({type(error).__name__}: {error}); {hint}") from None
    expected = (len(manifest) - len(unreadable), size, size, 3)
    if pixels.shape != expected or pixels.dtype != np.uint8:
        raise DamagedCacheError(f"{array_path} holds {pixels.dtype} {pixels.shape}, expected uint8 {expected}; {hint}")
    if not unreadable:
        return (pixels, manifest) if skip_unreadable else pixels
    if not skip_unreadable:
        raise UnreadableImagesError(unreadable, len(manifest))
    dropped = sorted(position for position, *_ in unreadable)
    listing = ", ".join(str(path) for _, path, _, _ in unreadable[:10])
    warnings.warn(
        f"load_pixels: skipped {len(unreadable)} unreadable image(s) of {len(manifest)} "
        f"({_dataset_name(manifest)}): {listing}" + (" ..." if len(unreadable) > 10 else ""),
        stacklevel=2,
    )
    keep = np.ones(len(manifest), bool)
    keep[dropped] = False
    kept_manifest = manifest.iloc[np.flatnonzero(keep)].copy()
    kept_manifest.attrs = dict(manifest.attrs)
    return pixels, kept_manifest


def _build_cache(manifest, size, array_path: Path, info_path: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    n = len(manifest)
    # Temporary names start with .tmp-<pid>- (pattlite.files.remove_stale_temporaries knows them).
    token = uuid.uuid4().hex[:8]
    temp_path = temporary_path(array_path.with_name(f"{token}-{array_path.name}"))
    compact_path = temporary_path(array_path.with_name(f"{token}-{array_path.stem}.compact.npy"))
    paths = manifest["path"].astype(str).to_numpy()
    rows = manifest["row"].astype("int64").to_numpy()
    unreadable = []  # (position, path, row, reason)
    writers = []
    try:
        # Positioned writes, not a memory map: on a full disk a write into a memory-mapped sparse file
        # ends the process with SIGBUS; the space is reserved here instead, so that fails at once.
        out = NpyWriter(temp_path, (n, size, size, 3), np.uint8)
        writers.append(out)
        bar = tqdm(
            total=n,
            desc=f"pixel cache {_dataset_name(manifest)} {size}px",
            unit="img",
            disable=not progress,
            file=sys.stderr,
        )
        # Group positions by source file, keeping first-appearance order, so each container is opened
        # (or streamed) once however its rows are spread over the manifest.
        by_path: dict[str, list[int]] = {}
        for position, path in enumerate(paths):
            by_path.setdefault(path, []).append(position)
        for path, positions in by_path.items():
            suffix = Path(path).suffix.lower()
            container_rows = rows[positions]
            if suffix in CSV_SUFFIXES:
                _read_csv_rows(path, positions, container_rows, out, size, unreadable, bar)
            elif suffix in NPY_SUFFIXES:
                _read_npy_rows(path, positions, container_rows, out, size, unreadable, bar)
            else:
                for position, row in zip(positions, container_rows):
                    if row != -1:
                        raise DatasetFormatError(
                            path,
                            None,
                            f"manifest row {position} has row={row}, but "
                            f"{Path(path).name} is an image file (row must be -1; "
                            f"containers are {CSV_SUFFIXES + NPY_SUFFIXES})",
                        )
                    try:
                        out[position] = _decode_image_file(path, size)
                    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
                        unreadable.append((position, path, -1, f"{type(error).__name__}: {error}"))
                    bar.update(1)
        bar.close()
        record = writers.pop().close()
        unreadable.sort()
        final_source = temp_path
        if unreadable:
            # Keep only readable rows, copied in chunks so memory stays bounded.
            dropped = {position for position, *_ in unreadable}
            keep = np.array([i for i in range(n) if i not in dropped], dtype=np.int64)
            full = np.load(temp_path, mmap_mode="r")
            compact = NpyWriter(compact_path, (len(keep), size, size, 3), np.uint8)
            writers.append(compact)
            for start in range(0, len(keep), 1024):
                compact.append(full[keep[start : start + 1024]])
            record = writers.pop().close()
            del full
            final_source = compact_path
        info = {
            "version": CACHE_VERSION,
            "dataset": _dataset_name(manifest),
            "size": size,
            "rows": n,
            "filter": RESIZE_FILTER,
            "unreadable": [list(item) for item in unreadable],
            "digest": record,
        }
        info_path.unlink(missing_ok=True)  # an older record must not describe the new array
        os.replace(final_source, array_path)
        mark_verified(array_path, record)  # its digest was taken from the bytes just written
        # Last: the record (with the array's digest) appearing marks a complete cache.
        write_atomic(info_path, json.dumps(info, indent=1, default=int))
    finally:
        for writer in writers:
            writer.discard()
        for leftover in (temp_path, compact_path):
            if leftover.exists():
                leftover.unlink()


def _to_rgb_uint8(image: Image.Image, size: int) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit sources: 65535 -> 255; 32-bit "I" images that stay within 0-255 are already 8-bit.
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        raise ValueError("floating-point image (mode F); expected 8- or 16-bit integer pixels")
    elif image.mode not in ("L", "RGB"):
        # Palette, alpha, CMYK, YCbCr, 1-bit: grayscale-like modes to L, the rest to RGB.
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), _PIL_FILTER)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def _decode_image_file(path: str, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here and is reported by path
        return _to_rgb_uint8(image, size)


def _read_npy_rows(path, positions, container_rows, out, size, unreadable, bar) -> None:
    try:
        container = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        for position, row in zip(positions, container_rows):
            unreadable.append((position, path, int(row), f"{type(error).__name__}: {error}"))
        bar.update(len(positions))
        return
    if container.dtype != np.uint8 or not (
        container.ndim == 3 or (container.ndim == 4 and container.shape[3] in (1, 3))
    ):
        raise DatasetFormatError(
            path,
            None,
            f"array of {container.dtype} {container.shape}; expected uint8 (M, H, W), (M, H, W, 1) or (M, H, W, 3)",
        )
    for position, row in zip(positions, container_rows):
        if not 0 <= row < len(container):
            raise DatasetFormatError(
                path,
                None,
                f"manifest row {position} asks for row {row}, but the "
                f"array has {len(container)} rows (0..{len(container) - 1})",
            )
        image = np.asarray(container[row])
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        out[position] = _to_rgb_uint8(Image.fromarray(image), size)
        bar.update(1)


def _read_csv_rows(path, positions, container_rows, out, size, unreadable, bar) -> None:
    wanted: dict[int, list[int]] = {}
    for position, row in zip(positions, container_rows):
        if row < 0:
            raise DatasetFormatError(
                path,
                None,
                f"manifest row {position} has row={row}; a CSV container "
                f"needs the data row index (0 = first line after the header)",
            )
        wanted.setdefault(int(row), []).append(position)
    last_wanted = max(wanted)
    try:
        handle = open(path, newline="")
    except OSError as error:
        for position, row in zip(positions, container_rows):
            unreadable.append((position, path, int(row), f"{type(error).__name__}: {error}"))
        bar.update(len(positions))
        return
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or "pixels" not in [h.strip() for h in header]:
            raise DatasetFormatError(
                path, 1, f"header {header}; expected a 'pixels' column (FER2013 format: emotion,pixels,Usage)"
            )
        column = [h.strip() for h in header].index("pixels")
        data_row = -1
        for data_row, record in enumerate(reader):
            if data_row in wanted:
                line = reader.line_num
                try:
                    image = _parse_pixel_string(record[column] if column < len(record) else "")
                except ValueError as error:
                    for position in wanted[data_row]:
                        unreadable.append((position, path, data_row, f"line {line}: {error}"))
                else:
                    resized = _to_rgb_uint8(Image.fromarray(image), size)
                    for position in wanted[data_row]:
                        out[position] = resized
                bar.update(len(wanted[data_row]))
            if data_row >= last_wanted:
                break
    if data_row < last_wanted:
        raise DatasetFormatError(
            path, None, f"the manifest asks for data row {last_wanted}, but the file has {data_row + 1} data rows"
        )


def _parse_pixel_string(text: str) -> np.ndarray:
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"'pixels' holds non-integer values (starts {text[:30]!r})") from None
    side = int(round(np.sqrt(values.size)))
    if values.size == 0 or side * side != values.size:
        raise ValueError(f"'pixels' holds {values.size} values; expected a square image (e.g. 2304 = 48x48)")
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"'pixels' values span {values.min()}..{values.max()}; expected 0..255")
    return values.astype(np.uint8).reshape(side, side)


def cache_info(cache_dir=None) -> pd.DataFrame:
    """Lists the pixel caches on disk: one row per cache with dataset, size, rows kept, unreadable
    count, megabytes and file path (`cache_dir` as in `load_pixels`)."""
    records = []
    folder = pixels_cache_dir(cache_dir)
    for info_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        array_path = info_path.with_suffix(".npy")
        if not array_path.exists():
            continue
        info = read_json(info_path, f"delete {info_path} and {array_path} to rebuild that cache")
        records.append(
            dict(
                dataset=info.get("dataset"),
                size=info.get("size"),
                rows=info.get("rows", 0) - len(info.get("unreadable", [])),
                unreadable=len(info.get("unreadable", [])),
                megabytes=round(array_path.stat().st_size / 2**20, 2),
                path=str(array_path),
            )
        )
    return pd.DataFrame.from_records(records, columns=["dataset", "size", "rows", "unreadable", "megabytes", "path"])
