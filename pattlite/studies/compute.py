"""How long a real-data profile would train on this machine, and the warning when no GPU/TPU is visible.

The demo and ci profiles are sized for a CPU; the paper profile is not. Before training, a notebook (and
`./run_all.sh`) warns with an upper-bound estimate when Keras sees no accelerator.
"""

from __future__ import annotations

import warnings

from pattlite import paper, report
from pattlite.profiles import as_profile
from pattlite.recipe import TrainConfig
from pattlite.studies.plan import all_experiments

# CPU training throughput behind the estimate of `warn_if_no_accelerator`, as measured for this project
# on 2 CPU cores (224x224 inputs, batch 8): backbone frozen, and the paper's 59 RAF-DB layers unfrozen.
CPU_IMAGES_PER_SECOND_FROZEN = 135.0
CPU_IMAGES_PER_SECOND_UNFROZEN = 27.0


def paper_compute_estimate(profile="paper", experiments=None) -> dict:
    """Rough CPU time of a profile's trainings, from throughput measured on 2 CPU cores at 224x224.

    Every epoch up to the profile's caps is counted (early stopping usually ends sooner, so this is an
    upper bound): stage 1 at `CPU_IMAGES_PER_SECOND_FROZEN` images/s; stage 2 at the same rate when no
    backbone weight is trainable (fine-tuning "as_coded") or at `CPU_IMAGES_PER_SECOND_UNFROZEN` with the
    paper's layers unfrozen (fine-tuning "paper"). Training-set sizes are the paper's Table 3 (CK+:
    about 1,000 images per fold).

    Args:
        profile: a profile name or `Profile`.
        experiments: the experiments to count (default `pattlite.studies.plan.all_experiments(profile)`).

    Returns:
        {"experiments", "train_images", "hours_per_epoch", "stage1_hours", "stage2_hours", "total_hours"}.
    """
    profile = as_profile(profile)
    exps = all_experiments(profile) if experiments is None else list(experiments)
    published_train = paper.paper_table(3).query("split == 'train'").set_index("dataset")["value"]
    train_images = {**published_train.to_dict(), "ckplus": 1000.0}
    stage2_rate = CPU_IMAGES_PER_SECOND_UNFROZEN if profile.finetune == "paper" else CPU_IMAGES_PER_SECOND_FROZEN
    # Stage 2 starts at epoch index history.epoch[-offset] of stage 1 and runs to `stage2_epochs`.
    offset = TrainConfig.stage2_start_offset  # the dataclass field's default: the authors' 5
    stage2_epochs = max(profile.stage2_epochs - max(profile.stage1_epochs - offset, 0), 0)
    if profile.stage2_max_epochs is not None:
        stage2_epochs = min(stage2_epochs, profile.stage2_max_epochs)
    images = 0.0
    for exp in exps:
        n = float(train_images[exp.dataset])
        images += min(n, float(profile.train_limit)) if profile.train_limit else n
    stage1 = images * profile.stage1_epochs / CPU_IMAGES_PER_SECOND_FROZEN
    stage2 = images * stage2_epochs / stage2_rate
    return {
        "experiments": len(exps),
        "train_images": int(images),
        "hours_per_epoch": images / CPU_IMAGES_PER_SECOND_FROZEN / 3600,
        "stage1_hours": stage1 / 3600,
        "stage2_hours": stage2 / 3600,
        "total_hours": (stage1 + stage2) / 3600,
    }


def accelerator_names() -> list[str]:
    """GPUs/TPUs the Keras backend sees (empty on CPU)."""
    return report.accelerators()


def warn_if_no_accelerator(profile, experiments=None) -> str | None:
    """Warn (and return the message) when a non-synthetic profile is about to train on CPU only.

    The message gives the time estimate of `paper_compute_estimate`. Returns None when a GPU/TPU is
    present or the profile is sized for a CPU (cpu, demo, ci).
    """
    profile = as_profile(profile)
    if profile.sized_for_cpu:
        return None
    if accelerator_names():
        return None
    est = paper_compute_estimate(profile, experiments)
    message = (
        f"profile {profile.name!r} on CPU only (no GPU/TPU visible to Keras): {est['experiments']} "
        f"experiments, about {est['hours_per_epoch']:.1f} h per epoch over all of them at "
        f"{CPU_IMAGES_PER_SECOND_FROZEN:.0f} images/s, up to {est['total_hours']:.0f} h at the epoch caps "
        f"(stage 1 {est['stage1_hours']:.0f} h, stage 2 {est['stage2_hours']:.0f} h; measured on 2 CPU "
        f"cores at 224x224). Use a GPU (Kaggle, Colab: docs/notebooks.md) or run fewer experiments."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message
