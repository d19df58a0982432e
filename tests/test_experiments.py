"""Tests of pattlite.profiles and pattlite.experiments: names, keys, run-or-load, resume, determinism,
result files, missing real data. Synthetic data at the ci profile's size, shortened further."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from envvars import environment

from pattlite import experiments as X
from pattlite.profiles import PROFILES, get_profile
from pattlite.results import DamagedResultError, ExperimentResult

FAST = dict(stage1_epochs=2, stage2_max_epochs=1)


@pytest.fixture(scope="module", autouse=True)
def isolated_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    with environment(
        PATTLITE_DATA_DIR=root / "data",
        PATTLITE_CACHE_DIR=root / "cache",
        PATTLITE_RESULTS_DIR=root / "results",
        PATTLITE_RAFDB_ROOT=root / "no_rafdb_here",
    ):
        yield root


def test_profiles():
    assert set(PROFILES) == {"paper", "cpu", "cpu_full", "demo", "ci"}
    with pytest.raises(ValueError, match="paper, cpu, cpu_full, demo, ci"):
        get_profile("quick")
    with pytest.raises(ValueError, match="allow_random_weights"):
        get_profile("paper", weights=None)
    assert get_profile("paper", weights=None, allow_random_weights=True).weights is None
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile("demo", epochs=3)
    demo = get_profile("demo")
    assert demo.synthetic and demo.stage1 == "cached" and demo.weights == "imagenet"
    assert get_profile("ci").weights is None  # ci needs no download
    assert demo.num_classes("ferplus") == 8 and demo.source("ferplus")["options"]["num_classes"] == 8
    seeds = {demo.source(b)["options"]["seed"] for b in ("ckplus", "rafdb", "fer2013", "ferplus")}
    assert len(seeds) == 4
    paper = get_profile("paper")
    assert paper.image_size("rafdb") == 224 and paper.image_size("fer2013") == 120
    assert paper.stage1 == "exact" and paper.finetune == "as_coded" and len(paper.ckplus_folds) == 10


def test_make_experiment_names_and_keys():
    exp = X.make_experiment("ci", "rafdb", "published", **FAST)
    assert exp.key() == X.make_experiment("ci", "rafdb", "published", **FAST).key()
    assert exp.key() != X.make_experiment("ci", "rafdb", "published", seed=1, **FAST).key()
    assert exp.key() != X.make_experiment("ci", "rafdb", "published", cut_layer=35, **FAST).key()
    assert X.make_experiment("ci", "ckplus", "published").fold == 0
    with pytest.raises(ValueError, match="ckplus, rafdb, fer2013, ferplus"):
        X.make_experiment("ci", "affectnet", "published")
    with pytest.raises(ValueError, match="pattlite"):
        X.make_experiment("ci", "rafdb", "patt")
    with pytest.raises(ValueError, match="unknown experiment override"):
        X.make_experiment("ci", "rafdb", "published", learning_rate=1.0)
    with pytest.raises(ValueError, match="only ckplus"):
        X.make_experiment("ci", "rafdb", "published", fold=2)
    with pytest.raises(ValueError, match="published, shuffled, independent"):
        X.make_experiment("ci", "rafdb", "published", protocols=("batch1",))


def test_run_load_and_repeat(tmp_path):
    exp = X.make_experiment("ci", "ferplus", "published", **FAST)
    first = X.run_experiment(exp, results_dir=tmp_path, progress=False)
    assert first.cached is False and first.synthetic is True and first.stage1 == "cached"
    assert first.notes and "augmentation" in first.notes[0]
    assert set(first.metrics["all"]) == {"published", "shuffled", "independent"}
    assert len(first.classes) == 8
    subsets = set(first.metrics) - {"all"}
    assert subsets and subsets <= {"occlusion", "pose30", "pose45"}
    assert len(first.predictions["all"]["image_id"]) == first.metrics["all"]["published"]["n"]
    assert first.history["stage2"]["epoch"] == [first.epochs["stage2_initial_epoch"]]
    path = tmp_path / "experiments" / f"{exp.key()}.json"
    assert json.loads(path.read_text())["key"] == exp.key() and first.path == str(path)
    assert "git_commit" in first.provenance

    # The evaluated model's weights are saved beside the result: the full model rebuilt from them
    # (head on the backbone) predicts what the result file recorded.
    assert X.weights_path(exp, tmp_path).is_file()
    stage1_log = X.logs_path(exp, tmp_path) / "stage1.csv"
    assert len(stage1_log.read_text().splitlines()) == first.epochs["stage1"] + 1  # header + an epoch a line
    from pattlite.evaluate import evaluate
    from pattlite.gradcam import trained_model

    model, data = trained_model(exp, results_dir=tmp_path)
    rows = data["index"]["test"]
    rebuilt = evaluate(model, np.asarray(data["pixels"][rows]), data["y"][rows], data["classes"], "independent")
    recorded = np.asarray(first.predictions["all"]["independent"])
    # float16 features vs the float32 path may flip a borderline image, not more
    assert np.mean(rebuilt["predictions"] == recorded) >= 0.95

    loaded = X.run_experiment(exp, results_dir=tmp_path, progress=False)
    assert loaded.cached is True
    assert json.dumps(loaded.to_dict()) == json.dumps(first.to_dict())  # every field read back as written

    # A result committed under docs/results/<profile>/results/ is adopted by a results folder that lacks
    # it (a fresh clone resumes a published run without retraining); a damaged one is named, not copied.
    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / path.name).write_text(path.read_text())
    import unittest.mock

    with unittest.mock.patch.object(X, "committed_results_dir", lambda profile: committed):
        adopted = X.run_experiment(exp, results_dir=tmp_path / "fresh", progress=False)
        assert adopted.cached is True and adopted.metrics == first.metrics
        assert (tmp_path / "fresh" / "experiments" / path.name).read_text() == path.read_text()
        (committed / path.name).write_text("{")
        with pytest.raises(DamagedResultError, match=str(committed / path.name)):
            X.run_experiment(exp, results_dir=tmp_path / "fresh2", progress=False)
        assert not (tmp_path / "fresh2" / "experiments" / path.name).exists()

    table = X.collect_results(tmp_path)
    assert len(table) == sum(len(m) for m in first.metrics.values())
    assert set(table["protocol"]) == {"published", "shuffled", "independent"}

    # Leftover temporary files of an unfinished write are never read as results (a complete one
    # would double this key's rows, a partial one would crash).
    text = path.read_text()
    (path.parent / f".tmp-4242-{path.name}").write_text(text)
    (path.parent / f".tmp-4243-{path.name}").write_text(text[:100])
    assert len(X.collect_results(tmp_path)) == len(table)
    assert X.run_experiment(exp, results_dir=tmp_path, progress=False).cached is True

    # A damaged result file: an error naming the file, what is wrong and the fix; force=True replaces it.
    for content, problem in (
        (text[: len(text) // 3], "is not valid JSON"),
        ("", "is empty"),
        ("{}", "lacks 'key', 'config', 'dataset'"),
        ("[1, 2]", "holds a JSON list"),
    ):
        path.write_text(content)
        for read in (
            lambda: X.run_experiment(exp, results_dir=tmp_path, progress=False),
            lambda: X.collect_results(tmp_path),
        ):
            with pytest.raises(DamagedResultError, match="--force") as caught:
                read()
            assert f"result file {path} {problem}" in str(caught.value)

    # Same seed, retrained (replacing the damaged file): same numbers on CPU.
    again = X.run_experiment(exp, results_dir=tmp_path, force=True, progress=False)
    assert again.cached is False
    assert again.metrics == first.metrics
    assert again.history == first.history
    assert json.loads(path.read_text())["key"] == exp.key()


def test_resume_after_interruption(tmp_path, monkeypatch):
    """Ctrl-C during the second experiment's first epoch: the first experiment's files stay, the second
    keeps a training checkpoint, and the rerun loads the first, resumes the second from its checkpoint
    (removed once its result is written) and runs the third."""
    from pattlite import checkpoints

    exps = [X.make_experiment("ci", "ckplus", "pattlite", fold=f, **FAST) for f in (0, 1, 2)]
    calls = []
    real = X._build_and_train
    saved = checkpoints.StageCheckpoint.on_epoch_end

    def interrupt_after_an_epoch(self, epoch, logs=None):
        saved(self, epoch, logs)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(checkpoints.StageCheckpoint, "on_epoch_end", interrupt_after_an_epoch)
    monkeypatch.setattr(X, "_build_and_train", lambda exp, *a: (calls.append(exp.fold), real(exp, *a))[1])
    with pytest.raises(KeyboardInterrupt):
        X.run_experiments(exps, results_dir=tmp_path, log=lambda line: None)
    files = sorted(p.name for p in (tmp_path / "experiments").iterdir())
    # the finished experiment's result and weights; nothing partial from the interrupted one
    assert files == [f"{exps[0].key()}.json", f"{exps[0].key()}.weights.h5"]
    assert (X.checkpoint_path(exps[1], tmp_path) / "stage1.npz").is_file()
    assert not X.checkpoint_path(exps[0], tmp_path).exists()
    first_result = ExperimentResult.read(tmp_path / "experiments" / files[0])
    monkeypatch.setattr(checkpoints.StageCheckpoint, "on_epoch_end", saved)

    monkeypatch.setattr(X, "_build_and_train", lambda exp, *a: (calls.append(exp.fold), real(exp, *a))[1])
    lines = []
    results = X.run_experiments(exps, results_dir=tmp_path, log=lines.append)
    assert calls == [0, 1, 1, 2]  # fold 0 loaded, not retrained
    assert results[0].cached is True and results[0].metrics == first_result.metrics
    assert "(cached)" in lines[0] and lines[2].startswith("[3/3] ckplus fold 2 pattlite")
    assert not set(results[0].metrics) - {"all"}  # CK+ has no challenging subsets
    assert results[1].history["stage1"]["epoch"][0] == 0  # the epoch run before the interruption is kept
    assert not any((tmp_path / "checkpoints").iterdir())


def test_paper_profile_missing_dataset_is_named(tmp_path):
    from pattlite.data.errors import DatasetNotFoundError

    exp = X.make_experiment("paper", "rafdb", "published")
    with pytest.raises(DatasetNotFoundError, match="rafdb"):
        X.run_experiment(exp, results_dir=tmp_path, progress=False)
    assert not (tmp_path / "experiments").exists()


def test_key_follows_the_content_of_the_files_not_their_folder(tmp_path, monkeypatch):
    """The same files in another folder, or copied afresh, are the same experiment; a file changed in
    place (same name and size) is another experiment, and the experiment made before the change refuses
    to train on the changed files."""
    import shutil
    from pathlib import Path

    from pattlite.data import fingerprint

    monkeypatch.setenv("PATTLITE_CACHE_DIR", str(tmp_path / "cache"))
    sample = (Path(__file__).parent / "fixtures" / "fer2013" / "fer2013.csv").read_bytes()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    (first / "fer2013.csv").write_bytes(sample)
    exp = X.make_experiment("paper", "fer2013", "published", root=first)
    assert exp.data["root"] == str(first.resolve()) and len(exp.data["content"]) == 16
    # Another folder, a fresh copy (new modification time): the same key, the folder still recorded.
    shutil.copytree(first, second)
    os.utime(second / "fer2013.csv", ns=(0, 10**9))
    moved = X.make_experiment("paper", "fer2013", "published", root=second)
    assert moved.key() == exp.key() and moved.data["root"] == str(second.resolve())
    # The digests are memoised in the cache folder: a file's bytes are read once per change.
    memo = json.loads((tmp_path / "cache" / fingerprint.DIGEST_MEMO).read_text())
    assert str((second / "fer2013.csv").resolve()) in memo
    # Pixels edited in place (every digit 1 of the first image becomes 2): same name, same size.
    csv_path = first / "fer2013.csv"
    lines = sample.decode().split("\n")
    emotion, pixels, usage = lines[1].split(",")
    lines[1] = ",".join([emotion, pixels.replace("1", "2"), usage])
    csv_path.write_bytes("\n".join(lines).encode())
    stat = csv_path.stat()
    os.utime(csv_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    assert csv_path.stat().st_size == len(sample)
    edited = X.make_experiment("paper", "fer2013", "published", root=first)
    assert edited.key() != exp.key() and edited.data["root"] == exp.data["root"]
    # The experiment made before the edit refuses to train on the edited files (its key names the old ones).
    with pytest.raises(X.DataChangedError, match="changed after this experiment was made"):
        X.run_experiment(exp, results_dir=tmp_path / "results", progress=False)
    # run_experiment(root=...) re-binds the experiment to that folder's current files.
    assert X.bind_root(exp, second).key() == exp.key()
    assert X.bind_root(exp, first).key() == edited.key()
    # Notes and hidden files are no reader's input: same key. A table or image file added to the
    # folder changes it (whole folders are digested, before any reader picks its files).
    (second / "README.md").write_text("where these files came from")
    (second / ".DS_Store").write_bytes(b"\0")
    assert X.make_experiment("paper", "fer2013", "published", root=second).key() == exp.key()
    (second / "notes.txt").write_text("x")
    assert X.make_experiment("paper", "fer2013", "published", root=second).key() != exp.key()
    # A root that does not exist yet: no digest (reading it raises DatasetNotFoundError).
    assert X.make_experiment("paper", "fer2013", "published", root=tmp_path / "nowhere").data["content"] is None
    # Synthetic data are identified by their generator options: no root, no digest.
    assert X.make_experiment("ci", "fer2013", "published").data == {"root": None, "content": None}


def test_ferplus_key_reads_its_own_ran_lists_wherever_they_are(tmp_path, monkeypatch):
    """The RAN lists are digested under fixed names: the same lists inside the root or given by
    $PATTLITE_SUBSETS_DIR make the same key; RAF-DB's lists beside them do not count for FERPlus."""
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    monkeypatch.setenv("PATTLITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PATTLITE_SUBSETS_DIR", raising=False)
    inside = tmp_path / "inside"
    shutil.copytree(fixtures / "ferplus", inside)
    shutil.copy(fixtures / "fer2013" / "fer2013.csv", inside / "fer2013.csv")
    shutil.copytree(fixtures / "ran_challenge_lists", inside / "ran_challenge_lists")
    outside = tmp_path / "outside"
    shutil.copytree(inside, outside, ignore=shutil.ignore_patterns("ran_challenge_lists"))
    lists = tmp_path / "lists"
    shutil.copytree(fixtures / "ran_challenge_lists", lists)
    key = X.make_experiment("paper", "ferplus", "published", root=inside).key()
    monkeypatch.setenv("PATTLITE_SUBSETS_DIR", str(lists))
    assert X.make_experiment("paper", "ferplus", "published", root=outside).key() == key
    rafdb_list = lists / "RAF_DB_dir" / "rafdb_occlusion_list.txt"
    rafdb_list.write_text(rafdb_list.read_text() + "test_0001_aligned 3 4\n")
    assert X.make_experiment("paper", "ferplus", "published", root=outside).key() == key
    ferplus_list = lists / "FERplus_dir" / "jianfei_occlusion_list.txt"
    ferplus_list.write_bytes(ferplus_list.read_bytes()[:-40])
    assert X.make_experiment("paper", "ferplus", "published", root=outside).key() != key


def test_extraction_engine_is_part_of_the_key_of_cached_experiments(monkeypatch):
    """Features from OpenVINO and TensorFlow differ (up to one float16 step), so a cached experiment's
    key names its engine; an exact stage 1 computes no cached features and names none."""
    tensorflow = X.make_experiment("ci", "rafdb", "published", extraction_engine="tensorflow")
    openvino = X.make_experiment("ci", "rafdb", "published", extraction_engine="openvino")
    assert tensorflow.key() != openvino.key() and tensorflow.extraction_engine == "tensorflow"
    monkeypatch.setenv("PATTLITE_EXTRACTION_ENGINE", "tensorflow")
    assert X.make_experiment("ci", "rafdb", "published").key() == tensorflow.key()
    exact = X.make_experiment("ci", "rafdb", "published", stage1="exact", extraction_engine="openvino")
    assert exact.extraction_engine is None


def test_flip_augmentation_trains_on_the_mirror_images_features(tmp_path, monkeypatch):
    """train_views=2: the head trains on the features of every training image and of its mirror image
    (computed through the feature store), is keyed apart from the unaugmented experiment and says so."""
    stacked = []
    original = X._with_mirror_features

    def spy(features, pixels, train_rows, *args, **kwargs):
        stacked.append(original(features, pixels, train_rows, *args, **kwargs))
        # The first view is exactly the training rows' features, as without the flip.
        np.testing.assert_array_equal(stacked[-1][: len(train_rows)], np.asarray(features[np.asarray(train_rows)]))
        return stacked[-1]

    monkeypatch.setattr(X, "_with_mirror_features", spy)
    exp = X.make_experiment("ci", "rafdb", "published", train_views=2, test_probe_epochs=(1,), **FAST)
    assert exp.key() != X.make_experiment("ci", "rafdb", "published", test_probe_epochs=(1,), **FAST).key()
    result = X.run_experiment(exp, results_dir=tmp_path, progress=False)
    n = result.split_sizes["train"]
    (both,) = stacked
    assert both.shape[0] == 2 * n and both.dtype == np.float16
    # Mirror images give other features (synthetic faces are not symmetric to the pixel).
    assert np.abs(both[n:].astype(np.float32) - both[:n].astype(np.float32)).mean() > 1e-3
    assert "horizontal flip" in result.notes[0] and result.config["train"]["train_views"] == 2
    # The test accuracy after the first stage-2 epoch, recorded for the analysis of epoch caps; the
    # run had one stage-2 epoch, so it is the final model's.
    assert set(result.test_probe) == {"1"} and set(result.test_probe["1"]) == set(exp.protocols)
    assert result.test_probe["1"]["published"] == result.metrics["all"]["published"]["accuracy"]
    assert result.extraction["engine"] == exp.extraction_engine and result.extraction["version"]
    with pytest.raises(ValueError, match="train_views=3"):
        X.make_experiment("ci", "rafdb", "published", train_views=3)
    with pytest.raises(ValueError, match="stage1='exact' augments inside the model"):
        X.make_experiment("ci", "rafdb", "published", train_views=2, stage1="exact")


def test_seed_range_is_checked_when_the_experiment_is_made():
    with pytest.raises(ValueError, match=r"seed -1: expected an integer in 0..4294967295"):
        X.make_experiment("ci", "rafdb", "published", seed=-1)
    with pytest.raises(ValueError, match="seed 4294967296"):
        X.make_experiment("ci", "rafdb", "published", seed=2**32)
    assert X.make_experiment("ci", "rafdb", "published", seed=2**32 - 1).seed == 2**32 - 1


def test_paper_finetuning_after_a_cached_stage1_records_stage2_like_train(tmp_path):
    """Stage 1 on cached features, then the paper's fine-tuning on the full model: the stage-2 record
    is the one `pattlite.train.train` writes (history with its epoch indices, the unfrozen count)."""
    exp = X.make_experiment("ci", "rafdb", "published", finetune="paper", stage1_epochs=1, stage2_max_epochs=1)
    assert not exp.evaluated_on_features()
    result = X.run_experiment(exp, results_dir=tmp_path, progress=False)
    assert set(result.history["stage2"]) == set(result.history["stage1"])  # loss, accuracy, val_*, epoch
    assert result.history["stage2"]["epoch"] == [result.epochs["stage2_initial_epoch"]]
    assert result.trainable_params["stage2"] > result.trainable_params["stage1"]  # 59 layers unfrozen
    assert result.finetune["trainable_backbone_layers"]


def test_cpu_full_profile_is_the_authors_recipe_on_cached_features(tmp_path):
    """Every training image, the authors' epoch limits and callbacks (stage 2 capped at 50 epochs, with
    uncapped reference runs of the published head at seed 0), the flip as mirror-image features, the
    headline heads over 3 seeds, the ablations over one, Table 5's whole grid."""
    from pattlite import config
    from pattlite.studies import plan

    full = get_profile("cpu_full")
    assert (full.stage1, full.train_views, full.finetune) == ("cached", 2, "as_coded")
    assert full.train_limit is None and full.stage2_max_epochs == 50 and full.reference_seeds == (0,)
    assert (full.stage1_epochs, full.stage2_epochs) == (100, 500) and full.validation == "published"
    assert full.seeds == (0, 1, 2) and full.ablation_seeds == (0,) and full.ckplus_folds == tuple(range(10))
    assert set(full.table5_layers) == set(config.TABLE5_CUT_LAYERS)
    exp = X.make_experiment(full, "ferplus", "published", root=tmp_path / "absent")
    cfg = exp.train_config()
    assert cfg.train_views == 2 and cfg.stage2_max_epochs == 50 and cfg.stage2_patience == 20
    references = plan.reference_experiments(full, datasets=("ferplus",))
    assert [(e.variant, e.seed, e.train_config().stage2_max_epochs) for e in references] == [("published", 0, None)]
    assert references[0].key() != exp.key()
    assert plan.reference_experiments(get_profile("cpu")) == []  # no cap, no reference runs
    assert cfg.test_probe_epochs == full.test_probe_epochs and exp.extraction_engine in ("openvino", "tensorflow")
    seeds = {(e.variant, e.seed) for e in plan.table4_experiments(full, datasets=("ferplus",))}
    assert {s for _, s in seeds} == {0}
    assert {e.seed for e in plan.main_experiments(full, datasets=("ferplus",))} == {0, 1, 2}
    with pytest.raises(ValueError, match="train_views=2"):
        get_profile("cpu_full", stage1="exact")
