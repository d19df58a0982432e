"""A trained head: export-head, the loader and its errors, and `pattlite predict` (faces found or not,
--no-detect, unreadable files, CSV and JSON lines, the published model's warning). Random backbone
(`--backbone none`), heads from one optimizer step on random features: seconds, no weights file needed."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import pytest
from heads import FACE_FILES, FER_TEST, photo_with_face, training_files
from PIL import Image

from pattlite import cli, config, faces
from pattlite import pretrained as P
from pattlite.predict import Predictor


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """{"pattlite": head file, "published": head file, "training": a training's weights file}."""
    base = tmp_path_factory.mktemp("heads")
    training = training_files(base / "experiments")
    published = training_files(base / "published", variant="published", key="fedcba9876543210")
    return {
        "training": training,
        "pattlite": P.export_head(training, base / "pattlite_test.weights.h5")[0],
        "published": P.export_head(published, base / "published_test.weights.h5")[0],
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder: two photos with a face, one without, a damaged .jpg, a text file (not an image)."""
    folder = tmp_path_factory.mktemp("images")
    for index, name in enumerate(FACE_FILES):
        Image.fromarray(photo_with_face(name)).save(folder / f"face{index}.png")
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    Image.fromarray(gradient).save(folder / "no_face.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(capsys, args):
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_export_head_writes_the_head_alone_with_its_sidecar(heads):
    path = heads["pattlite"]
    assert path.stat().st_size < 1.5e6  # 280k float32 parameters
    with h5py.File(path, "r") as handle:
        assert "optimizer" not in handle
    with h5py.File(heads["training"], "r") as handle:
        assert "optimizer" in handle
    info = json.loads(P.sidecar_path(path).read_text())
    assert info["variant"] == "pattlite" and info["dataset"] == "ferplus"
    assert info["classes"] == list(config.CLASSES) and info["image_size"] == 48
    assert (info["face_size"], info["grayscale"]) == (48, True)  # FERPlus: 48x48 grey crops
    assert info["seed"] == 7 and info["experiment_key"] == "0123456789abcdef" and info["source_commit"] == "f" * 40
    assert info["test_accuracy"] == {"independent": 0.5}
    assert info["head_params"] > 280_000


def test_loader_puts_every_head_weight_into_the_full_model(heads):
    loaded = P.load_pretrained(heads["pattlite"], backbone=None)
    stored = P.read_head_weights(heads["training"])  # the training's file: optimizer variables left out
    assert "patch_extraction_sepconv1" in stored and "predictions" in stored
    for name, arrays in stored.items():
        for got, want in zip(loaded.model.get_layer(name).get_weights(), arrays):
            np.testing.assert_array_equal(got, want)
    assert loaded.model.input_shape == (None, 48, 48, 3) and loaded.model.output_shape == (None, 8)
    # a training's weights file loads too, through its result file
    assert P.load_pretrained(heads["training"], backbone=None).info.experiment_key == "0123456789abcdef"


def test_loader_errors_name_the_file_and_the_layer(heads, tmp_path):
    missing = tmp_path / "absent.weights.h5"
    with pytest.raises(P.HeadWeightsNotFoundError, match=f"{missing}.*--head"):
        P.load_pretrained(missing, backbone=None)
    alone = tmp_path / "alone.weights.h5"
    shutil.copy(heads["pattlite"], alone)
    with pytest.raises(P.HeadWeightsNotFoundError, match="alone.json does not exist"):
        P.load_pretrained(alone, backbone=None)
    # a layer removed from the file
    cut = tmp_path / "cut.weights.h5"
    shutil.copy(heads["pattlite"], cut)
    info = json.loads(P.sidecar_path(heads["pattlite"]).read_text())
    info["weights_sha256"] = None
    P.sidecar_path(cut).write_text(json.dumps(info))
    with h5py.File(cut, "a") as handle:
        group = next(g for g in handle["layers"].values() if g["vars"].attrs.get("name") == "classifier_dense")
        del handle[group.name]
    with pytest.raises(P.HeadWeightsError, match=f"{cut} has no weights for layer.*classifier_dense"):
        P.load_pretrained(cut, backbone=None)
    # a sidecar that claims 7 classes for an 8-class head
    seven = tmp_path / "seven.weights.h5"
    shutil.copy(heads["pattlite"], seven)
    P.sidecar_path(seven).write_text(json.dumps(dict(info, classes=info["classes"][:7])))
    with pytest.raises(P.HeadWeightsError, match="seven.weights.h5, layer 'predictions'"):
        P.load_pretrained(seven, backbone=None)
    # not an HDF5 file; a file that does not match its sidecar's digest; the wrong variant
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    P.sidecar_path(bad).write_text(json.dumps(info))
    with pytest.raises(P.HeadWeightsError, match="bad.weights.h5 is not an HDF5 file"):
        P.load_pretrained(bad, backbone=None)
    changed = tmp_path / "changed.weights.h5"
    shutil.copy(heads["pattlite"], changed)
    P.sidecar_path(changed).write_text(json.dumps(dict(info, weights_sha256="0" * 64)))
    with pytest.raises(P.HeadWeightsError, match="does not match its sidecar"):
        P.load_pretrained(changed, backbone=None)
    with pytest.raises(P.HeadWeightsError, match="holds a 'published' head, not 'pattlite'"):
        P.load_pretrained(heads["published"], backbone=None, variant="pattlite")


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_folder_gives_a_row_per_face_and_says_why_not(heads, images, capsys):
    status, out, err = run(capsys, ["predict", images, "--head", heads["pattlite"], "--backbone", "none"])
    assert status == 0, err
    rows = read_csv(out)
    assert list(rows[0]) == ["file", "face", "x", "y", "w", "h", "status", "predicted", *config.CLASSES, "message"]
    by_file = {Path(r["file"]).name: r for r in rows}
    assert sorted(by_file) == ["broken.jpg", "face0.png", "face1.png", "no_face.png"]  # notes.txt: not an image
    assert len(rows) == 4  # one face in each photo
    for name in ("face0.png", "face1.png"):
        row = by_file[name]
        assert row["status"] == "ok" and row["face"] == "0" and row["predicted"] in config.CLASSES
        x, y, w, h = (int(row[k]) for k in "xywh")
        assert 100 <= w <= 220 and w == h and 0 <= x and x + w <= 320 and y + h <= 240
        assert sum(float(row[c]) for c in config.CLASSES) == pytest.approx(1.0, abs=1e-4)
    assert by_file["no_face.png"]["status"] == "no_face" and "no face found" in by_file["no_face.png"]["message"]
    assert by_file["broken.jpg"]["status"] == "unreadable"
    assert "broken.jpg" in by_file["broken.jpg"]["message"] and by_file["broken.jpg"]["predicted"] == ""
    assert "predicting" in err  # the progress bar on a folder
    summary = json.loads(err.strip().splitlines()[-1])
    assert (summary["files"], summary["faces"], summary["no_face"], summary["unreadable"]) == (4, 2, 1, 1)


def test_no_detect_jsonl_one_face_per_image(heads, capsys, tmp_path):
    files = [FER_TEST / name for name in sorted(os.listdir(FER_TEST))[:3]]
    out_file = tmp_path / "rows.jsonl"
    status, out, err = run(
        capsys,
        [
            "predict",
            *files,
            "--no-detect",
            "--format",
            "jsonl",
            "--head",
            heads["pattlite"],
            "--backbone",
            "none",
            "--output",
            out_file,
        ],
    )
    assert status == 0, err
    assert out == ""  # rows went to --output
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for row in rows:
        assert row["status"] == "ok" and row["box"] == [0, 0, 48, 48] and row["face"] == 0
        assert list(row["probabilities"]) == list(config.CLASSES)
        assert row["predicted"] == max(row["probabilities"], key=row["probabilities"].get)
    assert "predicting" not in err  # files, no folder: no progress bar


def test_small_image_without_a_face_suggests_no_detect(heads, capsys):
    status, out, _ = run(
        capsys,
        ["predict", FER_TEST / FACE_FILES[0], "--head", heads["pattlite"], "--backbone", "none", "--format", "jsonl"],
    )
    assert status == 0
    row = json.loads(out)
    assert row["status"] == "no_face" and "--no-detect" in row["message"] and row["probabilities"] is None


def test_published_model_is_allowed_with_a_warning(heads, images, capsys):
    status, out, err = run(
        capsys,
        ["predict", images / "face0.png", "--head", heads["published"], "--backbone", "none", "--model", "published"],
    )
    assert status == 0, err
    assert "warning: the 'published' model" in err and "depend on which images" in err
    assert read_csv(out)[0]["status"] == "ok"
    status, _, err = run(
        capsys,
        ["predict", images / "face0.png", "--head", heads["published"], "--backbone", "none", "--model", "pattlite"],
    )
    assert status == 2 and "holds a 'published' head, not 'pattlite'" in err


def test_missing_weights_and_paths_exit_2_naming_them(heads, images, capsys, tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    status, out, err = run(capsys, ["predict", images, "--head", missing, "--backbone", "none"])
    assert status == 2 and out == ""
    assert str(missing) in err and "--head PATH" in err
    status, _, err = run(capsys, ["predict", tmp_path / "no_such_folder", "--head", heads["pattlite"]])
    assert status == 2 and "no_such_folder: no such file or folder" in err
    status, _, err = run(capsys, ["predict", images, "--head", heads["pattlite"], "--backbone", tmp_path / "no.h5"])
    assert status == 2 and "no.h5" in err
    if not P.SHIPPED_HEAD.is_file():
        status, _, err = run(capsys, ["predict", images, "--backbone", "none"])
        assert status == 2 and "shipped weights file" in err and str(P.SHIPPED_HEAD) in err


def test_pattlite_faces_do_not_depend_on_the_batch(heads):
    loaded = P.load_pretrained(heads["pattlite"], backbone=None)
    predictor = Predictor(loaded.model.predict_on_batch, loaded.info, detect=False)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(5)]
    together = predictor.predict_inputs(inputs)
    alone = np.concatenate([predictor.predict_inputs([x]) for x in inputs])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_face_preparation_follows_the_training_images():
    photo = np.repeat(photo_with_face(FACE_FILES[0])[:, :, None], 3, axis=2)
    (box,) = faces.detect_faces(photo)
    crop = faces.crop(photo, box, margin=0.1)
    assert crop.shape[:2] == (round(box[2] * 1.2),) * 2
    edge = faces.crop(photo, (300, 200, 40, 40), margin=0.5)  # leaves the image: edge pixels repeated
    assert edge.shape == (80, 80, 3)
    ready = faces.face_input(crop, 120, face_size=48, grayscale=True)
    assert ready.shape == (120, 120, 3) and ready.dtype == np.uint8
    assert (ready[..., 0] == ready[..., 2]).all()  # grey, repeated to 3 channels
    assert faces.detect_faces(np.zeros((30, 30, 3), np.uint8)) == []


def test_phone_photos_are_turned_upright_by_their_exif(tmp_path):
    upright = Image.fromarray(photo_with_face(FACE_FILES[0])).convert("RGB")  # 320 wide, 240 high
    sideways = upright.rotate(90, expand=True)  # stored turned, as a phone stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    rgb = faces.read_image(tmp_path / "phone.jpg")
    assert rgb.shape == (240, 320, 3)
    assert len(faces.detect_faces(rgb)) == 1
    with pytest.raises(faces.UnreadableImageError, match="broken.png"):
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        faces.read_image(tmp_path / "broken.png")
