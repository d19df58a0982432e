"""The RAN challenging-condition lists (real copies) and the paper's Table 2."""

from pathlib import Path

import pytest

from pattlite.data import DatasetFormatError, DatasetNotFoundError, table2
from pattlite.data.subsets import read_subset_list, read_subset_lists, subset_label_counts
from pattlite.data.tables import published_tables

LISTS = Path(__file__).parent / "fixtures" / "ran_challenge_lists"


def test_fixture_lists_keep_their_crlf_endings():
    # Two lists are CRLF in the RAN repository; the reader must cope with both endings.
    assert b"\r\n" in (LISTS / "FERplus_dir" / "jianfei_occlusion_list.txt").read_bytes()
    assert b"\r\n" in (LISTS / "RAF_DB_dir" / "rafdb_occlusion_list.txt").read_bytes()
    assert b"\r\n" not in (LISTS / "FERplus_dir" / "pose_30_ferplus_list.txt").read_bytes()


def test_list_sizes_and_pose45_within_pose30():
    sizes = {d: {s: len(line.entries) for s, line in read_subset_lists(d, LISTS).items()} for d in ("rafdb", "ferplus")}
    assert sizes == {
        "rafdb": {"occlusion": 734, "pose30": 1247, "pose45": 558},
        "ferplus": {"occlusion": 605, "pose30": 1170, "pose45": 633},
    }
    for dataset in ("rafdb", "ferplus"):
        lists = read_subset_lists(dataset, LISTS)
        assert set(lists["pose45"].entries) <= set(lists["pose30"].entries)


def test_rafdb_occlusion_duplicate_reported_once_counted_once():
    occlusion = read_subset_list("rafdb", "occlusion", LISTS)
    assert len(occlusion.warnings) == 1 and "test_2464" in occlusion.warnings[0]
    assert "counted once" in occlusion.warnings[0]
    lines = [
        line for line in (LISTS / "RAF_DB_dir" / "rafdb_occlusion_list.txt").read_text().splitlines() if line.strip()
    ]
    assert len(lines) == len(occlusion.entries) + 1


def test_table2_rafdb_reproduced_exactly_from_the_lists():
    counts = subset_label_counts("rafdb", LISTS)
    for subset, published in published_tables()["table2"]["rafdb"].items():
        assert list(counts.loc[subset]) == list(published[:7]), subset


def test_table2_ferplus_from_list_labels_totals_match_classes_nearly():
    # The FERPlus lists carry the RAN authors' labels; the paper counted its own majority labels, which
    # differ on a few tied images. Totals must match; each class within 3 images.
    table = table2(subsets_dir=LISTS)
    ferplus = table[table["dataset"] == "ferplus"]
    totals = ferplus[ferplus["class"] == "total"]
    assert (totals["diff"] == 0).all() and len(totals) == 3
    assert ferplus["diff"].abs().max() <= 3
    rafdb = table[table["dataset"] == "rafdb"]
    assert (rafdb["diff"] == 0).all() and (table["source"] == "lists").all()
    assert len(table) == 3 * 8 + 3 * 9  # RAF-DB 7 classes + total, FERPlus 8 + total, 3 subsets each


def test_malformed_list_line_names_file_and_line(tmp_path):
    (tmp_path / "RAF_DB_dir").mkdir()
    good = (LISTS / "RAF_DB_dir" / "rafdb_occlusion_list.txt").read_bytes().split(b"\r\n")
    good[9] = b"test_0010_aligned three 4"
    (tmp_path / "RAF_DB_dir" / "rafdb_occlusion_list.txt").write_bytes(b"\r\n".join(good))
    with pytest.raises(DatasetFormatError, match=r"rafdb_occlusion_list.txt, line 10: malformed line"):
        read_subset_list("rafdb", "occlusion", tmp_path)


def test_contradictory_entries_and_label_file_are_reported(tmp_path):
    (tmp_path / "FERplus_dir").mkdir()
    (tmp_path / "FERplus_dir" / "pose_30_ferplus_list.txt").write_text(
        "0/fer0032226.jpg\n4/fer0032226.jpg\n1/fer0032227.jpg\n"
    )
    pose = read_subset_list("ferplus", "pose30", tmp_path)
    assert pose.entries == {"fer0032226": "neutral", "fer0032227": "happiness"}
    assert len(pose.warnings) == 1 and "'neutral' and 'anger'" in pose.warnings[0]
    (tmp_path / "RAF_DB_dir").mkdir()
    (tmp_path / "RAF_DB_dir" / "val_raf_db_list_45.txt").write_text(
        "0/test_0004_aligned.jpg\n4/test_0006_aligned.jpg\n"
    )
    (tmp_path / "RAF_DB_dir" / "val_raf_db_label_45.txt").write_text("2 7\n0\n5\n")
    pose45 = read_subset_list("rafdb", "pose45", tmp_path)
    assert "1 label(s) contradict" in pose45.warnings[0]
    (tmp_path / "RAF_DB_dir" / "val_raf_db_label_45.txt").write_text("3 7\n0\n5\n")
    with pytest.raises(DatasetFormatError, match="header says 3 labels"):
        read_subset_list("rafdb", "pose45", tmp_path)


def test_unmatched_and_empty_lists_warn_naming_file_and_line(tmp_path):
    import shutil

    from pattlite.data import DataWarning, load_manifest

    folders = Path(__file__).parent / "fixtures" / "ferplus"
    lists = tmp_path / "lists"
    shutil.copytree(LISTS, lists)
    pose30 = lists / "FERplus_dir" / "pose_30_ferplus_list.txt"
    pose30.write_text("")  # an empty list
    with pytest.warns(DataWarning) as record:
        df = load_manifest("ferplus", folders, subsets_dir=lists)
    messages = [str(w.message) for w in record]
    assert f"{pose30}: no entries; the pose30 subset is empty" in messages
    # The fixture holds 56 of FERPlus' test images; most occlusion-list entries match none of them.
    occlusion = lists / "FERplus_dir" / "jianfei_occlusion_list.txt"
    unmatched = [m for m in messages if m.startswith(f"{occlusion}: ")]
    assert len(unmatched) == 1 and "match no test image read here: fer" in unmatched[0]
    first_key = unmatched[0].split("read here: ")[1].split(" ")[0]
    line = next(n for n, text in enumerate(occlusion.read_text().splitlines(), 1) if first_key in text)
    assert f"{first_key} (line {line})" in unmatched[0]
    assert df["occlusion"].sum() > 0 and df["pose30"].sum() == 0
    assert set(messages) <= set(df.attrs["warnings"])


def test_missing_list_file_is_named(tmp_path):
    (tmp_path / "FERplus_dir").mkdir()
    with pytest.raises(DatasetNotFoundError, match="jianfei_occlusion_list.txt"):
        read_subset_lists("ferplus", tmp_path)
