"""CK+ reader on miniature trees (full release and CK+48) with 12 subjects."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pattlite.data import DatasetFormatError, DatasetNotFoundError, load_manifest
from pattlite.data.ckplus import assign_folds

CK_CODES = {1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise"}
CK48_FOLDERS = {
    "anger": "anger",
    "contempt": "contempt",
    "disgust": "disgust",
    "fear": "fear",
    "happiness": "happy",
    "sadness": "sadness",
    "surprise": "surprise",
}


def _sequences(subjects=12):
    """(subject, sequence, code, n_frames): 1-3 sequences a subject, 4-7 frames each."""
    rng = np.random.default_rng(7)
    out = []
    for s in range(subjects):
        for q in range(1 + s % 3):
            out.append((f"S{100 + s:03d}", f"{q + 1:03d}", int(rng.integers(1, 8)), int(rng.integers(4, 8))))
    return out


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(path)


@pytest.fixture
def full_release(tmp_path):
    for subject, sequence, code, frames in _sequences():
        for f in range(1, frames + 1):
            _png(tmp_path / "cohn-kanade-images" / subject / sequence / f"{subject}_{sequence}_{f:08d}.png")
        emotion = tmp_path / "Emotion" / subject / sequence / f"{subject}_{sequence}_{frames:08d}_emotion.txt"
        emotion.parent.mkdir(parents=True, exist_ok=True)
        emotion.write_text(f"   {code:.7e}\n")
    # an unlabelled sequence is not read
    _png(tmp_path / "cohn-kanade-images" / "S100" / "009" / "S100_009_00000001.png")
    return tmp_path


def test_full_release_last_three_frames_and_labels(full_release):
    df = load_manifest("ckplus", full_release)
    sequences = _sequences()
    assert len(df) == 3 * len(sequences)
    assert list(df.columns) == ["split", "label", "y", "path", "row", "image_id", "subject", "fold"]
    for subject, sequence, code, frames in sequences:
        rows = df[df["image_id"].str.startswith(f"{subject}_{sequence}_")]
        assert sorted(rows["image_id"]) == [f"{subject}_{sequence}_{f:08d}.png" for f in range(frames - 2, frames + 1)]
        assert (rows["label"] == CK_CODES[code]).all() and (rows["subject"] == subject).all()
    assert "neutral" not in set(df["label"]) and df.attrs["classes"][-1] == "contempt"
    one = load_manifest("ckplus", full_release, frames_per_sequence=1)
    assert len(one) == len(sequences)


def test_folds_subject_independent_balanced_and_selectable(full_release):
    df = load_manifest("ckplus", full_release)
    assert (df.groupby("subject")["fold"].nunique() == 1).all()
    sizes = df.groupby("fold").size()
    assert sorted(df["fold"].unique()) == list(range(10))
    # 12 subjects of 3-9 images into 10 folds: no fold exceeds the two largest subjects together.
    per_subject = df.groupby("subject").size().sort_values(ascending=False)
    assert sizes.max() <= per_subject.iloc[0] + per_subject.iloc[1]
    assert sizes.min() >= per_subject.min()
    for fold in (0, 4, 9):
        split = load_manifest("ckplus", full_release, fold=fold)
        assert set(split.loc[split["split"] == "test", "fold"]) == {fold}
        assert set(split.loc[split["split"] == "val", "fold"]) == {(fold + 1) % 10}
        test_subjects = set(split.loc[split["split"] == "test", "subject"])
        assert not test_subjects & set(split.loc[split["split"] != "test", "subject"])
    # seeded: same seed same folds, and the fold column does not depend on the chosen test fold
    assert load_manifest("ckplus", full_release, fold=3)["fold"].equals(df["fold"])
    with pytest.raises(ValueError, match="fold must be"):
        load_manifest("ckplus", full_release, fold=10)


def test_assign_folds_balances_a_larger_population():
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(rng.integers(0, 4, size=(118, 7)) * 3, index=[f"S{i:03d}" for i in range(118)])
    folds = assign_folds(counts, 10, seed=0)
    sizes = pd.Series({f: counts.loc[[s for s, g in folds.items() if g == f]].to_numpy().sum() for f in range(10)})
    assert sizes.max() - sizes.min() <= counts.sum(axis=1).max()
    assert assign_folds(counts, 10, seed=0) == folds and assign_folds(counts, 10, seed=1) != folds


def test_ck48_layout_matches_full_release_subjects(tmp_path):
    sequences = _sequences()
    for subject, sequence, code, frames in sequences:
        for f in range(frames - 2, frames + 1):
            _png(tmp_path / "CK+48" / CK48_FOLDERS[CK_CODES[code]] / f"{subject}_{sequence}_{f:08d}.png")
    df = load_manifest("ckplus", tmp_path)
    assert len(df) == 3 * len(sequences) and df["row"].eq(-1).all()
    assert (df.groupby("subject")["fold"].nunique() == 1).all()
    labels = {f"{s}_{q}": CK_CODES[c] for s, q, c, _ in sequences}
    assert (df["image_id"].str[:8].map(labels) == df["label"]).all()
    assert len(load_manifest("ckplus", tmp_path / "CK+48")) == len(df)


def test_bad_emotion_file_and_missing_sequence(full_release):
    subject, sequence, _, frames = _sequences()[0]
    emotion = full_release / "Emotion" / subject / sequence / f"{subject}_{sequence}_{frames:08d}_emotion.txt"
    emotion.write_text("   0.0000000e+00\n")
    with pytest.raises(DatasetFormatError, match=r"_emotion.txt, line 1: label '0.0000000e\+00'"):
        load_manifest("ckplus", full_release)
    emotion.write_text("   3.0000000e+00\n")
    for png in (full_release / "cohn-kanade-images" / subject / sequence).glob("*.png"):
        png.unlink()
    with pytest.raises(DatasetNotFoundError, match="1 labelled sequence folder"):
        load_manifest("ckplus", full_release)


def test_missing_root_and_bad_file_name(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CK\\+48"):
        load_manifest("ckplus", tmp_path)
    _png(tmp_path / "CK+48" / "anger" / "face1.png")
    with pytest.raises(DatasetFormatError, match="face1.png"):
        load_manifest("ckplus", tmp_path)
