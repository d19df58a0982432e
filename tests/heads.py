"""Small trained-head files for the predict and export tests: a head as a training stores it (weights with
optimizer variables beside a result file), made in seconds from random features, no real training."""

from pathlib import Path

import numpy as np
from PIL import Image

from pattlite import config

REPO_ROOT = Path(__file__).resolve().parents[1]
FER_TEST = REPO_ROOT / "tests" / "fixtures" / "ferplus" / "data" / "FER2013Test"
# FERPlus sample faces (48x48 grey) in which OpenCV's cascade finds the face once placed in a photo
FACE_FILES = ("fer0032376.png", "fer0032447.png")


def training_files(
    folder: Path,
    variant: str = "pattlite",
    num_classes: int = 8,
    image_size: int = 48,
    key: str = "0123456789abcdef",
    dataset: str = "ferplus",
) -> Path:
    """`<key>.weights.h5` + `<key>.json` as `pattlite.experiments` writes them for a head trained on
    cached features (one optimizer step on random features); returns the weights path."""
    from pattlite.model import build_head
    from pattlite.results import ExperimentResult

    folder.mkdir(parents=True, exist_ok=True)
    head = build_head(variant, num_classes, (14, 14, 512))
    head.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    head.train_on_batch(rng.normal(0, 1, (4, 14, 14, 512)).astype("float32"), np.arange(4) % num_classes)
    # Larger output weights than an initialisation's, so that the probabilities differ between images.
    kernel, bias = head.get_layer("predictions").get_weights()
    head.get_layer("predictions").set_weights([rng.normal(0, 3, kernel.shape).astype("float32"), bias])
    weights = folder / f"{key}.weights.h5"
    head.save_weights(str(weights))
    classes = list(config.CLASSES[:num_classes])
    ExperimentResult(
        key=key,
        dataset=dataset,
        source_dataset=dataset,
        classes=classes,
        synthetic=False,
        data=None,
        config={
            "profile": "ci",
            "variant": variant,
            "model_options": {},
            "image_size": image_size,
            "resize_to": 224,
            "seed": 7,
            "source": {"dataset": dataset, "options": {}},
        },
        stage1="cached",
        notes=[],
        weights={},
        split_sizes={},
        metrics={"all": {"independent": {"accuracy": 0.5}}},
        predictions={},
        history={},
        epochs={},
        trainable_params={},
        finetune=None,
        wall_time_s={},
        provenance={"git_commit": "f" * 40, "keras": "3"},
    ).write(folder / f"{key}.json")
    return weights


def photo_with_face(name: str) -> np.ndarray:
    """A 240x320 grey photo holding one FERPlus sample face at 160 px (edges repeated around it)."""
    face = Image.open(FER_TEST / name).convert("L").resize((160, 160), Image.Resampling.BILINEAR)
    return np.pad(np.asarray(face), ((40, 40), (80, 80)), mode="edge")
