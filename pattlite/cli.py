"""The `pattlite` console script: train one experiment, benchmark throughput, run the batch-composition audit.

    pattlite train --dataset synthetic --variant published --profile ci --seed 3
    pattlite bench [--batch-sizes 1,32] [--steps 8] [--image-size 120]
    pattlite audit --dataset ferplus --root data/ferplus --weights mobilenet_1_0_224_imagenet_no_top.weights.h5
    pattlite grid plan --profile ci;  pattlite grid run --profile paper --executor ray  (pattlite.grid)
    pattlite publish --profile cpu   (after ./run_all.sh --profile cpu: docs/results/cpu/ and the README)
    pattlite predict photos/ [--format jsonl] [--no-detect]   (pattlite.predict: one row per face)
    pattlite export --format onnx|openvino|savedmodel OUT; pattlite export-head SOURCE OUT  (pattlite.export)
    pattlite crossdataset --dataset ckplus|fer2013 [--head PATH] [--output FILE.json]  (pattlite.crossdataset)

Every subcommand prints progress and a short human summary, and as its LAST stdout line one JSON object
(accuracies as fractions), so scripts can read `tail -n 1`; except `predict`, whose stdout is its rows
(CSV or JSON lines) and whose summary line goes to stderr. Exit status: 0 success, 2 bad names or
values (the message names the flag and lists the valid ones; checked before TensorFlow is imported),
a malformed data file or a damaged result file (the message names the file), 1 a missing file
(dataset, weights), a results folder in use by another run (`train` when it trains, `grid run`; the
message names the process holding it) or, for `grid run`, an experiment that failed; 130 / 143
stopped by Ctrl-C (SIGINT) / SIGTERM, whatever it was doing (`grid run` records it in the run record).
`predict`, `export` and `export-head` exit 2 for a missing or unfitting weights file as well (the message
names the path and how to give one).
Data warnings (duplicate rows, subset-list entries matching no test image, ...) are printed as
`pattlite <command>: warning: ...` lines on stderr.

Results: `--results DIR` (or `$PATTLITE_RESULTS_DIR`) is the results base folder; each experiment is
written to `DIR/<profile>/experiments/<key>.json` and later calls with the same settings load it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from pattlite import audit, bench, config, crossdataset, export, grid, parameters, predict, runs
from pattlite.config import PROTOCOLS
from pattlite.console import data_warning_printer, quiet_backend_logs
from pattlite.profiles import PROFILES, get_profile, resolve_weights

TRAIN_DATASETS = config.REAL_DATASETS + ("synthetic",)


class CommandError(ValueError):
    """A bad command-line value; reported without a traceback."""


def _weights_argument(value: str):
    """--weights: "none" -> None (random init), "imagenet", or a file path (checked later, by name)."""
    if value is None:
        return None
    if value.lower() == "none":
        return None
    if value == "imagenet":
        return "imagenet"
    return str(Path(value).expanduser())


def _int_list(text: str, what: str) -> tuple:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CommandError(f"{what} {text!r}: expected comma-separated integers, e.g. 1,32") from None
    if not values:
        raise CommandError(f"{what} {text!r}: expected at least one integer")
    return values


def _choice(flag: str, kind: str, value: str, valid) -> str:
    try:
        return config.check_name(kind, value, tuple(valid))
    except ValueError as error:
        raise CommandError(f"{flag}: {error}") from None


def _seed(flag: str, value) -> int:
    try:
        return config.check_seed(value, flag)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _seeds(flag: str, values) -> tuple:
    try:
        return config.check_seeds(values, flag, flag)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _at_least(flag: str, value, minimum: int, unit: str = ""):
    """None stays None (the default applies); otherwise an int >= minimum, or a CommandError naming the flag."""
    if value is not None and value < minimum:
        raise CommandError(f"{flag} {value}: expected an integer >= {minimum}{unit}")
    return value


def _weights_file(flag: str, value):
    """--weights: a file that must exist (checked now, not after the data are read)."""
    weights = _weights_argument(value)
    try:
        resolve_weights(weights)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{flag}: {error}") from None
    return weights


def check_arguments(args) -> None:
    """Every name and value of a command line, before anything slow (TensorFlow) is imported.

    Raises:
        CommandError: a bad name or value; the message names the flag and what is valid.
        FileNotFoundError: a --weights file does not exist.
    """
    if args.command == "train":
        _choice("--dataset", "dataset", args.dataset, TRAIN_DATASETS)
        _choice("--profile", "profile", args.profile, PROFILES)
        _choice("--variant", "variant", args.variant, config.VARIANTS)
        _seed("--seed", args.seed)
        if args.dataset == "synthetic" and not PROFILES[args.profile].synthetic:
            raise CommandError(
                f"--dataset synthetic needs a synthetic profile (ci or demo), not --profile {args.profile}"
            )
        if args.fold is not None:
            if args.dataset != "ckplus":
                raise CommandError(f"--fold {args.fold}: only ckplus is cross-validated, not {args.dataset}")
            if not 0 <= args.fold <= 9:
                raise CommandError(f"--fold {args.fold}: expected a CK+ test fold 0..9")
        if args.weights is not None:
            _weights_file("--weights", args.weights)
    elif args.command == "bench":
        sizes = _int_list(args.batch_sizes, "--batch-sizes")
        if min(sizes) < 1:
            raise CommandError(f"--batch-sizes {args.batch_sizes!r}: expected positive integers, e.g. 1,32")
        _at_least("--steps", args.steps, 1)
        _at_least("--image-size", args.image_size, 1, " (pixels)")
        _at_least("--train-batch-size", args.train_batch_size, 1)
        _weights_file("--weights", args.weights)
        for part in [p.strip() for p in args.parts.split(",") if p.strip()] or [""]:
            _choice("--parts", "bench part", part, bench.BENCH_PARTS)
        _at_least("--cached-samples", args.cached_samples, 8)
        _at_least("--extract-images", args.extract_images, 1)
        _at_least("--repeats", args.repeats, 1)
    elif args.command == "audit":
        _choice("--dataset", "dataset", args.dataset, audit.AUDIT_DATASETS)
        if args.profile is not None:
            _choice("--profile", "profile", args.profile, PROFILES)
        _seeds("--seeds", _int_list(args.seeds, "--seeds"))
        _at_least("--epochs", args.epochs, 1)
        _at_least("--train-limit", args.train_limit, 1, " (training images)")
        _at_least("--image-size", args.image_size, 16, " (pixels)")
        try:
            audit.check_weights(args.dataset, args.weights)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if args.weights is not None:
            _weights_file("--weights", args.weights)
    elif args.command == "crossdataset":
        _choice("--dataset", "dataset", args.dataset, crossdataset.TARGETS)
        _at_least("--batch-size", args.batch_size, 1)


def _results_base(args) -> Path | None:
    return None if args.results is None else Path(args.results).expanduser()


def _json_line(payload: dict) -> None:
    print(json.dumps(payload, sort_keys=False), flush=True)


# ---------------------------------------------------------------------------------------------------
# train


def _train_experiment(args):
    """The experiment `pattlite train` runs (arguments already checked by `check_arguments`)."""
    from pattlite.experiments import make_experiment  # imports Keras

    # synthetic: the stand-in in the FER2013 slot (7 classes, like config.DATASET_CLASSES)
    benchmark = "fer2013" if args.dataset == "synthetic" else args.dataset
    overrides = {}
    if args.weights is not None:
        overrides["weights"] = _weights_argument(args.weights)
    profile = get_profile(args.profile, allow_random_weights=args.weights is not None, **overrides)
    return make_experiment(profile, benchmark, args.variant, seed=args.seed, fold=args.fold, root=args.root), profile


def cmd_train(args) -> int:
    from pattlite.experiments import result_path  # imports Keras

    exp, profile = _train_experiment(args)
    results_dir = None if args.results is None else _results_base(args) / profile.name
    folder = results_dir if results_dir is not None else config.results_dir(profile.name)
    # Training writes into the results folder: it holds the folder's lock, as a run does (a run of
    # ./run_all.sh or `pattlite grid run` there makes it refuse, and the other way round). Loading a
    # finished result needs no lock.
    try:
        if args.force or not result_path(exp, results_dir).is_file():
            with runs.results_lock(folder, "pattlite " + " ".join(sys.argv[1:])):
                return _train(args, exp, profile, results_dir)
        return _train(args, exp, profile, results_dir)
    except BaseException as error:  # noqa: B036 - an error caused by Ctrl-C / SIGTERM is an interruption
        stopped = runs.as_interruption(error, "train", experiment=exp.label(), key=exp.key())
        if stopped is None:
            raise
        raise stopped from error


def _train(args, exp, profile, results_dir) -> int:
    from pattlite.experiments import run_experiment

    source = exp.source["dataset"]
    what = (
        f"synthetic stand-in (in the {exp.dataset} slot of profile {profile.name!r})"
        if source == "synthetic"
        else exp.dataset
    )
    print(
        f"pattlite train: {exp.label()} on {what}; profile {profile.name}, stage 1 {exp.stage1}, "
        f"weights {exp.weights or 'random init, BatchNorm calibrated'}",
        flush=True,
    )
    if args.root is not None and source == "synthetic":
        print(f"note: --root {args.root} is ignored: profile {profile.name!r} uses synthetic data", flush=True)
    result = run_experiment(exp, results_dir=results_dir, force=args.force, progress=True)
    path = result.path
    metrics = result.test_metrics
    print(("loaded from " if result.cached else "trained and evaluated; wrote ") + path)
    print(
        f"epochs: stage 1 {result.epochs['stage1']}, stage 2 {result.epochs['stage2']}; "
        f"test images {metrics[PROTOCOLS[0]]['n']}"
    )
    for protocol in PROTOCOLS:
        if protocol in metrics:
            print(
                f"  {protocol:12s} accuracy {100 * metrics[protocol]['accuracy']:6.2f}%  "
                f"mean class accuracy {100 * metrics[protocol]['mean_class_accuracy']:6.2f}%"
            )
    for note in result.notes:
        print(f"note: {note}")
    if result.synthetic:
        print("note: synthetic data: these numbers say nothing about the paper's benchmarks")
    _json_line(
        {
            "dataset": args.dataset,
            "benchmark_slot": exp.dataset,
            "source_dataset": result.source_dataset,
            "synthetic": bool(result.synthetic),
            "variant": exp.variant,
            "profile": profile.name,
            "seed": exp.seed,
            "fold": exp.fold,
            "stage1": exp.stage1,
            "key": result.key,
            "accuracy": {p: metrics[p]["accuracy"] for p in metrics},
            "mean_class_accuracy": {p: metrics[p]["mean_class_accuracy"] for p in metrics},
            "epochs": result.epochs,
            "cached": bool(result.cached),
            "result_path": path,
        }
    )
    return 0


# ---------------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    weights = resolve_weights(_weights_argument(args.weights))
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")  # checked by check_arguments
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if "images" in parts:
        print(
            f"pattlite bench: random uint8 images {args.image_size}x{args.image_size} resized to 224, "
            f"{args.steps} timed steps after 1 warm-up step per row; weights "
            f"{weights or 'random init (throughput does not depend on the values)'}",
            flush=True,
        )
        result = bench.run_benchmark(
            batch_sizes=batch_sizes,
            steps=args.steps,
            image_size=args.image_size,
            weights=weights,
            train_batch_size=args.train_batch_size,
        )
        print(bench.format_table(result))
        print(
            f"machine: {result['machine']['device']}, {result['machine']['cpu_count']} CPUs visible; "
            f"Keras {result['machine']['keras']} ({result['machine']['keras_backend']}); "
            f"{result['seconds']:.1f} s in all"
        )
        _json_line(result)
    if "cached" in parts:
        print(
            f"pattlite bench: heads on cached features, {args.cached_samples} random float16 features "
            f"14x14x512 per row, held in memory, fast path vs plain path in the same run; feature extraction of "
            f"{args.extract_images} random images",
            flush=True,
        )
        result = bench.run_cached_benchmark(
            samples=args.cached_samples,
            extract_images=args.extract_images,
            image_size=args.image_size,
            weights=weights,
            train_batch_size=args.train_batch_size,
            repeats=args.repeats,
        )
        print(bench.format_cached_table(result))
        print(
            f"Keras {result['machine']['keras']} ({result['machine']['keras_backend']} backend; feature "
            f"extraction on {result['extraction']['engine']}); {result['seconds']:.1f} s in all"
        )
        _json_line(result)
    if "end_to_end" in parts:
        from pattlite.bench_inference import format_end_to_end_table, run_end_to_end_benchmark

        print(
            f"pattlite bench: end-to-end inference from decoded images (decoding excluded), {args.steps} timed "
            f"steps after 1 warm-up step per row; Keras and the exported model (ONNX Runtime, OpenVINO)",
            flush=True,
        )
        result = run_end_to_end_benchmark(batch_sizes=batch_sizes, steps=args.steps, backbone=weights)
        print(format_end_to_end_table(result))
        print(
            f"model: {result['model']['described']}; {result['machine']['device']}, "
            f"{result['machine']['cpu_count']} CPUs visible; Keras {result['machine']['keras']} "
            f"({result['machine']['keras_backend']}); load average {result['machine']['load_average'][0]:.1f} "
            f"before, {result['machine']['load_average'][1]:.1f} after; {result['seconds']:.1f} s in all"
        )
        _json_line(result)
    if "parallel" in parts:
        from pattlite.bench_parallel import format_parallel_table, run_parallel_benchmark

        print(
            f"pattlite bench: heads on cached features trained by several processes at once, "
            f"{args.cached_samples} random float16 features 14x14x512 each, {args.repeats} timed epochs "
            "(median) after a warm-up epoch",
            flush=True,
        )
        result = run_parallel_benchmark(samples=args.cached_samples, repeats=args.repeats)
        print(format_parallel_table(result))
        print(
            f"{result['settings']['cpu_count']} CPUs visible; load average "
            f"{result['settings']['load_average_before'][0]:.1f} before; {result['seconds']:.1f} s in all"
        )
        _json_line(result)
    return 0


# ---------------------------------------------------------------------------------------------------
# audit


def cmd_audit(args) -> int:
    config.check_name("dataset", args.dataset, audit.AUDIT_DATASETS)
    synthetic = args.dataset == "synthetic"
    profile = args.profile or (audit.SYNTHETIC_PROFILE if synthetic else audit.REAL_PROFILE)
    weights = _weights_argument(args.weights)
    if synthetic and weights is None:
        print("note: synthetic run: random backbone (seeded), BatchNorm calibrated on training images", flush=True)
    if synthetic and args.root is not None:
        print(f"note: --root {args.root} is ignored for --dataset synthetic", flush=True)
    seeds = _int_list(args.seeds, "--seeds")
    summary = audit.run_audit(
        args.dataset,
        root=args.root,
        weights=weights,
        train_limit=args.train_limit,
        seeds=seeds,
        results_dir=audit.results_base(args.results, profile),
        image_size=args.image_size,
        stage1_epochs=args.epochs,
        profile=profile,
        force=args.force,
        progress=True,
    )
    print(audit.format_table(summary))
    print(
        f"train images {summary['train_images']}, test images {summary['test_images']}, "
        f"{summary['image_size']}px, stage-1 epochs run {summary['epochs_run']} (cap "
        f"{summary['stage1_epochs']}); {summary['cached']} of {len(summary['result_paths'])} results "
        f"loaded from files; {summary['seconds']:.1f} s"
    )
    print(
        f"batch gain of the published head (published - independent protocol): "
        f"{100 * summary['batch_gain']:+.2f} points"
    )
    print(f"note: {summary['note']}")
    if summary["synthetic"]:
        print("note: synthetic data: these numbers say nothing about the paper's benchmarks")
    _json_line(summary)
    return 0


def cmd_publish(args) -> int:
    config.check_name("profile", args.profile, tuple(PROFILES))
    params = parameters.check_parameters(parameters.parse_parameters(args.parameter))  # before the heavy imports
    from pattlite.studies.publish import publish

    ctx, _ = grid.notebook_context(args.profile, params)
    readme = None if args.no_readme else Path(args.readme or config.PROJECT_ROOT / "README.md")
    out = publish(ctx, folder=args.to, readme=readme, allow_incomplete=args.allow_incomplete)
    _json_line({k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()})
    return 0


# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pattlite",
        description="PAtt-Lite replication: train, benchmark, audit, experiment grid; "
        "predict with a trained model, export it.",
        epilog="The last stdout line of every subcommand but predict is one JSON object.",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{train,bench,audit,grid,publish,predict,export,export-head,crossdataset}",
    )

    train = sub.add_parser(
        "train",
        help="train and evaluate one experiment (or load its result)",
        description="Train and evaluate one experiment under the published, shuffled "
        "and independent protocols, or load it from the results folder.",
    )
    train.add_argument(
        "--dataset",
        required=True,
        help=f"one of {', '.join(TRAIN_DATASETS)} (synthetic: the stand-in of a synthetic profile)",
    )
    train.add_argument("--root", default=None, help="dataset folder (default $PATTLITE_<NAME>_ROOT, else data/<name>/)")
    train.add_argument("--variant", required=True, help="model variant, e.g. published, pattlite, no_mixing")
    train.add_argument("--profile", required=True, help=", ".join(PROFILES))
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--fold", type=int, default=None, help="CK+ test fold 0..9")
    train.add_argument(
        "--weights",
        default=None,
        help="backbone weights: a .weights.h5 path, imagenet, or none (random init); default: the profile's",
    )
    train.add_argument(
        "--results", default=None, help="results base folder (default $PATTLITE_RESULTS_DIR, else results/)"
    )
    train.add_argument("--force", action="store_true", help="retrain even when a result file exists")
    train.set_defaults(handler=cmd_train)

    bench_parser = sub.add_parser(
        "bench", help="training and inference throughput on random data", description=bench.__doc__.splitlines()[0]
    )
    bench_parser.add_argument("--batch-sizes", default="1,32", help="inference batch sizes (default 1,32)")
    bench_parser.add_argument(
        "--steps", type=int, default=bench.DEFAULT_STEPS, help=f"timed steps per row (default {bench.DEFAULT_STEPS})"
    )
    bench_parser.add_argument(
        "--image-size",
        type=int,
        default=bench.DEFAULT_IMAGE_SIZE,
        help=f"input image side before the resize to 224 (default {bench.DEFAULT_IMAGE_SIZE})",
    )
    bench_parser.add_argument("--train-batch-size", type=int, default=8, help="training batch (default 8)")
    bench_parser.add_argument(
        "--weights", default="none", help="backbone weights: none (default), imagenet or a .weights.h5 path"
    )
    bench_parser.add_argument(
        "--parts",
        default="images,cached",
        help="which rows: images (full models on images), cached (heads on cached "
        "features, fast vs plain, and feature extraction), end_to_end (the trained "
        "model from decoded images, Keras vs ONNX Runtime vs OpenVINO, face detection "
        "excluded and included), parallel (heads trained by several one-thread "
        "processes at once vs one process, the grid's Ray trials on a CPU); default "
        "images,cached",
    )
    bench_parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per cached-head row, the median reported (default 3)"
    )
    bench_parser.add_argument(
        "--cached-samples",
        type=int,
        default=bench.DEFAULT_CACHED_SAMPLES,
        help=f"features per cached-head row (default {bench.DEFAULT_CACHED_SAMPLES})",
    )
    bench_parser.add_argument(
        "--extract-images",
        type=int,
        default=bench.DEFAULT_EXTRACT_IMAGES,
        help=f"images for the extraction row (default {bench.DEFAULT_EXTRACT_IMAGES})",
    )
    bench_parser.set_defaults(handler=cmd_bench)

    audit_parser = sub.add_parser(
        "audit",
        help="the batch-composition audit on cached backbone features",
        description=audit.__doc__.splitlines()[0],
    )
    audit_parser.add_argument("--dataset", required=True, help=f"one of {', '.join(audit.AUDIT_DATASETS)}")
    audit_parser.add_argument("--root", default=None, help="dataset folder")
    audit_parser.add_argument("--weights", default=None, help="backbone weights file (required for real data)")
    audit_parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help=f"training images, class-stratified (default {audit.DEFAULT_TRAIN_LIMIT} on real data)",
    )
    audit_parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1 (default 0)")
    audit_parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"stage-1 epoch cap (default {audit.DEFAULT_STAGE1_EPOCHS} on real data)",
    )
    audit_parser.add_argument(
        "--image-size", type=int, default=None, help="image side fed to the model (default: the profile's, 120)"
    )
    audit_parser.add_argument(
        "--profile", default=None, help="default paper (real data) or ci (synthetic; demo is larger)"
    )
    audit_parser.add_argument("--results", default=None, help="results base folder")
    audit_parser.add_argument("--force", action="store_true", help="retrain even when result files exist")
    audit_parser.set_defaults(handler=cmd_audit)
    grid.add_parser(sub)

    publish_parser = sub.add_parser(
        "publish",
        help="publish a finished run: report, tables, figures without faces, run record",
        description="Copy the report (Markdown, HTML), tables, the figures that show no dataset faces and "
        "the run record of a finished ./run_all.sh run into docs/results/<profile>/, and rewrite "
        "the README's results block for that profile from the same numbers.",
    )
    publish_parser.add_argument("--profile", required=True, help="the profile of the run, e.g. cpu")
    publish_parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the notebook parameters the run used (repeatable), as for ./run_all.sh",
    )
    publish_parser.add_argument("--to", default=None, help="folder (default docs/results/<profile>/)")
    publish_parser.add_argument("--readme", default=None, help="README to update (default the project's)")
    publish_parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    publish_parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="publish a run with planned experiments without a result, or whose last "
        "recorded run did not finish (the report and the README block say so)",
    )
    publish_parser.set_defaults(handler=cmd_publish)
    predict.add_parser(sub)
    export.add_parsers(sub)
    crossdataset.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Runs the `pattlite` console script; returns the exit status."""
    quiet_backend_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), runs.handle_signals():
            warnings.showwarning = data_warning_printer(f"pattlite {args.command}")
            check_arguments(args)
            return args.handler(args)
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM
        stopped = runs.as_interruption(error, args.command) or runs.RunInterrupted("SIGINT", args.command)
        runs.say_interrupted(f"pattlite {args.command}", stopped)
        return stopped.status
    except runs.ResultsFolderBusy as error:
        print(f"pattlite {args.command}: error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:  # missing dataset or weights file (DatasetNotFoundError included)
        print(f"pattlite {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # bad names / values; the message lists the valid ones
        print(f"pattlite {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
