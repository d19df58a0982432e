"""Tests of pattlite.checkpoints: a training stopped at any epoch of either stage resumes where it was
and ends with the weights, history and epochs of one that was never stopped."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from pattlite import checkpoints as C
from pattlite import train as T
from pattlite.model import build_head

FEATURES = (14, 14, 16)
CLASSES = 7


def separable_features(n_per_class, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(CLASSES), n_per_class)
    x = rng.normal(0, 1, (len(y),) + FEATURES).astype("float16")
    x[np.arange(len(y)), :, :, y] += 1.0
    return x, y


def run(checkpoint_dir=None, fast=True, views=1):
    x, y = separable_features(3, seed=0)
    if views == 2:
        x = np.concatenate([x, np.ascontiguousarray(x[:, :, ::-1])])
    xv, yv = separable_features(1, seed=1)
    T.enable_determinism(0)
    model = build_head("published", CLASSES, FEATURES)
    # Patience 1 with min_delta 0.5: EarlyStopping and ReduceLROnPlateau carry state across epochs
    # and stop stage 1 early, so their restored state decides when it ends.
    cfg = T.TrainConfig(
        seed=0,
        stage1_epochs=6,
        stage2_epochs=9,
        verbose=False,
        fast=fast,
        train_views=views,
        stage1_patience=3,
        stage1_min_delta=0.05,
        lr_patience=1,
        lr_min_delta=0.5,
    )
    return T.train(model, x, y, xv, yv, cfg, checkpoint_dir=checkpoint_dir)


class Stop(Exception):
    pass


@pytest.mark.parametrize("stage, epoch", [("stage1", 1), ("stage2", 3)])
def test_a_stopped_training_resumes_to_the_same_result(tmp_path, monkeypatch, stage, epoch):
    whole = run()
    saved = C.StageCheckpoint.on_epoch_end

    def stop_after(self, e, logs=None):
        saved(self, e, logs)
        if self.path.stem == stage and e == epoch:
            raise Stop  # what Ctrl-C would do after the epoch's checkpoint is written

    monkeypatch.setattr(C.StageCheckpoint, "on_epoch_end", stop_after)
    with pytest.raises(Stop):
        run(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / f"{stage}.npz").is_file()
    assert (tmp_path / "ckpt" / "stage1-done.npz").is_file() == (stage == "stage2")
    monkeypatch.setattr(C.StageCheckpoint, "on_epoch_end", saved)
    resumed = run(tmp_path / "ckpt")
    assert resumed.epochs == whole.epochs
    for name in ("stage1", "stage2"):
        assert resumed.history[name]["epoch"] == whole.history[name]["epoch"]
        np.testing.assert_allclose(resumed.history[name]["loss"], whole.history[name]["loss"], rtol=1e-5)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # The total counts the earlier process's seconds too (held by the stages' own times).
    times = resumed.wall_time_s
    assert times["total"] >= times["stage1"] + times["stage2"] - 1e-9
    # Every stage finished: a third call trains nothing and gives the same model.
    again = run(tmp_path / "ckpt")
    assert again.history == resumed.history
    assert again.wall_time_s["total"] >= again.wall_time_s["stage1"] + again.wall_time_s["stage2"] - 1e-9
    for a, b in zip(resumed.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_a_damaged_checkpoint_is_named(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "stage1.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"stage1.npz: damaged training checkpoint .* delete it"):
        run(folder)
