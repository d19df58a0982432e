"""Names and paths every module shares: class order and dataset names, the protocols and modes, the data, cache,
results, figures and reports folders, dataset roots, and the checks of names and seeds (`check_name`,
`check_seed`, `check_seeds`: the one seed validator).

Nothing else hard-codes a dataset root or a class order. Run settings (epochs, sizes, seeds, weights, the
engines) are the profiles' (`pattlite.profiles`).
"""

from __future__ import annotations

import os
from pathlib import Path

# Canonical class order of this project (the column order of the paper's Table 1). Every reader maps
# its dataset's own label numbering to these names; integer labels index a dataset's class list below.
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt")

DATASETS = ("fer2013", "ferplus", "rafdb", "ckplus", "synthetic")
REAL_DATASETS = ("ckplus", "rafdb", "fer2013", "ferplus")  # the paper's column order
DATASET_NAMES = {"ckplus": "CK+", "rafdb": "RAF-DB", "fer2013": "FER2013", "ferplus": "FERPlus"}  # as printed

# Class list (and so integer label order) per dataset. CK+'s 7-class protocol has contempt, not neutral.
DATASET_CLASSES = {
    "fer2013": CLASSES[:7],
    "rafdb": CLASSES[:7],
    "ferplus": CLASSES,
    "ckplus": tuple(c for c in CLASSES if c != "neutral"),
    "synthetic": CLASSES[:7],  # 8 with num_classes=8; see pattlite.data.synthetic
}

# Model variant names (pattlite.model.VARIANTS describes each; kept here so that names can be checked
# without importing Keras).
VARIANTS = ("published", "no_mixing", "pattlite", "baseline", "patch_only", "attention_only", "patch_attention")

# Backbone layers the paper says were unfrozen for fine-tuning (Section IV-B).
PAPER_FINETUNE_LAYERS = {"ckplus": 40, "rafdb": 59, "fer2013": 46, "ferplus": 49}

# The challenging-condition test subsets of RAF-DB and FERPlus (the RAN lists; Table 11): the manifest
# columns that flag them and the `subset` of a result (besides "all", the whole test split).
SUBSETS = ("occlusion", "pose30", "pose45")

# Evaluation protocols (pattlite.evaluate describes each), and the two that validation can use
# (pattlite.train.ValidationCallback).
PROTOCOLS = ("published", "shuffled", "independent")
VALIDATION_PROTOCOLS = ("published", "independent")

# Stage 1 on the full model with augmentation, or the head on cached frozen-backbone features
# (pattlite.profiles); stage-2 fine-tuning as the authors' code does it or as the paper says
# (pattlite.model.set_finetune_trainable).
STAGE1_MODES = ("exact", "cached")
FINETUNE_MODES = ("as_coded", "paper")

# Table 5's cut layers: the paper's layer number N read as backbone.layers[-N] of Keras'
# include_top=False MobileNet, and the layer it names (pattlite.model.cut_layer_name recomputes these
# from Keras; the tests check the two agree).
TABLE5_CUT_LAYERS = {
    17: "conv_dw_11_relu",
    23: "conv_dw_10_relu",
    29: "conv_dw_9_relu",
    35: "conv_dw_8_relu",
    41: "conv_dw_7_relu",
    47: "conv_dw_6_relu",
}

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _dir_from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def data_dir() -> Path:
    """Where datasets and caches live: $PATTLITE_DATA_DIR, else <project>/data."""
    return _dir_from_env("PATTLITE_DATA_DIR", PROJECT_ROOT / "data")


def results_dir(profile: str | None = None) -> Path:
    """Experiment results: $PATTLITE_RESULTS_DIR, else <project>/results[/<profile>]."""
    base = _dir_from_env("PATTLITE_RESULTS_DIR", PROJECT_ROOT / "results")
    return base / profile if profile else base


def figures_dir(profile: str) -> Path:
    return _dir_from_env("PATTLITE_FIGURES_DIR", PROJECT_ROOT / "figures") / profile


def reports_dir(profile: str) -> Path:
    return _dir_from_env("PATTLITE_REPORTS_DIR", PROJECT_ROOT / "reports") / profile


def cache_dir() -> Path:
    """Pixel and feature caches: $PATTLITE_CACHE_DIR, else <data dir>/cache."""
    return _dir_from_env("PATTLITE_CACHE_DIR", data_dir() / "cache")


def dataset_root_env_var(name: str) -> str:
    return f"PATTLITE_{name.upper()}_ROOT"


def dataset_root(name: str, root: str | os.PathLike | None = None) -> Path:
    """Root folder of a dataset: the explicit argument, else $PATTLITE_<NAME>_ROOT, else data/<name>/."""
    check_name("dataset", name, DATASETS)
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    return _dir_from_env(dataset_root_env_var(name), data_dir() / name)


MAX_SEED = 2**32 - 1  # numpy and Keras seeds are unsigned 32-bit integers


def check_seed(seed, what: str = "seed") -> int:
    """The seed as an int, or a ValueError: seeds are integers in 0..2**32 - 1."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} {seed!r}: expected an integer in 0..{MAX_SEED} (2**32 - 1)")
    return int(seed)


def check_seeds(seeds, what: str = "seeds", each: str = "seed") -> tuple:
    """The seeds as a tuple of ints (`check_seed` each, its message led by `each`), or a ValueError: at least
    one. The one seed validator: profiles, notebooks, ./run_all.sh's -p seeds= and the CLI's flags use it."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError(f"{what} is empty: give at least one seed, e.g. 0 or 0,1")
    return tuple(check_seed(seed, each) for seed in seeds)


def check_name(kind: str, value: str, valid) -> str:
    """Raise a ValueError listing the valid names when `value` is not one of them."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value
