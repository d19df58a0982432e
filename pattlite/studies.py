"""The studies of the paper: which experiments each table needs, and each table and figure, ours beside
the paper's.

Each notebook calls a few functions from here, so the notebooks stay thin:

- set-up: `notebook_context` turns a notebook's papermill parameters into a `NotebookContext` (profile,
  datasets, folders); `run` trains the missing experiments of a list and returns their result rows;
- planning: `table4_experiments(profile)`, `table5_experiments`, `table6_experiments`,
  `main_experiments`, `audit_experiments` list the `pattlite.experiments.Experiment`s a study needs
  (experiments shared between studies, e.g. the published model on RAF-DB, have the same key, so they
  train once);
- assembly: `data_tables` (Tables 1-3, from manifests), `table4` ... `table11` (from the result frame of
  `pattlite.experiments.collect_results`, never from in-memory state), `audit_table`;
- figures: `paper_figure` (Figs. 2-5 and 8-10), `gradcam_samples` + `gradcam_figure` (Figs. 6-7),
  `audit_figure`;
- the report: `report_sections`, `write_report`.

Which protocol fills "ours": the paper's numbers were measured with the authors' evaluation call
(class-grouped test set, batch 32), our `published` protocol. Where that matters (every table with the
published model), the tables show it beside the `independent` protocol (no prediction depends on another
test image), in columns labelled `ours`/`diff`/`verdict` (published protocol) and
`ours_independent`/`diff_independent`/`verdict_independent`.

Example:

```python
from pattlite import studies

ctx = studies.notebook_context("demo")
results = studies.run(ctx, studies.table4_experiments(ctx.profile))   # trains what is missing
studies.table4(results, synthetic=ctx.synthetic)
```
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config, paper, report

# Study contents (the paper's rows and columns).
BENCHMARKS = config.REAL_DATASETS                 # ckplus, rafdb, fer2013, ferplus (the paper's column order)
IN_THE_WILD = ("rafdb", "fer2013", "ferplus")
SUBSETS = ("occlusion", "pose30", "pose45")
SUBSET_DATASETS = ("rafdb", "ferplus")            # datasets with RAN challenging-condition lists
TABLE4_VARIANTS = ("baseline", "patch_only", "attention_only", "published")
TABLE5_LAYERS = (17, 23, 29, 35, 41, 47)
TABLE5_KERNELS = ("NP7", "OP3", "OP5", "P4", "P8")
TABLE5_DATASET = "rafdb"
TABLE6_VARIANTS = ("patch_attention", "published")
MAIN_VARIANTS = ("published", "pattlite")
AUDIT_VARIANTS = ("published", "no_mixing", "pattlite")
PROTOCOLS = ("published", "shuffled", "independent")
WHOLE_TEST = "all"    # the `subset` value of a result row measured on the whole test split

# Our rows in the comparison tables (Tables 7-11) and the accuracy-vs-params figures.
OUR_ROWS = (
    # (row label, variant, protocol)
    ("Ours: PAtt-Lite as coded, published protocol", "published", "published"),
    ("Ours: PAtt-Lite as coded, independent protocol", "published", "independent"),
    ("Ours: corrected PAtt-Lite (per-image attention)", "pattlite", "independent"),
)

# CPU training throughput behind the estimate of `warn_if_no_accelerator`, as measured for this project
# on 2 CPU cores (224x224 inputs, batch 8): backbone frozen, and the paper's 59 RAF-DB layers unfrozen.
CPU_IMAGES_PER_SECOND_FROZEN = 135.0
CPU_IMAGES_PER_SECOND_UNFROZEN = 27.0


# ---------------------------------------------------------------------------------------------------
# Notebook set-up: papermill parameters -> one context


@dataclasses.dataclass(frozen=True)
class NotebookContext:
    """What every notebook needs, resolved from its `parameters` cell.

    Attributes:
        profile: the `pattlite.profiles.Profile` (with the notebook's overrides).
        datasets: the benchmarks to run (a subset of ckplus, rafdb, fer2013, ferplus).
        results_dir: experiment results (`<results_dir>/experiments/<key>.json`).
        tables_dir, figures_dir, reports_dir: where tables, figures and the report are written.
        run_experiments: train what is missing (False: only assemble from existing result files).
    """

    profile: object
    datasets: tuple
    results_dir: Path
    tables_dir: Path
    figures_dir: Path
    reports_dir: Path
    run_experiments: bool

    @property
    def synthetic(self) -> bool:
        return bool(self.profile.synthetic)

    @property
    def seeds(self) -> tuple:
        return tuple(self.profile.seeds)


def parse_bool(value, name: str = "value") -> bool:
    """A papermill/CLI parameter as a bool: True/False, 1/0, "true"/"false", "yes"/"no"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"parameter {name}={value!r}: expected true or false")


def parse_list(value, name: str = "value", item=str) -> tuple | None:
    """A papermill/CLI parameter as a tuple: None, a list, or a comma-separated string ("0,1")."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(item(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name}={value!r}: expected a comma-separated list of "
                         f"{item.__name__} values") from None


def _optional_path(value):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return Path(value).expanduser()


def notebook_context(profile: str = "demo", results_dir=None, tables_dir=None, figures_dir=None,
                     reports_dir=None, seeds=None, datasets=None, weights=None, dataset_roots=None,
                     run_experiments=True, **profile_overrides) -> NotebookContext:
    """Resolve a notebook's parameters (strings from `./run_all.sh -p NAME=VALUE` are accepted).

    Args:
        profile: "paper", "demo" or "ci".
        results_dir: default `config.results_dir(profile)`; tables go to `<results_dir>/tables`.
        tables_dir, figures_dir, reports_dir: defaults `<results_dir>/tables`, `config.figures_dir(profile)`,
            `config.reports_dir(profile)`.
        seeds: e.g. "0,1" or [0, 1]; default the profile's.
        datasets: benchmarks to run, e.g. "rafdb,ferplus"; default all four.
        weights: backbone weights (a `.weights.h5` path or "imagenet"); default the profile's.
        dataset_roots: {benchmark: folder} for the real datasets; a None value keeps the default
            (`$PATTLITE_<NAME>_ROOT`, else `data/<name>/`). Set as those environment variables, which
            every reader consults.
        run_experiments: train missing experiments (False: assemble from existing result files only).
        **profile_overrides: other `Profile` fields (e.g. stage1_epochs=5); None values are ignored.
    """
    from pattlite.profiles import get_profile

    overrides = {k: v for k, v in profile_overrides.items() if v is not None}
    parsed_seeds = parse_list(seeds, "seeds", int)
    if parsed_seeds is not None:
        overrides["seeds"] = parsed_seeds
    if weights is not None and str(weights).strip().lower() not in ("", "none"):
        overrides["weights"] = str(weights)
    prof = get_profile(profile, **overrides)
    chosen = parse_list(datasets, "datasets") or BENCHMARKS
    for name in chosen:
        config.check_name("benchmark", name, BENCHMARKS)
    for name, root in (dataset_roots or {}).items():
        config.check_name("benchmark", name, BENCHMARKS)
        root = _optional_path(root)
        if root is not None:
            os.environ[config.dataset_root_env_var(name)] = str(root)
    results = _optional_path(results_dir) or config.results_dir(prof.name)
    ctx = NotebookContext(
        profile=prof,
        datasets=tuple(chosen),
        results_dir=results,
        tables_dir=_optional_path(tables_dir) or results / "tables",
        figures_dir=_optional_path(figures_dir) or config.figures_dir(prof.name),
        reports_dir=_optional_path(reports_dir) or config.reports_dir(prof.name),
        run_experiments=parse_bool(run_experiments, "run_experiments"),
    )
    if ctx.run_experiments:
        warn_if_no_accelerator(prof)  # the paper profile on a CPU: says how long it would take
    return ctx


def benchmark_manifests(profile, datasets=BENCHMARKS) -> dict:
    """{benchmark: manifest} of a profile: the real datasets, or their synthetic stand-ins."""
    from pattlite import data

    profile = _profile(profile)
    out = {}
    for name in datasets:
        source = profile.source(name)
        manifest = data.load_manifest(source["dataset"], **source["options"])
        if source["dataset"] == "synthetic":
            # The stand-in's subset flags are its own ground truth (there are no RAN lists to read).
            manifest.attrs["subsets"] = "synthetic flags"
        out[name] = manifest
    return out


# ---------------------------------------------------------------------------------------------------
# Planning


def _profile(profile):
    from pattlite.profiles import get_profile

    return get_profile(profile) if isinstance(profile, str) else profile


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

    profile = _profile(profile)
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
        profile: a profile name ("paper", "demo", "ci") or a `pattlite.profiles.Profile`.
        seeds: seeds to run (default: the profile's).
        datasets: benchmarks to include (default all four).

    Returns:
        A list of `pattlite.experiments.Experiment`.
    """
    return _plan(profile, datasets, TABLE4_VARIANTS, seeds)


def table5_experiments(profile, seeds=None, layers=None, kernels=TABLE5_KERNELS):
    """Experiments of Table 5: the published head with the one-convolution patch block of each kernel
    code (`pattlite.model.KERNEL_CODES`, our reading of the paper's codes) cut at each layer, on RAF-DB.
    `layers` defaults to the profile's `table5_layers`; the profile's `table5_train_limit` caps the
    training images of each grid point."""
    from pattlite.model import KERNEL_CODES

    profile = _profile(profile)
    layers = profile.table5_layers if layers is None else layers
    limit = {} if profile.table5_train_limit is None else {"train_limit": profile.table5_train_limit}
    out = []
    for layer in layers:
        if layer not in TABLE5_LAYERS:
            raise ValueError(f"cut layer {layer!r}: Table 5 has layers {TABLE5_LAYERS}")
        for kernel in kernels:
            config.check_name("kernel code", kernel, tuple(KERNEL_CODES))
            out += _plan(profile, (TABLE5_DATASET,), ("published",), seeds, cut_layer=layer, kernel=kernel,
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
        return table5_experiments(profile) if TABLE5_DATASET in ctx.datasets else []
    if study == "table6":
        return table6_experiments(profile, datasets=in_the_wild(ctx))
    return STUDIES[study](profile, datasets=ctx.datasets)


def gradcam_experiment(ctx, dataset: str = "rafdb", variant: str = "published"):
    """The experiment whose trained model the Grad-CAM figures show: (dataset, variant), the context's
    first seed, CK+'s first fold."""
    from pattlite.experiments import make_experiment

    config.check_name("benchmark", dataset, BENCHMARKS)
    fold = _folds(ctx.profile, dataset)[0]
    return make_experiment(ctx.profile, dataset, variant, seed=ctx.seeds[0], fold=fold)


def notebook_plan(ctx, gradcam_dataset: str | None = None, gradcam_variant: str = "published") -> dict:
    """{study: experiments} of every study of the notebooks, for their context (`study_experiments`);
    with `gradcam_dataset`, also {"gradcam": [the experiment of the Grad-CAM figures]}."""
    plan = {study: study_experiments(ctx, study) for study in STUDIES}
    if gradcam_dataset is not None:
        plan["gradcam"] = [gradcam_experiment(ctx, gradcam_dataset, gradcam_variant)]
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


# ---------------------------------------------------------------------------------------------------
# Compute estimate (the paper profile on a machine without an accelerator)


def paper_compute_estimate(profile="paper", experiments=None) -> dict:
    """Rough CPU time of a profile's trainings, from throughput measured on 2 CPU cores at 224x224.

    Every epoch up to the profile's caps is counted (early stopping usually ends sooner, so this is an
    upper bound): stage 1 at `CPU_IMAGES_PER_SECOND_FROZEN` images/s; stage 2 at the same rate when no
    backbone weight is trainable (fine-tuning "as_coded") or at `CPU_IMAGES_PER_SECOND_UNFROZEN` with the
    paper's layers unfrozen (fine-tuning "paper"). Training-set sizes are the paper's Table 3 (CK+:
    about 1,000 images per fold).

    Args:
        profile: a profile name or `Profile`.
        experiments: the experiments to count (default `all_experiments(profile)`).

    Returns:
        {"experiments", "train_images", "hours_per_epoch", "stage1_hours", "stage2_hours", "total_hours"}.
    """
    profile = _profile(profile)
    exps = all_experiments(profile) if experiments is None else list(experiments)
    published_train = paper.paper_table(3).query("split == 'train'").set_index("dataset")["value"]
    train_images = {**published_train.to_dict(), "ckplus": 1000.0}
    stage2_rate = CPU_IMAGES_PER_SECOND_UNFROZEN if profile.finetune == "paper" else CPU_IMAGES_PER_SECOND_FROZEN
    # Stage 2 starts at epoch index history.epoch[-5] of stage 1 and runs to `stage2_epochs`.
    stage2_epochs = max(profile.stage2_epochs - max(profile.stage1_epochs - 5, 0), 0)
    if profile.stage2_max_epochs is not None:
        stage2_epochs = min(stage2_epochs, profile.stage2_max_epochs)
    images = 0.0
    for exp in exps:
        n = float(train_images[exp.dataset])
        images += min(n, float(profile.train_limit)) if profile.train_limit else n
    stage1 = images * profile.stage1_epochs / CPU_IMAGES_PER_SECOND_FROZEN
    stage2 = images * stage2_epochs / stage2_rate
    return {"experiments": len(exps), "train_images": int(images),
            "hours_per_epoch": images / CPU_IMAGES_PER_SECOND_FROZEN / 3600,
            "stage1_hours": stage1 / 3600, "stage2_hours": stage2 / 3600, "total_hours": (stage1 + stage2) / 3600}


def accelerator_names() -> list[str]:
    """GPUs/TPUs the Keras backend sees (empty on CPU)."""
    import keras

    from pattlite.report import _accelerators

    return _accelerators(keras.config.backend())


def warn_if_no_accelerator(profile, experiments=None) -> str | None:
    """Warn (and return the message) when a non-synthetic profile is about to train on CPU only.

    The message gives the time estimate of `paper_compute_estimate`. Returns None when a GPU/TPU is
    present or the profile is synthetic (demo, ci: sized for a CPU).
    """
    profile = _profile(profile)
    if profile.synthetic:
        return None
    devices = accelerator_names()
    if devices:
        return None
    est = paper_compute_estimate(profile, experiments)
    message = (f"profile {profile.name!r} on CPU only (no GPU/TPU visible to Keras): {est['experiments']} "
               f"experiments, about {est['hours_per_epoch']:.1f} h per epoch over all of them at "
               f"{CPU_IMAGES_PER_SECOND_FROZEN:.0f} images/s, up to {est['total_hours']:.0f} h at the epoch caps "
               f"(stage 1 {est['stage1_hours']:.0f} h, stage 2 {est['stage2_hours']:.0f} h; measured on 2 CPU "
               f"cores at 224x224). Use a GPU (Kaggle, Colab: docs/notebooks.md) or run fewer experiments.")
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message


# ---------------------------------------------------------------------------------------------------
# Running a study from a notebook


def in_the_wild(ctx) -> tuple:
    """The context's datasets among RAF-DB, FER2013 and FERPlus."""
    return tuple(d for d in IN_THE_WILD if d in ctx.datasets)


def context_summary(ctx) -> str:
    """A few Markdown lines saying what a notebook runs on (profile, data, folders, seeds)."""
    p = ctx.profile
    lines = [f"- profile **{p.name}**: {p.description}",
             f"- benchmarks: {', '.join(ctx.datasets)}; seeds: {', '.join(map(str, ctx.seeds))}"
             + (f"; CK+ folds: {', '.join(map(str, p.ckplus_folds))}" if "ckplus" in ctx.datasets else ""),
             f"- backbone weights: {p.weights if p.weights is not None else 'random (seeded), BatchNorm calibrated'}"
             f"; stage 1: {p.stage1}; fine-tuning: {p.finetune}",
             f"- results: `{ctx.results_dir}`; tables: `{ctx.tables_dir}`; figures: `{ctx.figures_dir}`"]
    if ctx.synthetic:
        lines.insert(0, f"> **{report.SYNTHETIC_BANNER}**: every benchmark is a synthetic stand-in.\n")
    return "\n".join(lines)


def run(ctx, experiments, require_all: bool = True) -> pd.DataFrame:
    """Train the missing experiments (when `ctx.run_experiments`) and return their result rows.

    Returns:
        The rows of `pattlite.experiments.collect_results` for these experiments only (other result
        files in the folder, e.g. other seeds, are left out).

    Raises:
        ValueError: with `require_all`, when some experiment has no result file (and training was off).
    """
    from pattlite.experiments import collect_results, result_path, run_experiments

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


# ---------------------------------------------------------------------------------------------------
# Result frames -> "ours"

MODEL_OPTION_COLUMNS = ("opt_cut_layer", "opt_kernel", "opt_attention", "opt_augment")


def _require(results: pd.DataFrame, columns, what="results"):
    missing = [c for c in columns if c not in results.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(results.columns)} "
                         "(expected the frame of pattlite.experiments.collect_results)")


def standard_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Results of variants at their default options (Table 5's cut/kernel grid points left out)."""
    mask = pd.Series(True, index=results.index)
    for column in MODEL_OPTION_COLUMNS:
        if column in results.columns:
            mask &= results[column].isna()
    return results[mask]


def ours_accuracy(results: pd.DataFrame, protocol: str, subset: str = WHOLE_TEST,
                  by=("dataset", "variant"), value: str = "accuracy", standard: bool = True) -> pd.DataFrame:
    """Our accuracy (%) per key from `collect_results` rows: the mean over seeds and CK+ folds.

    Args:
        results: the frame of `pattlite.experiments.collect_results` (or `run`).
        protocol: "published", "shuffled" or "independent".
        subset: "all" (the whole test split) or a challenging subset ("occlusion", "pose30", "pose45").
        by: key columns to group on.
        value: the metric column (`accuracy`, `mean_class_accuracy`, `acc_<class>`; fractions).
        standard: keep only variants at their default options (see `standard_rows`).

    Returns:
        Columns `by`, `value` (percent) and `runs` (results averaged).
    """
    config.check_name("protocol", protocol, PROTOCOLS)
    by = list(by)
    if results.empty:
        return pd.DataFrame({**{c: pd.Series(dtype=object) for c in by},
                             "value": pd.Series(dtype=float), "runs": pd.Series(dtype=int)})
    _require(results, by + ["protocol", "subset", value])
    rows = standard_rows(results) if standard else results
    rows = rows[(rows["protocol"] == protocol) & (rows["subset"] == subset)]
    grouped = rows.groupby(by, dropna=False, sort=False)[value]
    out = grouped.mean().rename("value").reset_index()
    out["runs"] = grouped.count().to_numpy().astype(int)
    out["value"] = 100.0 * pd.to_numeric(out["value"], errors="raise").astype(float)
    return out


def _with_protocols(paper_df, results, on, subset=WHOLE_TEST, synthetic=False, standard=True):
    """compare() under the published protocol, with the independent protocol beside it."""
    ours_pub = ours_accuracy(results, "published", subset, on, standard=standard)
    table = report.compare(paper_df, ours_pub, on=on, synthetic=synthetic)
    table = table.merge(ours_pub[on + ["runs"]], on=on, how="left")
    table["runs"] = table["runs"].fillna(0).astype(int)
    ours_ind = ours_accuracy(results, "independent", subset, on, standard=standard)
    ind = report.compare(paper_df, ours_ind, on=on, synthetic=synthetic)[on + ["ours", "diff", "verdict"]]
    ind = ind.rename(columns={"ours": "ours_independent", "diff": "diff_independent",
                              "verdict": "verdict_independent"})
    return table.merge(ind, on=on, how="left")


_DROP = ("table", "row_group", "column_group", "quantity", "unit", "tolerance", "ref", "params",
         "params_text", "attention_classifier", "patch_extraction")


def _finish(df: pd.DataFrame, n, synthetic: bool, drop=_DROP, caption=None) -> pd.DataFrame:
    out = df[[c for c in df.columns if c not in drop]].reset_index(drop=True)
    out.attrs = {"synthetic": bool(synthetic), "table": n,
                 "caption": caption or (paper.table_caption(n) if isinstance(n, int) else str(n))}
    return out


# ---------------------------------------------------------------------------------------------------
# Tables 1-3 (data)


def data_tables(manifests: dict, synthetic: bool) -> dict:
    """Tables 1-3 from manifests ({benchmark: manifest}, see `benchmark_manifests`), with verdicts.

    Counts must match exactly (`report.COUNT_TOLERANCE`); for synthetic stand-ins every verdict is
    "not comparable".

    Returns:
        {1: DataFrame, 2: DataFrame, 3: DataFrame}, columns dataset, key(s), paper, ours, diff, verdict.
    """
    from pattlite import data

    built = {1: data.table1(manifests), 2: data.table2(manifests), 3: data.table3(manifests)}
    out = {}
    for n, df in built.items():
        df = df.copy()
        df["verdict"] = [report.verdict(None if pd.isna(p) else float(p), None if pd.isna(o) else float(o),
                                        report.COUNT_TOLERANCE, comparable=not synthetic)
                         for p, o in zip(df["paper"], df["ours"])]
        out[n] = _finish(df, n, synthetic, drop=())
    return out


# ---------------------------------------------------------------------------------------------------
# Tables 4-6 (studies)


def table4(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 4 (ablation): the paper's number, ours (published protocol) and ours (independent protocol)."""
    table = _with_protocols(paper.paper_table(4), results, ["variant", "dataset"], synthetic=synthetic)
    return _finish(table, 4, synthetic)


def table5(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 5 (cut layer x kernel code, RAF-DB): the paper's number and ours (both protocols)."""
    pub = paper.paper_table(5)
    pub["layer"] = pub["layer"].astype(int)
    if results.empty or not {"opt_cut_layer", "opt_kernel"} <= set(results.columns):
        rows = pd.DataFrame(columns=["layer", "kernel", "protocol", "subset", "accuracy"])
    else:
        rows = results[(results["dataset"] == TABLE5_DATASET) & results["opt_kernel"].notna()
                       & results["opt_cut_layer"].notna()].copy()
        rows["layer"] = rows["opt_cut_layer"].astype(int)
        rows["kernel"] = rows["opt_kernel"].astype(str)
    table = _with_protocols(pub, rows, ["layer", "kernel"], synthetic=synthetic, standard=False)
    return _finish(table, 5, synthetic)


def table6(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 6 (patch attention vs patch extraction): the paper's number and ours (both protocols)."""
    table = _with_protocols(paper.paper_table(6), results, ["variant", "dataset"], synthetic=synthetic)
    return _finish(table, 6, synthetic)


# ---------------------------------------------------------------------------------------------------
# Tables 7-11 (comparison with the state of the art)


@functools.lru_cache(maxsize=None)
def model_param_count(variant: str, num_classes: int) -> int:
    """Total parameters of `variant` (backbone to its cut + head), as the paper counts "# Params"."""
    from pattlite.model import build_model

    return int(build_model(variant, num_classes, weights=None).count_params())


def _params_text(variant: str, dataset: str) -> str:
    return f"{model_param_count(variant, len(config.DATASET_CLASSES[dataset])) / 1e6:.2f}M"


def _comparison(n: int, results: pd.DataFrame, keys, synthetic: bool, ours_for) -> pd.DataFrame:
    """The paper's Table `n` (every method it lists) followed by our rows (`OUR_ROWS`).

    Other methods keep their published value in `paper` with `ours`, `diff` and `verdict` empty; each
    of our rows holds PAtt-Lite's published number in `paper` and ours beside it.
    """
    pub = paper.paper_table(n)
    keys = list(keys)
    has_params = pub["params_text"].notna().any()
    methods = pub.rename(columns={"value": "paper", "row": "method_label"})
    methods = methods.assign(ours=np.nan, diff=np.nan, verdict="")
    columns = ["method_label"] + keys + (["params_text"] if has_params else []) + ["paper", "ours", "diff",
                                                                                  "verdict"]
    parts = [methods[columns]]
    pattlite_pub = pub[pub["method"] == "PAtt-Lite"]
    for label, variant, protocol in OUR_ROWS:
        ours = ours_for(variant, protocol)
        compared = report.compare(pattlite_pub, ours, on=keys, synthetic=synthetic)
        compared = compared.assign(method_label=label)
        if has_params:
            compared["params_text"] = [_params_text(variant, d) for d in compared["dataset"]]
        parts.append(compared[columns])
    table = pd.concat(parts, ignore_index=True).rename(columns={"method_label": "method",
                                                                "params_text": "params"})
    return _finish(table, n, synthetic, drop=())


def _whole_test(results):
    def ours_for(variant, protocol):
        ours = ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"])
        return ours[ours["variant"] == variant]
    return ours_for


def table7(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 7 (CK+, mean over folds): every method the paper lists, then our rows."""
    return _comparison(7, results, ["dataset"], synthetic, _whole_test(results))


def table8(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 8 (RAF-DB, FERPlus, with # Params): every method the paper lists, then our rows."""
    return _comparison(8, results, ["dataset"], synthetic, _whole_test(results))


def table9(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 9 (RAF-DB per-class accuracy and their average): every method listed, then our rows.

    The paper's "Average" is the mean of the per-class accuracies (our `mean_class_accuracy`).
    """
    def ours_for(variant, protocol):
        parts = []
        for name in config.DATASET_CLASSES["rafdb"]:
            if f"acc_{name}" in results.columns:
                part = ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"], f"acc_{name}")
                parts.append(part.assign(**{"class": name}))
        part = ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"], "mean_class_accuracy")
        parts.append(part.assign(**{"class": "average"}))
        ours = pd.concat(parts, ignore_index=True)
        return ours[(ours["variant"] == variant) & (ours["dataset"] == "rafdb")]

    return _comparison(9, results, ["dataset", "class"], synthetic, ours_for)


def table10(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 10 (FER2013): every method the paper lists, then our rows."""
    return _comparison(10, results, ["dataset"], synthetic, _whole_test(results))


def table11(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table 11 (occlusion, pose > 30, pose > 45 of RAF-DB and FERPlus): every method, then our rows."""
    def ours_for(variant, protocol):
        parts = []
        for subset in SUBSETS:
            part = ours_accuracy(results, protocol, subset, ["dataset", "variant"])
            parts.append(part[part["variant"] == variant].assign(subset=subset))
        return pd.concat(parts, ignore_index=True)

    return _comparison(11, results, ["dataset", "subset"], synthetic, ours_for)


TABLES = {4: table4, 5: table5, 6: table6, 7: table7, 8: table8, 9: table9, 10: table10, 11: table11}


def table(n: int, results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Table `n` (4-11), ours beside the paper; Tables 1-3 come from `data_tables`."""
    if n not in TABLES:
        raise ValueError(f"table {n!r}: studies assembles Tables {min(TABLES)}-{max(TABLES)} from results; "
                         "Tables 1-3 come from data_tables(manifests, synthetic)")
    return TABLES[n](results, synthetic)


def save(df: pd.DataFrame, n_or_name, out_dir, synthetic: bool) -> dict:
    """Write a table with `report.save_table` as `table<N>` (or the name given): CSV, Markdown, LaTeX."""
    name = f"table{n_or_name}" if isinstance(n_or_name, int) else str(n_or_name)
    caption = df.attrs.get("caption") or name
    return report.save_table(df, name, out_dir, caption, synthetic=synthetic)


# ---------------------------------------------------------------------------------------------------
# The batch-composition audit


def audit_table(results: pd.DataFrame, synthetic: bool = False) -> pd.DataFrame:
    """Accuracy (%) of published, no_mixing and pattlite under every protocol, one row per benchmark.

    Columns `<variant> / <protocol>`, `batch_gain` (published model: published protocol minus
    independent protocol, the accuracy that comes from which test images share a batch) and `paper`
    (Table 4's published number).
    """
    parts = [ours_accuracy(results, p, WHOLE_TEST, ["dataset", "variant"]).assign(protocol=p) for p in PROTOCOLS]
    long = pd.concat(parts, ignore_index=True)
    long = long[long["variant"].isin(AUDIT_VARIANTS)]
    if long.empty:
        raise ValueError("no audit results (variants published, no_mixing, pattlite) among the results")
    wide = long.pivot_table(index="dataset", columns=["variant", "protocol"], values="value", aggfunc="mean")
    wide.columns = [f"{v} / {p}" for v, p in wide.columns]
    wide = wide[[f"{v} / {p}" for v in AUDIT_VARIANTS for p in PROTOCOLS if f"{v} / {p}" in wide.columns]]
    if {"published / published", "published / independent"} <= set(wide.columns):
        wide["batch_gain"] = wide["published / published"] - wide["published / independent"]
    published = paper.paper_table(4).query("variant == 'published'").set_index("dataset")["value"]
    wide.insert(0, "paper", published.reindex(wide.index))
    wide = wide.reindex([d for d in BENCHMARKS if d in wide.index]).reset_index()
    return _finish(wide, "audit", synthetic, drop=(), caption=AUDIT_CAPTION)


AUDIT_CAPTION = ("Audit. Accuracy (%) of the published model under each evaluation protocol (class-grouped "
                 "batches of 32, shuffled batches, each image alone), with the no-mixing control and the "
                 "corrected per-image attention model.")


def audit_findings(audit: pd.DataFrame, synthetic: bool = False) -> str:
    """The audit's findings as Markdown, one bullet per benchmark, numbers from `audit`."""
    lines = []
    if synthetic:
        lines.append(f"> **{report.SYNTHETIC_BANNER}**: these numbers show the mechanism on stand-in data, "
                     "not the size of the effect on the paper's datasets.\n")
    for row in audit.to_dict("records"):
        pub, ind = row.get("published / published"), row.get("published / independent")
        if not (is_finite(pub) and is_finite(ind)):
            lines.append(f"- {row['dataset']}: no complete result yet.")
            continue
        text = (f"- **{row['dataset']}**: the published model scores {pub:.2f}% on class-grouped batches and "
                f"{ind:.2f}% with each image alone: {pub - ind:+.2f} points come from batch composition")
        if is_finite(row.get("published / shuffled")):
            text += f" (shuffled batches: {row['published / shuffled']:.2f}%)"
        if is_finite(row.get("paper")):
            text += f"; the paper reports {row['paper']:.2f}%"
        if is_finite(row.get("pattlite / independent")):
            text += f". The corrected model scores {row['pattlite / independent']:.2f}% with no batch dependence"
        lines.append(text + ".")
    lines.append("\nA model whose predictions do not depend on the batch scores the same under every "
                 "protocol (`no_mixing`, `pattlite` rows); a difference between the published model's "
                 "columns is entirely due to which other images share its batches.")
    return "\n".join(lines)


def audit_figure(results: pd.DataFrame, ctx=None, synthetic: bool | None = None):
    """Bar chart: each benchmark's accuracy per variant and protocol (saved as `audit` when ctx is given)."""
    import matplotlib.pyplot as plt

    synthetic = ctx.synthetic if synthetic is None and ctx is not None else bool(synthetic)
    audit = audit_table(results, synthetic)
    columns = [c for c in audit.columns if " / " in c]
    fig, ax = plt.subplots(figsize=(3.0 + 2.2 * len(audit), 4.4))
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(audit))
    for i, column in enumerate(columns):
        ax.bar(x + i * width - 0.4 + width / 2, audit[column], width, label=column)
    ax.scatter(x, audit["paper"], marker="*", s=120, color="black", zorder=5, label="paper (Table 4)")
    ax.set_xticks(x, audit["dataset"])
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Audit: accuracy by evaluation protocol")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if ctx is not None:
        report.save_figure(fig, "audit", ctx.figures_dir, synthetic=synthetic)
    return fig


# ---------------------------------------------------------------------------------------------------
# Figures


def load_results_files(results: pd.DataFrame, results_dir, **keys) -> list[dict]:
    """The result files (parsed JSON) of the experiments in `results` that match `keys` (default options)."""
    _require(results, ["key"] + list(keys))
    rows = standard_rows(results)
    mask = pd.Series(True, index=rows.index)
    for name, wanted in keys.items():
        mask &= rows[name] == wanted
    out = []
    for key in dict.fromkeys(rows.loc[mask, "key"]):
        with open(Path(results_dir) / "experiments" / f"{key}.json", encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def summed_confusion(result_files, protocol: str, subset: str = WHOLE_TEST):
    """Confusion matrix (counts, rows = true class) summed over result files, and the class names."""
    total, classes = None, None
    for result in result_files:
        metrics = result["metrics"].get(subset, {}).get(protocol)
        if metrics is None:
            continue
        cm = np.asarray(metrics["confusion_matrix"], dtype=float)
        total = cm if total is None else total + cm
        classes = result["classes"]
    return total, classes


def confusion_figure(results: pd.DataFrame, results_dir, panels, variant: str, protocol: str = "published",
                     title: str = ""):
    """A row of confusion matrices like the paper's Figs. 2-5 and 8.

    Args:
        panels: (dataset, subset) pairs, subset "all" or a challenging subset.
        variant: the model.
        protocol: the evaluation protocol (the paper's figures: "published").

    Returns:
        The matplotlib Figure; a panel without a result says so.
    """
    import matplotlib.pyplot as plt

    panels = list(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False)
    names = {"all": "test set", "occlusion": "occlusion", "pose30": "pose > 30", "pose45": "pose > 45"}
    for ax, (dataset, subset) in zip(axes[0], panels):
        files = load_results_files(results, results_dir, dataset=dataset, variant=variant)
        cm, classes = summed_confusion(files, protocol, subset)
        label = f"{dataset}, {names.get(subset, subset)}"
        if cm is None:
            ax.text(0.5, 0.5, f"no result for {variant}\n{label}", ha="center", va="center")
            ax.axis("off")
            continue
        report.plot_confusion_matrix(cm, classes, title=f"{label} (n = {int(cm.sum())})", ax=ax)
    if title:
        fig.suptitle(title, y=1.0, va="bottom")  # above a synthetic banner
    fig.tight_layout()
    return fig


def accuracy_vs_params_figure(figure: int, results: pd.DataFrame, title: str = ""):
    """Fig. 9 (RAF-DB) or 10 (FERPlus): the paper's methods and PAtt-Lite point, plus our rows."""
    import matplotlib.pyplot as plt

    info = paper.load_results()["figures"].get(str(figure))
    if info is None or info["kind"] != "accuracy_vs_params":
        raise ValueError(f"figure {figure!r}: the accuracy-vs-params figures are 9 and 10")
    dataset = info["dataset"]
    ours = []
    for label, variant, protocol in OUR_ROWS:
        acc = ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"])
        acc = acc[(acc["dataset"] == dataset) & (acc["variant"] == variant)]
        if acc.empty:
            continue
        ours.append({"method": label.replace("Ours: ", "ours: "), "accuracy": float(acc["value"].iloc[0]),
                     "params": float(model_param_count(variant, len(config.DATASET_CLASSES[dataset]))),
                     "params_text": _params_text(variant, dataset), "is_pattlite": False})
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    ours_frame = pd.DataFrame(ours, columns=["method", "accuracy", "params", "params_text", "is_pattlite"])
    report.plot_accuracy_vs_params(paper.figure_points(figure), ours_frame, title or figure_caption(figure), ax=ax)
    fig.tight_layout()
    return fig


def figure_caption(figure: int) -> str:
    """ "Figure N. <the paper's caption>" (Figures 2-10)."""
    if figure in GRADCAM_CAPTIONS:
        return f"Figure {figure}. {GRADCAM_CAPTIONS[figure]}"
    info = paper.load_results()["figures"].get(str(figure))
    if info is None:
        raise ValueError(f"figure {figure!r}: the replicated figures are 2-10")
    return f"Figure {figure}. {info['caption']}"


GRADCAM_CAPTIONS = {
    6: "Grad-CAM of PAtt-Lite on all seven classes of RAF-DB. First row: test images; second row: their "
       "Grad-CAM maps.",
    7: "Examples of true and false predictions on RAF-DB and their activation maps (ground truth in "
       "black; true predictions in green, false in red).",
}
FIGURES = (2, 3, 4, 5, 6, 7, 8, 9, 10)


def paper_figure(figure: int, results: pd.DataFrame, ctx, protocol: str = "published"):
    """Draw Figure 2, 3, 4, 5, 8, 9 or 10 from results and save it (PNG, PDF) as `figure<N>` under
    `ctx.figures_dir`, with the synthetic banner in demo/ci. Returns the Figure, or None when its
    dataset is not among `ctx.datasets`."""
    import matplotlib.pyplot as plt

    info = paper.load_results()["figures"].get(str(figure))
    if info is None:
        raise ValueError(f"figure {figure!r}: drawn from results are Figures "
                         f"{', '.join(paper.load_results()['figures'])}; 6 and 7 are Grad-CAM (gradcam_figure)")
    if info["kind"] == "confusion_matrix":
        datasets = [d for d in info.get("datasets", [info.get("dataset")]) if d in ctx.datasets]
        if not datasets:
            return None
        subsets = info.get("subsets") or [WHOLE_TEST]
        panels = [(d, s) for d in datasets for s in subsets]
        fig = confusion_figure(results, ctx.results_dir, panels, info["variant"], protocol,
                               title=f"{figure_caption(figure)} ({info['variant']} model, {protocol} protocol)")
    else:
        if info["dataset"] not in ctx.datasets:
            return None
        fig = accuracy_vs_params_figure(figure, results)
    report.save_figure(fig, f"figure{figure}", ctx.figures_dir, synthetic=ctx.synthetic)
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------------
# Grad-CAM (Figures 6 and 7)


def gradcam_samples(ctx, dataset: str = "rafdb", variant: str = "published", n_true: int = 6,
                    n_false: int = 6, seed: int = 0) -> dict:
    """The trained model of (dataset, variant, first seed) and Grad-CAM maps for Figs. 6 and 7.

    Fig. 6: one test image per class (a correctly predicted one where possible); Fig. 7: `n_true` right
    and `n_false` wrong predictions. Maps explain the predicted class at `gradcam.default_layer`.
    Predictions are each image's own (the independent protocol: what a single image gets).
    """
    from pattlite import gradcam
    from pattlite.evaluate import predict

    n_true, n_false = int(n_true), int(n_false)
    exp = gradcam_experiment(ctx, dataset, variant)
    model, data = gradcam.trained_model(exp, ctx.results_dir)
    test = data["index"]["test"]
    images = np.asarray(data["pixels"][np.sort(test)])
    y = data["y"][np.sort(test)]
    predictions = predict(model, images, y, "independent").argmax(axis=1)
    classes = list(data["classes"])
    per_class = gradcam.pick_per_class(y, predictions, len(classes), seed=seed)
    true_false = gradcam.pick_true_false(y, predictions, n_true, n_false, seed=seed)
    layer = gradcam.default_layer(model)
    return {
        "experiment": exp, "model": model, "classes": classes, "layer": layer,
        "images": images[per_class], "labels": y[per_class], "predictions": predictions[per_class],
        "maps": gradcam.gradcam_maps(model, images[per_class], predictions[per_class], layer),
        "tf_images": images[true_false], "tf_labels": y[true_false], "tf_predictions": predictions[true_false],
        "tf_maps": gradcam.gradcam_maps(model, images[true_false], predictions[true_false], layer),
        "test_accuracy": float(np.mean(predictions == y)) * 100.0,
    }


def gradcam_figure(figure: int, sample: dict, ctx):
    """Draw and save Figure 6 (one image per class) or 7 (true and false predictions) from `gradcam_samples`."""
    import matplotlib.pyplot as plt

    from pattlite import gradcam

    if figure == 6:
        fig = gradcam.plot_per_class(sample["images"], sample["maps"], sample["labels"], sample["classes"],
                                     title=figure_caption(6))
    elif figure == 7:
        fig = gradcam.plot_predictions(sample["tf_images"], sample["tf_maps"], sample["tf_labels"],
                                       sample["tf_predictions"], sample["classes"], title=figure_caption(7))
    else:
        raise ValueError(f"figure {figure!r}: the Grad-CAM figures are 6 and 7")
    report.save_figure(fig, f"figure{figure}", ctx.figures_dir, synthetic=ctx.synthetic)
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------------
# The report


DEVIATIONS = """
- **The batch-mixing attention.** The published model's attention classifier is applied to a (batch, 32)
  tensor, so each image is averaged with the other images of its batch. The paper's accuracies were
  measured on class-grouped test sets in batches of 32, where most batches hold one class. We report every
  number under that `published` protocol (what the paper's numbers mean) and under the `independent` one
  (each image alone); the audit section gives the difference. The corrected `pattlite` model attends over
  each image's own four patch tokens.
- **The unfreezing bug.** The authors' code asks to unfreeze the last 59 layers of a 58-layer truncated
  backbone, so no backbone weight is ever fine-tuned; the paper says 40/59/46/49 layers were. Fine-tuning
  mode `as_coded` reproduces the code (the default), `paper` the text; the mode used is in provenance.
- **Table 5's kernel codes** (NP7, OP3, OP5, P4, P8) are not defined in the paper. Our reading
  (`pattlite.model.KERNEL_CODES`, docs/model.md): P = 'same' padding, NP = no padding, O = overlapping
  windows (stride = kernel - 1), the number = kernel size; each is one convolution plus one 1x1 convolution.
  Layer N is `backbone.layers[-N]` of Keras' MobileNet without top.
- **Splits.** RAF-DB has no validation split: a seeded, stratified 10% of its training set is held out
  (the paper's 12,271 training images are our train + val). FER2013 uses the official splits (28,709 /
  3,589 / 3,589), not the paper's unexplained 28,659 / 3,584 / 3,582. FERPlus uses its own splits.
- **CK+ frames and folds.** The paper does not say which frames of each sequence were used nor where
  validation data came from: we take the last 3 frames of each of the 327 labelled sequences (981 images),
  10 subject-independent folds, the next fold as validation; CK+ accuracy is the mean over folds.
- **FERPlus labels.** The paper does not state a label rule; we take the majority of the 8 emotion votes
  ('unknown' and 'NF' ignored), which keeps every image as the paper's Table 1 totals imply.
- **Stage 1 on cached features.** Where a result says `stage1: cached`, the new layers were trained on
  stored frozen-backbone features, so the in-model flip/contrast augmentation was not applied; stage 2 as
  coded changes no backbone weight, so it is exact on features apart from augmentation.
- **Seeds and shuffling.** The authors' code has no seeds and shuffles once; we shuffle every epoch in a
  seeded order and record the seeds.
""".strip()

SYNTHETIC_NOTE = ("Every benchmark of this run is a procedurally drawn synthetic stand-in, sized for a CPU "
                  "({weights}). The tables show the pipeline and the batch-composition mechanism; no number is "
                  "comparable with the paper, and every verdict says so. Run the `paper` profile on the real "
                  "datasets for a replication.")


def _weights_phrase(profile) -> str:
    if profile.weights is None:
        return "randomly initialised backbone with BatchNorm calibrated on training images"
    return f"backbone weights: {profile.weights}"


def _figure_block(ctx, figure: int):
    path = Path(ctx.figures_dir) / f"figure{figure}.png"
    if path.is_file():
        return [f"**{figure_caption(figure)}**", path]
    notebook = {6: "06_gradcam", 7: "06_gradcam", 8: "05_main_results", 9: "05_main_results",
                10: "05_main_results"}.get(figure, "04_patch_attention")
    return [f"**{figure_caption(figure)}** Not produced yet (run notebook {notebook})."]


def provenance_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: what ran, its seed, fold, epochs and wall time (s)."""
    if results.empty:
        return pd.DataFrame(columns=["key", "dataset", "variant", "seed", "fold", "wall_time_s"])
    first = results.drop_duplicates("key")
    columns = [c for c in ("key", "dataset", "fold", "variant", "opt_cut_layer", "opt_kernel", "seed", "stage1",
                           "finetune", "epochs_stage1", "epochs_stage2", "wall_time_s") if c in first.columns]
    out = first[columns].copy()
    if "opt_cut_layer" in out:
        out["opt_cut_layer"] = out["opt_cut_layer"].astype("Int64")  # NaN made the layer numbers floats
    order = [c for c in ("dataset", "variant", "opt_cut_layer", "opt_kernel", "fold", "seed") if c in out]
    return out.sort_values(order, na_position="first").reset_index(drop=True)


def report_sections(ctx) -> list:
    """Every section of the replication report, as `report.render_report` takes them.

    Tables 1-3 come from the manifests; Tables 4-11 and the audit from the result files of every
    planned experiment (a missing one gives "no result"); Figures 2-10 from `ctx.figures_dir`.
    """
    sections = []
    intro = [context_summary(ctx)]
    if ctx.synthetic:
        intro.append(SYNTHETIC_NOTE.format(weights=_weights_phrase(ctx.profile)))
    intro.append("Each table gives the paper's number (`paper`), ours (`ours`, measured under the authors' "
                 "evaluation protocol: class-grouped test batches of 32), the difference (`diff` = ours - "
                 f"paper) and a verdict (within {report.ACCURACY_TOLERANCE:g} accuracy point: reproduced; "
                 "counts must match exactly). Where the published model is involved, `ours_independent`, "
                 "`diff_independent` and `verdict_independent` give the same with every test image "
                 "predicted on its own.")
    sections.append(("Summary", intro))

    manifests = benchmark_manifests(ctx.profile, [d for d in ctx.datasets if d in IN_THE_WILD])
    for n, df in data_tables(manifests, ctx.synthetic).items():
        sections.append((f"Table {n}", [f"**{df.attrs['caption']}**", df]))

    every = list({e.key(): e for exps in notebook_plan(ctx).values() for e in exps}.values())
    offline = dataclasses.replace(ctx, run_experiments=False)
    results = run(offline, every, require_all=False)
    missing = len(every) - (results["key"].nunique() if not results.empty else 0)
    if missing:
        sections[0][1].append(f"**{missing} of {len(every)} planned experiments have no result yet**; "
                              "their cells say \"no result\".")
    for n in range(4, 12):
        df = table(n, results, ctx.synthetic)
        sections.append((f"Table {n}", [f"**{df.attrs['caption']}**", df]))
    if ctx.synthetic:  # every table carries the banner, not only the report's head
        for title, blocks in sections:
            if title.startswith("Table "):
                blocks.insert(0, f"> **{report.SYNTHETIC_BANNER}**")
    figures = []
    for figure in FIGURES:
        figures += _figure_block(ctx, figure)
    sections.append(("Figures 2-10", figures))

    try:
        audit = audit_table(results, ctx.synthetic)
        audit_blocks = [f"**{AUDIT_CAPTION}**", audit, audit_findings(audit, ctx.synthetic)]
    except ValueError as err:
        audit_blocks = [f"No audit results yet ({err})."]
    audit_png = Path(ctx.figures_dir) / "audit.png"
    if audit_png.is_file():
        audit_blocks.append(audit_png)
    sections.append(("The batch-composition audit", audit_blocks))
    sections.append(("Deviations and interpretation", [DEVIATIONS]))

    prov = provenance_table(results)
    total = float(prov["wall_time_s"].sum()) if "wall_time_s" in prov else 0.0
    devices = sorted(set(_result_devices(ctx, prov["key"]))) if not prov.empty else []
    sections.append(("Provenance", [
        f"- experiments with results: {len(prov)}; total training and evaluation time: {total:.1f} s "
        f"({total / 3600:.2f} h)\n- seeds: {', '.join(map(str, ctx.seeds))}\n"
        f"- devices of the result files: {'; '.join(devices) or 'none'}\n"
        f"- profile settings: `{json.dumps(_profile_summary(ctx.profile))}`",
        prov]))
    return sections


def _profile_summary(profile) -> dict:
    keep = ("name", "synthetic", "weights", "stage1", "finetune", "stage1_epochs", "stage2_epochs",
            "stage2_max_epochs", "train_limit", "ckplus_folds", "table5_layers", "table5_train_limit", "seeds",
            "validation")
    d = profile.to_dict()
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in keep if k in d}


def _result_devices(ctx, keys):
    for key in keys:
        path = Path(ctx.results_dir) / "experiments" / f"{key}.json"
        with open(path, encoding="utf-8") as f:
            prov = json.load(f).get("provenance", {})
        yield f"{prov.get('device', '?')} (commit {str(prov.get('git_commit', '?'))[:10]})"


def write_report(ctx, sections) -> tuple:
    """Write `replication_report.md` and the standalone `replication_report.html` under `ctx.reports_dir`."""
    folder = Path(ctx.reports_dir)
    return report.render_report(folder / "replication_report.md", folder / "replication_report.html", sections,
                                title=f"PAtt-Lite replication report ({ctx.profile.name} profile)",
                                synthetic=ctx.synthetic, provenance_info=report.provenance())


def verdict_summary(sections) -> pd.DataFrame:
    """How many numbers of each table got each verdict (from the report's table blocks)."""
    rows = []
    for title, blocks in sections:
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                for column in ("verdict", "verdict_independent"):
                    if column in block.columns:
                        counts = block[column][block[column].astype(str) != ""].value_counts()
                        for verdict_name, count in counts.items():
                            rows.append({"section": title, "column": column, "verdict": verdict_name,
                                         "count": int(count)})
    return pd.DataFrame(rows, columns=["section", "column", "verdict", "count"])


def is_finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
