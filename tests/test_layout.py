"""The report's tables in the paper's layout (`pattlite.studies.layout`), from small hand-made comparison
frames whose numbers are known: which cell holds what, the verdict marks, sd only over several runs, and
the cells of a dataset that was not run."""

import numpy as np
import pandas as pd
import pytest

from pattlite import paper
from pattlite.studies.layout import ABSENT, MARKS, paper_layout

OURS_LABELS = (
    "Ours: PAtt-Lite as coded, published protocol",
    "Ours: PAtt-Lite as coded, independent protocol",
    "Ours: corrected PAtt-Lite (per-image attention)",
)


def _protocol_frame(n, ours, sd, runs, verdict, ours_ind, verdict_ind, keys=("variant", "dataset")):
    """Table n's long frame (as `tables.table4/5/6` gives it) with the same numbers of ours in every cell."""
    pub = paper.paper_table(n)
    frame = pub[list(keys) + ["row", "column"]].copy()
    frame["paper"] = pub["value"]
    frame["ours"], frame["ours_sd"], frame["verdict"], frame["runs"] = ours, sd, verdict, runs
    frame["ours_independent"], frame["ours_independent_sd"] = ours_ind, sd
    frame["verdict_independent"] = verdict_ind
    frame.attrs["caption"] = paper.table_caption(n)
    return frame


def _cell(table, row_label_column, row_label, column):
    rows = table[table[row_label_column] == row_label]
    assert len(rows) == 1, (row_label, list(table[row_label_column]))
    return rows[column].iloc[0]


def test_table4_is_the_papers_grid_with_both_protocols_and_marks():
    frame = _protocol_frame(4, 95.10, 0.40, 3, "reproduced", 70.00, "not reproduced")
    published = (frame["variant"] == "published") & (frame["dataset"] == "ferplus")
    frame.loc[published, ["ours", "ours_sd", "runs", "ours_independent", "ours_independent_sd"]] = [
        80.25,
        np.nan,
        1,
        65.50,
        np.nan,
    ]
    frame.loc[published, ["verdict", "verdict_independent"]] = ["not reproduced", "not reproduced"]

    table = paper_layout(4, frame, absent={"fer2013": "no folder data/fer2013"})

    assert list(table.columns) == ["Attention Classifier", "Patch Extraction", "CK+", "RAF-DB", "FER2013", "FERPlus"]
    assert table.shape == (4, 6)  # the paper's four rows, two label columns and four datasets
    assert [tuple(r) for r in table[["Attention Classifier", "Patch Extraction"]].to_numpy()] == [
        ("×", "×"),
        ("×", "✓"),
        ("✓", "×"),
        ("✓", "✓"),
    ]
    raf = table.loc[3, "RAF-DB"]
    assert raf == (
        f"paper 95.05<br>{MARKS['reproduced']} 95.10 ± 0.40 (published protocol)"
        f"<br>{MARKS['not reproduced']} 70.00 ± 0.40 (independent)"
    )
    one_run = table.loc[3, "FERPlus"]  # one run: no sd, and the cell says its n (3 elsewhere)
    assert "±" not in one_run and "80.25, n=1" in one_run and "paper 95.55" in one_run
    assert one_run.count(MARKS["not reproduced"]) == 2 and MARKS["reproduced"] not in one_run
    assert list(table["FER2013"]) == [ABSENT] * 4
    assert "n = 3" in table.attrs["legend"] and table.attrs["caption"].startswith("Table 4.")
    assert table.attrs["verdicts"]["verdict"] == {"reproduced": 11, "not reproduced": 1, ABSENT: 4}


def test_table5_rows_are_cut_layers_and_columns_kernels():
    frame = _protocol_frame(5, np.nan, np.nan, 0, "no result", np.nan, "no result", keys=("layer", "kernel"))
    grid_point = (frame["layer"] == 29) & (frame["kernel"] == "P8")
    frame.loc[grid_point, ["ours", "ours_independent", "runs"]] = [93.90, 91.00, 1]
    frame.loc[grid_point, ["verdict", "verdict_independent"]] = ["reproduced", "not reproduced"]

    table = paper_layout(5, frame)

    assert list(table.columns) == ["Layer", "NP7", "OP3", "OP5", "P4", "P8"]
    assert table.shape == (6, 6) and list(table["Layer"]) == ["17", "23", "29", "35", "41", "47"]
    assert _cell(table, "Layer", "29", "P8") == (
        f"paper 93.64<br>{MARKS['reproduced']} 93.90 (published protocol)"
        f"<br>{MARKS['not reproduced']} 91.00 (independent)"
    )
    assert _cell(table, "Layer", "47", "P4") == f"paper 78.13<br>{MARKS['no result']} no result"
    # Table 5 run on a stand-in: its cells are that dataset's, whatever the frame's dataset column says.
    frame.attrs["ours_dataset"] = "ferplus"
    assert set(paper_layout(5, frame, absent={"ferplus": "absent"}).iloc[:, 1:].to_numpy().ravel()) == {ABSENT}
    assert set(paper_layout(5, frame, absent={"rafdb": "absent"}).iloc[:, 1:].to_numpy().ravel()) != {ABSENT}


def _methods_frame(n, keys, ours_by_label):
    """Table n's long frame as `tables._comparison` gives it: the paper's methods, then our rows."""
    pub = paper.paper_table(n)
    params = "params_text" in pub and pub["params_text"].notna().any()
    methods = pd.DataFrame(
        {
            "method": pub["row"],
            **{k: pub[k] for k in keys},
            "paper": pub["value"],
            "ours": np.nan,
            "ours_sd": np.nan,
            "diff": np.nan,
            "verdict": "",
            "runs": 0,
        }
    )
    if params:
        methods.insert(1 + len(keys), "params", pub["params_text"])
    parts = [methods]
    pattlite = methods[methods["method"] == "PAtt-Lite"]
    for label, (ours, sd, runs, verdict) in ours_by_label.items():
        parts.append(pattlite.assign(method=label, ours=ours, ours_sd=sd, runs=runs, verdict=verdict))
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs["caption"] = paper.table_caption(n)
    return frame


def test_table7_lists_the_papers_methods_then_ours():
    frame = _methods_frame(
        7,
        ["dataset"],
        {
            OURS_LABELS[0]: (99.50, 0.50, 10, "reproduced"),
            OURS_LABELS[1]: (97.00, 1.00, 10, "not reproduced"),
            OURS_LABELS[2]: (np.nan, np.nan, 0, "no result"),
        },
    )
    table = paper_layout(7, frame)
    assert list(table.columns) == ["Methods", "Accuracy"]
    assert table.shape == (8 + 3, 2)  # the paper's 8 methods, then our 3 rows
    assert list(table["Methods"][:8]) == list(paper.paper_table(7)["row"])
    assert list(table["Methods"][8:]) == list(OURS_LABELS)
    assert _cell(table, "Methods", "gACNN [8]", "Accuracy") == "96.40"  # another method: the paper's only
    assert _cell(table, "Methods", OURS_LABELS[0], "Accuracy") == f"{MARKS['reproduced']} 99.50 ± 0.50 (paper 100.00)"
    assert _cell(table, "Methods", OURS_LABELS[1], "Accuracy").startswith(f"{MARKS['not reproduced']} 97.00 ± 1.00")
    assert _cell(table, "Methods", OURS_LABELS[2], "Accuracy") == f"{MARKS['no result']} no result (paper 100.00)"
    assert "n = 10" in table.attrs["legend"]

    absent = paper_layout(7, frame, absent={"ckplus": "no folder data/ckplus"})
    assert list(absent["Accuracy"][8:]) == [ABSENT] * 3
    assert list(absent["Accuracy"][:8]) == list(table["Accuracy"][:8])  # the paper's numbers stay


def test_table8_keeps_the_papers_row_and_column_order_and_params():
    frame = _methods_frame(8, ["dataset"], {OURS_LABELS[0]: (95.00, np.nan, 1, "reproduced")})
    frame.loc[frame["method"] == OURS_LABELS[0], "params"] = "1.10M"
    table = paper_layout(8, frame, absent={"ferplus": "absent"})
    assert list(table.columns) == ["Methods", "# Params", "RAF-DB", "FERPlus"]
    assert table.shape == (15 + 1, 4)
    # VTFE is printed twice (80.1M for FERPlus, 51.8M for RAF-DB), RAN between them.
    assert [tuple(r) for r in table[["Methods", "# Params"]].to_numpy()[:3]] == [
        ("VTFE [28]", "80.1M"),
        ("RAN [5]", "11.2M"),
        ("VTFE [28]", "51.8M"),
    ]
    assert list(table.loc[0, ["RAF-DB", "FERPlus"]]) == ["-", "88.81"]
    assert list(table.iloc[-1]) == [OURS_LABELS[0], "1.10M", f"{MARKS['reproduced']} 95.00 (paper 95.05)", ABSENT]


def test_table11_columns_are_dataset_by_subset():
    frame = _methods_frame(11, ["dataset", "subset"], {})
    table = paper_layout(11, frame)
    assert list(table.columns[2:]) == [
        f"{d}<br>{s}" for d in ("RAF-DB", "FERPlus") for s in ("Occlusion", "Pose > 30", "Pose > 45")
    ]
    assert table.shape == (9, 8)


def test_count_tables_show_ours_with_the_papers_count():
    from pattlite.studies import data_tables

    tables = data_tables({}, synthetic=False)  # no manifest: every count of ours is missing
    t1 = tables[1]
    at = (t1["dataset"] == "rafdb") & (t1["class"] == "anger")
    t1.loc[at, ["ours", "verdict"]] = [867, "reproduced"]
    at = (t1["dataset"] == "ferplus") & (t1["class"] == "contempt")
    t1.loc[at, ["ours", "verdict"]] = [220, "not reproduced"]

    table = paper_layout(1, t1, absent={"fer2013": "no folder"})

    assert list(table.columns) == [
        "Databases",
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Neutral",
        "Sadness",
        "Surprise",
        "Contempt",
        "Total",
    ]
    assert list(table["Databases"]) == ["RAF-DB", "FER2013", "FERPlus"]
    assert _cell(table, "Databases", "RAF-DB", "Anger") == f"{MARKS['reproduced']} 867 (paper 867)"
    assert _cell(table, "Databases", "FERPlus", "Contempt") == f"{MARKS['not reproduced']} 220 (paper 221)"
    assert _cell(table, "Databases", "RAF-DB", "Contempt") == "-"  # the paper prints none
    assert _cell(table, "Databases", "FERPlus", "Anger") == f"{MARKS['no result']} no result (paper 3123)"
    assert set(table.loc[table["Databases"] == "FER2013", "Anger":"Surprise"].to_numpy().ravel()) == {ABSENT}

    t2 = paper_layout(2, tables[2])
    assert t2.shape == (6, 2 + 9) and list(t2["Subsets"][:3]) == ["Occlusion", "Pose 30", "Pose 45"]
    t3 = paper_layout(3, tables[3])
    assert list(t3.columns) == ["Databases", "Training", "Validation", "Testing", "train+val"]


def test_layout_rejects_unknown_tables_and_frames_without_the_keys():
    with pytest.raises(ValueError, match="Tables 1-11"):
        paper_layout(12, pd.DataFrame())
    frame = _protocol_frame(6, 90.0, np.nan, 1, "reproduced", 90.0, "reproduced").drop(columns="variant")
    with pytest.raises(ValueError, match="'variant'"):
        paper_layout(6, frame)
    twice = pd.concat([_protocol_frame(6, 90.0, np.nan, 1, "reproduced", 90.0, "reproduced")] * 2)
    with pytest.raises(ValueError, match="several rows"):
        paper_layout(6, twice)
