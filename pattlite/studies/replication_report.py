"""The replication report: every table and figure of the paper beside ours, the audit, the deviations,
provenance; written as Markdown and as one standalone HTML file (`pattlite.report.render_report`).

`report_sections(ctx)` assembles the sections from the manifests (Tables 1-3), the result files of every
planned experiment (`pattlite.studies.plan.notebook_plan`; Tables 4-11 and the audit) and the saved
figures; the fixed prose comes from `pattlite/resources/report/` (`pattlite.studies.prose`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from pattlite import report
from pattlite.studies import prose
from pattlite.studies.context import IN_THE_WILD, benchmark_manifests, context_summary
from pattlite.studies.figures import FIGURES, figure_caption
from pattlite.studies.plan import notebook_plan, run
from pattlite.studies.tables import audit_findings, audit_table, data_tables, table


def _weights_phrase(profile) -> str:
    if profile.weights is None:
        return "randomly initialised backbone with BatchNorm calibrated on training images"
    return f"backbone weights: {profile.weights}"


def _figure_block(ctx, figure: int):
    path = Path(ctx.figures_dir) / f"figure{figure}.png"
    if path.is_file():
        return [f"**{figure_caption(figure)}**", path]
    notebook = {6: "06_gradcam", 7: "06_gradcam", 8: "05_main_results", 9: "05_main_results",
                10: "05_main_results"}.get(figure, "04_patch_attention")
    return [f"**{figure_caption(figure)}** Not produced yet (run notebook {notebook})."]


def provenance_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: what ran, its seed, fold, epochs and wall time (s)."""
    if results.empty:
        return pd.DataFrame(columns=["key", "dataset", "variant", "seed", "fold", "wall_time_s"])
    first = results.drop_duplicates("key")
    columns = [c for c in ("key", "dataset", "fold", "variant", "opt_cut_layer", "opt_kernel", "seed", "stage1",
                           "finetune", "epochs_stage1", "epochs_stage2", "wall_time_s") if c in first.columns]
    out = first[columns].copy()
    if "opt_cut_layer" in out:
        out["opt_cut_layer"] = out["opt_cut_layer"].astype("Int64")  # NaN made the layer numbers floats
    order = [c for c in ("dataset", "variant", "opt_cut_layer", "opt_kernel", "fold", "seed") if c in out]
    return out.sort_values(order, na_position="first").reset_index(drop=True)


def report_sections(ctx) -> list:
    """Every section of the replication report, as `report.render_report` takes them.

    Tables 1-3 come from the manifests; Tables 4-11 and the audit from the result files of every
    planned experiment (a missing one gives "no result"); Figures 2-10 from `ctx.figures_dir`.
    """
    sections = []
    intro = [context_summary(ctx)]
    if ctx.synthetic:
        intro.append(prose.text("synthetic_note", weights=_weights_phrase(ctx.profile)))
    intro.append(prose.text("reading_the_tables", tolerance=report.ACCURACY_TOLERANCE))
    sections.append(("Summary", intro))

    manifests = benchmark_manifests(ctx.profile, [d for d in ctx.datasets if d in IN_THE_WILD])
    for n, df in data_tables(manifests, ctx.synthetic).items():
        sections.append((f"Table {n}", [f"**{df.attrs['caption']}**", df]))

    every = list({e.key(): e for exps in notebook_plan(ctx).values() for e in exps}.values())
    offline = dataclasses.replace(ctx, run_experiments=False)
    results = run(offline, every, require_all=False)
    missing = len(every) - (results["key"].nunique() if not results.empty else 0)
    if missing:
        sections[0][1].append(f"**{missing} of {len(every)} planned experiments have no result yet**; "
                              "their cells say \"no result\".")
    for n in range(4, 12):
        df = table(n, results, ctx.synthetic)
        sections.append((f"Table {n}", [f"**{df.attrs['caption']}**", df]))
    if ctx.synthetic:  # every table carries the banner, not only the report's head
        for title, blocks in sections:
            if title.startswith("Table "):
                blocks.insert(0, f"> **{report.SYNTHETIC_BANNER}**")
    figures = []
    for figure in FIGURES:
        figures += _figure_block(ctx, figure)
    sections.append(("Figures 2-10", figures))

    try:
        audit = audit_table(results, ctx.synthetic)
        audit_blocks = [f"**{prose.caption('audit')}**", audit, audit_findings(audit, ctx.synthetic)]
    except ValueError as err:
        audit_blocks = [f"No audit results yet ({err})."]
    audit_png = Path(ctx.figures_dir) / "audit.png"
    if audit_png.is_file():
        audit_blocks.append(audit_png)
    sections.append(("The batch-composition audit", audit_blocks))
    sections.append(("Deviations and interpretation", [prose.text("deviations")]))

    prov = provenance_table(results)
    total = float(prov["wall_time_s"].sum()) if "wall_time_s" in prov else 0.0
    devices = sorted(set(_result_devices(ctx, prov["key"]))) if not prov.empty else []
    sections.append(("Provenance", [
        f"- experiments with results: {len(prov)}; total training and evaluation time: {total:.1f} s "
        f"({total / 3600:.2f} h)\n- seeds: {', '.join(map(str, ctx.seeds))}\n"
        f"- devices of the result files: {'; '.join(devices) or 'none'}\n"
        f"- profile settings: `{json.dumps(_profile_summary(ctx.profile))}`",
        prov]))
    return sections


def _profile_summary(profile) -> dict:
    keep = ("name", "synthetic", "weights", "stage1", "finetune", "stage1_epochs", "stage2_epochs",
            "stage2_max_epochs", "train_limit", "ckplus_folds", "table5_layers", "table5_train_limit", "seeds",
            "validation")
    d = profile.to_dict()
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in keep if k in d}


def _result_devices(ctx, keys):
    from pattlite.results import ExperimentResult, result_file

    for key in keys:
        prov = ExperimentResult.read(result_file(ctx.results_dir, key)).provenance or {}
        yield f"{prov.get('device', '?')} (commit {str(prov.get('git_commit', '?'))[:10]})"


def write_report(ctx, sections) -> tuple:
    """Write `replication_report.md` and the standalone `replication_report.html` under `ctx.reports_dir`."""
    folder = Path(ctx.reports_dir)
    return report.render_report(folder / "replication_report.md", folder / "replication_report.html", sections,
                                title=f"PAtt-Lite replication report ({ctx.profile.name} profile)",
                                synthetic=ctx.synthetic, provenance_info=report.provenance())


def verdict_summary(sections) -> pd.DataFrame:
    """How many numbers of each table got each verdict (from the report's table blocks)."""
    rows = []
    for title, blocks in sections:
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                for column in ("verdict", "verdict_independent"):
                    if column in block.columns:
                        counts = block[column][block[column].astype(str) != ""].value_counts()
                        for verdict_name, count in counts.items():
                            rows.append({"section": title, "column": column, "verdict": verdict_name,
                                         "count": int(count)})
    return pd.DataFrame(rows, columns=["section", "column", "verdict", "count"])


def report_results(ctx) -> pd.DataFrame:
    """The result rows of every experiment the report covers (`notebook_plan`); trains nothing."""
    every = list({e.key(): e for exps in notebook_plan(ctx).values() for e in exps}.values())
    return run(dataclasses.replace(ctx, run_experiments=False), every, require_all=False)
