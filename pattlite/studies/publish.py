"""Publish a finished run for readers who run nothing: the report (Markdown + HTML), its tables and the
figures that show no dataset faces, the run record (machine, versions, commit, time), copied into a
folder of the repository (`docs/results/<profile>/`), and the README's results block rewritten from the
same numbers.

    pattlite publish --profile cpu            # after ./run_all.sh --profile cpu

A run is published only when it is complete: every experiment of its plan has a result and the last
entry of its `run_record.json` finished (not interrupted, not failed); otherwise `publish` refuses
(`IncompleteRunError`, exit status 2) unless `allow_incomplete` (`--allow-incomplete`), and then the
report's summary and the README block say what is missing. Everything is checked first and built in a
temporary folder beside the target, which then replaces the target as a whole; the README is rewritten
last, and if that fails the previous folder is put back: a failed publish leaves nothing changed.

Grad-CAM panels (Figures 6-7) and sample images show dataset faces, whose licences forbid
redistribution: they stay generated only (figures/<profile>/).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

from pattlite import config
from pattlite.files import TEMPORARY_PREFIX, pid_alive, temporary_path, write_atomic
from pattlite.studies.figures import GRADCAM_FIGURES, GRADCAM_RECORD, gradcam_shown

# Figures that show dataset faces: never copied into a published folder.
FACE_FIGURES = tuple(f"figure{n}" for n in GRADCAM_FIGURES) + ("samples",)
README_START = "<!-- results:{profile}:start (written by pattlite publish; do not edit by hand) -->"
README_END = "<!-- results:{profile}:end -->"


class IncompleteRunError(ValueError):
    """The run has planned experiments without a result, or its last recorded run did not finish; the
    message says which and how to publish anyway (`--allow-incomplete`)."""


@dataclasses.dataclass(frozen=True)
class Completeness:
    """How complete a run is: `planned` experiments, `missing` (their labels, without a result file),
    `unfinished` (why the last entry of the run record did not finish; None when it did)."""

    planned: int
    missing: tuple
    unfinished: str | None

    @property
    def complete(self) -> bool:
        return not self.missing and self.unfinished is None

    def problems(self) -> list[str]:
        out = []
        if self.unfinished:
            out.append(f"its last recorded run did not finish ({self.unfinished})")
        if self.missing:
            examples = "; ".join(self.missing[:3]) + ("; ..." if len(self.missing) > 3 else "")
            out.append(f"{len(self.missing)} of {self.planned} planned experiments have no result ({examples})")
        return out

    def summary_line(self) -> str:
        """The line the report's summary and the README block carry for a run published incomplete."""
        return (
            "**Incomplete run, published with --allow-incomplete:** "
            + "; ".join(self.problems())
            + '. Cells without a result say "no result"; a mean over fewer runs than planned gives its n.'
        )


def default_folder(profile: str) -> Path:
    return config.PROJECT_ROOT / "docs" / "results" / profile


def shows_faces(path: Path) -> bool:
    return any(path.stem == name or path.stem.startswith(name + "_") for name in FACE_FIGURES)


def read_run_record(path) -> dict:
    """The run record (`{"runs": [...], "total_seconds": ...}`), or an error naming the file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected the run record ./run_all.sh writes") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list) or not record["runs"]:
        raise ValueError(
            f'{path}: expected {{"runs": [one entry per ./run_all.sh invocation, ...]}}, as ./run_all.sh writes it'
        )
    return record


def unfinished(entry: dict) -> str | None:
    """Why one run-record entry did not finish (None when it did): `failed`, `interrupted` (a line, or
    `pattlite.runs.RunInterrupted.record()`'s {"signal", "stage", "notebook"/"experiment", ...}), or a
    `status` other than "finished"."""
    if entry.get("failed"):
        return f"failed: {entry['failed']}"
    stopped = entry.get("interrupted")
    if isinstance(stopped, dict):
        where = [f"during {stopped['stage']}"] if stopped.get("stage") else []
        where += [f"{name} {stopped[name]}" for name in ("notebook", "experiment") if stopped.get(name)]
        return f"interrupted ({stopped.get('signal', 'signal unknown')})" + (f" {', '.join(where)}" if where else "")
    if stopped:
        return f"interrupted {stopped}"
    status = entry.get("status")
    if status is not None and status != "finished":
        return f"status {status!r}"
    return None


def completeness(ctx, record: dict, results=None) -> Completeness:
    """The run's `Completeness`: its plan (`replication_report.planned_experiments`) against its result
    files (`results`: the rows of `report_results`, read when not given), and its record's last entry."""
    from pattlite.studies import replication_report

    planned = replication_report.planned_experiments(ctx)
    if results is None:
        results = replication_report.report_results(ctx, planned)
    have = set(results["key"]) if not results.empty else set()
    missing = tuple(e.label() for e in planned if e.key() not in have)
    return Completeness(len(planned), missing, unfinished(record["runs"][-1]))


def publish(ctx, folder=None, readme=None, run_record=None, log=print, allow_incomplete: bool = False) -> dict:
    """Write the report of `ctx` (a `NotebookContext` whose results exist) into `folder`.

    Args:
        ctx: the context of the run (its results, tables and figures folders are read).
        folder: where to publish (default `docs/results/<profile>/`); replaced as a whole.
        readme: the README whose results block (between `README_START` and `README_END`) is rewritten
            with the headline table; None leaves every README alone.
        run_record: the run's `run_record.json` (default `<results_dir>/run_record.json`); copied as
            `run.json`. Missing: an error (the run's time and machine must be published with it).
        allow_incomplete: publish a run with planned experiments without a result, or whose last
            recorded run did not finish; the report's summary and the README block say so.

    Returns:
        {"folder", "report", "html", "figures", "tables", "readme", "planned", "missing", "unfinished"}.

    Raises:
        IncompleteRunError: an incomplete run without `allow_incomplete` (nothing is written).
        FileNotFoundError, ValueError: no run record, a malformed one, a README without the markers.
    """
    from pattlite.studies import replication_report, summary

    say = log or (lambda *_: None)
    folder = Path(folder or default_folder(ctx.profile.name))
    record_path = Path(run_record or Path(ctx.results_dir) / "run_record.json")
    if not record_path.is_file():
        raise FileNotFoundError(
            f"no run record {record_path}: publish a run of ./run_all.sh --profile {ctx.profile.name}, which writes it"
        )
    record = read_run_record(record_path)
    source = dataclasses.replace(ctx, run_experiments=False)
    results = replication_report.report_results(source)
    state = completeness(source, record, results)
    if not state.complete and not allow_incomplete:
        raise IncompleteRunError(
            f"refusing to publish the {ctx.profile.name} run in {ctx.results_dir}: "
            + "; ".join(state.problems())
            + f". Finish it (the same ./run_all.sh --profile {ctx.profile.name} command resumes it), or pass "
            "--allow-incomplete to publish it as it is (the report then says what is missing)."
        )
    readme_text = None if readme is None else _readme_with_markers(readme, ctx.profile.name)

    for stale in folder.parent.glob(f"{TEMPORARY_PREFIX}*-{folder.name}"):
        if stale.is_dir() and _owner_gone(stale):  # left by a killed publish
            shutil.rmtree(stale, ignore_errors=True)
    created = next((p for p in reversed(folder.parents) if not p.exists()), None)  # the topmost folder made here
    staging = temporary_path(folder)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        built = _build(source, staging, folder, record_path, state, results)
        headline = summary.headline_table(results, source.skipped)
        backends = training_backends(source.results_dir, results["key"].unique() if not results.empty else [])
        new_readme = None
        if readme is not None:
            new_readme = readme_text_with_block(
                readme,
                readme_text,
                ctx.profile,
                headline,
                folder / "replication_report.md",
                record,
                backends,
                results,
                None if state.complete else state,
                built["figures"],
            )
        _replace_folder(staging, folder, readme, new_readme)
    except BaseException:  # an error or an interrupt: nothing of this publish stays
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    md_path, html_path = folder / "replication_report.md", folder / "replication_report.html"
    note = "" if state.complete else f"; INCOMPLETE (published with --allow-incomplete): {'; '.join(state.problems())}"
    say(
        f"published {ctx.profile.name}: {md_path}, {html_path}, {len(built['figures'])} figures, "
        f"{len(built['tables'])} table files" + (f"; README block rewritten in {readme}" if readme else "") + note
    )
    return {
        "folder": folder,
        "report": md_path,
        "html": html_path,
        "figures": built["figures"],
        "tables": built["tables"],
        "readme": Path(readme) if readme is not None else None,
        "planned": state.planned,
        "missing": len(state.missing),
        "unfinished": state.unfinished,
    }


def _owner_gone(path: Path) -> bool:
    """True when the process whose id a temporary name carries (`.tmp-<pid>-...`) no longer runs."""
    match = re.match(re.escape(TEMPORARY_PREFIX) + r"(\d+)-", path.name)
    if not match:
        return False
    pid = int(match.group(1))
    return pid == os.getpid() or not pid_alive(pid)


def _build(ctx, staging: Path, folder: Path, record_path: Path, state: Completeness, results) -> dict:
    """Everything the published folder holds, written into `staging` (which then becomes `folder`)."""
    from pattlite.studies import replication_report, summary
    from pattlite.studies.context import context_summary

    figures_out, tables_out = staging / "figures", staging / "tables"
    for sub in (figures_out, tables_out):
        sub.mkdir(parents=True)
    copied = []
    for path in sorted(Path(ctx.figures_dir).glob("*.png")):
        if not shows_faces(path):
            shutil.copy2(path, figures_out / path.name)
            copied.append(path.name)
    if (Path(ctx.figures_dir) / GRADCAM_RECORD).is_file():  # which dataset the (unpublished) Grad-CAM shows
        shutil.copy2(Path(ctx.figures_dir) / GRADCAM_RECORD, figures_out / GRADCAM_RECORD)
    tables = []
    for path in sorted(Path(ctx.tables_dir).glob("*")):
        if path.suffix in (".csv", ".md", ".tex"):
            shutil.copy2(path, tables_out / path.name)
            tables.append(path.name)
    shutil.copy2(record_path, staging / "run.json")
    copy_result_files(ctx, results, staging / "results")
    published = dataclasses.replace(ctx, figures_dir=figures_out, reports_dir=staging, run_experiments=False)
    sections = replication_report.report_sections(published, include_faces=False)
    intro = sections[0][1]
    # The report names the folder its figures end up in, not the staging folder they are read from.
    staged, final = (
        context_summary(published),
        context_summary(dataclasses.replace(published, figures_dir=folder / "figures")),
    )
    intro[:] = [final if isinstance(block, str) and block == staged else block for block in intro]
    if not state.complete:
        intro.insert(0, state.summary_line())
    replication_report.write_report(published, sections)
    summary.headline_table(results, published.skipped).to_csv(staging / "summary.csv", index=False)
    return {"figures": copied, "tables": tables}


def copy_result_files(ctx, results, out: Path) -> list[str]:
    """The run's result files (`<key>.json`, small: no predictions of other runs, no weights) into `out`,
    so that a fresh clone resumes the published run without retraining it (`experiments.adopt_committed`);
    plus the trained weights of the model the Grad-CAM figures show (about 1 MB), which notebook 06
    needs to draw them again."""
    from pattlite.results import result_file

    out.mkdir(parents=True, exist_ok=True)
    names = []
    for key in results["key"].unique() if not results.empty else []:
        source = result_file(ctx.results_dir, key)
        shutil.copy2(source, out / source.name)
        names.append(source.name)
    shown = (gradcam_shown(ctx.figures_dir) or {}).get("key")
    weights = result_file(ctx.results_dir, shown).with_name(f"{shown}.weights.h5") if shown else None
    if weights is not None and weights.is_file() and f"{shown}.json" in names:
        shutil.copy2(weights, out / weights.name)
        names.append(weights.name)
    return names


def _replace_folder(staging: Path, folder: Path, readme, new_readme: str | None):
    """`staging` becomes `folder` (the previous one kept aside until the README is written, and put
    back if that fails)."""
    previous = None
    if folder.exists():
        previous = temporary_path(folder.parent / f"previous-{folder.name}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
    try:
        os.replace(staging, folder)
        if new_readme is not None:
            write_atomic(readme, new_readme)
    except BaseException:
        if folder.exists() and not staging.exists():
            shutil.rmtree(folder, ignore_errors=True)
        if previous is not None:
            os.replace(previous, folder)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def training_backends(results_dir, keys) -> list[str]:
    """The Keras backends the result files were trained on (their provenance)."""
    from pattlite.results import ExperimentResult, result_file

    return sorted(
        {
            str((ExperimentResult.read(result_file(results_dir, key)).provenance or {}).get("keras_backend", "unknown"))
            for key in keys
        }
    )


def readme_block(
    profile: str,
    description: str,
    headline,
    report_path: Path,
    record: dict,
    backends=(),
    results=None,
    incomplete: Completeness | None = None,
    gap_tables=None,
    figures=(),
) -> str:
    """The README's results block: the headline table, the seeds run, and where the full report is.

    `figures` names the figures published beside the report (in its folder's `figures/`); the gap
    figure, when there, is shown under the gap tables."""
    from pattlite.studies import summary

    runs = record.get("runs", [])
    machine = runs[-1].get("machine", {}) if runs else {}
    commits = list(dict.fromkeys(str(r.get("machine", {}).get("git_commit", "?"))[:10] for r in runs))
    lines = [README_START.format(profile=profile)]
    if gap_tables is not None:  # the gap to the paper first, for a profile that augments
        from pattlite.studies import gap

        lines += [
            f"**{gap.CAPTION}**",
            "",
            gap_tables[0].to_markdown(index=False, disable_numparse=True),
            "",
            f"{gap.STEPS_CAPTION}",
            "",
            gap_tables[1].to_markdown(index=False, disable_numparse=True),
            "",
        ]
        # What the stage-2 cap costs (`pattlite.studies.cap`), what the random contrast changes
        # (`pattlite.studies.contrast`): (caption, table) pairs.
        for caption, table in gap_tables[2] if len(gap_tables) > 2 else ():
            lines += [caption, "", table.to_markdown(index=False, disable_numparse=True), ""]
        if f"{gap.FIGURE}.png" in figures:
            figure = (report_path.parent / "figures" / f"{gap.FIGURE}.png").as_posix()
            lines += [f"![The gap to the paper per dataset, error bars: sd over runs]({figure})", ""]
    lines += [
        headline.to_markdown(index=False),
        "",
        f"{summary.HEADLINE_CAPTION} Profile `{profile}`: {description}."
        + ("" if results is None else f" {summary.runs_line(results)}"),
        f"Run: {record.get('total_seconds', 0) / 3600:.2f} h on {machine.get('cpu_count', '?')} cores "
        f"({machine.get('device', '?')}), {len(runs)} invocation(s) at commit(s) {', '.join(commits) or '?'}, Keras "
        f"{machine.get('keras', '?')}, trained on the {' and '.join(backends) or '?'} "
        f"backend{'s' if len(backends) > 1 else ''}. Full report: "
        f"[{report_path.as_posix()}]({report_path.as_posix()}).",
        README_END.format(profile=profile),
    ]
    if incomplete is not None:
        lines.insert(-1, incomplete.summary_line())
    return "\n".join(lines)


def _readme_with_markers(readme, profile: str) -> str:
    """The README's text, checked for the results block of `profile` (before anything is written)."""
    readme = Path(readme)
    if not readme.is_file():
        raise FileNotFoundError(
            f"no README {readme} to rewrite the results block of (pass --no-readme to leave READMEs alone)"
        )
    text = readme.read_text(encoding="utf-8")
    start, end = README_START.format(profile=profile), README_END.format(profile=profile)
    if not _block_pattern(profile).search(text):
        raise ValueError(
            f"{readme}: no results block for profile {profile!r}; expected the lines {start!r} and {end!r}"
        )
    return text


def _block_pattern(profile: str):
    start, end = README_START.format(profile=profile), README_END.format(profile=profile)
    return re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)


def readme_text_with_block(
    readme,
    text: str,
    profile,
    headline,
    report_path: Path,
    record: dict,
    backends=(),
    results=None,
    incomplete: Completeness | None = None,
    figures=(),
) -> str:
    """`text` (the README's) with the results block of `profile` (a `Profile`) replaced; links are
    relative to the README's folder. `figures`: the names of the figures published with the report."""
    readme = Path(readme)
    try:
        relative = Path(report_path).resolve().relative_to(readme.resolve().parent)
    except ValueError:
        relative = Path(report_path)
    gap_tables = None
    if profile.train_views == 2 and results is not None:
        from pattlite.studies import cap, contrast, gap

        numbers = gap.gap_numbers(results)
        extras = []
        capped = cap.cap_numbers(results, profile)
        if len(capped):
            extras.append((cap.CAPTION, cap.cap_table(capped, profile.stage2_max_epochs)))
        contrasted = contrast.contrast_numbers(results, profile)
        if len(contrasted):
            extras.append((contrast.caption(profile), contrast.contrast_table(contrasted)))
        gap_tables = (gap.gap_table(numbers), gap.gap_steps(numbers), extras)
    block = readme_block(
        profile.name,
        profile.description,
        headline,
        relative,
        record,
        backends,
        results,
        incomplete,
        gap_tables,
        figures,
    )
    return _block_pattern(profile.name).sub(lambda _: block, text)
