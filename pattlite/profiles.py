"""Run profiles: the one place that defines every default the notebooks, the CLI and the engine use.

Five profiles:

- `paper`: the real datasets at the sizes the authors stored them (120 px; RAF-DB 224 px), ImageNet
  backbone weights, the full-model stage 1 with in-model augmentation, the authors' epoch limits,
  10 CK+ folds.
- `cpu_full`: the authors' recipe at full size on a CPU: as coded it never changes a backbone weight,
  so heads on cached features are that recipe; with the horizontal flip (features of each training image
  and of its mirror image cached, one of the two drawn every epoch), every training image, the authors'
  epoch limits and callbacks with stage 2 capped at 50 epochs (uncapped reference runs of the published
  head at seed 0 measure what the cap costs), 3 seeds for the headline heads, one for the ablations and
  Table 5's full grid. Its report is committed in docs/results/cpu_full/.
- `demo`: every benchmark replaced by a synthetic stand-in (`pattlite.data.synthetic`), small images,
  the ImageNet backbone (a local weights file when one is found, else Keras' download), heads trained
  on cached backbone features (no augmentation), short epoch caps. Sized so that the whole demo (about
  65 trainings) runs in minutes on 2 CPU cores.
- `cpu`: the real datasets found (FER2013 and FERPlus are the ones a CPU can afford), ImageNet weights,
  heads on cached backbone features (no augmentation; stage 2 as coded fine-tunes no backbone weight
  anyway), the authors' callbacks with shorter caps and a class-stratified training subset, 3 seeds, on
  Keras' JAX backend (faster than TensorFlow for heads on a CPU: docs/audit.md). Sized so that the
  whole run on FER2013 + FERPlus fits in 3 hours on 2 CPU cores; its report is committed in
  docs/results/cpu/.
- `ci`: smaller still, for tests (seconds per training), with a random backbone whose BatchNorm
  statistics are calibrated on training images, so it needs no download; it checks the plumbing, its
  accuracies are near chance. Its features are extracted by Keras in the test's own process.

Example:

```python
from pattlite.profiles import get_profile
profile = get_profile("demo", stage1_epochs=5)
profile.source("ferplus")        # {'dataset': 'synthetic', 'options': {'num_classes': 8, ...}}
profile.image_size("rafdb")      # 48
```
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pattlite import config

BENCHMARKS = config.REAL_DATASETS  # ("ckplus", "rafdb", "fer2013", "ferplus"), the paper's column order
WEIGHTS_FILE_NAME = "mobilenet_1_0_224_imagenet_no_top.weights.h5"
WEIGHTS_ENV_VAR = "PATTLITE_WEIGHTS"

# The authors' recipe, as their notebook sets it: the training settings a profile passes to every experiment
# (`pattlite.experiments.make_experiment` copies these `Profile` fields into the experiment's `TrainConfig`).
# `Profile` and `pattlite.recipe.TrainConfig` take their defaults from here: the epoch limits are written once.
AUTHORS_RECIPE = {
    "stage1_epochs": 100,
    "stage2_epochs": 500,  # Keras' `epochs` of stage 2 (the last epoch index + 1)
    "stage2_max_epochs": None,  # no cap on the stage-2 epochs run
    "validation": "published",  # class-grouped, unshuffled, batch 8
    "steps_per_execution": 1,
    "deterministic": False,
    "train_views": 1,  # no flip on cached features
    "test_probe_epochs": (),
}
TABLE5_DATASET = "rafdb"  # the paper's Table 5 (another dataset is a stand-in)
GRADCAM_DATASET = "rafdb"  # the paper's Figures 6-7


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """The batch-composition audit's own settings (`pattlite.audit`, `pattlite audit`): a profile of its own.

    Attributes:
        heads: the heads it trains (the authors', the no-mixing control, the corrected head).
        real_profile, synthetic_profile: the profiles its experiments start from on real / synthetic data.
        stage1: it trains heads on cached frozen-backbone features ("cached"); stage 2 never runs.
        train_limit: training images on real data (class-stratified, seeded); synthetic data keep the
            profile's own limit.
        stage1_epochs: stage-1 epoch cap on real data (early stopping may end sooner); synthetic data keep the
            profile's own.
        synthetic_slot: `--dataset synthetic` trains on the synthetic stand-in in this benchmark's slot of a
            synthetic profile (7 classes, like `config.DATASET_CLASSES["synthetic"]`).
    """

    heads: tuple = ("published", "no_mixing", "pattlite")
    real_profile: str = "paper"
    synthetic_profile: str = "ci"
    stage1: str = "cached"
    train_limit: int = 10_000
    stage1_epochs: int = 10
    synthetic_slot: str = "fer2013"


AUDIT = AuditSettings()


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every default of one run profile.

    Attributes:
        name: "paper", "cpu", "demo" or "ci".
        description: one line for reports.
        synthetic: True when every benchmark is a synthetic stand-in (results must say so).
        sources: benchmark name -> {"dataset": reader name, "options": reader options}. For synthetic
            profiles each benchmark has its own seed and class count (FERPlus 8, the others 7).
        image_sizes: benchmark name -> side of the square images fed to the model.
        resize_to: side the model resizes images to before the backbone (224 gives the 14x14 map the
            patch extraction block expects).
        weights: backbone weights: "imagenet" (resolved by `resolve_weights`), a file path, or None
            (random init with seed `weights_seed`, BatchNorm calibrated on `bn_calibration_images`
            training images).
        weights_seed: seed of the random backbone when `weights` is None.
        bn_calibration_images: training images used to calibrate BatchNorm of a random backbone.
        stage1: "exact" (full model, augmentation inside the model) or "cached" (the head trained on
            frozen-backbone features from `pattlite.features`).
        train_views: with stage1 "cached": 1 (no augmentation) or 2 (the authors' horizontal flip: the
            features of every training image and of its mirror image are cached, and each epoch sees
            one of the two, drawn with probability 1/2; `pattlite.recipe.TrainConfig.train_views`).
            Random contrast cannot be cached exactly and is left out.
        extraction_engine: the library that computes cached features: "auto" (OpenVINO when installed,
            else TensorFlow), "openvino" or "tensorflow"; $PATTLITE_EXTRACTION_ENGINE overrides it. The
            engine resolved is part of each cached experiment's key (the engines' features differ).
        finetune: "as_coded" (the authors' notebook: no backbone weight unfrozen) or "paper" (the
            paper's text: 40/59/46/49 layers unfrozen, BatchNorm frozen).
        stage1_epochs: stage-1 epoch limit (the authors: 100).
        stage2_epochs: the stage-2 `epochs` argument of Keras' fit (the authors: 500; the run starts at
            the epoch index `history.epoch[-5]` of stage 1).
        stage2_max_epochs: cap on the number of stage-2 epochs actually run (None: no cap).
        reference_seeds: with a cap, the seeds at which the published head also runs with stage 2
            uncapped on every benchmark (the `reference` study): the runs whose test probes measure
            what the cap costs (`pattlite.studies.cap`). Empty: none.
        contrast_seeds: for a profile that trains heads on cached features (which cannot hold the
            authors' random contrast), the seeds at which the `contrast` study measures what the contrast
            changes: stage 1 of the published head on `contrast_train_limit` training images of
            `contrast_dataset`, as the full image model with the authors' flip and contrast layers
            (`stage1="exact"`) and as the head on cached features with the flip only
            (`pattlite.studies.contrast`). Empty: none.
        contrast_train_limit, contrast_dataset: that study's training images and benchmark.
        exact_backend: the Keras backend of the trials that train the full image model (`stage1="exact"`)
            when the profile's `keras_backend` is another (`pattlite.grid` runs them in processes of their
            own): on a CPU, XLA's depthwise convolutions make the full model several times slower on JAX
            than on TensorFlow (`pattlite bench`). None: the profile's backend.
        test_probe_epochs: stage-2 epoch counts after which each experiment also records its test
            accuracy (`ExperimentResult.test_probe`): what a stage-2 cap would cost, measured on every
            run; never used to pick or stop a model. Empty: none.
        train_limit: at most this many training images (class-stratified, seeded), None = all.
        ckplus_folds: the CK+ cross-validation folds to run (the paper: all 10).
        table5_layers: the cut layers of Table 5's grid to run (the paper: all six; every kernel code
            runs at each).
        table5_train_limit: training images for each Table 5 grid point (None: as `train_limit`); the
            one-convolution patch blocks have 2-9M parameters and dominate a CPU demo.
        table5_seeds: seeds of Table 5's grid (None: `seeds`).
        table5_datasets: the benchmarks Table 5's grid may run on, in order of preference: it runs on
            the first the run has (`pattlite.studies.plan.dataset_choice`; none: "not run (no dataset
            present)"). The paper's is RAF-DB (another one is labelled a stand-in); then FERPlus (in-the-
            wild faces with cleaned labels, the paper's other benchmark with challenging subsets), FER2013
            (the same faces, noisier labels), CK+ (posed faces near 100%, leaving no room to rank kernels).
        gradcam_datasets: the same for the Grad-CAM figures: RAF-DB (the paper's Figs. 6-7), then the
            datasets of its other figures, FERPlus (Figs. 4, 5, 8, 10) and FER2013 (Fig. 8), then CK+.
        seeds: training seeds to run.
        ablation_seeds: seeds of the ablation studies (Tables 4 and 6, the published head included, so
            that each table compares like with like); None: `seeds`.
        steps_per_execution: batches per compiled call (keeps a GPU busy at batch size 8).
        validation: "published" (class-grouped, unshuffled, batch 8: what the authors' validation did)
            or "independent" (no validation prediction depends on other images).
        deterministic: ask the backend for deterministic ops (see `pattlite.seeding.enable_determinism`).
        only_present_datasets: by default run only the benchmarks whose files are found (the others are
            reported "not run (dataset absent)"); a benchmark asked for by name must still be present.
        keras_backend: the Keras backend `./run_all.sh` runs the notebooks on (None: $KERAS_BACKEND, else
            Keras' default); the Grad-CAM notebook always runs on TensorFlow (tf-keras-vis).
        sized_for_cpu: the profile's trainings fit a CPU (no warning when no GPU is visible).
        table_note: a sentence every table and its saved files carry: what this profile changes from
            the authors' setting (None: nothing to say beyond the synthetic banner).
        train_first: `./run_all.sh` trains every experiment first, in its own process, printing
            progress and the time left (`pattlite grid run --executor local`); the notebooks then
            assemble tables and figures from the result files.
    """

    name: str
    description: str
    synthetic: bool
    sources: dict
    image_sizes: dict
    resize_to: int = 224
    weights: str | None = "imagenet"
    weights_seed: int = 0
    bn_calibration_images: int = 64
    stage1: str = "exact"
    train_views: int = AUTHORS_RECIPE["train_views"]
    extraction_engine: str = "auto"
    finetune: str = "as_coded"
    stage1_epochs: int = AUTHORS_RECIPE["stage1_epochs"]
    stage2_epochs: int = AUTHORS_RECIPE["stage2_epochs"]
    stage2_max_epochs: int | None = AUTHORS_RECIPE["stage2_max_epochs"]
    reference_seeds: tuple = ()
    contrast_seeds: tuple = ()
    contrast_train_limit: int | None = 5000
    contrast_dataset: str = "ferplus"
    exact_backend: str | None = None
    test_probe_epochs: tuple = AUTHORS_RECIPE["test_probe_epochs"]
    train_limit: int | None = None
    ckplus_folds: tuple = tuple(range(10))
    table5_layers: tuple = tuple(config.TABLE5_CUT_LAYERS)
    table5_train_limit: int | None = None
    table5_seeds: tuple | None = None
    table5_datasets: tuple = (TABLE5_DATASET, "ferplus", "fer2013", "ckplus")
    gradcam_datasets: tuple = (GRADCAM_DATASET, "ferplus", "fer2013", "ckplus")
    seeds: tuple = (0,)
    ablation_seeds: tuple | None = None
    steps_per_execution: int = AUTHORS_RECIPE["steps_per_execution"]
    validation: str = AUTHORS_RECIPE["validation"]
    deterministic: bool = AUTHORS_RECIPE["deterministic"]
    only_present_datasets: bool = False
    keras_backend: str | None = None
    sized_for_cpu: bool = False
    train_first: bool = False
    table_note: str | None = None

    def source(self, benchmark: str) -> dict:
        """{"dataset": reader name, "options": dict} for one benchmark (a copy)."""
        config.check_name("benchmark", benchmark, BENCHMARKS)
        entry = self.sources[benchmark]
        return {"dataset": entry["dataset"], "options": dict(entry["options"])}

    def image_size(self, benchmark: str) -> int:
        config.check_name("benchmark", benchmark, BENCHMARKS)
        return int(self.image_sizes[benchmark])

    def num_classes(self, benchmark: str) -> int:
        """Classes of a benchmark (its synthetic stand-in has the same count)."""
        config.check_name("benchmark", benchmark, BENCHMARKS)
        return len(config.DATASET_CLASSES[benchmark])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _synthetic_sources(n_train, n_val, n_test, image_size, ckplus_images) -> dict:
    """Synthetic stand-ins: one seed per benchmark, 8 classes for FERPlus, a small CK+."""
    common = dict(image_size=image_size, progress=False)
    return {
        # CK+ is small and cross-validated over subject folds; its stand-in keeps every image in one pool
        # that the folds re-split (see pattlite.experiments).
        "ckplus": {
            "dataset": "synthetic",
            "options": dict(num_classes=7, seed=11, n_train=ckplus_images, n_val=0, n_test=0, **common),
        },
        "rafdb": {
            "dataset": "synthetic",
            "options": dict(num_classes=7, seed=12, n_train=n_train, n_val=n_val, n_test=n_test, **common),
        },
        "fer2013": {
            "dataset": "synthetic",
            "options": dict(num_classes=7, seed=13, n_train=n_train, n_val=n_val, n_test=n_test, **common),
        },
        "ferplus": {
            "dataset": "synthetic",
            "options": dict(num_classes=8, seed=14, n_train=n_train, n_val=n_val, n_test=n_test, **common),
        },
    }


PROFILES = {
    "paper": Profile(
        name="paper",
        description="the paper's setting: real datasets, ImageNet weights, full-model training",
        synthetic=False,
        sources={name: {"dataset": name, "options": {}} for name in BENCHMARKS},
        # The sizes the authors stored their arrays at.
        image_sizes={"ckplus": 120, "rafdb": 224, "fer2013": 120, "ferplus": 120},
        weights="imagenet",
        stage1="exact",  # the authors' epoch limits: the defaults (AUTHORS_RECIPE)
        ckplus_folds=tuple(range(10)),
        steps_per_execution=16,
    ),
    "cpu": Profile(
        name="cpu",
        description="real data on a CPU: heads on cached ImageNet-backbone features (no augmentation; "
        "stage 2 as coded, which fine-tunes no backbone weight), 5,000-image training subsets, "
        "stage-1 cap 30 epochs, stage-2 cap 5 epochs",  # the seeds: `seeds` (a run's -p seeds= changes them)
        synthetic=False,
        sources={name: {"dataset": name, "options": {}} for name in BENCHMARKS},
        image_sizes={"ckplus": 120, "rafdb": 224, "fer2013": 120, "ferplus": 120},
        weights="imagenet",
        stage1="cached",
        finetune="as_coded",
        # The authors' callbacks (early stopping, learning-rate reduction) stay; the caps and the
        # training subset are what fit 3 hours on 2 cores at the head-training rate of docs/audit.md when
        # they were set (about 2,000 samples/s on the JAX backend; 3,000-4,700 since). Each result
        # records how many epochs ran.
        stage1_epochs=30,
        stage2_max_epochs=5,
        train_limit=5000,
        ckplus_folds=tuple(range(10)),
        # Table 5 at the published cut only (5 kernel codes), one seed, 1,000 training images per
        # point: its one-convolution blocks (2-9M parameters) took 245-570 s a point in the committed
        # run (against 20-175 s for the other experiments), so more layers do not fit 3 hours.
        table5_layers=(29,),
        table5_train_limit=1000,
        table5_seeds=(0,),
        seeds=(0, 1, 2),
        steps_per_execution=16,
        only_present_datasets=True,
        keras_backend="jax",
        sized_for_cpu=True,
        train_first=True,
        table_note="Profile cpu: heads trained on cached ImageNet-backbone features, so without the "
        "flip/contrast augmentation; stage 2 as coded fine-tunes no backbone weight, as in the "
        "authors' code; class-stratified 5,000-image training subsets; stage 1 capped at 30 "
        "epochs, stage 2 at 5; mean ± sd over the seeds run.",
    ),
    "cpu_full": Profile(
        name="cpu_full",
        description="the authors' recipe at full size on a CPU: heads on cached ImageNet-backbone features "
        "with the authors' horizontal flip (random contrast left out), stage 2 as coded (no "
        "backbone weight fine-tuned), every training image, the authors' epoch limits and "
        "callbacks with stage 2 capped at 50 epochs",
        synthetic=False,
        sources={name: {"dataset": name, "options": {}} for name in BENCHMARKS},
        image_sizes={"ckplus": 120, "rafdb": 224, "fer2013": 120, "ferplus": 120},
        weights="imagenet",
        # As coded, the authors' training never changes a backbone weight: it is a head on frozen
        # ImageNet features plus in-model flip/contrast augmentation, so cached features with their
        # mirror images are that recipe without the contrast jitter.
        stage1="cached",
        train_views=2,
        finetune="as_coded",
        # The authors' epoch limits (the defaults, AUTHORS_RECIPE).
        # Stage 2 capped at 50 epochs. The uncapped reference runs (published head, seed 0, every
        # benchmark: `reference_seeds`) measured what the cap costs with their test probes: at 50 epochs
        # vs their uncapped end, FER2013 -0.89 points under the authors' protocol (75.90 vs 76.79) and
        # +0.14 each image alone; FERPlus +0.42 and +0.08; CK+ (only fold 8 ran past 50) 0.00; the capped
        # FER2013 run of seed 0 (best weights restored at the end): -0.58 and +0.28; FERPlus +0.84 and
        # -0.03. Uncapped,
        # stage 2 ran 124-141 epochs on FER2013/FERPlus, and the whole profile would take about twice
        # as long. The report shows these numbers (`pattlite.studies.cap`).
        stage2_max_epochs=50,
        reference_seeds=(0,),
        # The random contrast cannot be cached: measured directly, stage 1 exact (TensorFlow) against
        # the cached flip-only head, 5,000 FERPlus training images, 3 seeds (`pattlite.studies.contrast`).
        contrast_seeds=(0, 1, 2),
        contrast_train_limit=5000,
        contrast_dataset="ferplus",
        exact_backend="tensorflow",
        # The test accuracy after these many stage-2 epochs, recorded by every run (analysis only).
        test_probe_epochs=(5, 10, 20, 50, 100, 150, 200, 300, 400),
        train_limit=None,
        ckplus_folds=tuple(range(10)),
        # Table 5's full grid (6 cut layers x 5 kernel codes), one seed, on 1,000 training images of
        # its dataset, with the same epochs and callbacks: its one-convolution blocks have 0.7-8.5M
        # parameters and train at 72-236 samples/s against 731 for the published head (Keras fit,
        # batch 8, 2 loaded cores), and each epoch also predicts the 3,579 validation images.
        table5_layers=tuple(config.TABLE5_CUT_LAYERS),
        table5_train_limit=1000,
        table5_seeds=(0,),
        seeds=(0, 1, 2),
        ablation_seeds=(0,),
        steps_per_execution=16,
        only_present_datasets=True,
        keras_backend="jax",
        sized_for_cpu=True,
        train_first=True,
        table_note="Profile cpu_full: the authors' recipe at full size, heads trained on cached "
        "ImageNet-backbone features with the horizontal flip (each epoch every training image "
        "or its mirror image) and without the random contrast; stage 2 as coded fine-tunes no "
        "backbone weight, as in the authors' code; every training image; the authors' epoch "
        "limits and callbacks, stage 2 capped at 50 epochs (what the cap costs: the report's "
        "cap table); mean ± sd over the seeds run.",
    ),
    "demo": Profile(
        name="demo",
        description="synthetic stand-ins, ImageNet backbone, heads on cached features; shows the "
        "pipeline and the batch-composition effect, not the paper's numbers",
        synthetic=True,
        sources=_synthetic_sources(n_train=280, n_val=70, n_test=140, image_size=48, ckplus_images=280),
        image_sizes={name: 48 for name in BENCHMARKS},
        # A random backbone gives features no head can use (a linear probe on the RAF-DB stand-in: 14-21%
        # with calibrated random features, 73% with ImageNet's), so the demo needs the ImageNet weights.
        weights="imagenet",
        stage1="cached",
        # 12 epochs: at 6 the published head had not yet learnt to lean on its batch, and the demo's
        # audit showed no batch effect on two of four stand-ins.
        stage1_epochs=12,
        stage2_max_epochs=2,
        train_limit=280,
        ckplus_folds=(0, 1),
        # Three of Table 5's six cut layers, on half the training images: the one-convolution blocks
        # (2-9M parameters) dominate the demo's time.
        table5_layers=(23, 29, 35),
        table5_train_limit=140,
        steps_per_execution=8,
        sized_for_cpu=True,
    ),
    "ci": Profile(
        name="ci",
        description="the demo at test size: seconds per training",
        synthetic=True,
        sources=_synthetic_sources(n_train=56, n_val=28, n_test=56, image_size=32, ckplus_images=140),
        image_sizes={name: 32 for name in BENCHMARKS},
        weights=None,
        bn_calibration_images=32,
        stage1="cached",
        # Keras itself, in the process: OpenVINO's export and conversion cost seconds per feature store,
        # more than extracting the ci profile's few images (its own tests: test_features, test_export).
        extraction_engine="tensorflow",
        stage1_epochs=2,
        stage2_max_epochs=1,
        train_limit=56,
        ckplus_folds=(0,),
        table5_layers=(29,),
        steps_per_execution=4,
        sized_for_cpu=True,
    ),
}


def get_profile(name: str, allow_random_weights: bool = False, **overrides) -> Profile:
    """Returns a profile, with fields overridden.

    Args:
        name: "paper", "cpu", "demo" or "ci".
        allow_random_weights: permit `weights=None` in a non-synthetic profile (random backbone weights
            say nothing about the paper's numbers).
        **overrides: any `Profile` field, e.g. `stage1_epochs=5`, `weights="/path/file.weights.h5"`.

    Raises:
        ValueError: unknown profile or field, an invalid value, or random weights on real data.
    """
    config.check_name("profile", name, tuple(PROFILES))
    fields = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    profile = dataclasses.replace(PROFILES[name], **overrides)
    config.check_name("stage-1 mode", profile.stage1, config.STAGE1_MODES)
    config.check_name("fine-tuning mode", profile.finetune, config.FINETUNE_MODES)
    config.check_name("validation protocol", profile.validation, config.VALIDATION_PROTOCOLS)
    for field in ("table5_datasets", "gradcam_datasets"):
        order = getattr(profile, field)
        if isinstance(order, str) or not isinstance(order, (tuple, list)) or not order:
            raise ValueError(
                f"profile field {field}={order!r}: expected a non-empty tuple of benchmarks in order "
                f"of preference, e.g. ('rafdb', 'ferplus')"
            )
        for dataset in order:
            config.check_name("benchmark", dataset, BENCHMARKS)
        if len(set(order)) != len(order):
            raise ValueError(f"profile field {field}={order!r}: a benchmark is listed twice")
    if profile.train_views not in (1, 2) or (profile.train_views == 2 and profile.stage1 != "cached"):
        raise ValueError(
            f"profile field train_views={profile.train_views!r}: expected 1, or 2 (mirror "
            "images' features) with stage1='cached'"
        )
    config.check_name("extraction engine", profile.extraction_engine, ("auto", "openvino", "tensorflow"))
    for field in ("keras_backend", "exact_backend"):
        if getattr(profile, field) is not None:
            config.check_name("Keras backend", getattr(profile, field), ("tensorflow", "jax"))
    if profile.contrast_seeds:
        config.check_name("contrast dataset", profile.contrast_dataset, BENCHMARKS)
        config.check_seeds(profile.contrast_seeds)
    if profile.weights is None and not profile.synthetic and not allow_random_weights:
        raise ValueError(
            f"profile {name!r} with weights=None would train on a random backbone; pass weights "
            f"('imagenet' or a {WEIGHTS_FILE_NAME} path) or allow_random_weights=True"
        )
    for field in ("stage1_epochs", "stage2_epochs", "steps_per_execution", "resize_to"):
        value = getattr(profile, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"profile field {field}={value!r}: expected a positive int")
    return profile


def as_profile(profile) -> Profile:
    """A `Profile` from a profile name, or the `Profile` given."""
    return get_profile(profile) if isinstance(profile, str) else profile


def weights_search_paths() -> list[Path]:
    """Where a local copy of the ImageNet weights is looked for, in order (after $PATTLITE_WEIGHTS):
    `<data dir>/weights/`, then `../shared/weights/` beside the project (this project's development
    machines keep the file there)."""
    return [
        config.data_dir() / "weights" / WEIGHTS_FILE_NAME,
        config.PROJECT_ROOT.parent / "shared" / "weights" / WEIGHTS_FILE_NAME,
    ]


def resolve_weights(weights):
    """Turns a profile's `weights` into what `pattlite.model.build_model` accepts.

    "imagenet" becomes a local file when one exists ($PATTLITE_WEIGHTS, else the first of
    `weights_search_paths()`), since Keras' own download needs internet; otherwise it stays "imagenet"
    (Keras downloads and caches it). A path must exist. None stays None.
    """
    if weights is None:
        return None
    if weights == "imagenet":
        env = os.environ.get(WEIGHTS_ENV_VAR)
        if env:
            path = Path(env).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"${WEIGHTS_ENV_VAR}={env!r}: no such file; expected {WEIGHTS_FILE_NAME}")
            return path
        for local in weights_search_paths():
            if local.is_file():
                return local
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist; expected a "
            f"{WEIGHTS_FILE_NAME}-style Keras weights file"
        )
    return path
