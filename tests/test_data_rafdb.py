"""RAF-DB reader on the real label excerpt, with tiny generated JPEGs (the images are not public)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pattlite.data import DatasetFormatError, DatasetNotFoundError, load_manifest

FIXTURES = Path(__file__).parent / "fixtures"
LABELS = FIXTURES / "rafdb" / "EmoLabel" / "list_patition_label.txt"
LISTS = FIXTURES / "ran_challenge_lists"
RAF = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}


@pytest.fixture(autouse=True)
def _no_subsets_env(monkeypatch):
    monkeypatch.delenv("PATTLITE_SUBSETS_DIR", raising=False)


def _excerpt():
    return [(line.split()[0], int(line.split()[1])) for line in LABELS.read_text().splitlines() if line.strip()]


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.fixture
def aligned_root(tmp_path):
    basic = tmp_path / "rafdb" / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    shutil.copy(LABELS, basic / "EmoLabel")
    for name, _ in _excerpt():
        _jpeg(basic / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"))
    return tmp_path / "rafdb"


def test_aligned_layout_labels_splits_and_seeded_val(aligned_root):
    entries = _excerpt()
    df = load_manifest("rafdb", aligned_root)
    assert len(df) == len(entries) == 70
    by_id = df.set_index("image_id")
    for name, label in entries:
        assert by_id.loc[name, "label"] == RAF[label]
        assert by_id.loc[name, "path"].endswith(name.replace(".jpg", "_aligned.jpg"))
        assert (by_id.loc[name, "split"] == "test") == name.startswith("test_")
    n_train = sum(name.startswith("train_") for name, _ in entries)
    train_val = df[df["split"] != "test"]
    assert len(train_val) == n_train
    val_counts = df.loc[df["split"] == "val", "label"].value_counts()
    expected = (0.1 * train_val["label"].value_counts()).round().astype(int)
    assert val_counts.reindex(expected.index, fill_value=0).equals(expected)
    assert df.equals(load_manifest("rafdb", aligned_root))
    assert not df["split"].equals(load_manifest("rafdb", aligned_root, val_seed=1)["split"])
    assert (load_manifest("rafdb", aligned_root, val_fraction=0.0)["split"] != "val").all()
    # root may also point at basic/ itself
    assert len(load_manifest("rafdb", aligned_root / "basic")) == len(_excerpt())
    assert df.attrs["subsets"] is None


def test_subset_flags_on_excerpt_test_images(aligned_root):
    with pytest.warns(UserWarning, match="test_2464 listed twice"):
        df = load_manifest("rafdb", aligned_root, subsets_dir=LISTS)
    occluded = {
        line.split()[0].replace("_aligned", "")
        for line in (LISTS / "RAF_DB_dir" / "rafdb_occlusion_list.txt").read_text().splitlines()
        if line.strip()
    }
    tests = df[df["split"] == "test"]
    expected = {i for i in tests["image_id"] if i[:-4] in occluded}
    assert set(df.loc[df["occlusion"], "image_id"]) == expected and expected
    assert df.attrs["subsets"]["label_disagreements"] == {"occlusion": 0, "pose30": 0, "pose45": 0}
    assert any("test_2464" in w for w in df.attrs["warnings"])


def test_original_images_layout(tmp_path):
    basic = tmp_path / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    shutil.copy(LABELS, basic / "EmoLabel")
    for name, _ in _excerpt():
        _jpeg(basic / "Image" / "original" / name)
    df = load_manifest("rafdb", tmp_path)
    assert df["path"].str.contains("/original/").all() and len(df) == len(_excerpt())


def test_class_folder_layout(tmp_path):
    for name, label in _excerpt():
        split = "train" if name.startswith("train") else "test"
        _jpeg(tmp_path / split / str(label) / name.replace(".jpg", "_aligned.jpg"))
    with pytest.warns(UserWarning, match="test_2464"):
        df = load_manifest("rafdb", tmp_path, subsets_dir=LISTS)
    by_id = df.set_index("image_id")
    for name, label in _excerpt():
        assert by_id.loc[name.replace(".jpg", "_aligned.jpg"), "label"] == RAF[label]
    assert (df["split"] == "test").sum() == 30 and (df["split"] == "val").sum() > 0
    assert df["occlusion"].sum() > 0  # matched through the normalised key test_NNNN


def test_missing_images_are_listed(aligned_root):
    gone = sorted((aligned_root / "basic" / "Image" / "aligned").glob("test_*"))[:3]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_manifest("rafdb", aligned_root)
    message = str(info.value)
    label_file = aligned_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    listed = label_file.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(listed) if text.startswith(gone[0].name.replace("_aligned", "")))
    assert "3 image file(s)" in message and f"not found at {gone[0].resolve()}" in message
    assert f"line {line} of {label_file}" in message


def test_missing_label_file_and_root(tmp_path):
    (tmp_path / "basic").mkdir()
    with pytest.raises(DatasetNotFoundError, match="list_patition_label.txt"):
        load_manifest("rafdb", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="rafdb"):
        load_manifest("rafdb", tmp_path / "absent")


def test_malformed_and_duplicate_label_lines(aligned_root):
    label_file = aligned_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    label_file.write_text("\n".join(lines + [lines[2].replace(" 4", " 5")]) + "\n")
    with pytest.warns(UserWarning, match=r"train_00003.jpg listed again with label 'sadness'"):
        df = load_manifest("rafdb", aligned_root)
    assert len(df) == len(_excerpt()) and df.set_index("image_id").loc["train_00003.jpg", "label"] == "happiness"
    lines[6] = "train_00007.jpg 9"
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetFormatError, match=r"list_patition_label.txt, line 7: malformed line 'train_00007.jpg 9'"
    ):
        load_manifest("rafdb", aligned_root)
