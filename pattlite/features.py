"""Backbone-feature cache: the frozen MobileNetV1's outputs at the cut, computed once, reused by every head.

A head on a frozen backbone sees, in inference, exactly `build_backbone(...)(images)`; storing those
outputs lets heads train without re-running the backbone every epoch (`pattlite.experiments`, stage 1
"cached"). What a cached run gives up: the in-model random contrast cannot be applied to features.
The horizontal flip can: with `TrainConfig.train_views=2` the features of every training image's mirror
image are cached too, and each epoch reads an image or its mirror (`pattlite.experiments`). The
authors' stage 2 as coded changes no backbone weight, so it runs on features too.

Features are stored as float16 `.npy` files (read back memory-mapped) in one store per configuration,
`<cache dir>/features/<key>/`, where the key covers the weights (the SHA-256 of the weights file, `weights_identity`,
or "imagenet" + Keras version), the image size, the resize size, the package version and the feature
format. Inside a store, images are found by CONTENT: the hash of each image's uint8 pixels at the
cache size (`image_hashes`). So FER2013 and FERPlus (the same faces labelled twice) share one
extraction, a row subset reuses a full-set extraction, and a full set after a subset computes only the
images still missing. Each extraction appends a shard `shard-<time>-<pid>/` holding `hashes.npy` and
one `<layer name>.npy` per layer computed in that pass (every requested layer comes out of one pass).
Shards are written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written shard; the store's key also names the extraction engine and its version
(`extraction_identity`: TensorFlow's and OpenVINO's features differ by up to one float16 step). The
engines that compute the features are `pattlite.extraction`'s: in this process when its Keras backend
has TensorFlow models (`pattlite.backends`), else in a TensorFlow child process.

Each shard's `digest.json`, written last, records the size and SHA-256 of every file in it; a shard
is checked when read (sizes on every use, contents once per process: `pattlite.files.check_file`),
and a damaged one raises `DamagedCacheError` naming the folder to delete (the next run computes its
images again) rather than giving numbers. Files are written with ordinary writes into space reserved
first, so a full disk raises `NoSpaceError` naming the file (no SIGBUS); temporaries are removed on
every exit path, Ctrl-C and SIGTERM included, and those of killed runs at the next use of the store.
Disk grows with the distinct images only (14x14x512 float16 is 200 KB an image:
the 35,887 FER2013 images are 7.2 GB at one cut); nothing has to fit in memory: `backbone_features`
returns `FeatureRows`, which read rows from the memory-mapped shards when indexed.

A random backbone (`weights=None` in the demo profiles) is made reproducible by
`random_backbone_weights`: seeded random init, BatchNorm statistics calibrated on given training
images, saved as a weights file keyed by the seed and the images; that file is then the weights of
both the feature cache and any full model, so cached and full-model runs agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import pattlite
from pattlite import backends, config
from pattlite.arrays import ALIGNMENT, aligned_empty
from pattlite.extraction import (
    EXTRACTION_ENGINES,
    FEATURE_DTYPE,
    OpenVinoExtractor,
    engine_versions,
    extract_shard,
    extract_shard_in_tensorflow,
    extraction_engine,
    extraction_identity,
    interrupts_honoured,
    library_version,
    make_extractor,
)
from pattlite.files import (
    DamagedCacheError,
    check_file,
    exclusive_lock,
    json_digest,
    mark_verified,
    read_json,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
)

# Kept importable from here (other modules and notebooks use these names): the extraction engines
# (now pattlite.extraction) and `aligned_empty` (now pattlite.arrays).
__all__ = [
    "FEATURE_FORMAT_VERSION",
    "FEATURE_DTYPE",
    "ALIGNMENT",
    "EXTRACTION_ENGINES",
    "aligned_empty",
    "features_dir",
    "weights_identity",
    "image_hashes",
    "feature_key",
    "random_backbone_weights",
    "FeatureRows",
    "backbone_features",
    "extraction_engine",
    "extraction_identity",
    "extract_shard",
    "extract_shard_in_tensorflow",
    "make_extractor",
    "OpenVinoExtractor",
    "interrupts_honoured",
]

# 2: every shard carries digest.json, and the key names the extraction engine (older stores are not read).
FEATURE_FORMAT_VERSION = 2
EXTRACTION_LOCK = ".extract.lock"  # in a store's folder: one process extracts into it at a time


def features_dir(cache_dir=None) -> Path:
    """Root of the feature cache: `<cache_dir or config.cache_dir()>/features`."""
    return Path(cache_dir) if cache_dir is not None else config.cache_dir() / "features"


def weights_identity(weights) -> dict:
    """What identifies backbone weights in a cache key: a file's content (SHA-256, memoised by path, size
    and mtime in `pattlite.data.fingerprint`), so the same weights copied anew or moved keep their cached
    features, and changed weights never reuse them."""
    if weights is None:
        raise ValueError(
            "weights=None cannot key a cache: a random backbone differs every build; make it "
            "reproducible with random_backbone_weights(seed, calibration_images)"
        )
    if weights == "imagenet":
        return {"weights": "imagenet", "keras": library_version("keras")}
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist")
    from pattlite.data.fingerprint import file_digest

    return {"sha256": file_digest(path)}


def image_hashes(pixels, progress: bool = False) -> np.ndarray:
    """One 16-byte content hash per image: BLAKE2b of its uint8 pixels (and shape) at the cache size.

    The same face stored twice (FER2013 and FERPlus, or a duplicate inside a dataset) gets the same
    hash, so its features are computed once. Returns an array of dtype `S16`, one entry per image.
    """
    from tqdm.auto import tqdm

    out = np.empty(len(pixels), dtype="S16")
    shape = repr(tuple(pixels.shape[1:])).encode()
    for start in tqdm(range(0, len(pixels), 1024), desc="image hashes", disable=not progress):
        block = np.ascontiguousarray(pixels[start : start + 1024], dtype=np.uint8)
        for i, image in enumerate(block):
            digest = hashlib.blake2b(shape, digest_size=16)
            digest.update(image)
            out[start + i] = digest.digest()
    return out


def feature_key(size: int, weights, resize_to: int = 224, engine: str | None = None) -> str:
    """The key of one feature store: weights, image size, resize size, package version, feature format,
    and the extraction engine with the versions of the libraries that compute the features
    (`engine`, default `extraction_engine()`; the two engines' features differ by up to 0.0039).

    The images are not part of it: inside a store every image is found by its content hash.
    """
    engine = engine or extraction_engine()
    return json_digest(
        {
            "size": int(size),
            "resize_to": int(resize_to),
            "weights": weights_identity(weights),
            "pattlite": pattlite.__version__,
            "format": FEATURE_FORMAT_VERSION,
            "dtype": FEATURE_DTYPE,
            "engine": engine,
            "versions": engine_versions(engine),
        }
    )


def random_backbone_weights(seed: int, calibration_images, resize_to: int = 224, cache_dir=None) -> Path:
    """A reproducible random MobileNetV1 (no top): seeded init, BatchNorm calibrated on `calibration_images`.

    With random weights and the default BatchNorm statistics activations vanish through the frozen
    backbone; `pattlite.model.calibrate_batchnorm` sets them to the statistics of the given images. The
    result is saved once as `<features dir>/weights/random_seed<seed>_<key>.weights.h5`, keyed by the
    seed, the images' bytes, the resize size and the package and Keras versions, and can be passed as
    `weights=` to `build_model`, `build_backbone` and `backbone_features`.

    Args:
        seed: seed of the random initialisation.
        calibration_images: uint8 array (N, height, width, 3) of training images (N around 32-64:
            calibration runs the whole set through the backbone at once).
        resize_to: side the images are resized to before the backbone.
        cache_dir: feature cache folder (default `features_dir()`).

    Returns:
        The path of the weights file.
    """
    import keras

    from pattlite.backbone import FULL_BACKBONE_LAYER, build_backbone, calibrate_batchnorm

    images = np.ascontiguousarray(calibration_images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"calibration_images of shape {images.shape}: expected (N>0, height, width, 3)")
    key = json_digest(
        {
            "seed": int(seed),
            "images": hashlib.sha256(images.tobytes()).hexdigest(),
            "shape": images.shape,
            "dtype": str(images.dtype),
            "resize_to": int(resize_to),
            "pattlite": pattlite.__version__,
            "keras": keras.__version__,
        }
    )
    folder = features_dir(cache_dir) / "weights"
    path = folder / f"random_seed{int(seed)}_{key}.weights.h5"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    from pattlite.seeding import enable_determinism

    enable_determinism(int(seed))
    backbone = build_backbone(
        weights=None, cut_layer=FULL_BACKBONE_LAYER, resize_to=resize_to, input_shape=images.shape[1:]
    )
    calibrate_batchnorm(backbone, images)
    # Saved as a plain include_top=False MobileNet so build_model/build_backbone load it like ImageNet weights.
    net = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(resize_to, resize_to, 3))
    for layer in net.layers[1:]:
        layer.set_weights(backbone.get_layer(layer.name).get_weights())
    remove_stale_temporaries(folder)
    tmp = temporary_path(path)
    try:
        net.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed or interrupted save
    return path


class FeatureRows:
    """Read-only rows of a feature store, addressed 0..N-1 in the order they were asked for.

    The rows live in the store's memory-mapped shards; nothing is read until indexed. Indexing with an
    int, a slice or an integer array returns a NumPy float16 array (rows of one shard are read in
    ascending order, then put back in the asked order, into an `aligned_empty` array). `np.asarray(rows)`
    reads them all.
    """

    def __init__(self, shards, shard_of, row_of):
        self._shards = shards  # list of (N_s, h, w, c) float16 memory maps
        self._shard_of = np.asarray(shard_of, dtype=np.int64)
        self._row_of = np.asarray(row_of, dtype=np.int64)
        first = shards[0]
        self.shape = (len(self._row_of),) + tuple(first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        positions = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if positions.ndim != 1:
            raise IndexError("feature rows are indexed by an int, a slice or a 1-D integer array")
        out = aligned_empty((len(positions),) + self.shape[1:], self.dtype)
        shard_of, row_of = self._shard_of[positions], self._row_of[positions]
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            rows = row_of[where]
            sort = np.argsort(rows, kind="stable")
            ordered = rows[sort]
            if ordered[-1] - ordered[0] + 1 == len(ordered):  # a contiguous range: one sequential read
                block = self._shards[s][ordered[0] : ordered[-1] + 1]
            else:
                block = self._shards[s][ordered]
            out[where[sort]] = block
        return out

    def __array__(self, dtype=None, copy=None):
        values = self[np.arange(len(self))]
        return values if dtype is None else values.astype(dtype)


def _shard_hint(shard: Path) -> str:
    return (
        f"delete the folder {shard} (rm -r '{shard}'): the next run computes its images again, the "
        "store's other shards are kept"
    )


def _shard_records(shard: Path) -> dict:
    """{file name: digest record} of a finished shard, from its digest.json (written last)."""
    content = read_json(shard / "digest.json", _shard_hint(shard))
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict) or "hashes.npy" not in files:
        raise DamagedCacheError(f"{shard / 'digest.json'} lists no hashes.npy: {files!r}; {_shard_hint(shard)}")
    return files


def _load_checked(shard: Path, name: str, records: dict, mmap: bool):
    """A shard's `.npy` file, after `check_file` against its digest record (memory-mapped with `mmap`)."""
    path, hint = shard / name, _shard_hint(shard)
    if name not in records:
        raise DamagedCacheError(f"{path} has no digest record in {shard / 'digest.json'}; {hint}")
    check_file(path, records[name], hint)
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as error:
        raise DamagedCacheError(f"{path} cannot be read ({type(error).__name__}: {error}); {hint}") from None


def _store_index(folder: Path, layer: str):
    """([(shard folder, digest records)], {content hash: (shard number, row)}) over the finished shards
    of a store that hold `layer`; each shard's hashes are checked against its digest."""
    shards, index = [], {}
    for shard in sorted(p for p in folder.glob("shard-*") if p.is_dir()):
        records = _shard_records(shard)
        if f"{layer}.npy" not in records:
            continue
        hashes = _load_checked(shard, "hashes.npy", records, mmap=False)
        number = len(shards)
        shards.append((shard, records))
        for row, digest in enumerate(hashes.tolist()):
            index.setdefault(digest, (number, row))
    return shards, index


def _finish_shard(tmp: Path, folder: Path) -> Path:
    """Renames a complete temporary shard into the store; its files count as checked in this process
    (their digests were taken from the bytes written)."""
    final = folder / f"shard-{time.time_ns():020d}-{os.getpid()}"
    os.replace(tmp, final)
    for name, record in _shard_records(final).items():
        mark_verified(final / name, record)
    return final


def backbone_features(
    manifest,
    size: int,
    weights,
    cut_layers=(29,),
    resize_to: int = 224,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir=None,
    rows=None,
    pixels=None,
    engine: str | None = None,
) -> dict:
    """Frozen-backbone features of the images of a manifest, from the cache or computed once.

    The store for (weights, size, resize, engine) finds each image by the hash of its uint8 pixels
    (`image_hashes`), so images already computed for any dataset, split or row subset are read back,
    and only the missing ones pass through the backbone (all missing layers in one pass), appended to
    the store as a new shard. Every shard read is checked against its digest (`_load_checked`).

    Args:
        manifest: a manifest from `pattlite.data.load_manifest` (all splits; index rows by position).
        size: side of the images fed to the model (the pixel cache's size).
        weights: "imagenet" or the path of a backbone weights file (for a random backbone, the file from
            `random_backbone_weights`; None is refused, it would not be reproducible).
        cut_layers: Table 5 layer numbers or MobileNet layer names, e.g. (29, "conv_pw_13_relu").
        resize_to: side the images are resized to before the backbone.
        batch_size: images per backbone call.
        progress: show tqdm progress bars.
        cache_dir: feature cache folder (default `features_dir()`).
        rows: manifest positions to return (increasing), e.g. a training subset plus val and test;
            None = every row.
        pixels: the manifest's pixel array at `size` (default: `pattlite.data.load_pixels`).
        engine: "openvino" or "tensorflow" (default `extraction_engine()`): which engine computes the
            features and so which store they are read from (an experiment passes its own).

    Returns:
        {layer name: `FeatureRows` (N, h, w, c) float16}, one row per manifest row (or per entry of
        `rows`), in that order. No augmentation can be applied to these features.

    Raises:
        DamagedCacheError: a shard of the store is truncated or no longer matches its digest (the
            message names the folder to delete).
        NoSpaceError: the disk filled up while writing a shard (the message names the file).
        KeyboardInterrupt: Ctrl-C or SIGTERM during the extraction (nothing is left in the store).
    """

    from pattlite.backbone import cut_layer_name

    names = list(dict.fromkeys(cut_layer_name(c) for c in cut_layers))
    if not names:
        raise ValueError("cut_layers is empty; expected at least one layer number or name")
    engine = config.check_name("extraction engine", engine or extraction_engine(), EXTRACTION_ENGINES[1:])
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) > 1 and np.any(np.diff(rows) <= 0)):
            raise ValueError("rows must be a 1-D array of increasing manifest positions")
    if pixels is None:
        from pattlite.data import load_pixels

        pixels = load_pixels(manifest, size, progress=progress)
    rows = np.arange(len(pixels)) if rows is None else rows
    if len(rows) and (rows[0] < 0 or rows[-1] >= len(pixels)):
        raise ValueError(f"rows range {rows[0]}..{rows[-1]} outside the manifest's {len(pixels)} images")
    hashes = image_hashes(pixels[rows] if len(rows) < len(pixels) else pixels, progress=progress)
    key = feature_key(size, weights, resize_to, engine)
    folder = features_dir(cache_dir) / key
    remove_stale_temporaries(folder)
    missing = _missing_rows(folder, names, hashes)
    if missing:
        with _extraction_lock(folder):
            # Another process may have extracted them while this one waited for the lock.
            missing = _missing_rows(folder, names, hashes)
            if missing:
                _extract_missing(
                    missing, folder, hashes, pixels, rows, size, weights, resize_to, batch_size, progress, engine, key
                )
    features = {}
    for name in names:
        shards, index = _store_index(folder, name)
        located = np.array([index[digest] for digest in hashes.tolist()], dtype=np.int64).reshape(-1, 2)
        # Only the shards holding the asked rows are opened (and checked).
        used, local = np.unique(located[:, 0], return_inverse=True)
        used = used if len(used) else np.arange(min(len(shards), 1))
        arrays = [_load_checked(shards[s][0], f"{name}.npy", shards[s][1], mmap=True) for s in used]
        features[name] = FeatureRows(arrays, local.reshape(-1), located[:, 1])
    return features


def _missing_rows(folder: Path, names, hashes) -> dict:
    """{layer name: positions in `hashes` whose features the store lacks}, for the layers lacking any."""
    missing = {}
    for name in names:
        _, index = _store_index(folder, name)
        absent = [i for i, digest in enumerate(hashes.tolist()) if digest not in index]
        if absent:
            missing[name] = absent
    return missing


@contextlib.contextmanager
def _extraction_lock(folder: Path):
    """Hold the store's `.extract.lock` (an exclusive `flock`) while inside, waiting for it when another
    process holds it: two processes that need the same images (two grid trials starting together)
    extract them once, the second then reads the first's shard. The system drops the lock when its
    process ends, however it ends."""
    folder.mkdir(parents=True, exist_ok=True)

    def say_waiting():
        print(
            f"[features] another process is extracting into {folder}; waiting for it, then extracting "
            "only what it did not",
            file=sys.stderr,
            flush=True,
        )

    with exclusive_lock(folder / EXTRACTION_LOCK, on_busy=say_waiting):
        yield


def _extract_missing(
    missing, folder, hashes, pixels, rows, size, weights, resize_to, batch_size, progress, engine, key
):
    """One pass of the backbone for every missing layer, over the images any of them lacks (each image
    once), appended to the store as a new shard; the store's meta.json rewritten."""
    todo = sorted(set().union(*missing.values()))
    first_of = {}
    for i in todo:
        first_of.setdefault(hashes[i], i)
    unique = np.array(sorted(first_of.values()), dtype=np.int64)
    layers = list(missing)
    with interrupts_honoured():
        if backends.current().TENSORFLOW_MODELS:
            tmp = extract_shard(
                pixels,
                rows[unique],
                make_extractor(size, weights, layers, resize_to, engine),
                layers,
                batch_size,
                progress,
                folder,
                hashes=hashes[unique],
            )
        else:
            tmp, _ = extract_shard_in_tensorflow(
                pixels,
                rows[unique],
                size,
                weights,
                layers,
                resize_to,
                batch_size,
                progress,
                folder,
                hashes=hashes[unique],
                engine=engine,
            )
        try:
            _finish_shard(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removed if that failed
    source = {} if weights == "imagenet" else {"file": str(Path(weights).expanduser().resolve())}
    meta = {
        "key": key,
        "size": int(size),
        "resize_to": int(resize_to),
        "weights": {**weights_identity(weights), **source},
        "pattlite": pattlite.__version__,
        "format": FEATURE_FORMAT_VERSION,
        "engine": engine,
        "versions": engine_versions(engine),
    }
    write_json_atomic(folder / "meta.json", meta)
