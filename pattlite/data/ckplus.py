"""CK+ (Extended Cohn-Kanade) reader, 7 classes, 10-fold subject-independent protocol.

Layouts (root = the dataset folder, default `data/ckplus/`):

1. The full release: `cohn-kanade-images/S005/001/S005_001_00000011.png` (sequences from neutral to
   peak) and `Emotion/S005/001/S005_001_00000011_emotion.txt` (one float label: 1 anger, 2 contempt,
   3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise; 0 neutral does not occur on labelled sequences
   and is rejected). Only the 327 labelled sequences are read; of each, the last
   `frames_per_sequence` (default 3) frames by file name, the usual 7-class protocol (981 images).
2. CK+48: `CK+48/<anger|contempt|disgust|fear|happy|sadness|surprise>/S005_001_00000011.png` (or those
   class folders directly in root), 981 images; the same last-frames rule is applied per sequence
   (with 3 it keeps everything).

Folds: subjects (`S###`) are dealt into `num_folds` (default 10) folds, so no subject is in two folds.
Subjects are shuffled with `numpy.random.default_rng(fold_seed)` (default 0), then taken from the most
images to the fewest, each going to the fold where it least raises the sum of squared per-class
image counts (which balances both fold size and class mix; ties drawn from the same generator).
Option `fold` (default 0) picks the test fold; fold `(fold + 1) % num_folds` is the validation split
(one fold's worth of other subjects); the rest is train. Column `fold` = each row's fold, `subject`
= its subject id. Rows are ordered by subject, sequence, frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pattlite.data.common import IMAGE_SUFFIXES, data_warning, finish_manifest, reject_unknown_options
from pattlite.data.errors import DatasetFormatError, DatasetNotFoundError

DATASET = "ckplus"
CKPLUS_EMOTIONS = {1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise"}
FOLDER_TO_LABEL = {
    "anger": "anger",
    "contempt": "contempt",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sadness": "sadness",
    "surprise": "surprise",
    "happiness": "happiness",
    "angry": "anger",
    "sad": "sadness",
}
EXPECTED_LAYOUT = (
    "cohn-kanade-images/S###/###/*.png with Emotion/S###/###/*_emotion.txt (full release), "
    "or CK+48/<anger|contempt|disgust|fear|happy|sadness|surprise>/S###_###_########.png"
)
_FRAME_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)\.(png|jpg|jpeg|bmp|tif|tiff)$", re.IGNORECASE)


def _parse_frame_name(path: Path):
    match = _FRAME_NAME.match(path.name)
    if not match:
        raise DatasetFormatError(path, None, "file name is not S###_###_########.png (subject_sequence_frame)")
    return match.group(1), match.group(2)


def read_emotion_file(path: Path) -> str:
    """Canonical label of one `*_emotion.txt` file (DatasetFormatError naming file and line)."""
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if len(lines) != 1:
        raise DatasetFormatError(
            path,
            lines[1][0] if len(lines) > 1 else 1,
            f"{len(lines)} non-empty lines; expected one label (e.g. '3.0000000e+00')",
        )
    number, text = lines[0]
    try:
        value = float(text)
    except ValueError:
        raise DatasetFormatError(path, number, f"label {text!r} is not a number; expected 1-7") from None
    if value != int(value) or int(value) not in CKPLUS_EMOTIONS:
        raise DatasetFormatError(
            path,
            number,
            f"label {text!r}; expected an integer 1-7 "
            "(1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise)",
        )
    return CKPLUS_EMOTIONS[int(value)]


def _last_frames(frames, count, where, notes):
    frames = sorted(frames)
    if len(frames) < count:
        notes.append(f"{where}: {len(frames)} frame(s), fewer than frames_per_sequence={count}; all kept")
    return frames[-count:]


def read_full_release(root: Path, frames_per_sequence: int, notes: list):
    images_dir, emotion_dir = root / "cohn-kanade-images", root / "Emotion"
    if not emotion_dir.is_dir():
        raise DatasetNotFoundError(DATASET, emotion_dir, EXPECTED_LAYOUT)
    emotion_files = sorted(emotion_dir.glob("S*/*/*_emotion.txt"))
    if not emotion_files:
        raise DatasetNotFoundError(DATASET, emotion_dir, EXPECTED_LAYOUT, detail="No *_emotion.txt files in it.")
    rows, missing = [], []
    for emotion_file in emotion_files:
        label = read_emotion_file(emotion_file)
        subject, sequence = emotion_file.parent.parent.name, emotion_file.parent.name
        sequence_dir = images_dir / subject / sequence
        frames = (
            [p for p in sequence_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES] if sequence_dir.is_dir() else []
        )
        if not frames:
            missing.append(str(sequence_dir))
            continue
        for frame in _last_frames(frames, frames_per_sequence, sequence_dir, notes):
            rows.append((label, str(frame.resolve()), frame.name, subject, sequence))
    if missing:
        raise DatasetNotFoundError(
            DATASET,
            images_dir,
            EXPECTED_LAYOUT,
            detail=f"{len(missing)} labelled sequence folder(s) without images, e.g. {', '.join(missing[:5])}.",
        )
    return rows, f"full release ({root}), last {frames_per_sequence} frames of each labelled sequence"


def read_ck48(folder: Path, frames_per_sequence: int, notes: list):
    by_sequence = {}
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    for class_dir in class_dirs:
        key = class_dir.name.lower()
        if key not in FOLDER_TO_LABEL:
            raise DatasetFormatError(
                class_dir, None, f"unknown class folder {class_dir.name!r}; expected one of {sorted(FOLDER_TO_LABEL)}"
            )
        for image in class_dir.iterdir():
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                subject, sequence = _parse_frame_name(image)
                by_sequence.setdefault((subject, sequence, FOLDER_TO_LABEL[key]), []).append(image)
    if not by_sequence:
        raise DatasetNotFoundError(DATASET, folder, EXPECTED_LAYOUT, detail="No images in its class folders.")
    labels_of = {}
    for subject, sequence, label in by_sequence:
        labels_of.setdefault((subject, sequence), []).append(label)
    for (subject, sequence), labels in labels_of.items():
        if len(labels) > 1:
            notes.append(f"{folder}: sequence {subject}_{sequence} appears under several classes {labels}")
    rows = []
    for (subject, sequence, label), frames in sorted(by_sequence.items()):
        for frame in _last_frames(frames, frames_per_sequence, f"{folder}/*/{subject}_{sequence}_*", notes):
            rows.append((label, str(frame.resolve()), frame.name, subject, sequence))
    return rows, f"CK+48 class folders ({folder}), last {frames_per_sequence} frames of each sequence"


def assign_folds(subject_class_counts: pd.DataFrame, num_folds: int = 10, seed: int = 0) -> dict:
    """Subject -> fold, balanced in size and class mix; see the module docstring.

    Args:
        subject_class_counts: one row per subject (index), one column per class, image counts.
        num_folds: number of folds (at most the number of subjects).
        seed: seed of the subject shuffle and of tie-breaking.
    """
    subjects = list(subject_class_counts.index)
    if num_folds < 2 or num_folds > len(subjects):
        raise ValueError(f"num_folds must be between 2 and the number of subjects ({len(subjects)}), got {num_folds}")
    rng = np.random.default_rng(seed)
    counts = subject_class_counts.to_numpy(dtype=np.int64)
    order = rng.permutation(len(subjects))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((num_folds, counts.shape[1]), dtype=np.int64)
    assignment = {}
    for index in order:
        cost = ((fold_counts + counts[index]) ** 2).sum(axis=1)
        best = np.flatnonzero(cost == cost.min())
        fold = int(rng.choice(best))
        fold_counts[fold] += counts[index]
        assignment[subjects[index]] = fold
    return assignment


def read_ckplus(root, **options) -> pd.DataFrame:
    """CK+ manifest from `root`; see the module docstring.

    Options:
        fold: test fold, 0 to num_folds - 1 (default 0).
        fold_seed: seed of the fold assignment (default 0).
        num_folds: number of folds (default 10).
        frames_per_sequence: last frames taken from each sequence (default 3).
    """
    reject_unknown_options(DATASET, options, ("fold", "fold_seed", "num_folds", "frames_per_sequence"))
    fold, fold_seed = options.get("fold", 0), options.get("fold_seed", 0)
    num_folds, frames = options.get("num_folds", 10), options.get("frames_per_sequence", 3)
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames_per_sequence must be a positive integer, got {frames!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in 0..{num_folds - 1}, got {fold!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(DATASET, root, EXPECTED_LAYOUT)
    notes = []
    if (root / "Emotion").is_dir() or (root / "cohn-kanade-images").is_dir():
        rows, source = read_full_release(root, frames, notes)
    elif (root / "CK+48").is_dir():
        rows, source = read_ck48(root / "CK+48", frames, notes)
    elif any((root / name).is_dir() for name in FOLDER_TO_LABEL):
        rows, source = read_ck48(root, frames, notes)
    else:
        raise DatasetNotFoundError(DATASET, root, EXPECTED_LAYOUT)
    records = pd.DataFrame(rows, columns=["label", "path", "image_id", "subject", "sequence"])
    records = records.sort_values(["subject", "sequence", "image_id"], kind="stable").reset_index(drop=True)
    class_counts = pd.crosstab(records["subject"], records["label"])
    folds = assign_folds(class_counts, num_folds, fold_seed)
    records["fold"] = records["subject"].map(folds).astype("int64")
    val_fold = (fold + 1) % num_folds
    records["split"] = np.where(records["fold"] == fold, "test", np.where(records["fold"] == val_fold, "val", "train"))
    records["row"] = -1
    source += f"; {num_folds} subject-independent folds (seed {fold_seed}), test fold {fold}, val fold {val_fold}"
    df = finish_manifest(records, DATASET, source, extra_columns=("subject", "fold"))
    for note in notes:
        data_warning(df, note)
    df.attrs["fold"] = {"test": fold, "val": val_fold, "num_folds": num_folds, "seed": fold_seed}
    return df
