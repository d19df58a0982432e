"""`pattlite export`: the full trained model as ONNX and OpenVINO IR gives Keras' probabilities (within
`pattlite.export.TOLERANCE`) and the ONNX file runs under onnxruntime where TensorFlow cannot be imported.
A seeded random backbone with calibrated BatchNorm (so outputs vary with the image) and a head from one
optimizer step; no weights file needed."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from heads import training_files

from pattlite import cli
from pattlite import export as E
from pattlite import pretrained as P

CHECK = 32  # images per round trip in the tests (`pattlite export` checks 100 by default)
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="tf2onnx / onnxruntime not installed (pip install -e '.[export]')",
)
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed (pip install -e '.[export]')"
)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(head file, calibrated random backbone file)."""
    from pattlite.data.synthetic import generate_synthetic
    from pattlite.features import random_backbone_weights

    base = tmp_path_factory.mktemp("export")
    head, _ = P.export_head(training_files(base / "experiments"), base / "head.weights.h5")
    calibration, _ = generate_synthetic(num_classes=8, image_size=48, n_train=0, n_val=0, n_test=16, progress=False)
    return head, random_backbone_weights(0, calibration, cache_dir=base / "features")


@pytest.fixture(scope="module")
def onnx_export(model_files, tmp_path_factory):
    """(the .onnx file, the export's summary, what `pattlite export` printed)."""
    head, backbone = model_files
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(
            [
                "export",
                "--format",
                "onnx",
                str(out),
                "--head",
                str(head),
                "--backbone",
                str(backbone),
                "--check",
                str(CHECK),
            ]
        )
    assert status == 0
    return out, json.loads(printed.getvalue().strip().splitlines()[-1]), printed.getvalue()


@needs_onnx
def test_onnx_export_gives_keras_probabilities_and_runs_without_tensorflow(model_files, onnx_export, tmp_path):
    head, backbone = model_files
    out, summary, printed = onnx_export
    assert f"largest absolute difference from Keras' probabilities on {CHECK} synthetic faces" in printed
    assert summary["max_abs_diff"] <= E.TOLERANCE
    assert summary["variant"] == "pattlite" and summary["input_shape"] == [None, 48, 48, 3]
    assert summary["batch_dependent"] is False
    assert json.loads(E.info_path(out).read_text())["info"]["classes"] == summary["classes"]

    loaded = P.load_pretrained(head, backbone=backbone)
    images = E.check_images(loaded.info, 5)
    expected = loaded.model.predict_on_batch(images.astype("float32"))
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images give different probabilities
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None; sys.modules['keras'] = None  # importing either now fails\n"
        "import numpy as np\n"
        "from pattlite.runtime import load_exported\n"
        f"run = load_exported({str(out)!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, run(np.load({str(tmp_path / 'images.npy')!r}).astype('float32')))\n"
        "assert 'tensorflow' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=E.TOLERANCE)


@needs_onnx
def test_predict_runs_the_export_with_keras_probabilities(model_files, onnx_export, tmp_path, capsys):
    from heads import FACE_FILES, photo_with_face
    from PIL import Image

    head, backbone = model_files
    photo = tmp_path / "photo.png"
    Image.fromarray(photo_with_face(FACE_FILES[0])).save(photo)
    rows = {}
    for engine, args in (("keras", ["--head", head, "--backbone", backbone]), ("onnx", ["--exported", onnx_export[0]])):
        status = cli.main(["predict", str(photo), "--format", "jsonl", *map(str, args)])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        (rows[engine],) = [json.loads(line) for line in captured.out.splitlines()]
    assert rows["onnx"]["box"] == rows["keras"]["box"] and rows["onnx"]["status"] == "ok"
    np.testing.assert_allclose(
        list(rows["onnx"]["probabilities"].values()), list(rows["keras"]["probabilities"].values()), atol=E.TOLERANCE
    )
    assert json.loads(captured.err.strip().splitlines()[-1])["exported"] == str(onnx_export[0])
    status = cli.main(["predict", str(photo), "--exported", str(tmp_path / "none.onnx")])
    assert status == 2 and "none.onnx does not exist" in capsys.readouterr().err


@needs_openvino
def test_openvino_export_gives_keras_probabilities(model_files, tmp_path):
    head, backbone = model_files
    out = tmp_path / "model.xml"
    summary = E.export_pretrained(out, "openvino", head=head, backbone=backbone, check=CHECK)
    assert summary["max_abs_diff"] <= E.TOLERANCE
    assert out.is_file() and out.with_suffix(".bin").is_file()


def test_export_command_errors_exit_2(model_files, tmp_path, capsys):
    head, _ = model_files
    cases = [
        (["--format", "onnx", tmp_path / "m.onnx", "--head", tmp_path / "none.weights.h5"], "none.weights.h5"),
        (["--format", "onnx", tmp_path / "m.xml", "--head", head, "--backbone", "none"], "must be named *.onnx"),
        (["--format", "savedmodel", tmp_path / "m.onnx", "--head", head], "a SavedModel is a folder"),
    ]
    for args, message in cases:
        status = cli.main(["export", *map(str, args)])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (args, err)


def test_export_head_command(tmp_path, capsys):
    source = training_files(tmp_path / "experiments", variant="published", key="00000000000000aa")
    status = cli.main(["export-head", str(source), str(tmp_path / "mine.weights.h5")])
    out = capsys.readouterr().out
    assert status == 0
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["variant"] == "published" and payload["experiment_key"] == "00000000000000aa"
    assert Path(payload["sidecar"]) == tmp_path / "mine.json"
    status = cli.main(["export-head", str(tmp_path / "absent.weights.h5"), str(tmp_path / "x.weights.h5")])
    assert status == 2 and "absent.weights.h5 does not exist" in capsys.readouterr().err


@needs_onnx
def test_end_to_end_bench_rows(model_files):
    from pattlite.bench_inference import format_end_to_end_table, run_end_to_end_benchmark

    head, backbone = model_files
    result = run_end_to_end_benchmark(
        batch_sizes=(1, 2), steps=1, head=head, backbone=backbone, engines=("keras", "onnxruntime"), log=None
    )
    rows = result["rows"]
    assert [(r["engine"], r["detect"], r["batch_size"]) for r in rows] == [
        (engine, detect, batch) for engine in ("keras", "onnxruntime") for detect in (False, True) for batch in (1, 2)
    ]
    for row in rows:
        assert row["images_per_s"] > 0 and row["model_ms_per_batch"] <= row["ms_per_batch"]
    assert result["model"]["described"] == f"head {head}" and len(result["machine"]["load_average"]) == 2
    assert "| onnxruntime | included | 2 |" in format_end_to_end_table(result)
