"""The authors' training recipe as one value: `TrainConfig`, every hyperparameter of their two stages and the
recorded choices around it (`pattlite.train.train` runs it). The settings a profile also sets (epoch limits,
validation, ...) default to `pattlite.profiles.AUTHORS_RECIPE`, written once there.

An experiment's key hashes the fields it passes (`pattlite.experiments.Experiment.train`): field names, order and
defaults are part of every result key and must not change.
"""

from __future__ import annotations

import dataclasses

from pattlite import config
from pattlite.profiles import AUTHORS_RECIPE


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of the authors' recipe, and the recorded choices around it.

    Attributes:
        batch_size: training batch size (8).
        validation: "published" (class-grouped, unshuffled, batch `validation_batch_size`: the authors'
            validation) or "independent" (no validation prediction depends on another image).
        validation_batch_size: 8 (Keras uses the training batch size for validation).
        seed: seeds Python, NumPy and the Keras backend, and the per-epoch shuffle order.
        deterministic: request deterministic backend ops (`pattlite.seeding.enable_determinism`).
        steps_per_execution: batches per compiled call (`Model.compile`) on the plain path (`fast=False`).
        fast: train with `fit_in_order` (the default): the same optimizer updates in the same order as
            Keras `fit` over `OrderedBatches`, without its per-step costs. False: that plain `fit`.
        train_views: 1, or 2 for the authors' `RandomFlip("horizontal")` on cached features: the
            training inputs then hold 2N rows, the N images and then their mirror images, and every
            epoch each image is seen as itself or its mirror with probability 1/2, drawn from the seed
            (`pattlite.evaluate.epoch_order`). Validation uses the originals only.
        verbose: print one line per epoch.
        stage1_epochs: 100.
        stage1_learning_rate: 1e-3.
        global_clipnorm: 3.0 (both stages).
        class_weight: "balanced" (sklearn's `compute_class_weight`) or None.
        stage1_monitor: "val_accuracy".
        stage1_patience, stage1_min_delta: EarlyStopping (5, 0.003, restore best weights).
        lr_patience, lr_min_delta, lr_factor, min_learning_rate: ReduceLROnPlateau (3, 0.003, 0.1, 1e-6).
        stage2: run stage 2 at all.
        finetune: "as_coded" or "paper" (`pattlite.model.set_finetune_trainable`).
        finetune_layers: layers to unfreeze (None: the mode's default; "paper" uses the dataset's).
        stage2_epochs: Keras' `epochs` for stage 2 (500): the last epoch index + 1.
        stage2_max_epochs: cap on the stage-2 epochs actually run (None: no cap; small profiles).
        stage2_learning_rate: 1e-5.
        stage2_decay_steps, stage2_decay_rate: the per-epoch inverse time decay lr0 / (1 + rate * epoch / steps).
        stage2_monitor: "accuracy" (training accuracy, as coded).
        stage2_patience, stage2_min_delta: EarlyStopping (20, 0.003, restore best weights).
        stage2_start_offset: stage 2 starts at `history.epoch[-offset]` of stage 1 (5).
        test_probe_epochs: numbers of stage-2 epochs run after which `train`'s `test_probe` is called
            (the experiment records the test accuracy there, to measure what an epoch cap costs; it
            never selects or stops a model). Empty: none.
        spatial_dropout, finetune_dropout: the stage-2 graph's dropout rates (0.2, 0.2).
    """

    batch_size: int = 8
    validation: str = AUTHORS_RECIPE["validation"]
    validation_batch_size: int = 8
    seed: int = 0
    deterministic: bool = AUTHORS_RECIPE["deterministic"]
    steps_per_execution: int = AUTHORS_RECIPE["steps_per_execution"]
    fast: bool = True
    train_views: int = AUTHORS_RECIPE["train_views"]
    verbose: bool = True
    # Stage 1
    stage1_epochs: int = AUTHORS_RECIPE["stage1_epochs"]
    stage1_learning_rate: float = 1e-3
    global_clipnorm: float = 3.0
    class_weight: str | None = "balanced"
    stage1_monitor: str = "val_accuracy"
    stage1_patience: int = 5
    stage1_min_delta: float = 0.003
    lr_patience: int = 3
    lr_min_delta: float = 0.003
    lr_factor: float = 0.1
    min_learning_rate: float = 1e-6
    # Stage 2
    stage2: bool = True
    finetune: str = "as_coded"
    finetune_layers: int | None = None
    stage2_epochs: int = AUTHORS_RECIPE["stage2_epochs"]
    stage2_max_epochs: int | None = AUTHORS_RECIPE["stage2_max_epochs"]
    stage2_learning_rate: float = 1e-5
    stage2_decay_steps: float = 80.0
    stage2_decay_rate: float = 1.0
    stage2_monitor: str = "accuracy"
    stage2_patience: int = 20
    stage2_min_delta: float = 0.003
    stage2_start_offset: int = 5
    spatial_dropout: float = 0.2
    finetune_dropout: float = 0.2
    test_probe_epochs: tuple = AUTHORS_RECIPE["test_probe_epochs"]

    def __post_init__(self):
        config.check_name("validation protocol", self.validation, config.VALIDATION_PROTOCOLS)
        config.check_name("fine-tuning mode", self.finetune, config.FINETUNE_MODES)
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight {self.class_weight!r}: expected 'balanced' or None")
        for name in (
            "batch_size",
            "validation_batch_size",
            "stage1_epochs",
            "stage2_epochs",
            "steps_per_execution",
            "stage2_start_offset",
            "train_views",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r}: expected a positive int")
        probes = self.test_probe_epochs
        if not isinstance(probes, (tuple, list)) or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in probes
        ):
            raise ValueError(f"TrainConfig.test_probe_epochs={probes!r}: expected a tuple of positive ints")
        object.__setattr__(self, "test_probe_epochs", tuple(sorted(set(probes))))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
