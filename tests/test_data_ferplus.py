"""FERPlus reader: CSV pair joined by row position, the PNG folder layout, the vote rule, bad input."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pattlite.data import DatasetFormatError, DatasetNotFoundError, DataWarning, load_manifest
from pattlite.data.ferplus import majority_labels

FIXTURES = Path(__file__).parent / "fixtures"
CSV_DIR = FIXTURES / "fer2013"
FOLDERS = FIXTURES / "ferplus"
LISTS = FIXTURES / "ran_challenge_lists"
FILE_ORDER = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


@pytest.fixture(autouse=True)
def _no_subsets_env(monkeypatch):
    monkeypatch.delenv("PATTLITE_SUBSETS_DIR", raising=False)


def _first_max_labels(votes):
    return [FILE_ORDER[int(np.argmax(v[:8]))] for v in votes]


def test_csv_pair_joins_by_row_position_pixels_agree_with_pngs():
    df = load_manifest("ferplus", CSV_DIR, layout="csv")
    raw_new = pd.read_csv(CSV_DIR / "fer2013new.csv")
    assert len(raw_new) == 168 and raw_new["Image name"].isna().sum() == 1
    assert len(df) == 167 and df.attrs["votes"]["unnamed_rows_excluded"] == 1
    assert (df["split"].value_counts().to_dict()) == {"train": 56, "val": 55, "test": 56}
    # Microsoft's generator writes row i's pixels under row i's name: the PNGs prove the alignment.
    pixels = pd.read_csv(CSV_DIR / "fer2013.csv")["pixels"]
    pngs = {p.name: p for p in FOLDERS.glob("data/*/*.png")}
    for row, name in zip(df["row"], df["image_id"]):
        from_csv = np.array(pixels[row].split(), dtype=np.uint8).reshape(48, 48)
        assert np.array_equal(np.asarray(Image.open(pngs[name])), from_csv), name
    # The names are not row indices (fer0001141.png is row 0 of this sample).
    assert not any(int(n[3:10]) == r for n, r in zip(df["image_id"], df["row"]))
    votes = raw_new.loc[df["row"], FILE_ORDER + ["unknown", "NF"]].to_numpy()
    assert list(df["label"]) == _first_max_labels(votes)


def test_join_ignores_names_even_when_they_are_swapped(tmp_path):
    shutil.copy(CSV_DIR / "fer2013.csv", tmp_path / "fer2013.csv")
    new = pd.read_csv(CSV_DIR / "fer2013new.csv", dtype=str, keep_default_na=False)
    names = new["Image name"].copy()
    new.loc[3, "Image name"], new.loc[4, "Image name"] = names[4], names[3]
    new.to_csv(tmp_path / "fer2013new.csv", index=False)
    df = load_manifest("ferplus", tmp_path).set_index("row")
    votes = new[FILE_ORDER].astype(int).to_numpy()
    for row in (3, 4):
        assert df.loc[row, "image_id"] == new.loc[row, "Image name"]
        assert df.loc[row, "label"] == FILE_ORDER[int(np.argmax(votes[row]))]


def test_a_name_on_two_rows_keeps_the_later_row_as_the_generator(tmp_path):
    """4 names occur twice in the full fer2013new.csv; Microsoft's generator writes one PNG per name,
    the later row overwriting the earlier one's file, so the later row is the image of that name."""
    shutil.copy(CSV_DIR / "fer2013.csv", tmp_path / "fer2013.csv")
    new = pd.read_csv(CSV_DIR / "fer2013new.csv", dtype=str, keep_default_na=False)
    clean = load_manifest("ferplus", CSV_DIR, layout="csv")
    # Two train rows and two test rows get the name of a later row of their split.
    pairs = []
    for split in ("Training", "PrivateTest"):
        rows = [r for r in new.index[new["Usage"] == split] if new.loc[r, "Image name"]][:4]
        pairs += [(rows[0], rows[1]), (rows[2], rows[3])]
    for earlier, later in pairs:
        new.loc[earlier, "Image name"] = new.loc[later, "Image name"]
    new.to_csv(tmp_path / "fer2013new.csv", index=False)
    with pytest.warns(DataWarning, match=r"fer2013new.csv: 4 image name\(s\) on two data rows") as record:
        df = load_manifest("ferplus", tmp_path)
    earlier, later = pairs[0]
    message = str(record[0].message)
    assert f"{new.loc[later, 'Image name']} (lines {earlier + 2} and {later + 2})" in message
    assert "later row of each is kept" in message
    assert len(df) == len(clean) - 4 and df["image_id"].is_unique
    counts, before = df["split"].value_counts(), clean["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (before["train"] - 2, before["val"], before["test"] - 2)
    kept_rows = set(df["row"])
    for earlier, later in pairs:
        assert later in kept_rows and earlier not in kept_rows


def test_fer2013_csv_found_by_option(tmp_path, monkeypatch):
    # No fer2013.csv at the FER2013 root either (a developer's data/fer2013/ may hold one).
    monkeypatch.setenv("PATTLITE_FER2013_ROOT", str(tmp_path / "no_fer2013_here"))
    shutil.copy(CSV_DIR / "fer2013new.csv", tmp_path / "fer2013new.csv")
    with pytest.raises(DatasetNotFoundError, match="fer2013_csv"):
        load_manifest("ferplus", tmp_path, layout="csv")
    df = load_manifest("ferplus", tmp_path, fer2013_csv=CSV_DIR / "fer2013.csv")
    assert len(df) == 167


def test_misaligned_csvs_are_rejected_with_line(tmp_path):
    shutil.copy(CSV_DIR / "fer2013.csv", tmp_path / "fer2013.csv")
    new = pd.read_csv(CSV_DIR / "fer2013new.csv", dtype=str, keep_default_na=False)
    shifted = pd.concat([new.iloc[1:], new.iloc[:1]])  # one row rotated: Usage no longer lines up
    shifted.to_csv(tmp_path / "fer2013new.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"fer2013new.csv, line 57: Usage 'PublicTest'.*not row-aligned"):
        load_manifest("ferplus", tmp_path)
    new.iloc[:-1].to_csv(tmp_path / "fer2013new.csv", index=False)
    with pytest.raises(DatasetFormatError, match="167 data rows.*168"):
        load_manifest("ferplus", tmp_path)


def test_malformed_vote_names_line(tmp_path):
    shutil.copy(CSV_DIR / "fer2013.csv", tmp_path / "fer2013.csv")
    new = pd.read_csv(CSV_DIR / "fer2013new.csv", dtype=str, keep_default_na=False)
    new.loc[10, "fear"] = "x"
    new.to_csv(tmp_path / "fer2013new.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"line 12: vote 'x' in column 'fear'"):
        load_manifest("ferplus", tmp_path)


def test_png_folders_with_label_csv():
    df = load_manifest("ferplus", FOLDERS)
    assert len(df) == 167 and (df["row"] == -1).all()
    assert all(Path(p).is_file() for p in df["path"])
    for split, folder in (("train", "FER2013Train"), ("val", "FER2013Valid"), ("test", "FER2013Test")):
        table = pd.read_csv(FOLDERS / "data" / folder / "label.csv", header=None)
        part = df[df["split"] == split]
        assert list(part["image_id"]) == list(table[0])
        assert list(part["label"]) == _first_max_labels(table.iloc[:, 2:].to_numpy())
        assert part["path"].str.contains(folder).all()
    assert set(df["label"]) == set(FILE_ORDER)


def test_png_folder_missing_image_is_named_with_its_label_line(tmp_path):
    shutil.copytree(FOLDERS, tmp_path / "ferplus")
    folder = tmp_path / "ferplus" / "data" / "FER2013Valid"
    names = list(pd.read_csv(folder / "label.csv", header=None)[0])
    gone = [names[3], names[7]]
    for name in gone:
        (folder / name).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_manifest("ferplus", tmp_path / "ferplus")
    message = str(info.value)
    assert f"not found at {folder / gone[0]}" in message
    assert f"line 4 of {folder / 'label.csv'}" in message  # header-less: the 4th name is on line 4
    assert f"{gone[1]} ({folder / 'label.csv'}, line 8)" in message and "2 image file(s)" in message


def test_label_csv_duplicate_name_warns_with_lines(tmp_path):
    shutil.copytree(FOLDERS, tmp_path / "ferplus")
    label_csv = tmp_path / "ferplus" / "data" / "FER2013Test" / "label.csv"
    lines = label_csv.read_bytes().split(b"\r\n")
    lines.insert(5, lines[1])  # the name of line 2 again, as line 6
    label_csv.write_bytes(b"\r\n".join(lines))
    with pytest.warns(
        DataWarning,
        match=r"FER2013Test.label.csv: 1 image name\(s\) listed twice, "
        r"fer\d+\.png \(lines 2 and 6\); the first line of each is kept",
    ):
        df = load_manifest("ferplus", tmp_path / "ferplus")
    assert len(df) == 167 and df["image_id"].is_unique


def test_label_csv_with_wrong_field_count(tmp_path):
    shutil.copytree(FOLDERS, tmp_path / "ferplus")
    label_csv = tmp_path / "ferplus" / "data" / "FER2013Test" / "label.csv"
    lines = label_csv.read_bytes().split(b"\r\n")
    lines[4] = lines[4] + b",7"
    label_csv.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DatasetFormatError, match=r"label.csv, line 5: 13 fields; expected 12"):
        load_manifest("ferplus", tmp_path / "ferplus")


def test_short_first_line_of_a_label_csv_is_named_as_line_1(tmp_path):
    """pandas infers the field count from the first line and would blame line 2."""
    shutil.copytree(FOLDERS, tmp_path / "ferplus")
    label_csv = tmp_path / "ferplus" / "data" / "FER2013Train" / "label.csv"
    lines = label_csv.read_bytes().split(b"\r\n")
    lines[0] = lines[0].rsplit(b",", 1)[0]
    label_csv.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DatasetFormatError, match=r"FER2013Train.label.csv, line 1: 11 fields; expected 12"):
        load_manifest("ferplus", tmp_path / "ferplus")


def test_vote_rule_ties_and_empty_votes():
    votes = np.array(
        [
            [3, 0, 0, 0, 0, 0, 3, 0, 4, 0],  # neutral = fear, unknown ignored -> neutral (first in file order)
            [0, 0, 4, 0, 4, 0, 0, 0, 0, 0],  # surprise = anger -> surprise
            [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # no emotion vote at all -> neutral
            [0, 1, 0, 0, 0, 0, 0, 9, 0, 0],  # clear contempt
        ]
    )
    labels, ties, none = majority_labels(votes)
    assert list(labels) == ["neutral", "surprise", "neutral", "contempt"]
    assert list(ties) == [True, True, False, False] and list(none) == [False, False, True, False]
    canonical, _, _ = majority_labels(votes, tie_order="canonical")
    assert list(canonical) == ["fear", "anger", "anger", "contempt"]
    with pytest.raises(ValueError, match="ferplus, canonical"):
        majority_labels(votes, tie_order="random")


def test_subset_flags_match_ran_lists_on_test_images():
    df = load_manifest("ferplus", FOLDERS, subsets_dir=LISTS)
    test_names = set(df.loc[df["split"] == "test", "image_id"].str[:10])
    occlusion = {
        line.split()[0].split("_", 1)[1][:10]
        for line in (LISTS / "FERplus_dir" / "jianfei_occlusion_list.txt").read_text().splitlines()
        if line
    }
    pose45 = {
        line.split("/")[1][:10]
        for line in (LISTS / "FERplus_dir" / "pose_45_ferplus_list.txt").read_text().splitlines()
        if line
    }
    assert set(df.loc[df["occlusion"], "image_id"].str[:10]) == occlusion & test_names
    assert set(df.loc[df["pose45"], "image_id"].str[:10]) == pose45 & test_names
    assert (
        df["occlusion"].sum() > 0 and not df.loc[df["split"] != "test", ["occlusion", "pose30", "pose45"]].any().any()
    )
    assert df.attrs["subsets"]["listed"] == {"occlusion": 605, "pose30": 1170, "pose45": 633}
    # pose45 is a subset of pose30 in the lists, and so in the manifest.
    assert not (df["pose45"] & ~df["pose30"]).any()


def test_subsets_absent_or_explicitly_missing(tmp_path, monkeypatch):
    df = load_manifest("ferplus", FOLDERS)
    assert df.attrs["subsets"] is None and not df[["occlusion", "pose30", "pose45"]].any().any()
    assert any("lists not found" in w for w in df.attrs["warnings"])
    with pytest.raises(DatasetNotFoundError, match="subsets_dir"):
        load_manifest("ferplus", FOLDERS, subsets_dir=tmp_path / "absent")
    monkeypatch.setenv("PATTLITE_SUBSETS_DIR", str(LISTS))
    assert load_manifest("ferplus", FOLDERS).attrs["subsets"] is not None
