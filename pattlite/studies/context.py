"""What a notebook runs on: the `NotebookContext` (profile, datasets, folders), the parsing of its papermill
parameters, the benchmarks present and their manifests.

Every notebook starts with the same `parameters` cell; `pattlite.studies.notebook.notebook_context` turns its
values (strings when they come from `./run_all.sh -p NAME=VALUE`) into the context the other modules take. Which
parameters exist, what each value must be and which notebooks take it is one table,
`pattlite.parameters.PARAMETERS`: ./run_all.sh and `pattlite grid` check `-p` values against it before
anything heavy is imported; the checks here are for a notebook run by hand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pattlite import config, report
from pattlite.profiles import as_profile

BENCHMARKS = config.REAL_DATASETS  # ckplus, rafdb, fer2013, ferplus (the paper's column order)
IN_THE_WILD = ("rafdb", "fer2013", "ferplus")


@dataclasses.dataclass(frozen=True)
class NotebookContext:
    """What every notebook needs, resolved from its `parameters` cell.

    Attributes:
        profile: the `pattlite.profiles.Profile` (with the notebook's overrides).
        datasets: the benchmarks to run (a subset of ckplus, rafdb, fer2013, ferplus).
        results_dir: experiment results (`<results_dir>/experiments/<key>.json`).
        tables_dir, figures_dir, reports_dir: where tables, figures and the report are written.
        run_experiments: train what is missing (False: only assemble from existing result files).
        skipped: {benchmark: why it is not run}, for a profile that runs only the datasets found
            (`Profile.only_present_datasets`); their table columns read "not run (dataset absent)".
    """

    profile: object
    datasets: tuple
    results_dir: Path
    tables_dir: Path
    figures_dir: Path
    reports_dir: Path
    run_experiments: bool
    skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return bool(self.profile.synthetic)

    @property
    def seeds(self) -> tuple:
        return tuple(self.profile.seeds)


def parse_bool(value, name: str = "value") -> bool:
    """A papermill/CLI parameter as a bool: True/False, 1/0, "true"/"false", "yes"/"no"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"parameter {name}={value!r}: expected true or false")


def parse_list(value, name: str = "value", item=str) -> tuple | None:
    """A papermill/CLI parameter as a tuple: None, a list, or a comma-separated string ("0,1")."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(item(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(
            f"parameter {name}={value!r}: expected a comma-separated list of {item.__name__} values"
        ) from None


def _optional_path(value):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return Path(value).expanduser()


def present_benchmarks(profile) -> tuple[tuple, dict]:
    """(benchmarks whose folder exists, {benchmark: why it is absent}) for a profile's sources.

    A folder that exists counts as present: its reader then checks it, and a malformed copy is an
    error, never a silent skip. Synthetic stand-ins are always present.
    """
    profile = as_profile(profile)
    present, absent = [], {}
    for name in BENCHMARKS:
        source = profile.source(name)
        if source["dataset"] == "synthetic":
            present.append(name)
            continue
        root = config.dataset_root(source["dataset"])
        if root.exists():
            present.append(name)
        else:
            absent[name] = (
                f"no folder {root} (set ${config.dataset_root_env_var(name)}, pass "
                f"-p {name}_root=DIR, or see data/README.md)"
            )
    return tuple(present), absent


def skipped_line(ctx) -> str | None:
    """The line that says which benchmarks a profile skipped and why (None when none was)."""
    if not ctx.skipped:
        return None
    why = "; ".join(f"{name}: {reason}" for name, reason in ctx.skipped.items())
    return (
        f"profile {ctx.profile.name!r} runs {', '.join(ctx.datasets) or 'no benchmark'}; not run "
        f"(dataset absent): {why}"
    )


def in_the_wild(ctx) -> tuple:
    """The context's datasets among RAF-DB, FER2013 and FERPlus."""
    return tuple(d for d in IN_THE_WILD if d in ctx.datasets)


def _shown(path) -> str:
    """A folder as the report shows it: relative to the project when inside it."""
    try:
        return Path(path).resolve().relative_to(config.PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def context_summary(ctx) -> str:
    """A few Markdown lines saying what a notebook runs on (profile, data, folders, seeds)."""
    p = ctx.profile
    lines = [
        f"- profile **{p.name}**: {p.description}",
        f"- benchmarks: {', '.join(ctx.datasets)}"
        + (f" (not run, dataset absent: {', '.join(ctx.skipped)})" if ctx.skipped else "")
        + f"; seeds: {', '.join(map(str, ctx.seeds))}"
        + (f"; CK+ folds: {', '.join(map(str, p.ckplus_folds))}" if "ckplus" in ctx.datasets else ""),
        f"- backbone weights: {p.weights if p.weights is not None else 'random (seeded), BatchNorm calibrated'}"
        f"; stage 1: {p.stage1}; fine-tuning: {p.finetune}",
        f"- results: `{_shown(ctx.results_dir)}`; tables: `{_shown(ctx.tables_dir)}`; figures: "
        f"`{_shown(ctx.figures_dir)}`",
    ]
    if ctx.synthetic:
        lines.insert(0, f"> **{report.SYNTHETIC_BANNER}**: every benchmark is a synthetic stand-in.\n")
    return "\n".join(lines)


def benchmark_manifests(profile, datasets=BENCHMARKS) -> dict:
    """{benchmark: manifest} of a profile: the real datasets, or their synthetic stand-ins."""
    from pattlite import data

    profile = as_profile(profile)
    out = {}
    for name in datasets:
        source = profile.source(name)
        manifest = data.load_manifest(source["dataset"], **source["options"])
        if source["dataset"] == "synthetic":
            # The stand-in's subset flags are its own ground truth (there are no RAN lists to read).
            manifest.attrs["subsets"] = "synthetic flags"
        out[name] = manifest
    return out
