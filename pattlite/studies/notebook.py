"""The two calls every notebook makes: `notebook_context` (its papermill parameters -> a `NotebookContext`,
with the warning when a real-data profile would train on CPU only) and `run` (train what is missing, return
the result rows). Above `context`, `plan` and `compute`, which they join.
"""

from __future__ import annotations

import os

import pandas as pd

from pattlite import config
from pattlite.experiments import collect_results, result_path, run_experiments
from pattlite.profiles import get_profile
from pattlite.studies.compute import warn_if_no_accelerator
from pattlite.studies.context import (
    BENCHMARKS,
    NotebookContext,
    _optional_path,
    parse_bool,
    parse_list,
    present_benchmarks,
    skipped_line,
)
from pattlite.studies.plan import EMPTY_RESULT_COLUMNS


def notebook_context(
    profile: str = "demo",
    results_dir=None,
    tables_dir=None,
    figures_dir=None,
    reports_dir=None,
    seeds=None,
    datasets=None,
    weights=None,
    dataset_roots=None,
    run_experiments=True,
    **profile_overrides,
) -> NotebookContext:
    """Resolve a notebook's parameters (strings from `./run_all.sh -p NAME=VALUE` are accepted).

    Args:
        profile: "paper", "cpu", "demo" or "ci".
        results_dir: default `config.results_dir(profile)`; tables go to `<results_dir>/tables`.
        tables_dir, figures_dir, reports_dir: defaults `<results_dir>/tables`, `config.figures_dir(profile)`,
            `config.reports_dir(profile)`.
        seeds: e.g. "0,1" or [0, 1]; default the profile's.
        datasets: benchmarks to run, e.g. "rafdb,ferplus"; default all four, or, for a profile with
            `only_present_datasets`, those whose folder exists (the others are listed in `skipped`).
        weights: backbone weights (a `.weights.h5` path or "imagenet"); default the profile's.
        dataset_roots: {benchmark: folder} for the real datasets; a None value keeps the default
            (`$PATTLITE_<NAME>_ROOT`, else `data/<name>/`). Set as those environment variables, which
            every reader consults.
        run_experiments: train missing experiments (False: assemble from existing result files only).
        **profile_overrides: other `Profile` fields (e.g. stage1_epochs=5); None values are ignored.
    """
    overrides = {k: v for k, v in profile_overrides.items() if v is not None}
    parsed_seeds = parse_list(seeds, "seeds", int)
    if parsed_seeds is not None:
        # the one seed check, as ./run_all.sh's (pattlite.parameters.PARAMETERS)
        overrides["seeds"] = config.check_seeds(
            parsed_seeds, f"parameter seeds={seeds!r}", f"parameter seeds={seeds!r}: seed"
        )
    if weights is not None and str(weights).strip().lower() not in ("", "none"):
        overrides["weights"] = str(weights)
    prof = get_profile(profile, **overrides)
    asked = parse_list(datasets, "datasets")
    for name in asked or ():
        config.check_name("benchmark", name, BENCHMARKS)
    for name, root in (dataset_roots or {}).items():
        config.check_name("benchmark", name, BENCHMARKS)
        root = _optional_path(root)
        if root is not None:
            os.environ[config.dataset_root_env_var(name)] = str(root)
    skipped = {}
    if asked:
        chosen = asked  # asked for by name: a missing one is the reader's error, not a skip
    elif prof.only_present_datasets:
        chosen, skipped = present_benchmarks(prof)
    else:
        chosen = BENCHMARKS
    results = _optional_path(results_dir) or config.results_dir(prof.name)
    ctx = NotebookContext(
        profile=prof,
        datasets=tuple(chosen),
        results_dir=results,
        tables_dir=_optional_path(tables_dir) or results / "tables",
        figures_dir=_optional_path(figures_dir) or config.figures_dir(prof.name),
        reports_dir=_optional_path(reports_dir) or config.reports_dir(prof.name),
        run_experiments=parse_bool(run_experiments, "run_experiments"),
        skipped=skipped,
    )
    if skipped:
        print(skipped_line(ctx))
    if ctx.run_experiments:
        warn_if_no_accelerator(prof)  # the paper profile on a CPU: says how long it would take
    return ctx


def run(ctx, experiments, require_all: bool = True) -> pd.DataFrame:
    """Train the missing experiments (when `ctx.run_experiments`) and return their result rows.

    Returns:
        The rows of `pattlite.experiments.collect_results` for these experiments only (other result
        files in the folder, e.g. other seeds, are left out).

    Raises:
        ValueError: with `require_all`, when some experiment has no result file (and training was off).
    """
    experiments = list(experiments)
    if ctx.run_experiments and experiments:
        warn_if_no_accelerator(ctx.profile, experiments)
        run_experiments(experiments, results_dir=ctx.results_dir)
    missing = [e for e in experiments if not result_path(e, ctx.results_dir).is_file()]
    if missing and require_all:
        names = "; ".join(e.label() for e in missing[:5])
        raise ValueError(
            f"{len(missing)} experiment(s) have no result file in {ctx.results_dir}/experiments "
            f"(e.g. {names}); run with run_experiments=True"
        )
    results = collect_results(ctx.results_dir)
    keys = {e.key() for e in experiments}
    if results.empty:  # the columns every result row has, so that a notebook can still select them
        return pd.DataFrame(columns=list(EMPTY_RESULT_COLUMNS))
    return results[results["key"].isin(keys)].reset_index(drop=True)
