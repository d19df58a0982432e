"""Tests of the batch-composition audit (`pattlite audit`, `pattlite.audit`): a tiny synthetic run through
the console script, the experiments it plans for real data, and its errors."""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from envvars import environment

from pattlite import audit, cli
from pattlite.results import ExperimentResult

PROTOCOLS = ("published", "shuffled", "independent")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    with environment(PATTLITE_DATA_DIR=base / "data"):
        yield base


def run_cli(capsys, args):
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fake_weights(tmp_path) -> Path:
    """A file that exists: planning checks only that the weights file is there (no model is built)."""
    path = tmp_path / "mobilenet_1_0_224_imagenet_no_top.weights.h5"
    path.write_bytes(b"not read when planning")
    return path


def test_synthetic_audit_reports_three_heads_under_three_protocols(folders, capsys):
    results = folders / "results"
    status, out, _ = run_cli(capsys, ["audit", "--dataset", "synthetic", "--results", results])
    assert status == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["dataset"] == "synthetic" and summary["synthetic"] is True
    assert set(summary["heads"]) == set(audit.AUDIT_HEADS)
    for head, by_protocol in summary["heads"].items():
        assert set(by_protocol) == set(PROTOCOLS)
        assert all(0.0 <= v <= 1.0 for v in by_protocol.values()), (head, by_protocol)
    # Without batch mixing a prediction never depends on its batch: one number per head.
    for head in ("no_mixing", "pattlite"):
        assert len(set(summary["heads"][head].values())) == 1, (head, summary["heads"][head])
    assert summary["augmentation"] is False and "NO augmentation" in out
    assert summary["cached"] == 0
    assert len(summary["result_paths"]) == 3
    for path in summary["result_paths"]:
        saved = ExperimentResult.read(path)
        assert saved.stage1 == "cached" and saved.epochs["stage2"] == 0
        assert Path(path).parent == results / "ci" / "experiments"
    assert "| published |" in out

    # A rerun loads every head from its result file.
    status, out, _ = run_cli(capsys, ["audit", "--dataset", "synthetic", "--results", results])
    assert status == 0
    again = json.loads(out.strip().splitlines()[-1])
    assert again["cached"] == 3 and again["heads"] == summary["heads"]


def test_real_data_plan_uses_cached_features_stage1_and_the_subset(tmp_path):
    weights = fake_weights(tmp_path)
    exps = audit.cached_head_experiments("ferplus", weights=str(weights), seeds=(0, 1))
    assert [(e.variant, e.seed) for e in exps] == [(h, s) for h in audit.AUDIT_HEADS for s in (0, 1)]
    for exp in exps:
        assert exp.dataset == "ferplus" and exp.source["dataset"] == "ferplus" and not exp.synthetic
        assert exp.stage1 == "cached" and exp.train["stage2"] is False
        assert exp.train_limit == audit.DEFAULT_TRAIN_LIMIT
        assert exp.train["stage1_epochs"] == audit.DEFAULT_STAGE1_EPOCHS
        assert exp.weights == str(weights) and exp.image_size == 120
    assert len({e.key() for e in exps}) == len(exps)
    custom = audit.cached_head_experiments(
        "fer2013", weights=str(weights), train_limit=500, image_size=48, stage1_epochs=3
    )
    assert {(e.train_limit, e.image_size, e.train["stage1_epochs"]) for e in custom} == {(500, 48, 3)}


def test_summary_averages_seeds(tmp_path):
    weights = fake_weights(tmp_path)
    exps = audit.cached_head_experiments("fer2013", weights=str(weights), seeds=(0, 1))

    def result(accuracy):
        metrics = {"all": {p: {"accuracy": accuracy + i / 100} for i, p in enumerate(PROTOCOLS)}}
        return ExperimentResult(
            key="0" * 16,
            config={},
            dataset="fer2013",
            source_dataset="fer2013",
            classes=[],
            synthetic=False,
            data=None,
            stage1="cached",
            notes=[],
            weights={"spec": str(weights)},
            split_sizes={"train": 10, "test": 5},
            metrics=metrics,
            predictions={},
            history={},
            epochs={"stage1": 7},
            trainable_params={},
            finetune=None,
            wall_time_s={},
            provenance={},
        )

    summary = audit.summarize(exps, [result(0.2 if e.seed == 0 else 0.4) for e in exps], "fer2013", 1.0)
    assert summary["per_seed"]["pattlite"]["published"] == [0.2, 0.4]
    assert summary["heads"]["pattlite"]["published"] == pytest.approx(0.3)
    assert summary["heads"]["no_mixing"]["independent"] == pytest.approx(0.32)
    assert summary["batch_gain"] == pytest.approx(-0.02)


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["audit", "--dataset", "affectnet"], 2, "valid datasets: ckplus, rafdb, fer2013, ferplus, synthetic"),
        (["audit", "--dataset", "ferplus"], 2, "needs --weights"),
        (
            ["audit", "--dataset", "ferplus", "--weights", "/nonexistent/mobilenet.weights.h5"],
            1,
            "/nonexistent/mobilenet.weights.h5",
        ),
        (["audit", "--dataset", "synthetic", "--profile", "paper"], 2, "needs a synthetic profile"),
        (["audit", "--dataset", "ferplus", "--weights", "imagenet", "--profile", "ci"], 2, "synthetic stand-in"),
        (["audit", "--dataset", "synthetic", "--profile", "fast"], 2, "valid profiles: paper, cpu, cpu_full, demo, ci"),
    ],
)
def test_bad_inputs_exit_non_zero_with_a_clear_message(folders, capsys, args, status, message):
    code, out, err = run_cli(capsys, args)
    assert code == status
    assert message in err
    assert out.strip() == "" or "note:" in out


def test_missing_real_dataset_names_the_dataset(folders, capsys, tmp_path):
    weights = fake_weights(tmp_path)
    code, _, err = run_cli(
        capsys,
        [
            "audit",
            "--dataset",
            "fer2013",
            "--root",
            tmp_path / "nowhere",
            "--weights",
            weights,
            "--results",
            tmp_path / "results",
        ],
    )
    assert code == 1
    assert "fer2013" in err.lower() and str(tmp_path / "nowhere") in err
