"""One experiment's configuration: `Experiment` (everything that determines one trained-and-evaluated model) and
its key (`Experiment.key`: the hash of every field but the dataset's folder), `make_experiment` (every field
filled from a profile). The `train` field holds the profile's training settings (`profiles.AUTHORS_RECIPE`'s
fields) and the overrides: the key hashes them, so what goes in is fixed. Importable from `pattlite.experiments`.
"""

from __future__ import annotations

import dataclasses

from pattlite import config
from pattlite.config import PROTOCOLS
from pattlite.data.fingerprint import dataset_identity
from pattlite.extraction import extraction_engine
from pattlite.files import json_digest
from pattlite.model import VARIANTS
from pattlite.profiles import AUTHORS_RECIPE, BENCHMARKS, Profile, get_profile
from pattlite.recipe import TrainConfig

# Model options an experiment may set: every variant's own options, and augment (resize_to is the profile's).
MODEL_OPTIONS = tuple(dict.fromkeys(o for v in VARIANTS.values() for o in v.options)) + ("augment",)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One trained-and-evaluated model, fully specified (see `make_experiment`).

    Attributes:
        profile: profile name (picks the default results folder).
        dataset: benchmark name ("ckplus", "rafdb", "fer2013", "ferplus").
        source: {"dataset": reader name, "options": reader options} (synthetic stand-in or real data).
        synthetic: True when the data are synthetic.
        data: {"root", "content"} of a real dataset: its folder (recorded, not part of the key) and the
            content digest of its files (`pattlite.data.fingerprint.dataset_identity`; None when the
            root does not exist yet); both None for synthetic data, which `source` (the generator
            options) identifies.
        fold: CK+ test fold (None for other benchmarks).
        variant: `pattlite.model` variant; model_options: its options (cut_layer, kernel, attention, augment).
        seed: training seed.
        image_size, resize_to: image side fed to the model, side resized to inside it.
        weights: "imagenet", a weights file path, or None (seeded random backbone, BatchNorm calibrated
            on `bn_calibration_images` training images; `weights_seed`).
        stage1: "exact" (full model, flip and contrast inside it) or "cached" (head on cached features; the
            flip as mirror-image features when `train["train_views"]` is 2, no contrast).
        extraction_engine: the library that computes the cached features ("openvino" or "tensorflow";
            None when stage 1 is "exact"). Part of the key: the two engines' features differ by up to
            one float16 step, which training turns into accuracies points apart, so a result holds only
            for the engine that made it. Its version is recorded, not keyed (see `make_experiment`).
        finetune: "as_coded" or "paper".
        train_limit: at most this many training images (class-stratified; None = all).
        protocols: evaluation protocols run on the test split and on each challenging subset.
        train: `TrainConfig` fields other than the defaults (epochs, validation, ...).
    """

    profile: str
    dataset: str
    source: dict
    synthetic: bool
    data: dict
    fold: int | None
    variant: str
    model_options: dict
    seed: int
    image_size: int
    resize_to: int
    weights: str | None
    weights_seed: int
    bn_calibration_images: int
    stage1: str
    extraction_engine: str | None
    finetune: str
    train_limit: int | None
    protocols: tuple
    train: dict

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["protocols"] = list(self.protocols)
        return d

    def key(self) -> str:
        """Short hash of the canonical JSON of every field but the dataset's folder (`data["root"]`)."""
        keyed = self.to_dict()
        keyed["data"] = {k: v for k, v in keyed["data"].items() if k != "root"}
        return json_digest(keyed)

    def train_config(self) -> TrainConfig:
        return TrainConfig(seed=self.seed, finetune=self.finetune, verbose=False, **self.train)

    def evaluated_on_features(self) -> bool:
        """Whether the evaluated model (and the saved weights) is the head on cached features: a cached
        stage 1, except when the paper's fine-tuning, which changes backbone weights, ran stage 2 on the
        full model."""
        return self.stage1 == "cached" and not (self.finetune == "paper" and self.train_config().stage2)

    def label(self) -> str:
        """Short human-readable description for progress lines."""
        fold = f" fold {self.fold}" if self.fold is not None else ""
        options = "".join(f" {k}={v}" for k, v in sorted(self.model_options.items()))
        return f"{self.dataset}{fold} {self.variant}{options} seed {self.seed}"


def data_identity(source: dict, root=None) -> dict:
    """{"root", "content"} of an experiment's data source (see `Experiment.data`)."""
    if source["dataset"] == "synthetic":
        return {"root": None, "content": None}
    identity = dataset_identity(source["dataset"], root, **source["options"])
    return {"root": identity["root"], "content": identity["content"]}


def bind_root(exp: Experiment, root) -> Experiment:
    """The experiment on the dataset at `root` (its current files); unchanged for synthetic data or root None."""
    if root is None or exp.source["dataset"] == "synthetic":
        return exp
    return dataclasses.replace(exp, data=data_identity(exp.source, root))


def make_experiment(
    profile, dataset: str, variant: str, seed: int = 0, fold: int | None = None, root=None, **overrides
) -> Experiment:
    """An `Experiment` with every field filled from a profile.

    Args:
        profile: a profile name or `Profile`.
        dataset: benchmark name ("ckplus", "rafdb", "fer2013", "ferplus").
        variant: a `pattlite.model` variant.
        seed: training seed, 0..2**32 - 1.
        fold: CK+ test fold (default: the profile's first fold); not allowed for other benchmarks.
        root: the real dataset's folder (default `$PATTLITE_<NAME>_ROOT`, else data/<name>/); its
            files' content digest is taken now (`Experiment.data`). Ignored for synthetic data.
        **overrides: `Experiment` fields (e.g. stage1="exact"), model options (cut_layer, kernel,
            attention, augment) or `TrainConfig` fields (e.g. stage2=False, validation="independent").

    Raises:
        ValueError: unknown profile, dataset, variant or override (the message lists the valid names).
    """
    if not isinstance(profile, Profile):
        profile = get_profile(profile)
    config.check_name("benchmark", dataset, BENCHMARKS)
    config.check_name("variant", variant, tuple(VARIANTS))
    seed = config.check_seed(seed)
    if dataset == "ckplus":
        fold = profile.ckplus_folds[0] if fold is None else fold
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < 10:
            raise ValueError(f"fold {fold!r}: expected an int in 0..9 (CK+ 10-fold cross-validation)")
    elif fold is not None:
        raise ValueError(f"fold={fold!r} given for {dataset!r}; only ckplus is cross-validated")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "finetune", "verbose"}
    exp_fields = {f.name for f in dataclasses.fields(Experiment)} - {
        "profile",
        "dataset",
        "variant",
        "seed",
        "fold",
        "train",
    }
    model_options, train_overrides, exp_overrides = {}, {}, {}
    for name, value in overrides.items():
        if name in MODEL_OPTIONS:
            model_options[name] = value
        elif name in exp_fields:
            exp_overrides[name] = value
        elif name in train_fields:
            train_overrides[name] = value
        else:
            raise ValueError(
                f"unknown experiment override {name!r}; valid: experiment fields "
                f"{sorted(exp_fields)}, model options {list(MODEL_OPTIONS)}, TrainConfig "
                f"fields {sorted(train_fields)}"
            )
    # The profile's training settings (the fields of the authors' recipe it may change), then the overrides.
    train_settings = {name: getattr(profile, name) for name in AUTHORS_RECIPE}
    train_settings["test_probe_epochs"] = tuple(train_settings["test_probe_epochs"])
    train_settings.update(train_overrides)
    source = profile.source(dataset)
    fields = dict(
        profile=profile.name,
        dataset=dataset,
        source=source,
        synthetic=profile.synthetic,
        data=exp_overrides.pop("data") if "data" in exp_overrides else data_identity(source, root),
        fold=fold,
        variant=variant,
        model_options=dict(sorted(model_options.items())),
        seed=int(seed),
        image_size=profile.image_size(dataset),
        resize_to=profile.resize_to,
        weights=None if profile.weights is None else str(profile.weights),
        weights_seed=profile.weights_seed,
        bn_calibration_images=profile.bn_calibration_images,
        stage1=profile.stage1,
        extraction_engine=None,
        finetune=profile.finetune,
        train_limit=profile.train_limit,
        protocols=tuple(PROTOCOLS),
        train=train_settings,
    )
    fields.update(exp_overrides)
    if fields["stage1"] == "cached" and fields["extraction_engine"] is None:
        fields["extraction_engine"] = extraction_engine(profile.extraction_engine)
    elif fields["stage1"] != "cached":
        fields["extraction_engine"] = None  # no cached features, so no engine
    fields["protocols"] = tuple(fields["protocols"])
    for protocol in fields["protocols"]:
        config.check_name("evaluation protocol", protocol, PROTOCOLS)
    exp = Experiment(**fields)
    if exp.train_config().train_views not in (1, 2):  # validates the TrainConfig fields now too
        raise ValueError(
            f"train_views={exp.train['train_views']!r}: expected 1 (no augmentation) or 2 "
            "(each training image or its mirror image, the authors' horizontal flip)"
        )
    if exp.train_config().train_views > 1 and exp.stage1 != "cached":
        raise ValueError(
            f"train_views={exp.train['train_views']} mirrors cached features (stage1='cached'); "
            "stage1='exact' augments inside the model (model option augment)"
        )
    return exp
