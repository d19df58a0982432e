"""The plan: which experiments each study of the paper needs, written once.

The notebooks (`study_experiments`), the report (`notebook_plan`) and `pattlite grid` (`notebook_plan`)
all read the plan from here. Experiments shared between studies (e.g. the published model on RAF-DB)
have the same key, so they train once. `run` trains the missing experiments of a list and returns their
result rows.

Table 5 and the Grad-CAM figures each run on one benchmark: the first of the profile's order of
preference (`Profile.table5_datasets`, `Profile.gradcam_datasets`) that the run has and whose files are
found (`dataset_choice`); with none, they are "not run (no dataset present)". The notebooks, the grid
and the report make the same choice, so the grid never trains for an absent dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from pattlite import config
from pattlite.model import KERNEL_CODES
from pattlite.profiles import AUDIT, GRADCAM_DATASET, TABLE5_DATASET, as_profile
from pattlite.studies.context import BENCHMARKS, IN_THE_WILD, in_the_wild

SUBSETS = config.SUBSETS
SUBSET_DATASETS = ("rafdb", "ferplus")  # datasets with RAN challenging-condition lists
TABLE4_VARIANTS = ("baseline", "patch_only", "attention_only", "published")
TABLE5_LAYERS = tuple(config.TABLE5_CUT_LAYERS)
TABLE5_KERNELS = tuple(KERNEL_CODES)
NO_DATASET = "not run (no dataset present)"
TABLE6_VARIANTS = ("patch_attention", "published")
MAIN_VARIANTS = ("published", "pattlite")
AUDIT_VARIANTS = AUDIT.heads
# The columns of `run`'s frame when there is no result at all (a run with no dataset present).
EMPTY_RESULT_COLUMNS = (
    "key",
    "dataset",
    "variant",
    "seed",
    "fold",
    "subset",
    "protocol",
    "n",
    "accuracy",
    "mean_class_accuracy",
)


def _seeds(profile, seeds):
    return config.check_seeds(profile.seeds if seeds is None else seeds)


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
    # The data's content digest once per dataset, not once per experiment (memoised: one stat per file).
    data = {dataset: data_identity(profile.source(dataset)) for dataset in datasets}
    return [
        make_experiment(profile, dataset, variant, seed=seed, fold=fold, data=data[dataset], **options)
        for dataset in datasets
        for variant in variants
        for fold in _folds(profile, dataset)
        for seed in _seeds(profile, seeds)
    ]


def dataset_found(profile, dataset: str) -> str | None:
    """None when a benchmark's files are found, else why not (one line naming the folder).

    A cheap check of the files each reader starts from (`pattlite.data.<reader>`), never a full read: a
    copy whose files are there but malformed is found here and is then the reader's error. Synthetic
    stand-ins are always found.
    """
    profile = as_profile(profile)
    source = profile.source(dataset)
    if source["dataset"] == "synthetic":
        return None
    name = source["dataset"]
    root = config.dataset_root(name)
    if _layout_found(name, root):
        return None
    from importlib import import_module

    layout = import_module(f"pattlite.data.{name}").EXPECTED_LAYOUT
    where = "no folder" if not root.exists() else "no dataset files in"
    return f"{where} {root} (expected {layout}; set ${config.dataset_root_env_var(name)} or -p {dataset}_root=DIR)"


def _layout_found(name: str, root: Path) -> bool:
    """The files a reader looks for first (the same tests as its layout detection)."""
    from pattlite.data import ckplus, fer2013, ferplus, rafdb

    def dirs(base, *names):
        return all((base / n).is_dir() for n in names)

    if name == "fer2013":
        return root.is_file() or (root / fer2013.CSV_NAME).is_file() or dirs(root, "train", "test")
    if not root.is_dir():
        return False
    if name == "ferplus":
        return (
            any(
                all((base / folder / "label.csv").is_file() for folder in ferplus.SPLIT_FOLDERS.values())
                for base in (root / "data", root)
            )
            or (root / "fer2013new.csv").is_file()
        )
    if name == "rafdb":
        return any((base / rafdb.LABEL_FILE).is_file() for base in (root / "basic", root)) or dirs(
            root, "train", "test"
        )
    return (
        dirs(root, "Emotion")
        or dirs(root, "cohn-kanade-images")
        or dirs(root, "CK+48")
        or any(dirs(root, folder) for folder in ckplus.FOLDER_TO_LABEL)
    )


@dataclasses.dataclass(frozen=True)
class DatasetChoice:
    """The benchmark one study runs on (Table 5's grid, the Grad-CAM figures), and why.

    Attributes:
        study: "table5" or "gradcam".
        dataset: the benchmark chosen, None when no benchmark of `preference` is there.
        preference: the order tried (the profile's, or the one dataset asked for by name).
        passed_over: {benchmark: why it was not used} for those tried before the choice.
        asked: the dataset was asked for by name (the Grad-CAM notebook's `gradcam_dataset`).
    """

    study: str
    dataset: str | None
    preference: tuple
    passed_over: dict
    asked: bool = False

    @property
    def paper_dataset(self) -> str:
        return TABLE5_DATASET if self.study == "table5" else GRADCAM_DATASET

    def sentence(self) -> str:
        """One sentence for the report and the notebooks: which dataset, and why that one."""
        names = config.DATASET_NAMES
        what = "Table 5's grid" if self.study == "table5" else "Figures 6-7 (Grad-CAM)"
        order = ", ".join(names[d] for d in self.preference)
        if self.dataset is None:
            why = "; ".join(f"{names[d]}: {reason}" for d, reason in self.passed_over.items())
            return f"{what}: {NO_DATASET}; tried {order} ({why})."
        if self.asked:
            text = f"{what}: ours on {names[self.dataset]}, asked for by name"
        elif self.passed_over:
            skipped = "; ".join(f"{names[d]}: {reason}" for d, reason in self.passed_over.items())
            text = (
                f"{what}: ours on {names[self.dataset]}, the first present of this profile's order of "
                f"preference ({order}); passed over {skipped}"
            )
        else:
            text = f"{what}: ours on {names[self.dataset]}, the first of this profile's order of preference ({order})"
        if self.dataset != self.paper_dataset:
            text += f". It stands in for {names[self.paper_dataset]}, the paper's"
        return text + "."


def dataset_choice(ctx, study: str, asked: str | None = None) -> DatasetChoice:
    """The benchmark `study` ("table5" or "gradcam") runs on in this context: `asked` when given (it
    must then be present: the reader says what is missing), else the first of the profile's
    `table5_datasets` / `gradcam_datasets` that is among `ctx.datasets` and whose files are found
    (`dataset_found`). None when there is none; nothing is read beyond a few file tests."""
    config.check_name("study with one dataset", study, ("table5", "gradcam"))
    if asked is not None and str(asked).strip().lower() not in ("", "none"):
        config.check_name("benchmark", asked, BENCHMARKS)
        return DatasetChoice(study, asked, (asked,), {}, asked=True)
    preference = tuple(ctx.profile.table5_datasets if study == "table5" else ctx.profile.gradcam_datasets)
    passed_over = {}
    for dataset in preference:
        if dataset not in ctx.datasets:
            passed_over[dataset] = "dataset absent" if dataset in ctx.skipped else "not among this run's benchmarks"
            continue
        missing = dataset_found(ctx.profile, dataset)
        if missing is None:
            return DatasetChoice(study, dataset, preference, passed_over)
        passed_over[dataset] = missing
    return DatasetChoice(study, None, preference, passed_over)


def table4_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of Table 4 (ablation): baseline, patch_only, attention_only and published on every
    benchmark; CK+ over the profile's folds.

    Args:
        profile: a profile name ("paper", "cpu", "cpu_full", "demo", "ci") or a `pattlite.profiles.Profile`.
        seeds: seeds to run (default: the profile's `ablation_seeds`, else its seeds).
        datasets: benchmarks to include (default all four).

    Returns:
        A list of `pattlite.experiments.Experiment`.
    """
    return _plan(profile, datasets, TABLE4_VARIANTS, _ablation_seeds(profile, seeds))


def _ablation_seeds(profile, seeds):
    profile = as_profile(profile)
    return profile.ablation_seeds if seeds is None and profile.ablation_seeds is not None else seeds


def table5_experiments(profile, seeds=None, layers=None, kernels=TABLE5_KERNELS, dataset: str | None = None):
    """Experiments of Table 5: the published head with the one-convolution patch block of each kernel
    code (`pattlite.model.KERNEL_CODES`, our reading of the paper's codes) cut at each layer, on
    `dataset` (default the first of the profile's `table5_datasets`, the paper's RAF-DB first; a
    notebook passes `dataset_choice(ctx, "table5")`). `layers` defaults to the profile's
    `table5_layers`, `seeds` to its `table5_seeds` (else its seeds); its `table5_train_limit` caps the
    training images of each grid point."""
    from pattlite.model import KERNEL_CODES

    profile = as_profile(profile)
    dataset = profile.table5_datasets[0] if dataset is None else dataset
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
            out += _plan(profile, (dataset,), ("published",), seeds, cut_layer=layer, kernel=kernel, **limit)
    return out


def table6_experiments(profile, seeds=None, datasets=IN_THE_WILD):
    """Experiments of Table 6 and Figs. 2-5: patch attention against patch extraction (the published
    model) on the in-the-wild datasets; seeds default to the profile's `ablation_seeds`, else its seeds."""
    return _plan(profile, datasets, TABLE6_VARIANTS, _ablation_seeds(profile, seeds))


def main_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of Tables 7-11 and Figs. 8-10: the published model and the corrected `pattlite`
    model on every benchmark."""
    return _plan(profile, datasets, MAIN_VARIANTS, seeds)


def audit_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of the batch-composition audit: published, no_mixing and pattlite on every benchmark."""
    return _plan(profile, datasets, AUDIT_VARIANTS, seeds)


def gap_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """Experiments of the gap table's "no augmentation" line (`pattlite.studies.gap`): the published head
    trained without the profile's augmentation (`train_views=1`), over the ablation seeds; none for a
    profile that does not augment (its own runs are that line)."""
    profile = as_profile(profile)
    if profile.train_views == 1:
        return []
    return _plan(profile, datasets, ("published",), _ablation_seeds(profile, seeds), train_views=1)


def reference_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """The uncapped reference runs of a profile that caps stage 2 (`Profile.stage2_max_epochs`): the
    published head with stage 2 uncapped at `Profile.reference_seeds` (`seeds` overrides), whose test
    probes measure what the cap costs (`pattlite.studies.cap`); none for a profile without a cap or
    without reference seeds."""
    profile = as_profile(profile)
    seeds = profile.reference_seeds if seeds is None else seeds
    if profile.stage2_max_epochs is None or not seeds:
        return []
    return _plan(profile, datasets, ("published",), seeds, stage2_max_epochs=None)


def contrast_experiments(profile, seeds=None, datasets=BENCHMARKS):
    """The `contrast` study of a profile with `Profile.contrast_seeds` (`seeds` overrides): stage 1 of the
    published head on `contrast_train_limit` training images of `contrast_dataset`, as the full image model
    with the authors' flip and contrast layers (stage1 "exact", in a process on `Profile.exact_backend`) and
    as the head on cached features with the profile's flip only, at each seed
    (`pattlite.studies.contrast`); none when the profile has no contrast seeds or the dataset is absent."""
    profile = as_profile(profile)
    seeds = profile.contrast_seeds if seeds is None else seeds
    if not seeds or profile.contrast_dataset not in datasets:
        return []
    common = dict(train_limit=profile.contrast_train_limit, stage2=False)
    return _plan(
        profile, (profile.contrast_dataset,), ("published",), seeds, stage1="exact", train_views=1, **common
    ) + _plan(profile, (profile.contrast_dataset,), ("published",), seeds, **common)


STUDIES = {
    "table4": table4_experiments,
    "table5": table5_experiments,
    "table6": table6_experiments,
    "main": main_experiments,
    "audit": audit_experiments,
    "gap": gap_experiments,
    "reference": reference_experiments,
    "contrast": contrast_experiments,
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
        dataset = dataset_choice(ctx, "table5").dataset
        return [] if dataset is None else table5_experiments(profile, dataset=dataset)
    if study == "table6":
        return table6_experiments(profile, datasets=in_the_wild(ctx))
    return STUDIES[study](profile, datasets=ctx.datasets)


def gradcam_experiment(ctx, dataset: str | None = None, variant: str = "published"):
    """The experiment whose trained model the Grad-CAM figures show: (dataset, variant), the context's
    first seed, CK+'s first fold. `dataset` defaults to `dataset_choice(ctx, "gradcam")`.

    Raises:
        ValueError: no dataset given and none of the profile's `gradcam_datasets` present (the
            Grad-CAM notebook checks `dataset_choice` first and says "not run").
    """
    from pattlite.experiments import make_experiment

    choice = dataset_choice(ctx, "gradcam", dataset)
    if choice.dataset is None:
        raise ValueError(choice.sentence())
    dataset = choice.dataset
    fold = _folds(ctx.profile, dataset)[0]
    return make_experiment(ctx.profile, dataset, variant, seed=ctx.seeds[0], fold=fold)


def notebook_plan(
    ctx, gradcam_dataset: str | None = None, gradcam_variant: str = "published", gradcam: bool = False
) -> dict:
    """{study: experiments} of every study of the notebooks, for their context (`study_experiments`);
    with `gradcam` or a `gradcam_dataset`, also {"gradcam": [the experiment of the Grad-CAM figures]}
    (the dataset of `dataset_choice(ctx, "gradcam", gradcam_dataset)`; none when no dataset is present)."""
    plan = {study: study_experiments(ctx, study) for study in STUDIES}
    if gradcam or (gradcam_dataset is not None and str(gradcam_dataset).strip().lower() not in ("", "none")):
        dataset = dataset_choice(ctx, "gradcam", gradcam_dataset).dataset
        if dataset is not None:
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

    rows = [
        {
            "dataset": e.dataset,
            "variant": e.variant,
            "options": " ".join(f"{k}={v}" for k, v in sorted(e.model_options.items())),
            "fold": e.fold,
            "seed": e.seed,
            "done": result_path(e, ctx.results_dir).is_file(),
        }
        for e in experiments
    ]
    frame = pd.DataFrame(rows, columns=["dataset", "variant", "options", "fold", "seed", "done"])
    return frame.astype({"fold": "Int64"})  # folds are integers or missing (one fixed split)
