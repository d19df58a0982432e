"""Running an exported PAtt-Lite (`pattlite export`) without Keras or TensorFlow.

    from pattlite.runtime import load_exported
    run = load_exported("pattlite.onnx")     # or pattlite.xml (OpenVINO IR), or a SavedModel folder
    probabilities = run(images)              # float32 (N, size, size, 3), pixel values 0..255

This module imports neither Keras nor TensorFlow (only the SavedModel runner needs TensorFlow), so an
ONNX or OpenVINO export runs where only `onnxruntime` or `openvino` (and NumPy) is installed. The
`pattlite.faces` helpers prepare faces the same way (they need Pillow and OpenCV only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ENGINES = ("onnxruntime", "openvino", "tensorflow")


def info_path(out) -> Path:
    """Where the export's sidecar goes: `<out stem>.json`, or `<folder>/pattlite.json` for a SavedModel."""
    out = Path(out)
    return out / "pattlite.json" if out.suffix == "" else out.with_suffix(".json")


class OnnxModel:
    """An ONNX export on ONNX Runtime's CPU provider. `threads`: intra-op threads (None: its default)."""

    engine = "onnxruntime"

    def __init__(self, path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OpenVinoModel:
    """An OpenVINO IR export (`.xml` + `.bin`) on the CPU, compiled once per batch size seen, in float32
    (`INFERENCE_PRECISION_HINT`: OpenVINO would use bfloat16 on CPUs that have it) for the latency hint."""

    engine = "openvino"

    def __init__(self, path, threads: int | None = None):
        import openvino

        self.core = openvino.Core()
        self.model = self.core.read_model(str(path))
        self.settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.settings["INFERENCE_NUM_THREADS"] = int(threads)
        self.requests = {}

    def __call__(self, batch) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        request = self.requests.get(batch.shape)
        if request is None:
            model = self.model.clone()
            model.reshape([*batch.shape])
            request = self.requests[batch.shape] = self.core.compile_model(
                model, "CPU", self.settings
            ).create_infer_request()
        request.infer([batch])
        return np.array(request.get_output_tensor(0).data)


class SavedModelModel:
    """A TensorFlow SavedModel export (`serve` endpoint); needs TensorFlow."""

    engine = "tensorflow"

    def __init__(self, path, threads: int | None = None):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))

    def __call__(self, batch) -> np.ndarray:
        return np.asarray(self.loaded.serve(np.ascontiguousarray(batch, dtype=np.float32)))


def load_exported(path, threads: int | None = None):
    """A callable (N, size, size, 3) float32 -> (N, classes) probabilities for an exported model: `.onnx`
    (ONNX Runtime), `.xml` (OpenVINO), or a SavedModel folder (TensorFlow)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model {path} does not exist (make one with `pattlite export`)")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{path}: a folder without saved_model.pb is not a SavedModel")
        return SavedModelModel(path, threads)
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    if path.suffix == ".xml":
        return OpenVinoModel(path, threads)
    raise ValueError(f"{path}: expected a .onnx file, an OpenVINO .xml file or a SavedModel folder")
