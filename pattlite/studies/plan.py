"""The plan: which experiments each study of the paper needs, written once.

The notebooks (`study_experiments`), the report (`notebook_plan`) and `pattlite grid` (`notebook_plan`)
all read the plan from here. Experiments shared between studies (e.g. the published model on RAF-DB)
have the same key, so they train once. `run` trains the missing experiments of a list and returns their
result rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pattlite import config
from pattlite.audit import AUDIT_HEADS
from pattlite.model import KERNEL_CODES
from pattlite.studies.context import BENCHMARKS, IN_THE_WILD, as_profile, in_the_wild

SUBSETS = config.SUBSETS
SUBSET_DATASETS = ("rafdb", "ferplus")            # datasets with RAN challenging-condition lists
TABLE4_VARIANTS = ("baseline", "patch_only", "attention_only", "published")
TABLE5_LAYERS = tuple(config.TABLE5_CUT_LAYERS)
TABLE5_KERNELS = tuple(KERNEL_CODES)
TABLE5_DATASET = "rafdb"
TABLE6_VARIANTS = ("patch_attention", "published")
MAIN_VARIANTS = ("published", "pattlite")
AUDIT_VARIANTS = AUDIT_HEADS


def _seeds(profile, seeds):
    seeds = tuple(profile.seeds) if seeds is None else tuple(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed {seed!r}: expected an integer")
    return tuple(int(s) for s in seeds)


def _folds(profile, dataset):
    """CK+ is cross-validated over the profile's folds; the other datasets have one fixed split."""
    if dataset != "ckplus":
        return (None,)
    folds = profile.ckplus_folds
    return tuple(range(folds)) if isinstance(folds, int) else tuple(folds)


def _plan(profile, datasets, variants, seeds=None, **options):
    from pattlite.experiments import data_identity, make_experiment

    profile = as_profile(profile)
    for dataset in datasets:
        config.check_name("dataset", dataset, BENCHMARKS)
    # The data fingerprint once per dataset, not once per experiment (36,000 files: about 0.2 s).
    data = {dataset: data_identity(profile.source(dataset)) for dataset in datasets}
    return [make_experiment(profile, dataset, variant, seed=seed, fold=fold, data=data[dataset], **options)
            for dataset in datasets for variant in variants
            for fold in _folds(profile, dataset) for seed in _seeds(profile, seeds)]


def table4_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of Table 4 (ablation): baseline, patch_only, attention_only and published on every
    benchmark; CK+ over the profile's folds.

    Args:
        profile: a profile name ("paper", "cpu", "demo", "ci") or a `pattlite.profiles.Profile`.
        seeds: seeds to run (default: the profile's).
        datasets: benchmarks to include (default all four).

    Returns:
        A list of `pattlite.experiments.Experiment`.
    """
    return _plan(profile, datasets, TABLE4_VARIANTS, seeds)


def table5_experiments(profile, seeds=None, layers=None, kernels=TABLE5_KERNELS):
    """Experiments of Table 5: the published head with the one-convolution patch block of each kernel
    code (`pattlite.model.KERNEL_CODES`, our reading of the paper's codes) cut at each layer, on the
    profile's `table5_dataset` (the paper: RAF-DB). `layers` defaults to the profile's `table5_layers`,
    `seeds` to its `table5_seeds` (else its seeds); its `table5_train_limit` caps the training images of
    each grid point."""
    from pattlite.model import KERNEL_CODES

    profile = as_profile(profile)
    layers = profile.table5_layers if layers is None else layers
    if seeds is None and profile.table5_seeds is not None:
        seeds = profile.table5_seeds
    limit = {} if profile.table5_train_limit is None else {"train_limit": profile.table5_train_limit}
    out = []
    for layer in layers:
        if layer not in TABLE5_LAYERS:
            raise ValueError(f"cut layer {layer!r}: Table 5 has layers {TABLE5_LAYERS}")
        for kernel in kernels:
            config.check_name("kernel code", kernel, tuple(KERNEL_CODES))
            out += _plan(profile, (profile.table5_dataset,), ("published",), seeds, cut_layer=layer, kernel=kernel,
                         **limit)
    return out


def table6_experiments(profile, seeds=None, datasets=IN_THE_WILD):
    """Experiments of Table 6 and Figs. 2-5: patch attention against patch extraction (the published
    model) on the in-the-wild datasets."""
    return _plan(profile, datasets, TABLE6_VARIANTS, seeds)


def main_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of Tables 7-11 and Figs. 8-10: the published model and the corrected `pattlite`
    model on every benchmark."""
    return _plan(profile, datasets, MAIN_VARIANTS, seeds)


def audit_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of the batch-composition audit: published, no_mixing and pattlite on every benchmark."""
    return _plan(profile, datasets, AUDIT_VARIANTS, seeds)


STUDIES = {
    "table4": table4_experiments,
    "table5": table5_experiments,
    "table6": table6_experiments,
    "main": main_experiments,
    "audit": audit_experiments,
}


def study_experiments(ctx, study: str) -> list:
    """The experiments a notebook's study trains or loads, for the notebook's context: the one plan
    the notebooks, the report and `pattlite grid` share.

    Args:
        ctx: a `NotebookContext` (its profile, seeds and datasets decide the plan).
        study: a name of `STUDIES` (table4, table5, table6, main, audit).
    """
    config.check_name("study", study, tuple(STUDIES))
    profile = ctx.profile
    if study == "table5":
        return table5_experiments(profile) if profile.table5_dataset in ctx.datasets else []
    if study == "table6":
        return table6_experiments(profile, datasets=in_the_wild(ctx))
    return STUDIES[study](profile, datasets=ctx.datasets)


def gradcam_experiment(ctx, dataset: str | None = None, variant: str = "published"):
    """The experiment whose trained model the Grad-CAM figures show: (dataset, variant), the context's
    first seed, CK+'s first fold. `dataset` defaults to the profile's `gradcam_dataset`."""
    from pattlite.experiments import make_experiment

    dataset = ctx.profile.gradcam_dataset if dataset is None else dataset
    config.check_name("benchmark", dataset, BENCHMARKS)
    fold = _folds(ctx.profile, dataset)[0]
    return make_experiment(ctx.profile, dataset, variant, seed=ctx.seeds[0], fold=fold)


def notebook_plan(ctx, gradcam_dataset: str | None = None, gradcam_variant: str = "published",
                  gradcam: bool = False) -> dict:
    """{study: experiments} of every study of the notebooks, for their context (`study_experiments`);
    with `gradcam` or a `gradcam_dataset`, also {"gradcam": [the experiment of the Grad-CAM figures]}
    (default dataset: the profile's `gradcam_dataset`)."""
    plan = {study: study_experiments(ctx, study) for study in STUDIES}
    dataset = ctx.profile.gradcam_dataset if gradcam_dataset is None else gradcam_dataset
    if (gradcam or gradcam_dataset is not None) and dataset in ctx.datasets:
        plan["gradcam"] = [gradcam_experiment(ctx, dataset, gradcam_variant)]
    return plan


def all_experiments(profile, seeds=None) -> list:
    """Every experiment of every study, each once (studies share experiments)."""
    seen, out = set(), []
    for plan in STUDIES.values():
        for exp in plan(profile, seeds=seeds):
            if exp.key() not in seen:
                seen.add(exp.key())
                out.append(exp)
    return out


def plan_frame(ctx, experiments) -> pd.DataFrame:
    """One row per experiment of a study's plan: dataset, variant, options, fold, seed, and whether its
    result file already exists (`done`: it is read back, not trained). What a notebook shows before it runs."""
    from pattlite.experiments import result_path

    rows = [{"dataset": e.dataset, "variant": e.variant,
             "options": " ".join(f"{k}={v}" for k, v in sorted(e.model_options.items())),
             "fold": e.fold, "seed": e.seed, "done": result_path(e, ctx.results_dir).is_file()}
            for e in experiments]
    frame = pd.DataFrame(rows, columns=["dataset", "variant", "options", "fold", "seed", "done"])
    return frame.astype({"fold": "Int64"})  # folds are integers or missing (one fixed split)


def run(ctx, experiments, require_all: bool = True) -> pd.DataFrame:
    """Train the missing experiments (when `ctx.run_experiments`) and return their result rows.

    Returns:
        The rows of `pattlite.experiments.collect_results` for these experiments only (other result
        files in the folder, e.g. other seeds, are left out).

    Raises:
        ValueError: with `require_all`, when some experiment has no result file (and training was off).
    """
    from pattlite.experiments import collect_results, result_path, run_experiments
    from pattlite.studies.compute import warn_if_no_accelerator

    experiments = list(experiments)
    if ctx.run_experiments and experiments:
        warn_if_no_accelerator(ctx.profile, experiments)
        run_experiments(experiments, results_dir=ctx.results_dir)
    missing = [e for e in experiments if not result_path(e, ctx.results_dir).is_file()]
    if missing and require_all:
        names = "; ".join(e.label() for e in missing[:5])
        raise ValueError(f"{len(missing)} experiment(s) have no result file in {ctx.results_dir}/experiments "
                         f"(e.g. {names}); run with run_experiments=True")
    results = collect_results(ctx.results_dir)
    keys = {e.key() for e in experiments}
    if results.empty:
        return results
    return results[results["key"].isin(keys)].reset_index(drop=True)
