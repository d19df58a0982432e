"""Publish a finished run for readers who run nothing: the report (Markdown + HTML), its tables and the
figures that show no dataset faces, the run record (machine, versions, commit, time), copied into a
folder of the repository (`docs/results/<profile>/`), and the README's results block rewritten from the
same numbers.

    pattlite publish --profile cpu            # after ./run_all.sh --profile cpu

Grad-CAM panels (Figures 6-7) and sample images show dataset faces, whose licences forbid
redistribution: they stay generated only (figures/<profile>/).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pattlite import config
from pattlite.studies.figures import GRADCAM_FIGURES

# Figures that show dataset faces: never copied into a published folder.
FACE_FIGURES = tuple(f"figure{n}" for n in GRADCAM_FIGURES) + ("samples",)
README_START = "<!-- results:{profile}:start (written by pattlite publish; do not edit by hand) -->"
README_END = "<!-- results:{profile}:end -->"


def default_folder(profile: str) -> Path:
    return config.PROJECT_ROOT / "docs" / "results" / profile


def shows_faces(path: Path) -> bool:
    return any(path.stem == name or path.stem.startswith(name + "_") for name in FACE_FIGURES)


def publish(ctx, folder=None, readme=None, run_record=None, log=print) -> dict:
    """Write the report of `ctx` (a `NotebookContext` whose results exist) into `folder`.

    Args:
        ctx: the context of the run (its results, tables and figures folders are read).
        folder: where to publish (default `docs/results/<profile>/`); replaced file by file.
        readme: the README whose results block (between `README_START` and `README_END`) is rewritten
            with the headline table; None leaves every README alone.
        run_record: the run's `run_record.json` (default `<results_dir>/run_record.json`); copied as
            `run.json`. Missing: an error (the run's time and machine must be published with it).

    Returns:
        {"folder", "report", "html", "figures", "tables", "readme"}.
    """
    import dataclasses

    from pattlite.studies import replication_report, summary

    say = log or (lambda *_: None)
    folder = Path(folder or default_folder(ctx.profile.name))
    record = Path(run_record or Path(ctx.results_dir) / "run_record.json")
    if not record.is_file():
        raise FileNotFoundError(f"no run record {record}: publish a run of ./run_all.sh --profile "
                                f"{ctx.profile.name}, which writes it")
    figures_out, tables_out = folder / "figures", folder / "tables"
    for sub in (figures_out, tables_out):
        sub.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(Path(ctx.figures_dir).glob("*.png")):
        if not shows_faces(path):
            shutil.copy2(path, figures_out / path.name)
            copied.append(path.name)
    tables = []
    for path in sorted(Path(ctx.tables_dir).glob("*")):
        if path.suffix in (".csv", ".md", ".tex"):
            shutil.copy2(path, tables_out / path.name)
            tables.append(path.name)
    shutil.copy2(record, folder / "run.json")
    published = dataclasses.replace(ctx, figures_dir=figures_out, reports_dir=folder, run_experiments=False)
    sections = replication_report.report_sections(published, include_faces=False)
    md_path, html_path = replication_report.write_report(published, sections)
    results = replication_report.report_results(published)
    headline = summary.headline_table(results, published.skipped)
    backends = training_backends(published.results_dir, results["key"].unique() if not results.empty else [])
    headline.to_csv(folder / "summary.csv", index=False)
    readme_path = None
    if readme is not None:
        readme_path = write_readme_block(readme, ctx.profile, headline, md_path, record, backends)
    say(f"published {ctx.profile.name}: {md_path}, {html_path}, {len(copied)} figures, {len(tables)} table "
        f"files" + (f"; README block rewritten in {readme_path}" if readme_path else ""))
    return {"folder": folder, "report": md_path, "html": html_path, "figures": copied, "tables": tables,
            "readme": readme_path}


def training_backends(results_dir, keys) -> list[str]:
    """The Keras backends the result files were trained on (their provenance)."""
    from pattlite.results import ExperimentResult, result_file

    return sorted({str((ExperimentResult.read(result_file(results_dir, key)).provenance or {})
                       .get("keras_backend", "unknown")) for key in keys})


def readme_block(profile: str, description: str, headline, report_path: Path, record: dict,
                 backends=()) -> str:
    """The README's results block: the headline table and where the full report is."""
    runs = record.get("runs", [])
    machine = runs[-1].get("machine", {}) if runs else {}
    commits = list(dict.fromkeys(str(r.get("machine", {}).get("git_commit", "?"))[:10] for r in runs))
    lines = [README_START.format(profile=profile),
             headline.to_markdown(index=False),
             "",
             f"Accuracy (%) on the test split, mean ± sd over seeds (n). Profile `{profile}`: "
             f"{description}.",
             f"Run: {record.get('total_seconds', 0) / 3600:.2f} h on {machine.get('cpu_count', '?')} cores "
             f"({machine.get('device', '?')}), {len(runs)} invocation(s) at commit(s) {', '.join(commits) or '?'}, Keras "
             f"{machine.get('keras', '?')}, trained on the {' and '.join(backends) or '?'} backend. Full report: "
             f"[{report_path.as_posix()}]({report_path.as_posix()}).",
             README_END.format(profile=profile)]
    return "\n".join(lines)


def write_readme_block(readme, profile, headline, report_path: Path, record_path: Path, backends=()) -> Path:
    """Replace the README's results block for `profile` (a `Profile`; the markers must be there)."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    start, end = README_START.format(profile=profile.name), README_END.format(profile=profile.name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no results block for profile {profile.name!r}; expected the lines {start!r} "
                         f"and {end!r}")
    record = json.loads(Path(record_path).read_text())
    try:
        relative = Path(report_path).resolve().relative_to(readme.resolve().parent)
    except ValueError:
        relative = Path(report_path)
    block = readme_block(profile.name, profile.description, headline, relative, record, backends)
    readme.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
    return readme
