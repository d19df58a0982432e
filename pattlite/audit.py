"""The batch-composition audit: how much of the published model's accuracy comes from its test batches.

The authors' classifier attends across the batch (`pattlite.model.BatchMixingAttention`), and their test
set was grouped by class, so most test batches held a single class. The audit trains three heads with
the authors' stage-1 recipe on the same cached frozen-backbone features (`pattlite.features`):

- `published`: the authors' head, attention across the batch;
- `no_mixing`: the same head with the attention on one token per image (the identity), a control
  trained without batch mixing;
- `pattlite`: the corrected head, self-attention of each image over its own 4 patch tokens;

and evaluates each under the three protocols of `pattlite.evaluate`: `published` (class-grouped test
set, batch 32, as the authors evaluated), `shuffled` (seeded random order, batch 32) and `independent`
(no prediction depends on another test image). If the published number is an artefact of batch
composition, the published head scores high only under the `published` protocol, while `no_mixing`
and `pattlite` give one number under all three.

What this audit is NOT: the full recipe. Stage 1 only (Adam 1e-3, clipnorm 3, balanced class weights,
batch 8, EarlyStopping / ReduceLROnPlateau on validation accuracy), on cached features, so without the
flip/contrast augmentation (impossible on features), with a capped number of epochs and, by default, a
class-stratified 10,000-image training subset. Each head is an ordinary experiment of
`pattlite.experiments` (stage1="cached", stage2=False): its result file lands in the results folder,
with provenance, and a rerun loads it instead of training again.

Example:

```python
from pattlite.audit import run_audit
summary = run_audit("ferplus", root="data/ferplus",
                    weights="mobilenet_1_0_224_imagenet_no_top.weights.h5")
summary["heads"]["published"]["published"], summary["heads"]["published"]["independent"]
```
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pattlite import config
from pattlite.config import PROTOCOLS
from pattlite.profiles import AUDIT, WEIGHTS_FILE_NAME, get_profile, resolve_weights

# The audit's settings are a profile-level record (`pattlite.profiles.AUDIT`); the names below are its fields.
AUDIT_HEADS = AUDIT.heads
AUDIT_DATASETS = config.REAL_DATASETS + ("synthetic",)
SYNTHETIC_SLOT = AUDIT.synthetic_slot
DEFAULT_TRAIN_LIMIT = AUDIT.train_limit
DEFAULT_STAGE1_EPOCHS = AUDIT.stage1_epochs
REAL_PROFILE = AUDIT.real_profile
SYNTHETIC_PROFILE = AUDIT.synthetic_profile
NOTE = (
    "heads trained on cached frozen-backbone features with the authors' stage-1 recipe only: NO "
    "augmentation (the in-model flip/contrast cannot act on features), no stage 2"
)


def check_weights(dataset: str, weights) -> None:
    """The one check that real data come with backbone weights (`pattlite audit --weights`, `weights=`).

    Raises:
        ValueError: `dataset` is a real dataset and `weights` is None (the message names the file to pass).
    """
    if dataset != "synthetic" and weights is None:
        raise ValueError(
            f"pattlite audit --dataset {dataset} needs --weights PATH (weights= in Python): the ImageNet "
            f"MobileNetV1 file {WEIGHTS_FILE_NAME}, or 'imagenet' with internet"
        )


def audit_profile(dataset: str, weights=None, train_limit=None, seeds=(0,), profile=None):
    """The profile the audit's experiments are made from.

    Args:
        dataset: a benchmark name ("ckplus", "rafdb", "fer2013", "ferplus") or "synthetic".
        weights: backbone weights file (or "imagenet"); required for real data. For synthetic data None
            means a seeded random backbone with BatchNorm calibrated on training images.
        train_limit: training images (class-stratified, seeded); None: 10,000 on real data, the
            profile's own limit on synthetic data.
        seeds: training seeds.
        profile: profile name; default "paper" for real data, "ci" for synthetic data. A synthetic
            dataset needs a synthetic profile (ci, demo) and a real one a real profile (paper).

    Returns:
        `(profile, benchmark)`: a `pattlite.profiles.Profile` with stage1="cached" and the given weights,
        limit and seeds, and the benchmark slot the experiments use.

    Raises:
        ValueError: unknown dataset or profile (lists the valid names), a mismatch between them, or no
            weights for real data.
        FileNotFoundError: the weights file does not exist.
    """
    config.check_name("dataset", dataset, AUDIT_DATASETS)
    synthetic = dataset == "synthetic"
    name = profile or (SYNTHETIC_PROFILE if synthetic else REAL_PROFILE)
    base = get_profile(name)
    if synthetic and not base.synthetic:
        raise ValueError(f"--dataset synthetic needs a synthetic profile (ci or demo), not {name!r}")
    if not synthetic and base.synthetic:
        raise ValueError(
            f"profile {name!r} replaces {dataset!r} by a synthetic stand-in; use profile "
            f"'paper' for real data, or --dataset synthetic"
        )
    check_weights(dataset, weights)
    resolve_weights(weights)  # a missing file fails here, before any data is read
    overrides = {"stage1": AUDIT.stage1, "seeds": config.check_seeds(seeds)}
    if weights is not None or not synthetic:
        overrides["weights"] = None if weights is None else str(weights)
    if train_limit is not None:
        if isinstance(train_limit, bool) or not isinstance(train_limit, (int, np.integer)) or train_limit < 1:
            raise ValueError(f"train_limit {train_limit!r}: expected a positive integer")
        overrides["train_limit"] = int(train_limit)
    elif not synthetic:
        overrides["train_limit"] = DEFAULT_TRAIN_LIMIT
    return get_profile(name, **overrides), (SYNTHETIC_SLOT if synthetic else dataset)


def cached_head_experiments(
    dataset: str, weights=None, train_limit=None, seeds=(0,), image_size=None, stage1_epochs=None, profile=None
) -> list:
    """The audit's experiments: each head x seed, stage 1 on cached features, no stage 2.

    Args:
        dataset, weights, train_limit, seeds, profile: as for `audit_profile`.
        image_size: side of the images fed to the model (default: the profile's, 120 for FERPlus and
            FER2013 as the authors stored them).
        stage1_epochs: stage-1 epoch cap (default `DEFAULT_STAGE1_EPOCHS` on real data, the profile's on
            synthetic data).

    Returns:
        A list of `pattlite.experiments.Experiment`, heads in `AUDIT_HEADS` order, seeds inner.
    """
    from pattlite.experiments import make_experiment  # imports Keras: not before the CLI checked its flags

    prof, benchmark = audit_profile(dataset, weights, train_limit, seeds, profile)
    overrides = {"stage2": False}
    if stage1_epochs is None and not prof.synthetic:
        stage1_epochs = DEFAULT_STAGE1_EPOCHS
    if stage1_epochs is not None:
        overrides["stage1_epochs"] = stage1_epochs
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
            raise ValueError(f"image_size {image_size!r}: expected an integer >= 16 (pixels)")
        overrides["image_size"] = int(image_size)
    return [
        make_experiment(prof, benchmark, head, seed=seed, **overrides) for head in AUDIT_HEADS for seed in prof.seeds
    ]


def summarize(experiments, results, dataset: str, seconds: float) -> dict:
    """The audit's summary from its experiments and their `ExperimentResult`s (same order).

    Returns:
        dict with dataset, benchmark_slot, source_dataset, synthetic, seeds, heads (head -> protocol ->
        mean accuracy over seeds, a fraction), per_seed (head -> protocol -> [accuracy per seed]),
        batch_gain (published head: published - independent protocol), epochs_run (head -> [stage-1
        epochs per seed]), train_images, test_images, image_size, stage1_epochs, train_limit, weights,
        note, result_paths, cached (how many results were loaded, not trained) and seconds.
    """
    per_seed = {head: {p: [] for p in PROTOCOLS} for head in AUDIT_HEADS}
    epochs_run = {head: [] for head in AUDIT_HEADS}
    paths = []
    for exp, result in zip(experiments, results):
        for protocol in PROTOCOLS:
            per_seed[exp.variant][protocol].append(float(result.test_metrics[protocol]["accuracy"]))
        epochs_run[exp.variant].append(int(result.epochs["stage1"]))
        # run_experiment reports where it wrote or found the file (a re-bound root changes the key)
        paths.append(result.path)
    heads = {head: {p: float(np.mean(v)) for p, v in by_protocol.items()} for head, by_protocol in per_seed.items()}
    first, first_result = experiments[0], results[0]
    return {
        "dataset": dataset,
        "benchmark_slot": first.dataset,
        "source_dataset": first_result.source_dataset,
        "synthetic": bool(first_result.synthetic),
        "seeds": sorted({exp.seed for exp in experiments}),
        "heads": heads,
        "per_seed": per_seed,
        "batch_gain": heads["published"]["published"] - heads["published"]["independent"],
        "epochs_run": epochs_run,
        "train_images": int(first_result.split_sizes["train"]),
        "test_images": int(first_result.split_sizes["test"]),
        "image_size": first.image_size,
        "stage1_epochs": first.train["stage1_epochs"],
        "train_limit": first.train_limit,
        "weights": first_result.weights,
        "augmentation": False,
        "note": NOTE,
        "result_paths": paths,
        "cached": sum(bool(r.cached) for r in results),
        "seconds": float(seconds),
    }


def run_audit(
    dataset: str,
    root=None,
    weights=None,
    train_limit=None,
    seeds=(0,),
    results_dir=None,
    image_size=None,
    stage1_epochs=None,
    profile=None,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Runs (or loads) the batch-composition audit on one dataset.

    Args:
        dataset: "ferplus", "fer2013", "rafdb", "ckplus" or "synthetic".
        root: the dataset folder (real data; default `$PATTLITE_<NAME>_ROOT`, else data/<name>/).
        weights: backbone weights file for real data (e.g. mobilenet_1_0_224_imagenet_no_top.weights.h5);
            optional for synthetic data (default: seeded random backbone, BatchNorm calibrated).
        train_limit: training images, class-stratified and seeded (default 10,000 on real data).
        seeds: training seeds; the summary averages over them.
        results_dir: the folder holding `experiments/` (default `config.results_dir(<profile>)`).
        image_size, stage1_epochs, profile: see `cached_head_experiments`.
        force: retrain even when result files exist.
        progress: progress bars and per-epoch lines.
        log: called with progress lines (None: silent).

    Returns:
        The summary of `summarize`.

    Raises:
        ValueError: bad names or values (the message lists the valid ones).
        FileNotFoundError: missing weights file or dataset (`DatasetNotFoundError` says where to get it).
    """
    from pattlite.experiments import run_experiments  # imports Keras

    say = log or (lambda *_: None)
    start = time.time()
    experiments = cached_head_experiments(dataset, weights, train_limit, seeds, image_size, stage1_epochs, profile)
    say(
        f"audit of {dataset}: heads {', '.join(AUDIT_HEADS)} x seeds "
        f"{', '.join(str(s) for s in sorted({e.seed for e in experiments}))}; {NOTE}"
    )
    results = run_experiments(experiments, results_dir=results_dir, force=force, root=root, progress=progress, log=say)
    return summarize(experiments, results, dataset, time.time() - start)


def format_table(summary: dict) -> str:
    """The audit as a Markdown table: accuracy (%) of each head under each protocol."""
    seeds = summary["seeds"]
    label = f"mean of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [f"| head ({label}) | " + " | ".join(PROTOCOLS) + " |", "|---|" + "---:|" * len(PROTOCOLS)]
    for head, by_protocol in summary["heads"].items():
        lines.append(f"| {head} | " + " | ".join(f"{100 * by_protocol[p]:.2f}" for p in PROTOCOLS) + " |")
    return "\n".join(lines)


def results_base(results, profile_name: str) -> Path | None:
    """The experiments folder for a results base folder (as `$PATTLITE_RESULTS_DIR`): `<base>/<profile>`."""
    return None if results is None else Path(results).expanduser() / profile_name
