"""Feature extraction engines: the frozen backbone that computes the feature cache, and what runs it.

- `feature_extractor`: the Keras backbone up to the deepest requested layer, one float16 output per
  layer; `make_extractor` runs it on the chosen engine (`extraction_engine`: OpenVINO when installed,
  else TensorFlow; `OpenVinoExtractor` converts its SavedModel export);
- `extract_shard`: one pass of images through an extractor, written as a temporary shard of a
  feature store (`pattlite.features` renames it into the store);
- `extract_shard_in_tensorflow`: the same pass in a TensorFlow child process (`python -m
  pattlite.extraction`), for a process whose Keras backend has no TensorFlow models
  (`pattlite.backends`);
- `interrupts_honoured`: Ctrl-C and SIGTERM stop an extraction as KeyboardInterrupt.

Importing this module imports neither Keras, TensorFlow nor OpenVINO (`extraction_identity` is cheap);
they are imported where they are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pattlite import config
from pattlite.files import NpyWriter, file_record, remove_stale_temporaries, write_json_atomic

if TYPE_CHECKING:  # annotations only: keras is imported where it is used
    import keras

FEATURE_DTYPE = "float16"


def feature_extractor(size: int, weights, layer_names, resize_to: int = 224) -> keras.Model:
    """The frozen backbone up to the deepest of `layer_names`, with one output per layer."""
    import keras

    from pattlite.backbone import build_backbone

    backbone = build_backbone(
        weights=weights, cut_layer=_deepest(layer_names), resize_to=resize_to, input_shape=(size, size, 3)
    )
    # Stored as FEATURE_DTYPE, cast inside the compiled call: far faster than casting in NumPy (docs/audit.md).
    return keras.Model(
        backbone.inputs, [keras.ops.cast(backbone.get_layer(n).output, FEATURE_DTYPE) for n in layer_names]
    )


# Which library runs the backbone for the feature cache: "auto" (OpenVINO when installed, else
# TensorFlow), "openvino" or "tensorflow"; overridden by $PATTLITE_EXTRACTION_ENGINE.
EXTRACTION_ENGINES = ("auto", "openvino", "tensorflow")


def extraction_engine(choice: str = "auto") -> str:
    """The engine feature extraction uses: $PATTLITE_EXTRACTION_ENGINE when set, else `choice` (a
    profile's `extraction_engine`), resolved ("auto": OpenVINO when the `openvino` package is
    installed, else TensorFlow). OpenVINO extracts faster on the CPUs measured (docs/audit.md).
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
    return {"engine": engine, "version": library_version(engine)}


# Distributions that install the `tensorflow` module (tried in this order for its version).
_TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-macos",
    "tensorflow-intel",
    "tf-nightly",
    "tf-nightly-cpu",
)


def library_version(name: str) -> str:
    """The installed version of a library (`tensorflow` under any of its distributions), from the
    package metadata: the library itself is imported only where the metadata is missing."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in _TENSORFLOW_DISTRIBUTIONS if name == "tensorflow" else (name, f"{name}-nightly"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    import importlib

    return str(importlib.import_module(name).__version__)  # installed without metadata


def engine_versions(engine: str) -> dict:
    """The versions of the libraries that compute features on `engine`: Keras and TensorFlow (the
    extractor is a TensorFlow-backend Keras model on either engine; OpenVINO converts its export),
    and OpenVINO's."""
    return {"keras": library_version("keras"), "tensorflow": library_version("tensorflow")} | (
        {"openvino": library_version("openvino")} if engine == "openvino" else {}
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
        write_json_atomic(tmp / "engine.json", {"engine": engine, "versions": engine_versions(engine)})
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
    than through XLA (docs/audit.md), while heads train faster on JAX. The backend is fixed when Keras
    is imported, so the extraction runs in `python -m pattlite.extraction` with
    KERAS_BACKEND=tensorflow; its progress bar and errors go to this process's stderr. If this
    process is interrupted (Ctrl-C, SIGTERM) or fails while the child runs, the child is stopped
    (SIGTERM, then SIGKILL after `CHILD_STOP_SECONDS`) and its temporary files removed; a child
    ended by SIGINT or SIGTERM raises KeyboardInterrupt here; the child stops by itself when this
    process ends.
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
        # oneDNN's CPU kernels: TensorFlow turns them on by default only on CPUs with AVX-512, and they
        # extract faster on CPUs without it too (docs/audit.md; the user's setting wins).
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        child = subprocess.Popen([sys.executable, "-m", "pattlite.extraction", str(job / "spec.json")], env=env)
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
            f"pattlite.extraction: feature extraction stopped ({error or 'SIGINT'}); its temporary files were removed",
            file=sys.stderr,
        )
        return 143 if stopping == [signal.SIGTERM] else 130
    return 0


def _deepest(layer_names) -> str:
    from pattlite.backbone import mobilenet_layer_names

    order = mobilenet_layer_names()
    return max(layer_names, key=order.index)


if __name__ == "__main__":  # the TensorFlow child process of `extract_shard_in_tensorflow`
    import sys

    code = _child_main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Its files are written and closed: skip the interpreter's teardown of TensorFlow and OpenVINO,
    # which takes seconds between a stop request and the parent's KeyboardInterrupt.
    os._exit(code)
