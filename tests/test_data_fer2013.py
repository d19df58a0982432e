"""FER2013 reader: the real CSV sample, the Kaggle folder layouts, bad input, root resolution."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pattlite import config
from pattlite.data import DatasetFormatError, DatasetNotFoundError, DataWarning, load_manifest

FIXTURES = Path(__file__).parent / "fixtures"
FER_CSV = FIXTURES / "fer2013" / "fer2013.csv"
KAGGLE_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def test_csv_splits_classes_and_rows():
    raw = pd.read_csv(FER_CSV)
    df = load_manifest("fer2013", FER_CSV.parent)
    assert len(df) == len(raw) == 168
    assert list(df.columns) == ["split", "label", "y", "path", "row", "image_id"]
    # Usage -> split, row by row, and the CSV order is kept.
    expected_split = raw["Usage"].map({"Training": "train", "PublicTest": "val", "PrivateTest": "test"})
    assert (df["split"] == expected_split).all()
    assert (df["row"] == np.arange(len(raw))).all()
    # The CSV's emotion numbering (0 Angry ... 4 Sad, 5 Surprise, 6 Neutral) maps to canonical names.
    names = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    assert (df["label"] == raw["emotion"].map(dict(enumerate(names)))).all()
    assert (df["y"] == df["label"].map(config.DATASET_CLASSES["fer2013"].index)).all()
    assert set(df["label"]) == set(config.DATASET_CLASSES["fer2013"])
    assert df.attrs["dataset"] == "fer2013" and df.attrs["synthetic"] is False
    assert df.attrs["classes"] == config.DATASET_CLASSES["fer2013"]
    assert Path(df["path"].iloc[0]) == FER_CSV.resolve()


def test_duplicate_rows_are_kept_and_named_in_a_warning(tmp_path):
    lines = FER_CSV.read_text().splitlines()
    lines.insert(10, lines[3])  # data row 2 (line 3) again as line 11
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(
        DataWarning,
        match=r"fer2013.csv: 1 data row\(s\) repeat an earlier row exactly .*"
        r"line 11 repeats line 4; all rows are kept",
    ):
        df = load_manifest("fer2013", tmp_path)
    assert len(df) == len(lines) - 1 and any("line 11 repeats line 4" in w for w in df.attrs["warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the sample itself has no repeated row
        load_manifest("fer2013", FER_CSV.parent)


def test_root_from_environment_variable(monkeypatch):
    monkeypatch.setenv("PATTLITE_FER2013_ROOT", str(FER_CSV.parent))
    assert len(load_manifest("fer2013")) == 168


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="ferplus"):
        load_manifest("fer2014", FER_CSV.parent)


def _kaggle_tree(root, splits, per_class=3):
    for split in splits:
        for k, folder in enumerate(KAGGLE_FOLDERS):
            (root / split / folder).mkdir(parents=True)
            for i in range(per_class + (k % 2)):
                Image.fromarray(np.full((48, 48), 10 * i, np.uint8)).save(root / split / folder / f"im{i}.jpg")


def test_kaggle_folders_with_validation(tmp_path):
    _kaggle_tree(tmp_path, ("train", "validation", "test"))
    df = load_manifest("fer2013", tmp_path)
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df["row"] == -1).all()
    assert all(Path(p).is_file() for p in df["path"])
    # Folder name -> label, e.g. happy -> happiness, sad -> sadness.
    assert (df.loc[df["path"].str.contains("/happy/"), "label"] == "happiness").all()
    assert (df.loc[df["path"].str.contains("/sad/"), "label"] == "sadness").all()
    val_paths = df.loc[df["split"] == "val", "path"]
    assert val_paths.str.contains("/validation/").all()


def test_kaggle_folders_without_validation_carve_seeded_stratified_val(tmp_path):
    _kaggle_tree(tmp_path, ("train", "test"), per_class=10)
    first = load_manifest("fer2013", tmp_path, val_seed=3, val_fraction=0.2)
    again = load_manifest("fer2013", tmp_path, val_seed=3, val_fraction=0.2)
    other = load_manifest("fer2013", tmp_path, val_seed=4, val_fraction=0.2)
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])
    val = first[first["split"] == "val"]
    train_and_val = first[first["split"] != "test"]
    # Stratified: each class gives round(0.2 * its train images) to val.
    per_class = train_and_val["label"].value_counts()
    assert (val["label"].value_counts().reindex(per_class.index) == (0.2 * per_class).round().astype(int)).all()
    assert not val["path"].str.contains("/test/").any()


def test_missing_root_names_dataset_path_layout_and_source(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_manifest("fer2013", missing)
    message = str(info.value)
    assert "fer2013" in message and str(missing) in message and "fer2013.csv" in message and "Kaggle" in message
    assert isinstance(info.value, FileNotFoundError)


def test_folder_without_test_split_is_reported(tmp_path):
    _kaggle_tree(tmp_path, ("train",))
    with pytest.raises(DatasetNotFoundError, match="test/<class>"):
        load_manifest("fer2013", tmp_path)


def test_unknown_class_folder_is_named(tmp_path):
    _kaggle_tree(tmp_path, ("train", "test"))
    (tmp_path / "train" / "bored").mkdir()
    with pytest.raises(DatasetFormatError, match="bored"):
        load_manifest("fer2013", tmp_path)


def _truncate_pixels(line, keep):
    emotion, pixels, usage = line.split(",")
    return ",".join([emotion, " ".join(pixels.split()[:keep]), usage])


@pytest.mark.parametrize(
    "line_index, replace, message",
    [
        (5, lambda line: "9" + line[1:], "emotion '9'"),
        (40, lambda line: line.replace("Training", "Trainig"), "Usage 'Trainig'"),
        (70, lambda line: _truncate_pixels(line, 100), "100 pixel values"),
    ],
)
def test_malformed_csv_row_names_file_and_line(tmp_path, line_index, replace, message):
    lines = FER_CSV.read_bytes().decode().split("\r\n")
    lines[line_index] = replace(lines[line_index])
    (tmp_path / "fer2013.csv").write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetFormatError) as info:
        load_manifest("fer2013", tmp_path)
    text = str(info.value)
    # lines[i] is file line i + 1.
    assert f"line {line_index + 1}" in text and "fer2013.csv" in text and message in text


def test_missing_column_is_reported(tmp_path):
    text = FER_CSV.read_text().replace("emotion,pixels,Usage", "emotion,pixels,Use", 1)
    (tmp_path / "fer2013.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match="line 1.*Usage"):
        load_manifest("fer2013", tmp_path)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="val_seed"):
        load_manifest("fer2013", FER_CSV.parent, fold=3)
