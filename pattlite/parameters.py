"""The notebooks of a run and their `-p NAME=VALUE` parameters: `NOTEBOOKS` in order, `PARAMETERS` (every
parameter, what a value must be and which notebooks take it), `parse_parameters` / `check_parameters` (every
value checked before anything heavy is imported or a kernel starts), `parameter_cells` (what each notebook's
`parameters` cell declares) and `results_folder`. Shared by ./run_all.sh (`pattlite.pipeline`) and
`pattlite grid` (`pattlite.grid`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from pattlite import config

NOTEBOOKS = (
    "01_datasets",  # Tables 1-3
    "02_ablation",  # Table 4
    "03_patch_grid",  # Table 5
    "04_patch_attention",  # Table 6, Figures 2-5
    "05_main_results",  # Tables 7-11, Figures 8-10
    "06_gradcam",  # Figures 6-7
    "07_audit",  # batch-composition audit
    "08_report",  # the replication report
    "09_use_the_model",  # the shipped model: predict, ONNX export, cross-dataset accuracy
)
# 01-08 build the replication and share most parameters; 09 takes only results_dir and weights.
STUDY_NOTEBOOKS = NOTEBOOKS[:8]
NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"


# ---------------------------------------------------------------------------------------------------
# Notebook parameters: one table, checked in the driver


class ParameterError(ValueError):
    """A bad `-p NAME=VALUE`: the message names the parameter, the value and what was expected."""


def _none(value: str) -> bool:
    return value.strip().lower() == "none"


def _check_seeds(value: str) -> None:
    if _none(value):
        return
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ValueError("no seed in it")
    seeds = []
    for part in parts:
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(f"{part!r} is not an integer") from None
    config.check_seeds(seeds)


def _check_datasets(value: str) -> None:
    if _none(value):
        return
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ValueError("no dataset in it")
    for part in parts:
        if part not in config.REAL_DATASETS:
            raise ValueError(f"{part!r} is not one of them")


def _check_weights(value: str) -> None:
    if _none(value) or value == "imagenet":
        return
    if not Path(value).expanduser().is_file():
        raise ValueError(f"no such file {str(Path(value).expanduser())!r}")


def _check_output_folder(value: str) -> None:
    if _none(value):
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")


def _check_dataset_folder(value: str) -> None:
    if _none(value):
        return
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"no such folder {str(path)!r}")


def _one_of(valid) -> Callable:
    def check(value: str) -> None:
        if value not in valid:
            raise ValueError("")

    return check


BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no")


def _check_bool(value: str) -> None:
    if value.strip().lower() not in BOOLEAN_WORDS:
        raise ValueError("")


def _check_count(value: str) -> None:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("") from None
    if number < 0:
        raise ValueError("")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A `-p NAME=VALUE` notebook parameter: what a value must be (`expected`, said in the error;
    `check` raises a ValueError, its message a detail or empty) and which notebooks take it."""

    expected: str
    check: Callable
    notebooks: tuple = STUDY_NOTEBOOKS


_OUTPUT_FOLDER = "a folder (created when missing), or none for the default"
_DATASET_FOLDER = "an existing folder, or none for the default ($PATTLITE_<NAME>_ROOT, else data/<name>/)"

# Every parameter of the notebooks' `parameters` cells except `profile` (--profile). The notebooks'
# cells declare them (papermill injects only declared names without a warning); `check_parameter_table`
# and tests/test_pipeline.py keep this table and the cells the same.
PARAMETERS = {
    "results_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder, NOTEBOOKS),
    "tables_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "figures_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "reports_dir": Parameter(_OUTPUT_FOLDER, _check_output_folder),
    "seeds": Parameter(
        f"a comma-separated list of integers in 0..{config.MAX_SEED} (2**32 - 1), e.g. 0,1,2, "
        "or none for the profile's",
        _check_seeds,
    ),
    "datasets": Parameter(
        f"a comma-separated list of {', '.join(config.REAL_DATASETS)}, or none for the default", _check_datasets
    ),
    "weights": Parameter(
        "imagenet, an existing .weights.h5 file, or none for the profile's", _check_weights, NOTEBOOKS
    ),
    "stage1": Parameter(f"one of {', '.join(config.STAGE1_MODES)}", _one_of(config.STAGE1_MODES)),
    "finetune": Parameter(f"one of {', '.join(config.FINETUNE_MODES)}", _one_of(config.FINETUNE_MODES)),
    **{f"{name}_root": Parameter(_DATASET_FOLDER, _check_dataset_folder) for name in config.REAL_DATASETS},
    "run_experiments": Parameter("true or false (or 1/0, yes/no)", _check_bool),
    "gradcam_dataset": Parameter(
        f"one of {', '.join(config.REAL_DATASETS)}", _one_of(config.REAL_DATASETS), ("06_gradcam",)
    ),
    "gradcam_variant": Parameter(f"one of {', '.join(config.VARIANTS)}", _one_of(config.VARIANTS), ("06_gradcam",)),
    "gradcam_true": Parameter("an integer >= 0", _check_count, ("06_gradcam",)),
    "gradcam_false": Parameter("an integer >= 0", _check_count, ("06_gradcam",)),
    "include_faces": Parameter("true or false (or 1/0, yes/no)", _check_bool, ("08_report",)),
}


def parse_parameters(items) -> dict:
    """`-p NAME=VALUE` items as {NAME: VALUE} (strings; the notebooks parse them)."""
    params = {}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"--parameter expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value
    return params


def check_parameters(params: dict) -> dict:
    """Every `-p NAME=VALUE` against `PARAMETERS`, without importing anything heavy; returns `params`.

    Raises:
        ParameterError: a name no notebook takes (the message lists the valid ones), or bad values
            (one line each: `-p seeds='abc': expected ...`).
    """
    if "profile" in params:
        raise ParameterError(
            f"-p profile={params['profile']!r}: the profile is chosen with --profile, not as a parameter"
        )
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter(s) {unknown}; the notebooks take "
            f"{', '.join(sorted(PARAMETERS))} (and --profile)"
        )
    errors = []
    for name, value in params.items():
        spec = PARAMETERS[name]
        if not isinstance(value, str):
            value = str(value)
        try:
            if not value.strip():
                raise ValueError("the value is empty")
            spec.check(value)
        except ValueError as error:
            detail = f" ({error})" if str(error) else ""
            errors.append(f"-p {name}={value!r}: expected {spec.expected}{detail}")
    if errors:
        raise ParameterError("\n".join(errors))
    return params


def parameter_cells(notebooks=NOTEBOOKS) -> dict:
    """{notebook: {name: default}} of the notebooks' `parameters` cells (read as JSON: no nbformat)."""
    import ast

    cells = {}
    for name in notebooks:
        nb = json.loads((NOTEBOOKS_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
        declared = {}
        for cell in nb["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                for node in ast.parse(source).body:
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                        declared[node.targets[0].id] = ast.literal_eval(node.value)
        cells[name] = declared
    return cells


def check_parameter_table(notebooks=NOTEBOOKS) -> None:
    """`PARAMETERS` must say exactly which notebooks declare each parameter (else a parameter would be
    passed to a notebook that lacks it, or withheld from one that takes it).

    Raises:
        RuntimeError: naming the notebook and the parameters that disagree.
    """
    problems = []
    for notebook, declared in parameter_cells(notebooks).items():
        declared = set(declared) - {"profile"}
        listed = {name for name, spec in PARAMETERS.items() if notebook in spec.notebooks}
        if declared != listed:
            problems.append(
                f"{notebook}: declared but not listed {sorted(declared - listed)}, listed but not "
                f"declared {sorted(listed - declared)}"
            )
    if problems:
        raise RuntimeError(
            "pattlite.parameters.PARAMETERS disagrees with the notebooks' parameters cells: "
            + "; ".join(problems)
            + ". Update the table beside the cells."
        )


def notebook_parameters(notebook: str, profile: str, params: dict) -> dict:
    """What papermill passes to `notebook`: the profile and the parameters it declares."""
    return {"profile": profile, **{k: v for k, v in params.items() if notebook in PARAMETERS[k].notebooks}}


def _optional_path(value) -> Path | None:
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return Path(value).expanduser()


def results_folder(profile: str, params: dict) -> Path:
    """The results folder of a run: `-p results_dir=...`, else `config.results_dir(profile)`."""
    return _optional_path(params.get("results_dir")) or config.results_dir(profile)
