"""Experiments: run-or-load, result files, collecting results. The configuration and its key are
`pattlite.experiment_config`, the data an experiment reads `pattlite.experiment_data`; both are importable
from here.

An experiment is everything that determines one trained-and-evaluated model: the benchmark and its
data source, the data it is read from (the content digest of its files, `pattlite.data.fingerprint`),
the CK+ fold, the variant and its options, the training recipe, the evaluation protocols, the seed,
sizes, epoch limits, the weights, the stage-1 mode, the feature-extraction engine, the training-set
limit and the profile. `Experiment.key()` hashes all of it except the dataset's folder: the same files
anywhere (another folder, a fresh copy, another machine) give the same key, so committed result files
are found again, while an edited, repaired or replaced file gives another key and the experiment is
trained again. `run_experiment` writes
`<results dir>/experiments/<key>.json` once, atomically (temporary file `.tmp-*` + `os.replace`), and
later calls load it, so an interrupted list of experiments resumes at the first unfinished one.

A damaged result file (empty, truncated, not a result) is an error naming the file and what is wrong
with it; `force=True` (`pattlite train --force`) retrains and replaces it. It is never silently
retrained: on the paper profile that could cost hours, and a file damaged after an atomic write means
something outside this code touched the results folder. Temporary files are never read as results.

Example:

```python
from pattlite.experiments import make_experiment, run_experiments, collect_results
exps = [make_experiment("demo", d, "published") for d in ("rafdb", "ferplus")]
run_experiments(exps)
collect_results(pattlite.config.results_dir("demo"))
```

The result file's schema is `pattlite.results`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.checkpoints import TrainingCheckpoint
from pattlite.config import SUBSETS
from pattlite.evaluate import evaluate

# The experiment's configuration and its data live in their own modules; their names stay importable from here.
from pattlite.experiment_config import (  # noqa: F401
    MODEL_OPTIONS,
    Experiment,
    bind_root,
    data_identity,
    make_experiment,
)
from pattlite.experiment_data import (  # noqa: F401
    SUBSET_SEED,
    DataChangedError,
    _RowsOf,
    _take,
    experiment_weights,
    limit_training_rows,
    load_experiment_data,
)
from pattlite.extraction import extraction_identity
from pattlite.features import backbone_features
from pattlite.files import write_atomic
from pattlite.model import build_head, build_model, copy_head_weights, variant_cut_layer
from pattlite.recipe import TrainConfig
from pattlite.results import WHOLE_TEST, ExperimentResult, jsonable, result_file, result_files
from pattlite.seeding import enable_determinism
from pattlite.train import add_stage2, train

CACHED_NOTE = (
    "stage 1 trained on cached frozen-backbone features: no flip/contrast augmentation "
    "(impossible on features); stage 2 as coded changes no backbone weight, so it runs on "
    "features too"
)
CACHED_FLIP_NOTE = (
    "trained on cached frozen-backbone features with the authors' horizontal flip (each "
    "epoch every training image or its mirror image, probability 1/2, features of both "
    "cached); no random contrast (it cannot be cached exactly); stage 2 as coded changes "
    "no backbone weight, so it runs on features too"
)


# ---------------------------------------------------------------------------------------------------
# Running


def _provenance() -> dict:
    from pattlite.provenance import provenance

    return provenance()


def result_path(exp: Experiment, results_dir=None) -> Path:
    return result_file(results_dir if results_dir is not None else config.results_dir(exp.profile), exp.key())


def logs_path(exp: Experiment, results_dir=None) -> Path:
    """`<results dir>/logs/<key>/`: the experiment's per-epoch CSV logs (stage1.csv, stage2.csv) and,
    when asked for, TensorBoard logs."""
    return result_path(exp, results_dir).parent.parent / "logs" / exp.key()


def committed_results_dir(profile: str) -> Path:
    """`docs/results/<profile>/results/`: the result files a published run committed (`pattlite publish`)."""
    return config.PROJECT_ROOT / "docs" / "results" / profile / "results"


def adopt_committed(exp: Experiment, results_dir=None) -> bool:
    """Copies the experiment's committed result file (`committed_results_dir`) into the results folder
    when that has none; True when it did. Keys hold what the data are, so a result committed by another
    machine is this experiment's result wherever the same files are; the copy is checked like any result
    file (`ExperimentResult.read`: its key, its format)."""
    path = result_path(exp, results_dir)
    committed = committed_results_dir(exp.profile) / path.name
    if path.is_file() or not committed.is_file():
        return False
    ExperimentResult.read(committed, exp.key())  # a damaged committed file is named, never copied
    weights = committed.with_name(f"{exp.key()}.weights.h5")  # committed for the Grad-CAM model only
    if weights.is_file():
        write_atomic(weights_path(exp, results_dir), weights.read_bytes())
    write_atomic(path, committed.read_bytes())
    return True


def checkpoint_path(exp: Experiment, results_dir=None) -> Path:
    """`<results dir>/checkpoints/<key>/`: the training checkpoints of an unfinished experiment
    (`pattlite.checkpoints`); removed once its result file is written."""
    return result_path(exp, results_dir).parent.parent / "checkpoints" / exp.key()


def weights_path(exp: Experiment, results_dir=None) -> Path:
    """`<results dir>/experiments/<key>.weights.h5`: the trained weights of the model an experiment
    evaluated (the head alone when it was evaluated on cached features, else the full model)."""
    return result_path(exp, results_dir).with_name(f"{exp.key()}.weights.h5")


def _weights_bytes(model) -> bytes:
    """The model's weights as the bytes of a .weights.h5 file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.weights.h5"  # Keras wants the .weights.h5 ending
        model.save_weights(str(path))
        return path.read_bytes()


def _build_and_train(
    exp: Experiment,
    cfg: TrainConfig,
    data: dict,
    weights,
    progress: bool,
    log_dir=None,
    tensorboard: bool = False,
    checkpoint_dir=None,
):
    """Builds the model the experiment's stage-1 mode needs and trains it; returns (eval model, inputs, result)."""
    index, y = data["index"], data["y"]
    num_classes = len(data["classes"])
    model_kwargs = dict(exp.model_options, resize_to=exp.resize_to)
    y_train, y_val = y[index["train"]], y[index["val"]]
    log_options = dict(dataset=exp.dataset, log_dir=log_dir, tensorboard=tensorboard)  # every stage's logs
    if exp.stage1 == "exact":
        enable_determinism(exp.seed, cfg.deterministic)  # seeds the head's initialisation too
        model = build_model(
            exp.variant, num_classes, input_shape=(exp.image_size, exp.image_size, 3), weights=weights, **model_kwargs
        )
        inputs = data["pixels"]
        result = train(
            model,
            _take(inputs, index["train"]),
            y_train,
            _take(inputs, index["val"]),
            y_val,
            cfg,
            checkpoint_dir=checkpoint_dir,
            test_probe=_test_probe(exp, cfg, data, inputs),
            **log_options,
        )
        return result.stage1_model, inputs, result
    cut = variant_cut_layer(exp.variant, **exp.model_options)
    # Only the rows the experiment uses: a training limit then saves backbone passes and disk.
    used = np.unique(np.concatenate([index["train"], index["val"], index["test"]]))
    features = _RowsOf(
        backbone_features(
            data["manifest"],
            exp.image_size,
            weights,
            cut_layers=[cut],
            resize_to=exp.resize_to,
            progress=progress,
            rows=used,
            pixels=data["pixels"],
            engine=exp.extraction_engine,
        )[cut],
        used,
    )
    if cfg.train_views == 2:
        x_train = _with_mirror_features(features, data["pixels"], index["train"], exp, weights, cut, progress)
    else:
        x_train = _take(features, index["train"])
    enable_determinism(exp.seed, cfg.deterministic)
    head = build_head(exp.variant, num_classes, tuple(features.shape[1:]), **model_kwargs)
    if not exp.evaluated_on_features():
        # The paper's fine-tuning changes backbone weights: stage 2 must run on the full model.
        result = train(
            head,
            x_train,
            y_train,
            _take(features, index["val"]),
            y_val,
            dataclasses.replace(cfg, stage2=False),
            checkpoint_dir=checkpoint_dir,
            **log_options,
        )
        full = build_model(
            exp.variant, num_classes, input_shape=(exp.image_size, exp.image_size, 3), weights=weights, **model_kwargs
        )
        copy_head_weights(head, full)
        pixels = data["pixels"]
        add_stage2(
            result,
            full,
            _take(pixels, index["train"]),
            y_train,
            _take(pixels, index["val"]),
            y_val,
            cfg,
            checkpoint=None if checkpoint_dir is None else TrainingCheckpoint(checkpoint_dir),
            test_probe=_test_probe(exp, cfg, data, pixels),
            **log_options,
        )
        return full, pixels, result
    result = train(
        head,
        x_train,
        y_train,
        _take(features, index["val"]),
        y_val,
        cfg,
        checkpoint_dir=checkpoint_dir,
        test_probe=_test_probe(exp, cfg, data, features),
        **log_options,
    )
    return result.stage1_model, features, result


def _test_probe(exp: Experiment, cfg: TrainConfig, data: dict, inputs):
    """`probe(model)` -> {protocol: test accuracy} for `TrainConfig.test_probe_epochs` (None when there
    are none): what a stage-2 epoch cap would have given, recorded for analysis only."""
    if not cfg.test_probe_epochs:
        return None
    rows = data["index"]["test"]
    x, y = _take(inputs, rows), data["y"][rows]

    def probe(model):
        return {
            protocol: evaluate(model, x, y, data["classes"], protocol, seed=exp.seed)["accuracy"]
            for protocol in exp.protocols
        }

    return probe


def _with_mirror_features(features, pixels, train_rows, exp: Experiment, weights, cut, progress: bool):
    """The training rows' features (`features[train_rows]`) followed by those of the same images mirrored
    left-right (the authors' `RandomFlip("horizontal")`, `TrainConfig.train_views` = 2), in one aligned
    in-memory array, filled chunk by chunk from the stores (no whole first copy held beside it: a
    FER2013 trial had peaked at 18.1 GB that way).

    The mirror images go through the content-keyed feature store like any other image: computed once,
    then read back (float16 at the default cut: 200 KB an image, so a 28,558-image training set adds
    5.7 GB on disk and its two views take 11.4 GB in memory while it trains)."""
    from pattlite.arrays import aligned_empty

    train_rows = np.asarray(train_rows)
    mirrored_pixels = np.ascontiguousarray(_take(pixels, train_rows)[:, :, ::-1])
    mirrored = backbone_features(
        None,
        exp.image_size,
        weights,
        cut_layers=[cut],
        resize_to=exp.resize_to,
        progress=progress,
        pixels=mirrored_pixels,
        engine=exp.extraction_engine,
    )[cut]
    del mirrored_pixels
    n = len(train_rows)
    first = np.asarray(features[train_rows[:1]])
    both = aligned_empty((2 * n,) + tuple(first.shape[1:]), first.dtype)
    step = 2048
    for start in range(0, n, step):
        stop = min(n, start + step)
        both[start:stop] = features[train_rows[start:stop]]
        both[n + start : n + stop] = mirrored[np.arange(start, stop)]
    return both


def run_experiment(
    exp: Experiment, results_dir=None, force: bool = False, root=None, progress: bool = True, tensorboard: bool = False
) -> ExperimentResult:
    """Trains and evaluates one experiment, or loads its result file.

    Args:
        exp: an `Experiment` (see `make_experiment`).
        results_dir: folder holding `experiments/<key>.json` (default `config.results_dir(exp.profile)`);
            a result committed under `docs/results/<profile>/results/` is copied there and reused
            (`adopt_committed`).
        force: retrain even when a result file exists (also replaces a damaged one).
        root: re-binds the experiment to this dataset folder (`bind_root`; the key then names that
            folder's files); default: the root the experiment was made with.
        progress: progress bars and per-epoch lines.
        tensorboard: also write TensorBoard logs (per-epoch CSV logs are always written, see `logs_path`).

    Returns:
        The `pattlite.results.ExperimentResult` (the file's content, with `cached`: loaded rather than
        trained now, and `path`: where the file is).

    Raises:
        DatasetNotFoundError: a real dataset is missing (never replaced by synthetic data).
        DamagedResultError: the result file exists but is not a readable result (without `force`).
        DataChangedError: the dataset's files changed since the experiment was made.
    """
    exp = bind_root(exp, root)
    path = result_path(exp, results_dir)
    if not force:
        adopt_committed(exp, results_dir)
    if path.is_file() and not force:
        return ExperimentResult.read(path, exp.key())
    checkpoints = checkpoint_path(exp, results_dir)
    result, weights = compute_experiment(
        exp,
        root=root,
        progress=progress,
        log_dir=logs_path(exp, results_dir),
        tensorboard=tensorboard,
        checkpoint_dir=checkpoints,
    )
    store_experiment(exp, result, weights, results_dir)
    TrainingCheckpoint(checkpoints).remove()
    return result


def compute_experiment(
    exp: Experiment, root=None, progress: bool = True, log_dir=None, tensorboard: bool = False, checkpoint_dir=None
) -> tuple[ExperimentResult, bytes]:
    """Trains and evaluates one experiment; writes nothing into a results folder.

    The half of `run_experiment` that a remote worker runs (`pattlite.grid`): per-epoch logs go to
    `log_dir` (None: none), training checkpoints to `checkpoint_dir` (None: none; with one, a training
    stopped before resumes from it), everything else comes back.

    Returns:
        (result, weights): the `ExperimentResult` of `run_experiment` (not written yet), and the trained
        weights as the bytes of a .weights.h5 file; `store_experiment` writes both.
    """
    exp = bind_root(exp, root)
    start = time.time()
    data = load_experiment_data(exp, progress=progress)
    weights = experiment_weights(exp, data, progress=progress)
    cfg = dataclasses.replace(exp.train_config(), verbose=bool(progress))
    model, inputs, trained = _build_and_train(exp, cfg, data, weights, progress, log_dir, tensorboard, checkpoint_dir)
    manifest, y, classes = data["manifest"], data["y"], data["classes"]
    test_rows = data["index"]["test"]
    groups = {WHOLE_TEST: test_rows}
    for subset in SUBSETS:
        if subset in manifest.columns:
            rows = test_rows[manifest[subset].to_numpy()[test_rows].astype(bool)]
            if len(rows):
                groups[subset] = rows
    metrics, predictions = {}, {}
    for subset, rows in groups.items():
        x = _take(inputs, rows)
        metrics[subset], predictions[subset] = (
            {},
            {"image_id": manifest["image_id"].to_numpy()[rows].tolist(), "y": y[rows].tolist()},
        )
        for protocol in exp.protocols:
            scores = evaluate(model, x, y[rows], classes, protocol, seed=exp.seed)
            predictions[subset][protocol] = scores.pop("predictions").tolist()
            scores.pop("probabilities")
            metrics[subset][protocol] = scores
    fields = dict(
        key=exp.key(),
        config=exp.to_dict(),
        dataset=exp.dataset,
        source_dataset=manifest.attrs.get("dataset"),
        classes=list(classes),
        synthetic=bool(manifest.attrs.get("synthetic", exp.synthetic)),
        data=manifest.attrs.get("data"),
        stage1=exp.stage1,
        notes=[] if exp.stage1 != "cached" else [CACHED_FLIP_NOTE if cfg.train_views == 2 else CACHED_NOTE],
        weights={"spec": exp.weights, "used": str(weights), "random_init": exp.weights is None},
        split_sizes={s: int(len(r)) for s, r in data["index"].items()},
        metrics=metrics,
        predictions=predictions,
        history=trained.history,
        epochs=trained.epochs,
        trainable_params=trained.trainable_params,
        finetune=trained.finetune,
        wall_time_s={**trained.wall_time_s, "experiment": time.time() - start},
        provenance=_provenance(),
        extraction=None if exp.extraction_engine is None else extraction_identity(exp.extraction_engine),
        test_probe=trained.test_probe,
    )
    return ExperimentResult(**jsonable(fields)), _weights_bytes(model)


def store_experiment(exp: Experiment, result: ExperimentResult, weights: bytes, results_dir=None) -> Path:
    """Writes what `compute_experiment` returned into the results folder, each file atomically; returns
    the result file's path (also set as `result.path`)."""
    # Weights first: a result file on disk always has its weights beside it (Grad-CAM reloads them).
    write_atomic(weights_path(exp, results_dir), weights)
    return result.write(result_path(exp, results_dir))


def run_experiments(
    experiments, results_dir=None, force: bool = False, root=None, progress: bool = False, log=print
) -> list[ExperimentResult]:
    """Runs (or loads) experiments in order, one progress line each: "[3/65] rafdb published seed 0 ... 12.3 s".

    An interruption leaves the finished experiments' files in place; rerunning loads them and resumes at
    the first unfinished one.
    """
    experiments = list(experiments)
    results = []
    for i, exp in enumerate(experiments, 1):
        start = time.time()
        result = run_experiment(exp, results_dir=results_dir, force=force, root=root, progress=progress)
        status = " (cached)" if result.cached else ""
        accuracy = result.test_metrics
        summary = ", ".join(f"{p} {accuracy[p]['accuracy']:.3f}" for p in accuracy)
        log(f"[{i}/{len(experiments)}] {exp.label()} ... {time.time() - start:.1f} s{status}; {summary}")
        results.append(result)
    return results


def collect_results(results_dir) -> pd.DataFrame:
    """All result files of a folder as one table: a row per experiment x subset x protocol (the columns
    of `ExperimentResult.rows`).

    Reads the `<key>.json` files only (never the `.tmp-*` files of an unfinished write); a damaged one
    raises `DamagedResultError` naming it.
    """
    return pd.DataFrame([row for path in result_files(results_dir) for row in ExperimentResult.read(path).rows()])
