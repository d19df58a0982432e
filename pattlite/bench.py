"""Throughput benchmark: training images/s per stage and inference images/s per batch size.

`run_benchmark` measures, on random images served from a uint8 array on disk (memory-mapped, as the
pixel cache of `pattlite.data.pixels` serves them) and resized to 224 inside the model:

- training, batch `train_batch_size` (the authors' 8), variant `published`:
  - `stage1_frozen`: stage 1, backbone frozen (Adam 1e-3, clipnorm 3, class-weighted loss);
  - `stage2_as_coded`: the authors' stage-2 graph with their unfreezing call, which unfreezes no
    backbone weight (`pattlite.model.set_finetune_trainable(..., "as_coded")`);
  - `stage2_paper_<N>`: the same graph with the last N backbone layers trainable (BatchNorm frozen),
    N = `PAPER_MODE_UNFROZEN_LAYERS`, the paper's RAF-DB setting (59 layers);
- inference (`predict_on_batch`) of the `published` and `pattlite` models at each batch size.

`pattlite.bench_inference.run_end_to_end_benchmark` (part `end_to_end`) measures the trained model end to
end, on Keras and exported to ONNX Runtime and OpenVINO, with and without face detection.

`pattlite.bench_parallel.run_parallel_benchmark` (part `parallel`) measures heads trained by several
processes at once, one thread each (the grid's Ray trials on a CPU), against one process.

`run_cached_benchmark` measures training and prediction of heads on cached features (random float16
features of the cut's shape, 14x14x512, written to a file and read into memory once, as training holds
its training and validation sets), on
the fast path the package uses (`pattlite.train.fit_in_order`, `pattlite.evaluate.predict`) and on
the plain path (Keras `fit` / `predict` over `OrderedBatches`), in the same run, plus the backbone's
feature-extraction rate (`pattlite.features.backbone_features`). On JAX each training row also gets the
rate of its step's matrix products alone (`products_only_rate`): a ceiling for the fast path on this CPU.

Each measurement runs one warm-up step (graph tracing, excluded) and then `steps` timed steps. Every step
is timed in two parts: producing the batch from the uint8 array (`feed`) and the model call (`compute`);
`images_per_s` counts both, `feed_share` is feed / (feed + compute).

Example:

```python
from pattlite.bench import run_benchmark
result = run_benchmark(batch_sizes=(1, 32), steps=30)
result["training"]["stage1_frozen"]["images_per_s"]
```
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pattlite import backends, config

# The paper's RAF-DB setting (Section IV-B), where the model code reads it (`set_finetune_trainable`).
PAPER_MODE_UNFROZEN_LAYERS = config.PAPER_FINETUNE_LAYERS["rafdb"]
PAPER_STAGE = f"stage2_paper_{PAPER_MODE_UNFROZEN_LAYERS}"
TRAINING_STAGES = ("stage1_frozen", "stage2_as_coded", PAPER_STAGE)
INFERENCE_VARIANTS = ("published", "pattlite")
DEFAULT_STEPS = 30
DEFAULT_IMAGE_SIZE = 120  # the size the authors stored FERPlus / FER2013 / CK+ at
DEFAULT_BATCH_SIZES = (1, 32)
NUM_CLASSES = 7


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def _timed_steps(batches, indices, call, steps: int) -> dict:
    """Runs `call(*batch)` on one warm-up batch, then on `steps` batches; returns the timings."""
    warmup = batches[indices[0]]
    call(*warmup)
    feed = compute = 0.0
    images = 0
    for step in range(steps):
        start = time.perf_counter()
        batch = batches[indices[(step + 1) % len(indices)]]
        fed = time.perf_counter()
        call(*batch)
        done = time.perf_counter()
        feed += fed - start
        compute += done - fed
        images += len(batch[0])
    total = feed + compute
    return {
        "steps": steps,
        "images": images,
        "seconds": total,
        "images_per_s": images / total,
        "feed_seconds": feed,
        "feed_share": feed / total,
    }


def run_benchmark(
    batch_sizes=DEFAULT_BATCH_SIZES,
    steps: int = DEFAULT_STEPS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights=None,
    train_batch_size: int = 8,
    resize_to: int = 224,
    seed: int = 0,
    log=print,
) -> dict:
    """Measures training and inference throughput of the PAtt-Lite models on random data.

    Args:
        batch_sizes: inference batch sizes (the authors evaluated at 32; 1 is one image at a time).
        steps: timed steps per measurement (after one untimed warm-up step).
        image_size: side of the square uint8 input images (the model resizes them to `resize_to`).
        weights: backbone weights for `pattlite.model.build_model`: None (random init; throughput does
            not depend on the values), "imagenet" or a weights file path.
        train_batch_size: training batch size (the authors' 8).
        resize_to: the side the model resizes images to (224 gives the 14x14 map the head expects).
        seed: seeds the random images, labels and model initialisation.
        log: called with one progress line per measurement (None: silent).

    Returns:
        dict with `settings`, `training` (stage -> timings, `trainable_params`), `inference`
        (variant -> {batch size as str -> timings}), `machine` (from `pattlite.report.provenance`)
        and `seconds` (the whole benchmark). Timings: steps, images, seconds, images_per_s,
        feed_seconds, feed_share.
    """
    import keras

    from pattlite import model as model_lib
    from pattlite.evaluate import OrderedBatches
    from pattlite.report import provenance
    from pattlite.train import TrainConfig, balanced_class_weights

    batch_sizes = tuple(_positive_int("batch size", b) for b in batch_sizes)
    if not batch_sizes:
        raise ValueError("batch_sizes is empty: give at least one inference batch size")
    steps = _positive_int("steps", steps)
    image_size = _positive_int("image_size", image_size)
    train_batch_size = _positive_int("train_batch_size", train_batch_size)
    say = log or (lambda *_: None)
    started = time.perf_counter()
    recipe = TrainConfig()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    # Enough images that no timed step reuses the warm-up batch.
    n_images = max(max(batch_sizes), train_batch_size) * (steps + 1)
    labels = rng.integers(0, NUM_CLASSES, n_images)
    sample_weight = balanced_class_weights(labels, NUM_CLASSES)[labels].astype("float32")
    result = {
        "settings": {
            "batch_sizes": list(batch_sizes),
            "steps": steps,
            "image_size": image_size,
            "resize_to": resize_to,
            "train_batch_size": train_batch_size,
            "weights": None if weights is None else str(weights),
            "data": "random uint8",
            "num_classes": NUM_CLASSES,
        },
        "training": {},
        "inference": {},
    }

    with tempfile.TemporaryDirectory(prefix="pattlite-bench-") as tmp:
        # A uint8 array on disk, read through a memory map like the pixel cache.
        cache_path = Path(tmp) / "images.npy"
        np.save(cache_path, rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8))
        images = np.load(cache_path, mmap_mode="r")
        order = rng.permutation(n_images)
        shape = (image_size, image_size, 3)

        # Training: one model; stage 2 reuses its layers, as the recipe does.
        train_batches = OrderedBatches(images, order, train_batch_size, y=labels, sample_weight=sample_weight)
        train_indices = list(range(len(train_batches)))
        net = model_lib.build_model("published", NUM_CLASSES, input_shape=shape, weights=weights, resize_to=resize_to)
        net.compile(
            optimizer=keras.optimizers.Adam(recipe.stage1_learning_rate, global_clipnorm=recipe.global_clipnorm),
            loss="sparse_categorical_crossentropy",
        )
        stage_models = {"stage1_frozen": (net, None)}
        finetune_graph = model_lib.finetune_model(net, recipe.spatial_dropout, recipe.finetune_dropout)
        stage_models["stage2_as_coded"] = (finetune_graph, ("as_coded", None))
        stage_models[PAPER_STAGE] = (finetune_graph, ("paper", PAPER_MODE_UNFROZEN_LAYERS))
        for stage, (graph, unfreeze) in stage_models.items():
            if unfreeze is not None:
                model_lib.set_finetune_trainable(graph, unfreeze[0], n_layers=unfreeze[1])
                # Recompiling after changing `trainable` is what makes the change take effect.
                graph.compile(
                    optimizer=keras.optimizers.Adam(
                        recipe.stage2_learning_rate, global_clipnorm=recipe.global_clipnorm
                    ),
                    loss="sparse_categorical_crossentropy",
                )
            if stage == "stage1_frozen":
                call = graph.train_on_batch
            else:
                # The authors' stage 2 uses no class weights.
                def call(x, y, _w, graph=graph):
                    return graph.train_on_batch(x, y)

            timing = _timed_steps(train_batches, train_indices, call, steps)
            timing["trainable_params"] = model_lib.count_params(graph.trainable_weights)
            result["training"][stage] = timing
            say(
                f"  training {stage:16s} batch {train_batch_size:3d}: {timing['images_per_s']:8.1f} images/s, "
                f"feed {100 * timing['feed_share']:.1f}% ({timing['trainable_params']:,} trainable params)"
            )
        del net, finetune_graph, stage_models

        for variant in INFERENCE_VARIANTS:
            net = model_lib.build_model(variant, NUM_CLASSES, input_shape=shape, weights=weights, resize_to=resize_to)
            result["inference"][variant] = {}
            for batch_size in batch_sizes:
                batches = OrderedBatches(images, order, batch_size)
                timing = _timed_steps(batches, list(range(len(batches))), net.predict_on_batch, steps)
                result["inference"][variant][str(batch_size)] = timing
                say(
                    f"  inference {variant:15s} batch {batch_size:3d}: {timing['images_per_s']:8.1f} images/s, "
                    f"feed {100 * timing['feed_share']:.1f}%"
                )
            del net
        del images

    result["machine"] = {
        k: v for k, v in provenance().items() if k in ("device", "keras", "keras_backend", "tensorflow", "git_commit")
    }
    result["machine"]["cpu_count"] = os.cpu_count()
    result["seconds"] = time.perf_counter() - started
    return result


def format_table(result: dict) -> str:
    """The benchmark as a Markdown table: one row per measurement."""
    lines = ["| measurement | batch | images/s | feed share |", "|---|---:|---:|---:|"]
    batch = result["settings"]["train_batch_size"]
    for stage, timing in result["training"].items():
        lines.append(
            f"| training {stage} | {batch} | {timing['images_per_s']:.1f} | {100 * timing['feed_share']:.1f}% |"
        )
    for variant, per_batch in result["inference"].items():
        for batch_size, timing in per_batch.items():
            lines.append(
                f"| inference {variant} | {batch_size} | {timing['images_per_s']:.1f} | "
                f"{100 * timing['feed_share']:.1f}% |"
            )
    return "\n".join(lines)


BENCH_PARTS = (
    "images",
    "cached",
    "end_to_end",
    "parallel",
)  # end_to_end: pattlite.bench_inference, parallel: pattlite.bench_parallel
CACHED_HEADS = ("published", "pattlite")
CACHED_STAGES = ("stage1", "stage2_as_coded")
DEFAULT_CACHED_SAMPLES = 1024
DEFAULT_EXTRACT_IMAGES = 512
FEATURE_SHAPE = (14, 14, 512)  # conv_dw_9_relu at 224
EXTRACT_BATCH = 64  # backbone_features' default


def _median_rate(samples: int, call, repeats: int) -> dict:
    """Times `call()` `repeats` times: the median run's rate, and every run's (rates move by tens of
    percent between runs on a shared machine)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    rate = _rate(samples, float(np.median(seconds)))
    rate["runs_samples_per_s"] = [samples / s for s in seconds]
    return rate


def _rate(samples: int, seconds: float) -> dict:
    return {"samples": int(samples), "seconds": seconds, "samples_per_s": samples / seconds}


def _jax_measurement(name: str):
    measure = getattr(backends.current(), name)
    if measure is None:
        raise RuntimeError(f"{name} measures JAX's compiled training step; the Keras backend is {backends.name()!r}")
    return measure


def step_products(model, batch) -> list:
    """JAX only: every matrix product (`dot_general`) of one `model.train_step` on `batch`, as
    (lhs aval, rhs aval, dimension numbers, multiply-adds). The model must be compiled and built."""
    return _jax_measurement("step_products")(model, batch)


def products_only_rate(model, batch, repeats: int, steps: int = 256) -> dict:
    """JAX only: how fast this CPU runs the matrix products of `model.train_step` alone, at their
    shapes (`step_products`), `steps` times in one compiled loop: a ceiling for any training loop
    built from XLA's kernels (`pattlite.backends.jax.products_only_rate`). The median of `repeats`
    runs (`runs_samples_per_s`: every run), with `products` and `multiply_adds_per_step`."""
    return _jax_measurement("products_only_rate")(model, batch, repeats, steps, median_rate=_median_rate)


def run_cached_benchmark(
    samples: int = DEFAULT_CACHED_SAMPLES,
    heads=CACHED_HEADS,
    extract_images: int = DEFAULT_EXTRACT_IMAGES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights=None,
    train_batch_size: int = 8,
    seed: int = 0,
    repeats: int = 3,
    log=print,
) -> dict:
    """Training and prediction rates of heads on cached features, fast path vs plain path, and the
    feature-extraction rate.

    The features are read into memory once (`pattlite.arrays.in_memory`, timed as
    `settings.read_into_memory_s`), as training holds its training and validation sets. Training:
    epochs of `samples` features (class-weighted stage 1; stage 2 as coded on the authors' fine-tuning
    graph of the head), after an untimed warm-up epoch that traces (compiles) the step. Prediction:
    the `published` protocol (class-grouped batches of 32) on the same `samples` features, after a
    warm-up. Each training and prediction row is timed `repeats` times (one epoch, one pass): the
    median is reported, every run kept (`runs_samples_per_s`).
    Extraction: the pass of `backbone_features` (batches of 64 written to a float16 shard) over
    `extract_images` random uint8 images at `image_size`, after the extractor is built and traced.

    Returns:
        dict with `settings`, `training` (head -> stage -> {"fast", "plain": timings, "speedup", and on
        JAX "products_only": timings with `products` and `multiply_adds_per_step`}),
        `prediction` (head -> {"fast", "plain", "speedup"}), `extraction` (timings with
        `images_per_s`), `machine` and `seconds`. Timings: samples, seconds, samples_per_s.
    """
    import keras

    from pattlite.arrays import in_memory
    from pattlite.evaluate import OrderedBatches, predict, protocol_order
    from pattlite.extraction import extract_shard, extract_shard_in_tensorflow, extraction_engine, make_extractor
    from pattlite.model import build_head, finetune_model
    from pattlite.report import provenance
    from pattlite.seeding import enable_determinism
    from pattlite.train import TrainConfig, balanced_class_weights, fit_in_order

    samples = _positive_int("samples", samples)
    repeats = _positive_int("repeats", repeats)
    extract_images = _positive_int("extract_images", extract_images)
    say = log or (lambda *_: None)
    started = time.perf_counter()
    recipe = TrainConfig()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, samples)
    sample_weight = balanced_class_weights(labels, NUM_CLASSES)[labels].astype("float32")
    result = {
        "settings": {
            "samples": samples,
            "heads": list(heads),
            "feature_shape": list(FEATURE_SHAPE),
            "train_batch_size": train_batch_size,
            "extract_images": extract_images,
            "image_size": image_size,
            "weights": None if weights is None else str(weights),
            "repeats": repeats,
            "data": "random float16 features / uint8 images",
        },
        "training": {},
        "prediction": {},
    }
    with tempfile.TemporaryDirectory(prefix="pattlite-bench-") as tmp:
        path = Path(tmp) / "features.npy"
        np.save(path, rng.normal(0, 1, (samples,) + FEATURE_SHAPE).astype("float16"))
        start = time.perf_counter()
        # Read into memory once, as training holds its training and validation sets (`in_memory`).
        features = in_memory(np.load(path, mmap_mode="r"))
        result["settings"]["read_into_memory_s"] = time.perf_counter() - start
        # The warm-up is a whole untimed epoch: the JAX loop compiles once per model and training-set shape.
        warm = slice(0, samples)
        for head_name in heads:
            result["training"][head_name] = {}
            enable_determinism(seed)
            head = build_head(head_name, NUM_CLASSES, FEATURE_SHAPE)
            graphs = {
                "stage1": (head, sample_weight, recipe.stage1_learning_rate),
                "stage2_as_coded": (
                    finetune_model(head, recipe.spatial_dropout, recipe.finetune_dropout),
                    None,
                    recipe.stage2_learning_rate,
                ),
            }
            for stage, (graph, w, learning_rate) in graphs.items():
                timings = {}
                for path_name in ("plain", "fast"):
                    graph.compile(
                        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=recipe.global_clipnorm),
                        loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"],
                    )
                    if path_name == "fast":

                        def fit(rows, graph=graph, w=w):
                            fit_in_order(
                                graph,
                                features[rows],
                                labels[rows],
                                None if w is None else w[rows],
                                train_batch_size,
                                1,
                                [],
                                reshuffle_seed=seed,
                            )
                    else:

                        def fit(rows, graph=graph, w=w):
                            batches = OrderedBatches(
                                features[rows],
                                np.arange(len(labels[rows])),
                                train_batch_size,
                                y=labels[rows],
                                sample_weight=None if w is None else w[rows],
                                reshuffle_seed=seed,
                            )
                            graph.fit(batches, epochs=1, verbose=0, shuffle=False)

                    fit(warm)
                    timings[path_name] = _median_rate(samples, lambda: fit(slice(0, samples)), repeats)
                timings["speedup"] = timings["fast"]["samples_per_s"] / timings["plain"]["samples_per_s"]
                ceiling = ""
                if backends.current().products_only_rate is not None:
                    batch = (np.asarray(features[:train_batch_size], "float32"), labels[:train_batch_size])
                    batch += () if w is None else (w[:train_batch_size],)
                    timings["products_only"] = products_only_rate(graph, batch, repeats)
                    ceiling = f"; its matrix products alone {timings['products_only']['samples_per_s']:7.0f}"
                result["training"][head_name][stage] = timings
                say(
                    f"  cached training {head_name:9s} {stage:15s} batch {train_batch_size}: "
                    f"fast {timings['fast']['samples_per_s']:7.0f} samples/s, plain "
                    f"{timings['plain']['samples_per_s']:7.0f} ({timings['speedup']:.2f}x){ceiling}"
                )
            order = protocol_order(labels, "published")
            # Warm-up over the same rows: every call shape is traced (compiled, on JAX) before timing.
            predict(head, features, labels, "published")
            head.predict(OrderedBatches(features, order, 32), verbose=0)
            fast = _median_rate(samples, lambda: predict(head, features, labels, "published"), repeats)
            plain = _median_rate(samples, lambda: head.predict(OrderedBatches(features, order, 32), verbose=0), repeats)
            result["prediction"][head_name] = {
                "fast": fast,
                "plain": plain,
                "speedup": fast["samples_per_s"] / plain["samples_per_s"],
            }
            say(
                f"  cached prediction {head_name:9s} published protocol, batch 32: fast "
                f"{fast['samples_per_s']:7.0f} samples/s, plain {plain['samples_per_s']:7.0f} "
                f"({fast['samples_per_s'] / plain['samples_per_s']:.2f}x)"
            )
        features = None  # free the memory before the extraction benchmark

        images = rng.integers(0, 256, (extract_images, image_size, image_size, 3), dtype=np.uint8)
        if weights is None:
            from pattlite.features import random_backbone_weights

            weights = random_backbone_weights(seed, images[:8], cache_dir=Path(tmp) / "w")
        layers = ["conv_dw_9_relu"]
        folder = Path(tmp) / "extraction"
        folder.mkdir()
        engine = extraction_engine()
        if backends.current().TENSORFLOW_MODELS:
            extractor = make_extractor(image_size, weights, layers, engine=engine)
            extractor.predict_on_batch(images[:EXTRACT_BATCH])  # warm-up: traces (compiles) the call
            start = time.perf_counter()
            extract_shard(images, np.arange(extract_images), extractor, layers, EXTRACT_BATCH, False, folder)
            seconds = time.perf_counter() - start
        else:  # as backbone_features does without TensorFlow models: in a TensorFlow child process
            _, seconds = extract_shard_in_tensorflow(
                images,
                np.arange(extract_images),
                image_size,
                weights,
                layers,
                224,
                EXTRACT_BATCH,
                False,
                folder,
                warm_up=True,
            )
        extraction = _rate(extract_images, seconds)
        extraction["images_per_s"] = extraction["samples_per_s"]
        extraction["engine"] = engine
        result["extraction"] = extraction
        say(
            f"  feature extraction to conv_dw_9_relu, {image_size} px -> 224, batch {EXTRACT_BATCH}, {engine}: "
            f"{extraction['images_per_s']:.0f} images/s"
        )
    result["machine"] = {
        k: v for k, v in provenance().items() if k in ("device", "keras", "keras_backend", "tensorflow", "git_commit")
    }
    result["machine"]["cpu_count"] = os.cpu_count()
    result["seconds"] = time.perf_counter() - started
    return result


def format_cached_table(result: dict) -> str:
    """The cached-feature benchmark as a Markdown table."""
    batch = result["settings"]["train_batch_size"]
    ceilings = any("products_only" in t for stages in result["training"].values() for t in stages.values())
    header = "| measurement | batch | fast samples/s | plain samples/s | speed-up |"
    rule = "|---|---:|---:|---:|---:|"
    if ceilings:  # JAX: the rate of the step's matrix products alone (`products_only_rate`)
        header, rule = header + " matrix products alone |", rule + "---:|"
    lines = [header, rule]
    blank = " |" if ceilings else ""
    for head, stages in result["training"].items():
        for stage, t in stages.items():
            products = f" {t['products_only']['samples_per_s']:.0f} |" if "products_only" in t else blank
            lines.append(
                f"| cached training {head} {stage} | {batch} | {t['fast']['samples_per_s']:.0f} | "
                f"{t['plain']['samples_per_s']:.0f} | {t['speedup']:.2f}x |{products}"
            )
    for head, t in result["prediction"].items():
        lines.append(
            f"| cached prediction {head} (published protocol) | 32 | {t['fast']['samples_per_s']:.0f} | "
            f"{t['plain']['samples_per_s']:.0f} | {t['speedup']:.2f}x |{blank}"
        )
    if "extraction" in result:
        lines.append(
            f"| feature extraction to the cut ({result['settings']['image_size']} px -> 224; "
            f"{result['extraction'].get('engine', 'tensorflow')}) | 64 | "
            f"{result['extraction']['images_per_s']:.0f} images/s | | |{blank}"
        )
    return "\n".join(lines)
