"""Backbone-feature cache: the frozen MobileNetV1's outputs at the cut, computed once, reused by every head.

A head on a frozen backbone sees, in inference, exactly `build_backbone(...)(images)`; storing those
outputs lets heads train without re-running the backbone every epoch (`pattlite.experiments`, stage 1
"cached"). What a cached run gives up: the in-model flip/contrast augmentation cannot be applied to
features, so cached stage-1 training has NO augmentation; results record `stage1: "cached"`. The
authors' stage 2 as coded changes no backbone weight, so it is exact on features too (again without
augmentation).

Features are stored as float16 `.npy` files (read back memory-mapped) in one store per configuration,
`<cache dir>/features/<key>/`, where the key covers the weights (file path + size + modification time,
or "imagenet" + Keras version), the image size, the resize size, the package version and the feature
format. Inside a store, images are found by CONTENT: the hash of each image's uint8 pixels at the
cache size (`image_hashes`). So FER2013 and FERPlus (the same faces labelled twice) share one
extraction, a row subset reuses a full-set extraction, and a full set after a subset computes only the
images still missing. Each extraction appends a shard `shard-<time>-<pid>/` holding `hashes.npy` and
one `<layer name>.npy` per layer computed in that pass (every requested layer comes out of one pass).
Shards are written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written shard; the store's key also names the extraction engine and its version
(`extraction_identity`: TensorFlow's and OpenVINO's features differ by up to one float16 step).

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
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import pattlite
from pattlite import config
from pattlite.files import (
    DamagedCacheError,
    NpyWriter,
    check_file,
    file_record,
    json_digest,
    mark_verified,
    read_json,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
)

if TYPE_CHECKING:  # annotations only: keras is imported where it is used
    import keras

# 2: every shard carries digest.json, and the key names the extraction engine (older stores are not read).
FEATURE_FORMAT_VERSION = 2
FEATURE_DTYPE = "float16"


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
        return {"weights": "imagenet", "keras": _library_version("keras")}
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
            "versions": _engine_versions(engine),
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

    from pattlite.model import FULL_BACKBONE_LAYER, build_backbone, calibrate_batchnorm

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
    from pattlite.train import enable_determinism

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


# XLA's CPU client uses a host array in place, without a copy, when its data is aligned to this many
# bytes (NumPy's own large arrays are usually 16 bytes off).
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """`np.empty(shape, dtype)` whose data starts at a multiple of `ALIGNMENT` bytes, so that the JAX
    backend can read it in place (`jax.device_put(..., may_alias=True)`) instead of copying it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


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


def feature_extractor(size: int, weights, layer_names, resize_to: int = 224) -> keras.Model:
    """The frozen backbone up to the deepest of `layer_names`, with one output per layer."""
    import keras

    from pattlite.model import build_backbone

    backbone = build_backbone(
        weights=weights, cut_layer=_deepest(layer_names), resize_to=resize_to, input_shape=(size, size, 3)
    )
    # Stored as FEATURE_DTYPE, cast inside the compiled call: 6 ms a batch of 64 against 97 ms in NumPy.
    return keras.Model(
        backbone.inputs, [keras.ops.cast(backbone.get_layer(n).output, FEATURE_DTYPE) for n in layer_names]
    )


# Which library runs the backbone for the feature cache: "auto" (OpenVINO when installed, else
# TensorFlow), "openvino" or "tensorflow"; overridden by $PATTLITE_EXTRACTION_ENGINE.
EXTRACTION_ENGINES = ("auto", "openvino", "tensorflow")


def extraction_engine(choice: str = "auto") -> str:
    """The engine feature extraction uses: $PATTLITE_EXTRACTION_ENGINE when set, else `choice` (a
    profile's `extraction_engine`), resolved ("auto": OpenVINO when the `openvino` package is
    installed, else TensorFlow). Measured on 2 cores (AMD EPYC 7xx3, no
    AVX-512), 120 px images to conv_dw_9_relu: OpenVINO 160-189 images/s, TensorFlow 106-116 with
    oneDNN (75-82 without; TensorFlow turns oneDNN on by default only on CPUs with AVX-512).
    """
    import importlib.util

    engine = config.check_name(
        "extraction engine", os.environ.get("PATTLITE_EXTRACTION_ENGINE") or choice, EXTRACTION_ENGINES
    )
    if engine == "auto":
        return "openvino" if importlib.util.find_spec("openvino") is not None else "tensorflow"
    if engine == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ModuleNotFoundError(
            "PATTLITE_EXTRACTION_ENGINE=openvino, but the openvino package is not installed (pip install -e '.[jax]')"
        )
    return engine


def extraction_identity(engine: str | None = None) -> dict:
    """`{"engine": "openvino" | "tensorflow", "version": "<that library's version>"}`: what computes
    the cached features. `engine`: "openvino" or "tensorflow" as it is; None or "auto" resolved as
    extraction resolves it (`extraction_engine()`: $PATTLITE_EXTRACTION_ENGINE, else OpenVINO when
    installed). Cheap: the version comes from the installed package's metadata, without importing
    TensorFlow or OpenVINO (imported only where the metadata is missing). Raises ValueError for an
    unknown engine, ModuleNotFoundError for OpenVINO when it is not installed.
    """
    import importlib.util

    if engine in (None, "auto"):
        engine = extraction_engine()
    engine = config.check_name("extraction engine", engine, EXTRACTION_ENGINES[1:])
    if engine == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ModuleNotFoundError(
            "extraction engine openvino: the openvino package is not installed (pip install -e '.[jax]')"
        )
    return {"engine": engine, "version": _library_version(engine)}


# Distributions that install the `tensorflow` module (tried in this order for its version).
_TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-macos",
    "tensorflow-intel",
    "tf-nightly",
    "tf-nightly-cpu",
)


def _library_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in _TENSORFLOW_DISTRIBUTIONS if name == "tensorflow" else (name, f"{name}-nightly"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    import importlib

    return str(importlib.import_module(name).__version__)  # installed without metadata


def _engine_versions(engine: str) -> dict:
    # The extractor is a TensorFlow-backend Keras model on either engine (OpenVINO converts its export).
    return {"keras": _library_version("keras"), "tensorflow": _library_version("tensorflow")} | (
        {"openvino": _library_version("openvino")} if engine == "openvino" else {}
    )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_honoured():
    """Within the block, Ctrl-C (SIGINT) and SIGTERM stop the work as an interrupt that no code inside
    can turn into another error.

    Each signal goes to the handler installed before (Python's SIGINT handler and `run_all.sh`'s
    SIGTERM handler raise KeyboardInterrupt); where SIGTERM has no Python handler it raises
    `KeyboardInterrupt("SIGTERM")` instead of ending the process at once, so temporary files are
    removed on the way out. An exception leaving the block after a signal arrived (OpenVINO's model
    conversion reports an interrupt as `OpConversionFailure`, a child's failure follows the parent's
    Ctrl-C) is replaced by that interrupt, as is a normal exit. Ignored signals stay ignored. Signals
    reach Python only in the main thread: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received, previous = [], {}

    def handler(signum, frame):
        before = previous[signum]
        try:
            before(signum, frame) if callable(before) else _raise_interrupt(signum, frame)
        except BaseException as error:
            received.append(error)
            raise

    for signum in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(signum)
        if before in (signal.SIG_IGN, None):  # ignored, or a handler not set from Python: left alone
            continue
        previous[signum] = before
        signal.signal(signum, handler)
    try:
        yield
    except BaseException as error:
        if received and error is not received[0]:
            raise received[0] from error
        raise
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
    if received:
        raise received[0]


class OpenVinoExtractor:
    """A TensorFlow-backend Keras extractor (`feature_extractor`) compiled by OpenVINO for the CPU.

    The Keras model is exported as a SavedModel and converted (a few seconds; Ctrl-C and SIGTERM stop
    it as KeyboardInterrupt, `interrupts_honoured`); it is compiled in float32
    (`INFERENCE_PRECISION_HINT`: OpenVINO would use bfloat16 on CPUs that have it) for the latency
    hint, once per batch size seen. `predict_on_batch` returns one NumPy array per output, in the
    Keras model's output order. Its float16 outputs match TensorFlow's to within one float16 step
    (measured: 0.0039 at values near 6).
    """

    TEMPORARY_PREFIX = "pattlite-openvino-"

    def __init__(self, keras_model):
        import tempfile

        import openvino

        # The export's folder is named by this process, so one left by a killed run can be removed.
        remove_stale_temporaries(tempfile.gettempdir(), prefix=self.TEMPORARY_PREFIX)
        with interrupts_honoured(), tempfile.TemporaryDirectory(prefix=f"{self.TEMPORARY_PREFIX}{os.getpid()}-") as tmp:
            keras_model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model", verbose=False)
            self._model = openvino.convert_model(os.path.join(tmp, "saved_model"))
        if len(self._model.outputs) != len(keras_model.outputs):
            raise RuntimeError(
                f"OpenVINO converted {len(self._model.outputs)} outputs, the Keras extractor "
                f"has {len(keras_model.outputs)}"
            )
        # The SavedModel names its outputs output_0, output_1, ... in the Keras model's order.
        self._order = sorted(
            range(len(self._model.outputs)), key=lambda i: int(self._model.outputs[i].get_any_name().rsplit("_", 1)[-1])
        )
        self._core = openvino.Core()
        self._requests = {}

    def predict_on_batch(self, batch):
        batch = np.ascontiguousarray(batch)
        request = self._requests.get(len(batch))
        if request is None:
            self._model.reshape([len(batch), *batch.shape[1:]])
            compiled = self._core.compile_model(
                self._model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            )
            request = self._requests[len(batch)] = compiled.create_infer_request()
        results = request.infer([batch])
        values = [results[request.model_outputs[i]] for i in range(len(request.model_outputs))]
        return [np.array(values[i]) for i in self._order]


def make_extractor(size: int, weights, layer_names, resize_to: int = 224, engine: str | None = None):
    """`feature_extractor`, run by `engine` (default `extraction_engine()`): the Keras model itself on
    "tensorflow", an `OpenVinoExtractor` on "openvino". Either has `predict_on_batch`."""
    engine = engine or extraction_engine()
    extractor = feature_extractor(size, weights, layer_names, resize_to)
    return OpenVinoExtractor(extractor) if engine == "openvino" else extractor


def _engine_of(extractor) -> str:
    return "openvino" if isinstance(extractor, OpenVinoExtractor) else "tensorflow"


def extract_shard(
    pixels, rows, extractor, layer_names, batch_size, progress, folder, hashes=None, engine: str | None = None
):
    """One pass of the images `pixels[rows]` through `extractor`, written as a new shard of `folder`.

    Every requested layer comes out of the same pass. The shard is written under a temporary name
    (`.tmp-shard-<pid>-<time>`, returned; the caller renames it into the store), removed if anything
    fails or interrupts the pass. It holds one `<layer>.npy` per layer, `hashes.npy` (the images'
    content hashes, when `hashes` is given), `engine.json` (which engine and library versions computed
    it: `engine`, default that of `extractor`) and, written last, `digest.json`: the size and SHA-256
    of each of those files. Each layer file is reserved at its full size at the first batch, so a full
    disk fails then (`NoSpaceError`).
    """
    import keras
    from tqdm.auto import tqdm

    engine = engine or _engine_of(extractor)
    tmp = folder / f".tmp-shard-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    writers, records = {}, {}
    n = len(rows)
    try:
        with tqdm(
            total=n, desc=f"backbone features ({', '.join(layer_names)}; {engine})", unit="img", disable=not progress
        ) as bar:
            for start in range(0, n, batch_size):
                # uint8 as it is: the model casts to float32 inside the compiled call.
                batch = np.asarray(pixels[rows[start : start + batch_size]])
                values = extractor.predict_on_batch(batch)
                if not isinstance(values, (list, tuple)):
                    values = [values]
                for name, value in zip(layer_names, values):
                    value = keras.ops.convert_to_numpy(value)
                    if name not in writers:
                        # Written straight to disk: a real dataset's features do not fit in memory.
                        writers[name] = NpyWriter(tmp / f"{name}.npy", (n,) + tuple(value.shape[1:]), FEATURE_DTYPE)
                    writers[name].append(value)
                bar.update(len(batch))
        for name in list(writers):
            records[f"{name}.npy"] = writers.pop(name).close()
        if hashes is not None:
            writer = NpyWriter(tmp / "hashes.npy", (n,), np.asarray(hashes).dtype)
            writer.append(hashes)
            records["hashes.npy"] = writer.close()
        write_json_atomic(tmp / "engine.json", {"engine": engine, "versions": _engine_versions(engine)})
        records["engine.json"] = file_record(tmp / "engine.json")
        write_json_atomic(tmp / "digest.json", {"algorithm": "sha256", "files": records})
        return tmp
    except BaseException:
        for writer in writers.values():
            writer.discard()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Seconds a stopped TensorFlow child gets to remove its temporary shard before it is killed.
CHILD_STOP_SECONDS = 15


def _stop_child(child) -> None:
    if child.poll() is not None:
        return
    import subprocess

    try:
        child.terminate()  # SIGTERM: the child stops as on Ctrl-C, removing its temporary shard
        child.wait(timeout=CHILD_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if child.poll() is None:  # still running, or a second Ctrl-C came while waiting
            child.kill()
            child.wait()


def extract_shard_in_tensorflow(
    pixels,
    rows,
    size,
    weights,
    layer_names,
    resize_to,
    batch_size,
    progress,
    folder,
    warm_up: bool = False,
    hashes=None,
    engine: str | None = None,
) -> tuple[Path, float]:
    """`extract_shard` run by a TensorFlow child process, for callers on another Keras backend.
    Returns the shard's temporary folder and the seconds of the pass itself (after an untimed first
    batch when `warm_up`), without the child's start-up.

    The backbone runs far faster on TensorFlow's CPU kernels (or OpenVINO's, `extraction_engine`)
    than through XLA (measured with the JAX backend on 2 cores: 11 images/s against 110 at batch 64),
    while heads train faster on JAX. The backend is fixed when Keras is imported, so the extraction
    runs in `python -m pattlite.features` with KERAS_BACKEND=tensorflow; its progress bar and errors
    go to this process's stderr. If this process is interrupted (Ctrl-C, SIGTERM) or fails while the
    child runs, the child is stopped (SIGTERM, then SIGKILL after `CHILD_STOP_SECONDS`) and its
    temporary files removed; a child ended by SIGINT or SIGTERM raises KeyboardInterrupt here; the
    child stops by itself when this process ends.
    """
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f".tmp-job-{os.getpid()}-{time.time_ns()}"
    job.mkdir()
    child = None
    try:
        writer = NpyWriter(job / "pixels.npy", (len(rows),) + tuple(pixels.shape[1:]), np.uint8)
        try:
            for start in range(0, len(rows), 1024):
                writer.append(pixels[rows[start : start + 1024]])
            writer.close()
        except BaseException:
            writer.discard()
            raise
        if hashes is not None:
            np.save(job / "hashes.npy", np.asarray(hashes))
        spec = {
            "size": int(size),
            "weights": None if weights is None else str(weights),
            "layers": list(layer_names),
            "resize_to": int(resize_to),
            "batch_size": int(batch_size),
            "progress": bool(progress),
            "folder": str(folder),
            "pixels": str(job / "pixels.npy"),
            "hashes": None if hashes is None else str(job / "hashes.npy"),
            "warm_up": bool(warm_up),
            "out": str(job / "out.json"),
            "engine": engine or extraction_engine(),
            "parent": os.getpid(),
        }
        (job / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        # oneDNN's CPU kernels: TensorFlow turns them on by default only on CPUs with AVX-512; measured
        # 106-116 against 75-82 images/s without them on an AMD EPYC 7xx3 (the user's setting wins).
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        child = subprocess.Popen([sys.executable, "-m", "pattlite.features", str(job / "spec.json")], env=env)
        while True:
            try:
                returncode = child.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                os.utime(job)  # a live job: not taken for a killed run's leftover by another machine
        if returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM):
            raise KeyboardInterrupt(f"the feature-extraction child process was interrupted (exit status {returncode})")
        if returncode < 0:
            raise RuntimeError(
                f"the feature-extraction child process was killed by "
                f"{signal.Signals(-returncode).name} (out of memory, if the system's log "
                "says so)"
            )
        if returncode != 0 or not (job / "out.json").is_file():
            raise RuntimeError(
                f"feature extraction in the TensorFlow child process failed (exit status "
                f"{returncode}); its error is printed above"
            )
        out = json.loads((job / "out.json").read_text())
        return Path(out["shard"]), out["seconds"]
    except BaseException:
        if child is not None:
            _stop_child(child)
            for leftover in folder.glob(f".tmp-shard-{child.pid}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(job, ignore_errors=True)


class _StopWithParent:
    """An extractor that raises KeyboardInterrupt once the process that started this one has ended."""

    def __init__(self, extractor, parent: int):
        self._extractor, self._parent = extractor, parent

    def predict_on_batch(self, batch):
        if os.getppid() != self._parent:
            raise KeyboardInterrupt(f"the parent process {self._parent} ended")
        return self._extractor.predict_on_batch(batch)


def _extract_from_spec(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    pixels = np.load(spec["pixels"], mmap_mode="r")
    hashes = None if spec.get("hashes") is None else np.load(spec["hashes"])
    extractor = make_extractor(spec["size"], spec["weights"], spec["layers"], spec["resize_to"], spec["engine"])
    if spec["warm_up"]:
        extractor.predict_on_batch(np.asarray(pixels[: spec["batch_size"]]))
    start = time.perf_counter()
    tmp = extract_shard(
        pixels,
        np.arange(len(pixels)),
        _StopWithParent(extractor, spec["parent"]),
        spec["layers"],
        spec["batch_size"],
        spec["progress"],
        Path(spec["folder"]),
        hashes=hashes,
        engine=_engine_of(extractor),
    )
    Path(spec["out"]).write_text(json.dumps({"shard": str(tmp), "seconds": time.perf_counter() - start}))


def _child_main(spec_path: str) -> int:
    """The TensorFlow child's entry: 0 when the shard is written; 130 / 143 when Ctrl-C / SIGTERM (the
    parent stopping it) or the parent's end interrupted it, after removing its temporary shard."""
    import sys

    stopping = []

    def interrupt(signum, frame):
        if not stopping:  # the first signal stops the pass; later ones must not cut the clean-up short
            stopping.append(signum)
            _raise_interrupt(signum, frame)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        _extract_from_spec(spec_path)
    except KeyboardInterrupt as error:
        print(
            f"pattlite.features: feature extraction stopped ({error or 'SIGINT'}); its temporary files were removed",
            file=sys.stderr,
        )
        return 143 if stopping == [signal.SIGTERM] else 130
    return 0


def _deepest(layer_names) -> str:
    from pattlite.model import mobilenet_layer_names

    order = mobilenet_layer_names()
    return max(layer_names, key=order.index)


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
    import keras

    from pattlite.model import cut_layer_name

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
    missing = {}
    for name in names:
        _, index = _store_index(folder, name)
        absent = [i for i, digest in enumerate(hashes.tolist()) if digest not in index]
        if absent:
            missing[name] = absent
    if missing:
        # One pass for every missing layer, over the images any of them lacks (each image once).
        todo = sorted(set().union(*missing.values()))
        first_of = {}
        for i in todo:
            first_of.setdefault(hashes[i], i)
        unique = np.array(sorted(first_of.values()), dtype=np.int64)
        layers = list(missing)
        with interrupts_honoured():
            if keras.config.backend() == "tensorflow":
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
            "versions": _engine_versions(engine),
        }
        write_json_atomic(folder / "meta.json", meta)
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


if __name__ == "__main__":  # the TensorFlow child process of `extract_shard_in_tensorflow`
    import sys

    code = _child_main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Its files are written and closed: skip the interpreter's teardown of TensorFlow and OpenVINO,
    # which takes seconds (measured 3-6 s between a stop request and the parent's KeyboardInterrupt).
    os._exit(code)
