"""Tables 1-3: shape, published numbers beside ours, and the difference."""

from pathlib import Path

import pandas as pd
import pytest

from pattlite.data import load_manifest, table1, table2, table3
from pattlite.data.tables import published_tables

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def manifests():
    return {
        "fer2013": load_manifest("fer2013", FIXTURES / "fer2013"),
        "ferplus": load_manifest("ferplus", FIXTURES / "ferplus", subsets_dir=FIXTURES / "ran_challenge_lists"),
    }


def test_table1(manifests):
    t = table1(manifests)
    assert list(t.columns) == ["dataset", "class", "paper", "ours", "diff"]
    assert len(t) == (7 + 1) * 2 + (8 + 1)
    fer = t[t["dataset"] == "fer2013"].set_index("class")
    counts = manifests["fer2013"]["label"].value_counts()
    assert fer.loc["happiness", "paper"] == 8989 and fer.loc["happiness", "ours"] == counts["happiness"]
    assert fer.loc["total", "paper"] == 35887 and fer.loc["total", "ours"] == 168
    assert (t["diff"].dropna() == (t["ours"] - t["paper"]).dropna()).all()
    assert t.loc[t["dataset"] == "ferplus"].set_index("class").loc["total", "paper"] == 35710
    assert t.loc[t["dataset"] == "rafdb", "ours"].isna().all()


def test_table2_from_manifest_counts_flagged_test_images(manifests):
    t = table2(manifests)
    ferplus = t[t["dataset"] == "ferplus"]
    df = manifests["ferplus"]
    occ = ferplus[(ferplus["subset"] == "occlusion") & (ferplus["class"] != "total")].set_index("class")["ours"]
    assert occ.to_dict() == df.loc[df["occlusion"], "label"].value_counts().reindex(occ.index, fill_value=0).to_dict()
    assert (ferplus["source"] == "manifest").all()
    assert t.loc[t["dataset"] == "rafdb", "ours"].isna().all()


def test_table3(manifests):
    t = table3(manifests)
    assert list(t.columns) == ["dataset", "split", "paper", "ours", "diff"]
    rafdb = t[t["dataset"] == "rafdb"].set_index("split")
    assert list(rafdb.index) == ["train", "val", "test", "train+val"]
    assert pd.isna(rafdb.loc["val", "paper"]) and rafdb.loc["train+val", "paper"] == 12271
    ferplus = t[t["dataset"] == "ferplus"].set_index("split")
    assert ferplus.loc["val", "ours"] == 55 and ferplus.loc["val", "diff"] == 55 - 3579
    assert published_tables()["table3"]["fer2013"] == {"train": 28659, "val": 3584, "test": 3582}


def test_unknown_dataset_in_tables():
    with pytest.raises(ValueError, match="valid datasets"):
        table1({"affectnet": None})
