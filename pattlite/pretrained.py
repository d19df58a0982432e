"""A trained PAtt-Lite from a head-only weights file: export the head of a training, load it into the full model.

Trainings on cached features (`pattlite.experiments`) store the head they trained at
`results/<profile>/experiments/<key>.weights.h5`, optimizer variables included, beside `<key>.json`.
`export_head` turns such a pair into what a user needs:

- `<name>.weights.h5`: a Keras weights file of the head alone (`pattlite.model.build_head`'s layers;
  no optimizer; about 1.1 MB for the `pattlite` head's 280k parameters), loadable with
  `build_head(...).load_weights(path)`;
- `<name>.json` beside it (the sidecar, `HeadInfo`): variant, model options, dataset, classes in
  label order, image size, how faces must be prepared (`face_size`, `grayscale`), seed, profile,
  experiment key, source commit, test accuracies, the weights file's SHA-256.

`load_pretrained(head, backbone)` builds the full image model (`pattlite.model.build_model`: input ->
resize to 224 -> MobileNet preprocessing -> MobileNetV1 to the cut, ImageNet weights resolved by
`pattlite.profiles.resolve_weights` -> head) and puts the file's head weights into its head layers,
matched by layer name (`load_head_weights`). The shipped model, when present, is `SHIPPED_HEAD`.

Errors name the file: `HeadWeightsNotFoundError` (a `FileNotFoundError`, saying how to give one),
`HeadWeightsError` (a `ValueError`: not a weights file, a layer missing or extra, a shape mismatch, a
sidecar that does not fit).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pattlite import config
from pattlite.files import write_json_atomic

SHIPPED_HEAD = Path(__file__).resolve().parent / "resources" / "weights" / "pattlite_ferplus.weights.h5"
HEAD_FORMAT = "pattlite-head"
HEAD_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".weights.h5"
# How each dataset's images look, so that a face given to the model looks like the training images:
# (side the faces were stored at, grey). FER2013 and FERPlus: 48x48 grey crops (the pixel cache resizes
# them to the profile's image size). CK+ is grey, but its size depends on the layout read (CK+48 or the
# uncropped frames); RAF-DB is colour, aligned 100x100 or original photos: no face size for either.
FACE_SOURCES = {"fer2013": (48, True), "ferplus": (48, True), "ckplus": (None, True), "rafdb": (None, False)}
HOW_TO_GIVE = (
    f"give a head weights file with --head PATH (a {WEIGHTS_SUFFIX} file with its .json sidecar, "
    "made by `pattlite export-head` from a training's results/<profile>/experiments/<key>"
    f"{WEIGHTS_SUFFIX})"
)


class HeadWeightsError(ValueError):
    """A head weights file (or its sidecar) that cannot be read or does not fit the model."""


class HeadWeightsNotFoundError(HeadWeightsError, FileNotFoundError):
    """The head weights file or its sidecar does not exist."""


@dataclass
class HeadInfo:
    """The sidecar of a head weights file: everything needed to rebuild the model and feed it faces."""

    variant: str
    classes: list
    dataset: str
    image_size: int
    resize_to: int = 224
    model_options: dict = field(default_factory=dict)
    face_size: int | None = 48
    grayscale: bool = True
    seed: int | None = None
    profile: str | None = None
    experiment_key: str | None = None
    source_commit: str | None = None
    synthetic: bool = False
    test_accuracy: dict = field(default_factory=dict)
    keras: str | None = None
    keras_backend: str | None = None
    weights_sha256: str | None = None
    head_params: int | None = None
    format: str = HEAD_FORMAT
    format_version: int = HEAD_FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def batch_dependent(self) -> bool:
        """True when a prediction depends on the other images of its batch (batch-mixing attention)."""
        from pattlite.model import VARIANTS

        return VARIANTS[self.variant].attention == "batch" and self.model_options.get("attention", "batch") == "batch"


def sidecar_path(weights_path) -> Path:
    """`<name>.json` beside `<name>.weights.h5` (for a training's `<key>.weights.h5`: its result file)."""
    path = Path(weights_path)
    stem = path.name[: -len(WEIGHTS_SUFFIX)] if path.name.endswith(WEIGHTS_SUFFIX) else path.stem
    return path.with_name(stem + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def info_from_result(result) -> HeadInfo:
    """The `HeadInfo` of a training from its `pattlite.results.ExperimentResult`."""
    cfg = result.config
    source = (cfg.get("source") or {}).get("dataset") or result.source_dataset or result.dataset
    face_size, grayscale = FACE_SOURCES.get(source, (None, False))  # synthetic: colour, drawn at image_size
    return HeadInfo(
        variant=cfg["variant"],
        classes=list(result.classes),
        dataset=result.dataset,
        image_size=int(cfg["image_size"]),
        resize_to=int(cfg.get("resize_to", 224)),
        model_options=dict(cfg.get("model_options") or {}),
        face_size=face_size,
        grayscale=grayscale,
        seed=cfg.get("seed"),
        profile=cfg.get("profile"),
        experiment_key=result.key,
        source_commit=result.provenance.get("git_commit"),
        synthetic=bool(result.synthetic),
        test_accuracy={protocol: m["accuracy"] for protocol, m in result.test_metrics.items()},
        keras=result.provenance.get("keras"),
        keras_backend=result.provenance.get("keras_backend"),
    )


def read_info(weights_path) -> HeadInfo:
    """The sidecar of `weights_path`: a head sidecar (`export_head`) or a training's result file."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise HeadWeightsNotFoundError(f"head weights file {weights_path} does not exist; {HOW_TO_GIVE}")
    path = sidecar_path(weights_path)
    if not path.is_file():
        raise HeadWeightsNotFoundError(
            f"head weights file {weights_path}: its sidecar {path} does not exist (it says which variant, classes "
            f"and image size the weights belong to); {HOW_TO_GIVE}"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HeadWeightsError(f"sidecar {path} of {weights_path} is not valid JSON: {error}") from None
    if isinstance(content, dict) and content.get("format") == HEAD_FORMAT:
        if content.get("format_version") != HEAD_FORMAT_VERSION:
            raise HeadWeightsError(
                f"sidecar {path}: format version {content.get('format_version')!r}; this "
                f"pattlite reads version {HEAD_FORMAT_VERSION}"
            )
        known = {f for f in HeadInfo.__dataclass_fields__}
        try:
            info = HeadInfo(**{k: v for k, v in content.items() if k in known})
        except TypeError as error:
            raise HeadWeightsError(f"sidecar {path}: {error}") from None
    else:
        from pattlite.results import DamagedResultError, ExperimentResult

        try:
            info = info_from_result(ExperimentResult.read(path))
        except DamagedResultError as error:
            raise HeadWeightsError(
                f"sidecar {path} of {weights_path} is neither a head sidecar nor a result file: {error}"
            ) from None
    config.check_name("variant", info.variant, config.VARIANTS)
    return info


def read_head_weights(path) -> dict[str, list[np.ndarray]]:
    """{layer name: its weights, in the layer's order} from a Keras `.weights.h5` file of a model.

    Layers without weights and the optimizer's variables are left out; a training's file and a head-only
    file read alike.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise HeadWeightsNotFoundError(f"head weights file {path} does not exist; {HOW_TO_GIVE}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise HeadWeightsError(
            f"head weights file {path} is not an HDF5 file ({error}); expected a Keras {WEIGHTS_SUFFIX} file"
        ) from None
    weights = {}
    with handle:
        layers = handle.get("layers")
        if not isinstance(layers, h5py.Group):
            raise HeadWeightsError(
                f"head weights file {path} has no 'layers' group: not a Keras {WEIGHTS_SUFFIX} file of a model"
            )
        for group in layers.values():
            variables = group.get("vars") if isinstance(group, h5py.Group) else None
            if variables is None or not len(variables):
                continue
            name = variables.attrs.get("name")
            if name is None:
                raise HeadWeightsError(
                    f"head weights file {path}: layer group {group.name} has no layer name "
                    "(written by a Keras before 3.10?); re-save it with this Keras"
                )
            name = name.decode() if isinstance(name, bytes) else str(name)
            weights[name] = [np.asarray(variables[k]) for k in sorted(variables, key=int)]
    return weights


def load_head_weights(model, path) -> list[str]:
    """Puts the head weights of the file `path` into the head layers of `model`, matched by layer name.

    Every head layer of `model` with weights must be in the file with the same shapes, and the file must
    hold no other layer; otherwise `HeadWeightsError` names the file and the layer. Returns the names of
    the layers set.
    """
    from pattlite.model import head_layers

    stored = read_head_weights(path)
    expected = {layer.name: layer for layer in head_layers(model) if layer.weights}
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise HeadWeightsError(
            f"head weights file {path} has no weights for layer(s) {', '.join(missing)} of "
            f"model {model.name!r}; it holds {', '.join(sorted(stored)) or 'no layer'}"
        )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise HeadWeightsError(
            f"head weights file {path} holds layer(s) {', '.join(extra)} that the head of "
            f"model {model.name!r} does not have (a full-model training, or another variant?)"
        )
    for name, layer in expected.items():
        want = [tuple(w.shape) for w in layer.weights]
        have = [tuple(a.shape) for a in stored[name]]
        if want != have:
            raise HeadWeightsError(
                f"head weights file {path}, layer {name!r}: weight shapes {have} do not fit "
                f"the model's {want} (another class count or variant?)"
            )
        layer.set_weights(stored[name])
    return sorted(expected)


def _feature_shape(info: HeadInfo) -> tuple:
    """The backbone's output at the cut for this head (e.g. (14, 14, 512) for conv_dw_9_relu at 224)."""
    from pattlite.model import variant_cut_layer

    return _mobilenet_output_shape(variant_cut_layer(info.variant, **info.model_options), info.resize_to)


@functools.lru_cache(maxsize=None)
def _mobilenet_output_shape(cut: str, size: int) -> tuple:
    import keras

    net = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(size, size, 3))
    return tuple(int(d) for d in net.get_layer(cut).output.shape[1:])


def export_head(source, out, **overrides) -> tuple[Path, HeadInfo]:
    """Writes the head-only weights file `out` (and its sidecar) from a training's weights file.

    Args:
        source: a training's `<key>.weights.h5` (its `<key>.json` result file must lie beside it), or a
            head file with its sidecar.
        out: the new `<name>.weights.h5`; the sidecar goes to `<name>.json`.
        **overrides: `HeadInfo` fields to set in the sidecar (e.g. dataset, seed).

    Returns:
        (the weights path, its `HeadInfo`).
    """
    from pattlite.model import build_head, count_params

    source, out = Path(source), Path(out)
    if not out.name.endswith(WEIGHTS_SUFFIX):
        raise HeadWeightsError(f"output {out}: the name must end in {WEIGHTS_SUFFIX} (Keras' weights files)")
    unknown = sorted(set(overrides) - set(HeadInfo.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown sidecar field(s) {', '.join(unknown)}; valid: {', '.join(HeadInfo.__dataclass_fields__)}"
        )
    if not source.is_file():
        raise HeadWeightsNotFoundError(f"head weights file {source} does not exist")
    info = read_info(source)
    for name, value in overrides.items():
        setattr(info, name, value)
    head = build_head(info.variant, info.num_classes, _feature_shape(info), **info.model_options)
    load_head_weights(head, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save_weights(str(out))
    info.weights_sha256 = _sha256(out)
    info.head_params = count_params(head.weights)
    write_json_atomic(sidecar_path(out), asdict(info))
    return out, info


def check_file(info: HeadInfo, path) -> None:
    """Raises `HeadWeightsError` when the weights file is not the one its sidecar describes (its SHA-256)."""
    if info.weights_sha256 and _sha256(Path(path)) != info.weights_sha256:
        raise HeadWeightsError(
            f"head weights file {path} does not match its sidecar {sidecar_path(path)} "
            "(SHA-256 differs): the file was replaced or damaged; export it again"
        )


@dataclass
class Pretrained:
    """A loaded trained model: the Keras image model, what its sidecar says, and the files used."""

    model: object
    info: HeadInfo
    head_path: Path
    backbone: object

    @property
    def input_shape(self) -> tuple:
        return (self.info.image_size, self.info.image_size, 3)


def load_pretrained(head=None, backbone="imagenet", variant: str | None = None) -> Pretrained:
    """The full image model of a trained head: backbone with its weights + the head's trained weights.

    Args:
        head: the head weights file (default `SHIPPED_HEAD`); its sidecar lies beside it.
        backbone: the MobileNetV1 weights: "imagenet" (resolved by `pattlite.profiles.resolve_weights`:
            $PATTLITE_WEIGHTS, data/weights/, else Keras' download), a `.weights.h5` path, or None (random
            backbone: for tests; predictions mean nothing).
        variant: when given, the variant the file must hold (`HeadWeightsError` otherwise).

    Returns:
        `Pretrained`; its model takes (N, image_size, image_size, 3) pixel values 0..255 and returns the
        class probabilities in `info.classes` order.
    """
    from pattlite.model import build_model
    from pattlite.profiles import resolve_weights

    path = Path(SHIPPED_HEAD if head is None else head).expanduser()
    if not path.is_file():
        where = "the shipped weights file " if head is None else "head weights file "
        raise HeadWeightsNotFoundError(f"{where}{path} does not exist; {HOW_TO_GIVE}")
    info = read_info(path)
    if variant is not None and variant != info.variant:
        raise HeadWeightsError(
            f"head weights file {path} holds a {info.variant!r} head, not {variant!r} "
            f"(its sidecar {sidecar_path(path)})"
        )
    check_file(info, path)
    weights = resolve_weights(backbone)
    model = build_model(
        info.variant,
        info.num_classes,
        input_shape=(info.image_size,) * 2 + (3,),
        weights=weights,
        augment=False,
        resize_to=info.resize_to,
        **info.model_options,
    )
    load_head_weights(model, path)
    return Pretrained(model=model, info=info, head_path=path, backbone=weights)
