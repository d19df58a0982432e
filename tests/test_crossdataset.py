"""Cross-dataset evaluation (`pattlite.crossdataset`): the class maps, the restricted and unrestricted
scores on hand-made probabilities with known answers, and runs end to end on the FER2013 fixture and a
small CK+48 folder of synthetic faces, with random-backbone heads (seconds; no dataset, no trained weights)."""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from heads import REPO_ROOT, training_files
from PIL import Image

from pattlite import cli, config
from pattlite import crossdataset as X
from pattlite import pretrained as P

FER2013_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fer2013"
FERPLUS = list(config.DATASET_CLASSES["ferplus"])


def test_every_ferplus_class_is_mapped_or_declared_absent():
    absent = {"ckplus": ["neutral"], "fer2013": ["contempt"]}
    assert set(X.CLASS_MAPS) == set(X.TARGETS) == set(absent)
    for target, mapping in X.CLASS_MAPS.items():
        labels = config.DATASET_CLASSES[target]
        assert sorted(mapping) == sorted(FERPLUS), target  # every FERPlus class has an entry
        assert [c for c in FERPLUS if mapping[c] is None] == absent[target]
        assert sorted(v for v in mapping.values() if v is not None) == sorted(labels)  # each label once
        index = X.class_map(FERPLUS, target)
        assert [labels[i] if i >= 0 else None for i in index] == [mapping[c] for c in FERPLUS]
    with pytest.raises(ValueError, match="'joy'"):
        X.class_map(["anger", "joy"], "fer2013")
    with pytest.raises(ValueError, match="valid cross-dataset targets: ckplus, fer2013"):
        X.class_map(FERPLUS, "rafdb")


def _probabilities(*rows):
    """One row per image: {class: probability}, the rest spread evenly below every given value."""
    out = np.full((len(rows), len(FERPLUS)), 0.01)
    for i, row in enumerate(rows):
        for name, p in row.items():
            out[i, FERPLUS.index(name)] = p
    return out


def test_restricted_and_unrestricted_scores_on_fer2013():
    labels = list(config.DATASET_CLASSES["fer2013"])
    y = np.array([labels.index(c) for c in ("anger", "happiness", "neutral", "surprise")])
    probabilities = _probabilities(
        {"anger": 0.9},  # right both ways
        {"contempt": 0.6, "happiness": 0.3},  # contempt, which FER2013 lacks: right only restricted
        {"contempt": 0.5, "sadness": 0.4},  # restricted to FER2013's classes: sadness, wrong
        {"fear": 0.7, "surprise": 0.2},
    )  # wrong both ways
    s = X.score(probabilities, y, FERPLUS, "fer2013")
    r, u = s["restricted"], s["unrestricted"]
    assert s["n"] == 4 and s["support"] == {
        **dict.fromkeys(labels, 0),
        "anger": 1,
        "happiness": 1,
        "neutral": 1,
        "surprise": 1,
    }
    assert (r["accuracy"], u["accuracy"]) == (0.5, 0.25)
    assert (r["mean_class_accuracy"], u["mean_class_accuracy"]) == (0.5, 0.25)
    assert r["per_class_recall"] == {
        "anger": 1.0,
        "disgust": None,
        "fear": None,
        "happiness": 1.0,
        "neutral": 0.0,
        "sadness": None,
        "surprise": 0.0,
    }
    assert u["per_class_recall"]["happiness"] == 0.0 and u["per_class_recall"]["anger"] == 1.0
    assert u["predicted_absent"] == {"contempt": 2}
    assert r["confusion_columns"] == labels and u["confusion_columns"] == FERPLUS
    restricted, free = np.array(r["confusion_matrix"]), np.array(u["confusion_matrix"])
    assert restricted.shape == (7, 7) and free.shape == (7, 8) and restricted.sum() == free.sum() == 4
    assert restricted[labels.index("neutral"), labels.index("sadness")] == 1
    assert restricted[labels.index("happiness"), labels.index("happiness")] == 1
    assert free[labels.index("happiness"), FERPLUS.index("contempt")] == 1
    assert free[labels.index("surprise"), FERPLUS.index("fear")] == 1
    with pytest.raises(ValueError, match=r"expected \(4, 8\)"):
        X.score(probabilities[:, :7], y, FERPLUS, "fer2013")


def test_ckplus_neutral_counts_only_unrestricted():
    labels = list(config.DATASET_CLASSES["ckplus"])
    y = np.array([labels.index("contempt"), labels.index("sadness"), labels.index("sadness")])
    probabilities = _probabilities({"neutral": 0.8, "contempt": 0.1}, {"sadness": 0.5}, {"neutral": 0.6, "fear": 0.3})
    s = X.score(probabilities, y, FERPLUS, "ckplus")
    assert s["restricted"]["accuracy"] == pytest.approx(2 / 3) and s["unrestricted"]["accuracy"] == pytest.approx(1 / 3)
    assert s["unrestricted"]["predicted_absent"] == {"neutral": 2}
    assert (
        s["restricted"]["per_class_recall"]["contempt"] == 1.0
        and s["unrestricted"]["per_class_recall"]["contempt"] == 0.0
    )
    assert s["restricted"]["per_class_recall"]["sadness"] == 0.5
    assert "neutral" not in s["restricted"]["per_class_recall"]


# ---------------------------------------------------------------------------------------------------
# End to end, random backbone


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """{variant: head file} and "backbone": a random backbone with BatchNorm calibrated (with the default
    statistics every image gets the same output)."""
    from pattlite.data.synthetic import generate_synthetic
    from pattlite.features import random_backbone_weights

    base = tmp_path_factory.mktemp("heads")
    files = {
        variant: P.export_head(training_files(base / variant, variant=variant), base / f"{variant}.weights.h5")[0]
        for variant in ("pattlite", "published")
    }
    calibration, _ = generate_synthetic(num_classes=8, image_size=48, n_train=0, n_val=0, n_test=16, progress=False)
    return {**files, "backbone": random_backbone_weights(0, calibration, cache_dir=base / "features")}


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATTLITE_CACHE_DIR", str(tmp_path / "cache"))  # pixel caches and file digests


def ckplus_folder(root: Path) -> Path:
    """A CK+48 copy of 14 synthetic faces: 2 per class, each its own subject (the reader's 10 folds need 10)."""
    from pattlite.data.synthetic import generate_synthetic

    images, meta = generate_synthetic(
        num_classes=8, image_size=48, n_train=0, n_val=0, n_test=16, seed=3, progress=False
    )
    folders = {"happiness": "happy"}
    count = 0
    for image, label in zip(images, meta["label"]):
        if label == "neutral":
            continue
        folder = root / "CK+48" / folders.get(label, label)
        folder.mkdir(parents=True, exist_ok=True)
        count += 1
        Image.fromarray(image).convert("L").save(folder / f"S{count:03d}_001_00000001.png")
    return root


def test_fer2013_test_split_each_image_alone_with_the_published_head(heads, cache):
    """Each image predicted alone: what one-image batches of the published (batch-mixing) model give."""
    from pattlite.data import load_pixels

    loaded = P.load_pretrained(heads["published"], backbone=heads["backbone"])
    result = X.run_crossdataset("fer2013", root=FER2013_FIXTURE, loaded=loaded, progress=False)
    assert (result.dataset, result.split, result.n, result.protocol) == ("fer2013", "test", 56, "independent")
    assert result.support == dict.fromkeys(config.DATASET_CLASSES["fer2013"], 8)
    assert result.class_map["contempt"] is None and result.class_map["happiness"] == "happiness"
    assert result.head["variant"] == "published" and result.head["experiment_key"] == "0123456789abcdef"
    assert result.head["seed"] == 7 and result.head["backbone"] == str(heads["backbone"])
    assert result.provenance["git_commit"] and result.data["image_size"] == 48

    manifest = X.evaluation_images("fer2013", FER2013_FIXTURE)
    x = np.asarray(load_pixels(manifest, 48, progress=False), dtype="float32")
    alone = np.concatenate([np.asarray(loaded.model.predict_on_batch(x[i : i + 1])) for i in range(len(x))])
    batched = np.asarray(loaded.model.predict_on_batch(x[:32]))
    assert np.abs(batched - alone[:32]).max() > 1e-3  # this head mixes: a batch is not each image alone
    want = X.score(alone, manifest["y"].to_numpy(), FERPLUS, "fer2013")
    assert result.restricted["confusion_matrix"] == want["restricted"]["confusion_matrix"]
    assert result.unrestricted["confusion_matrix"] == want["unrestricted"]["confusion_matrix"]


def test_command_on_ckplus_every_image_and_the_output_file(heads, cache, tmp_path, capsys):
    root, out = ckplus_folder(tmp_path / "ckplus"), tmp_path / "crossdataset.json"
    X.write_result(out, {"dataset": "fer2013", "n": 1})  # an earlier entry of another dataset stays
    args = [
        "crossdataset",
        "--dataset",
        "ckplus",
        "--head",
        heads["pattlite"],
        "--backbone",
        "none",
        "--root",
        root,
        "--output",
        out,
        "--batch-size",
        "5",
    ]
    assert cli.main([str(a) for a in args]) == 0
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert last["dataset"] == "ckplus" and last["n"] == 14 and last["split"] == "all"
    assert last["support"] == dict.fromkeys(config.DATASET_CLASSES["ckplus"], 2)
    assert last["head"]["variant"] == "pattlite" and "CK+48" in last["data"]["source"]
    assert "accuracy:" in captured.out and "over all 8 outputs" in captured.out
    assert "these numbers mean nothing" in captured.err
    stored = X.read_results(out)
    assert sorted(stored) == ["ckplus", "fer2013"] and stored["ckplus"] == last
    table = X.summary_table({"ckplus": stored["ckplus"]})
    assert list(table["dataset"]) == ["CK+"] and table["images"].tolist() == [14]
    assert "neutral" not in X.recall_table({"ckplus": stored["ckplus"]}).index


def test_command_errors_name_what_is_missing(tmp_path, cache, capsys):
    def run(*args):
        status = cli.main(["crossdataset", *map(str, args)])
        return status, capsys.readouterr().err

    status, err = run("--dataset", "rafdb")
    assert status == 2 and "--dataset: unknown dataset 'rafdb'; valid datasets: ckplus, fer2013" in err
    status, err = run("--dataset", "ckplus", "--head", tmp_path / "none.weights.h5")
    assert status == 1 and f"{tmp_path / 'none.weights.h5'} does not exist" in err and "--head PATH" in err
    training = training_files(tmp_path / "head")
    status, err = run("--dataset", "ckplus", "--head", training, "--root", tmp_path / "no_ckplus")
    assert status == 1 and f"not found at {tmp_path / 'no_ckplus'}" in err and "$PATTLITE_CKPLUS_ROOT" in err
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="bad.json is not a file of `pattlite crossdataset --output`"):
        X.read_results(tmp_path / "bad.json")
