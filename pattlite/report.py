"""Reporting: "ours vs paper" tables with verdicts, table and figure files, plots, the report.

No training here. The notebooks and the CLI build result frames from result files and call these.

- `verdict` / `compare`: one verdict per published number ("reproduced", "not reproduced",
  "not comparable", "no result").
- `save_table` / `save_figure`: CSV + Markdown + LaTeX, PNG + PDF, with a banner on synthetic data.
- `plot_confusion_matrix`, `plot_accuracy_vs_params` (`pattlite.plots`, importable from here): the paper's
  Figs. 2-5, 8 and 9-10.
- `render_report`: the replication report as Markdown and as one standalone HTML file.

Provenance (code version, package versions, backend and device) lives in `pattlite.provenance`; `provenance`
and `accelerators` are importable from here too.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

# Re-exported: the plots (`pattlite.plots`) and provenance (`pattlite.provenance`) were part of this module.
from pattlite.plots import normalize_confusion_matrix, plot_accuracy_vs_params, plot_confusion_matrix  # noqa: F401
from pattlite.provenance import accelerators, provenance  # noqa: F401

# ---------------------------------------------------------------------------------------------------
# Verdicts

# Accuracy tolerance, in percentage points. The paper reports single training runs (CK+: a mean over 10
# folds) with no spread, so there is no published error bar to test against. One point is a judgement: it
# is about 30 test images on RAF-DB (3,068) or FERPlus (3,573), more than rounding and less than any gap
# that would change the paper's conclusions (its Table 8 margins over other methods are 1.05 to 8.15
# points). A result within it counts as reproducing the number; anything further does not.
ACCURACY_TOLERANCE = 1.0
# With several seeds, a published number also counts as reproduced when it lies within this many
# standard errors of our mean (sd over seeds / sqrt(runs)): the tolerance is
# max(ACCURACY_TOLERANCE, SPREAD_FACTOR * sd / sqrt(runs)). The standard error, not the sd, so that
# unstable seeds (a large sd) do not make any number "reproduced".
SPREAD_FACTOR = 2.0
# Image counts (Tables 1-3) are exact properties of the data: any difference means a different dataset.
COUNT_TOLERANCE = 0.0
TOLERANCE_BY_QUANTITY = {"accuracy": ACCURACY_TOLERANCE, "count": COUNT_TOLERANCE}

VERDICTS = ("reproduced", "not reproduced", "not comparable", "no result")
# The mark in front of each of our numbers in the report's tables (Markdown: coloured emoji squares, which
# GitHub shows); in the HTML each becomes a CSS-drawn square and colours its table cell, so the verdict
# shows in a browser without an emoji font too: (mark, square colour, cell colour).
VERDICT_MARKS = {
    "reproduced": ("🟩", "#2e7d32", "#e3f2e4"),
    "not reproduced": ("🟥", "#c62828", "#fbe4e4"),
    "not comparable": ("⬜", "#ffffff", "#f4f4f4"),
    "no result": ("⬛", "#212121", "#e6e6e6"),
}
SYNTHETIC_BANNER = "SYNTHETIC DATA — not comparable with the paper"

# Float comparisons of numbers printed with 2 decimals: 95.05 - 94.05 is 1.0000000000000142.
_EPS = 1e-9


def _is_missing(x) -> bool:
    if x is None or x is pd.NA:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        raise ValueError(f"expected a number or None, got {x!r}") from None


def verdict(paper, ours, tolerance: float = ACCURACY_TOLERANCE, comparable: bool = True) -> str:
    """Verdict on one published number.

    Args:
        paper: the published value (None/NaN where the paper has none).
        ours: our value (None/NaN where we have no result yet).
        tolerance: largest |ours - paper| still counted as reproduced, in the value's unit.
        comparable: False when ours was not measured under comparable conditions (synthetic or demo
            data, a different protocol); the verdict is then "not comparable" whatever the numbers.

    Returns:
        "not comparable" (not comparable, or the paper has no value), "no result" (ours missing),
        "reproduced" (|ours - paper| <= tolerance) or "not reproduced".
    """
    if _is_missing(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if not comparable:
        return "not comparable"
    if _is_missing(ours):
        return "no result"
    if _is_missing(paper):
        return "not comparable"
    return "reproduced" if abs(float(ours) - float(paper)) <= tolerance + _EPS else "not reproduced"


def _duplicated_keys(df: pd.DataFrame, on: list[str], what: str) -> None:
    dup = df.duplicated(subset=on, keep=False)
    if dup.any():
        rows = df.loc[dup, on].drop_duplicates().head(5).to_dict("records")
        raise ValueError(
            f"{what} has several rows for the same keys {on}: {rows}; add the distinguishing column to `on`"
        )


def compare(
    paper_df: pd.DataFrame,
    ours_df: pd.DataFrame,
    on: list[str],
    tolerance: float | None = None,
    synthetic: bool = False,
    paper_col: str = "value",
    ours_col: str = "value",
    how: str = "left",
    sd_col: str = "sd",
    runs_col: str = "runs",
) -> pd.DataFrame:
    """Join published numbers with ours and give each a verdict.

    Args:
        paper_df: published numbers, e.g. `pattlite.paper.paper_table(4)` (value in `paper_col`).
        ours_df: our numbers, one row per key, value in `ours_col`.
        on: key columns present in both frames (e.g. ["variant", "dataset"]).
        tolerance: one tolerance for every row; None picks it per row from the paper's `quantity` column
            (`TOLERANCE_BY_QUANTITY`: accuracy 1.0 point, counts exact), or `ACCURACY_TOLERANCE` when the
            frame has no `quantity` column.
        synthetic: our numbers come from synthetic/demo data: every verdict is "not comparable".
        paper_col, ours_col: value columns.
        how: "left" keeps the paper's rows (ours without a published counterpart are left out);
            "outer" also keeps those, with verdict "not comparable".
        sd_col: when `ours_df` has this column (the standard deviation of ours over seeds), it is kept
            as `ours_sd`, and each row's tolerance widens to max(tolerance, `SPREAD_FACTOR` * sd /
            sqrt(runs)), runs from `runs_col` (1 when `ours_df` has no such column).

    Returns:
        A DataFrame with the `on` columns, the paper frame's other descriptive columns, then `paper`,
        `ours` (with `ours_sd` when given), `diff` (ours - paper), `tolerance` and `verdict`.
    """
    if how not in ("left", "outer"):
        raise ValueError(f"how must be 'left' or 'outer', got {how!r}")
    on = list(on)
    for frame, col, what in ((paper_df, paper_col, "paper_df"), (ours_df, ours_col, "ours_df")):
        missing = [c for c in on + [col] if c not in frame.columns]
        if missing:
            raise ValueError(f"{what} lacks column(s) {missing}; it has: {list(frame.columns)}")
        _duplicated_keys(frame, on, what)
    paper_part = paper_df.rename(columns={paper_col: "paper"})
    with_sd = sd_col in ours_df.columns
    with_runs = with_sd and runs_col in ours_df.columns
    ours_part = ours_df[on + [ours_col] + ([sd_col] if with_sd else []) + ([runs_col] if with_runs else [])]
    ours_part = ours_part.rename(columns={ours_col: "ours", sd_col: "ours_sd", runs_col: "_runs"})
    merged = paper_part.merge(ours_part, on=on, how=how, sort=False)
    merged["paper"] = pd.to_numeric(merged["paper"], errors="raise").astype(float)
    merged["ours"] = pd.to_numeric(merged["ours"], errors="raise").astype(float)
    merged["diff"] = merged["ours"] - merged["paper"]
    if tolerance is not None:
        merged["tolerance"] = float(tolerance)
    elif "quantity" in merged.columns:
        unknown = sorted(set(merged["quantity"].dropna()) - set(TOLERANCE_BY_QUANTITY))
        if unknown:
            raise ValueError(
                f"no default tolerance for quantity {unknown}; known: {list(TOLERANCE_BY_QUANTITY)}; pass tolerance="
            )
        merged["tolerance"] = merged["quantity"].map(TOLERANCE_BY_QUANTITY).fillna(ACCURACY_TOLERANCE)
    else:
        merged["tolerance"] = ACCURACY_TOLERANCE
    if with_sd:
        merged["ours_sd"] = pd.to_numeric(merged["ours_sd"], errors="raise").astype(float)
        runs = merged.pop("_runs").astype(float).clip(lower=1.0) if with_runs else 1.0
        widened = (SPREAD_FACTOR * merged["ours_sd"] / np.sqrt(runs)).where(merged["ours_sd"].notna(), 0.0)
        merged["tolerance"] = np.maximum(merged["tolerance"].astype(float), widened)
    merged["verdict"] = [
        verdict(p, o, t, comparable=not synthetic)
        for p, o, t in zip(merged["paper"], merged["ours"], merged["tolerance"])
    ]
    tail = ["paper", "ours"] + (["ours_sd"] if with_sd else []) + ["diff", "tolerance", "verdict"]
    head = on + [c for c in merged.columns if c not in on and c not in tail]
    out = merged[head + tail].reset_index(drop=True)
    out.attrs = {"synthetic": bool(synthetic)}
    return out


# ---------------------------------------------------------------------------------------------------
# Tables and figures on disk

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_file_stem(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"file name stem {name!r} must be letters, digits, '.', '_' or '-' "
            f"(no folders, no spaces), e.g. 'table4_ablation'"
        )
    return name


def _cell(value, float_format: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return float_format % value
    return str(value)


# LaTeX special characters of a caption (pandas escapes the cells and headers, not the caption).
_LATEX_CAPTION_ESCAPES = str.maketrans({c: "\\" + c for c in "&%$#_{}"})


def _latex_table(df: pd.DataFrame, caption: str, synthetic: bool, float_format: str) -> str:
    # pandas' LaTeX writer (jinja2): booktabs rules, cells escaped; UTF-8 text (the paper's dashes, x and
    # check marks) needs a Unicode-aware LaTeX (any since 2018).
    if synthetic:
        caption = f"{caption} ({SYNTHETIC_BANNER})"
    return df.to_latex(
        index=False,
        na_rep="-",
        float_format=float_format,
        escape=True,
        position="ht",
        caption=caption.translate(_LATEX_CAPTION_ESCAPES),
    )


def _markdown_table(df: pd.DataFrame, float_format: str) -> str:
    # A "|" in a cell or header would end the cell: escaped, it shows as "|" on GitHub and in nbconvert's
    # HTML. Inline HTML such as "<br>" (lines within a cell) passes through to both.
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    text = df.map(lambda v: escape(_cell(v, float_format))) if len(df) else df.astype(str)
    text.columns = [escape(str(c)) for c in df.columns]
    return text.to_markdown(index=False, disable_numparse=True)


def save_table(
    df: pd.DataFrame, name: str, out_dir, caption: str, synthetic: bool = False, float_format: str = "%.2f"
) -> dict[str, Path]:
    """Write `df` as `<name>.csv`, `<name>.md` and `<name>.tex` in `out_dir`.

    Each file starts with the caption (e.g. "Table 4. Ablation study ...") and, when `synthetic`, the
    banner "SYNTHETIC DATA — not comparable with the paper". In the CSV both are comment lines starting
    with "# " before the header; read it back with `read_table_csv`. Missing values are written "-".

    Returns:
        {"csv": path, "md": path, "tex": path}.
    """
    _check_file_stem(name)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"save_table expects a pandas DataFrame, got {type(df).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preamble = [caption] + ([SYNTHETIC_BANNER] if synthetic else [])
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}

    csv_body = df.to_csv(index=False, na_rep="-", float_format=float_format)
    paths["csv"].write_text("".join(f"# {line}\n" for line in preamble) + csv_body, encoding="utf-8")

    md = [f"**{caption}**", ""]
    if synthetic:
        md += [f"> **{SYNTHETIC_BANNER}**", ""]
    md += [_markdown_table(df, float_format), ""]
    paths["md"].write_text("\n".join(md), encoding="utf-8")

    paths["tex"].write_text(_latex_table(df, caption, synthetic, float_format), encoding="utf-8")
    return paths


def read_table_csv(path) -> pd.DataFrame:
    """Read a CSV written by `save_table` (skips its leading "# " caption/banner lines; "-" is missing)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    skip = 0
    while skip < len(lines) and lines[skip].startswith("# "):
        skip += 1
    if skip == len(lines):
        raise ValueError(f"{path}: no table after the {skip} comment line(s)")
    return pd.read_csv(path, skiprows=skip, na_values=["-"], keep_default_na=True)


def add_synthetic_banner(fig) -> None:
    """Write the synthetic-data banner across `fig` (once) so no copy of the image loses it."""
    if any(t.get_text() == SYNTHETIC_BANNER for t in fig.texts):
        return
    fig.text(
        0.5,
        0.5,
        SYNTHETIC_BANNER,
        ha="center",
        va="center",
        rotation=25,
        fontsize=16,
        color="red",
        alpha=0.35,
        fontweight="bold",
        zorder=1000,
    )
    fig.text(0.5, 0.995, SYNTHETIC_BANNER, ha="center", va="top", fontsize=9, color="red", fontweight="bold")


def save_figure(fig, name: str, out_dir, synthetic: bool = False, dpi: int = 150) -> dict[str, Path]:
    """Save a matplotlib figure as `<name>.png` and `<name>.pdf` in `out_dir`.

    When `synthetic`, the banner text is drawn on the figure itself first (`add_synthetic_banner`).

    Returns:
        {"png": path, "pdf": path}.
    """
    _check_file_stem(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if synthetic:
        add_synthetic_banner(fig)
    paths = {"png": out_dir / f"{name}.png", "pdf": out_dir / f"{name}.pdf"}
    fig.savefig(paths["png"], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight")
    return paths


# ---------------------------------------------------------------------------------------------------
# The report

_IMAGE_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}


def _check_block(block, where: str):
    if isinstance(block, (str, pd.DataFrame)):
        return block
    if isinstance(block, os.PathLike):
        path = Path(block)
        if path.suffix.lower() not in _IMAGE_MIME:
            raise ValueError(f"{where}: image {path} has suffix {path.suffix!r}; supported: {', '.join(_IMAGE_MIME)}")
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file {path} does not exist")
        return path
    raise TypeError(
        f"{where}: a block must be markdown text (str), a pandas DataFrame or an image path "
        f"(pathlib.Path), got {type(block).__name__}"
    )


def section_anchors(names) -> list[str]:
    """An anchor id per section title, as GitHub derives one from a heading ("Table 4" -> "table-4",
    "Figures 6-7 (Grad-CAM)" -> "figures-6-7-grad-cam"), made unique with "-1", "-2", ... ."""
    anchors, used = [], Counter()
    for name in names:
        slug = re.sub(r"[^\w\- ]", "", name.strip().lower()).replace(" ", "-") or "section"
        anchors.append(slug if not used[slug] else f"{slug}-{used[slug]}")
        used[slug] += 1
    return anchors


def render_report(
    markdown_path,
    html_path,
    sections,
    title: str = "PAtt-Lite replication report",
    synthetic: bool = False,
    provenance_info: dict | None = None,
) -> tuple[Path, Path]:
    """Write the report as Markdown and as one standalone HTML file (nbconvert's HTML export of the same
    Markdown, images embedded as base64).

    After the title, a table of contents links each section; an explicit anchor (`<a id="..."></a>`,
    `section_anchors`) before each `## ` heading makes the links work on GitHub and in the HTML alike.

    Args:
        markdown_path, html_path: output files (folders are created).
        sections: list of (section title, list of blocks); a block is Markdown text (str), a pandas
            DataFrame (rendered as a table, missing values "-") or an image file as a `pathlib.Path`
            (PNG/JPEG/GIF/SVG; linked relative to the Markdown file, embedded in the HTML).
        title: the report's title.
        synthetic: put the synthetic-data banner at the top of both files.
        provenance_info: e.g. `provenance()`; written as a small key: value list at the end.

    Returns:
        (markdown_path, html_path).
    """
    import nbformat  # the report alone needs nbconvert (slow to import)
    from nbconvert import HTMLExporter

    markdown_path, html_path = Path(markdown_path), Path(html_path)
    checked = []
    for i, section in enumerate(sections):
        if not (isinstance(section, (tuple, list)) and len(section) == 2 and isinstance(section[0], str)):
            raise TypeError(f"section {i} must be a (title, blocks) pair, got {section!r:.80}")
        name, blocks = section
        if isinstance(blocks, (str, pd.DataFrame, os.PathLike)):
            raise TypeError(f"section {name!r}: blocks must be a list of blocks, got one {type(blocks).__name__}")
        checked.append((name, [_check_block(b, f"section {name!r} block {j}") for j, b in enumerate(blocks)]))

    # One Markdown text per section; images are links in the .md file and cell attachments in the
    # notebook that nbconvert renders to HTML (so the HTML file embeds them).
    anchors = section_anchors(name for name, _ in checked)
    head = [f"# {title}"] + ([f"> **{SYNTHETIC_BANNER}**"] if synthetic else [])
    if checked:
        head.append(
            "**Contents**\n\n" + "\n".join(f"- [{name}](#{anchor})" for (name, _), anchor in zip(checked, anchors))
        )
    md_parts, cells = ["\n\n".join(head)], [nbformat.v4.new_markdown_cell("\n\n".join(head))]
    for (name, blocks), anchor in zip(checked, anchors):
        heading = f'<a id="{anchor}"></a>\n\n## {name}'
        md, cell_md, attachments = [heading], [heading], {}
        for block in blocks:
            if isinstance(block, str):
                md.append(block.strip())
                cell_md.append(block.strip())
            elif isinstance(block, pd.DataFrame):
                md.append(_markdown_table(block, "%.2f"))
                cell_md.append(md[-1])
            else:
                rel = os.path.relpath(block.resolve(), markdown_path.resolve().parent)
                md.append(f"![{block.stem}]({Path(rel).as_posix()})")
                attachments[block.name] = {
                    _IMAGE_MIME[block.suffix.lower()]: base64.b64encode(block.read_bytes()).decode("ascii")
                }
                cell_md.append(f"![{block.stem}](attachment:{block.name})")
        md_parts.append("\n\n".join(md))
        cell = nbformat.v4.new_markdown_cell("\n\n".join(cell_md))
        if attachments:
            cell.attachments = attachments
        cells.append(cell)
    if provenance_info:
        text = "---\n\nProvenance:\n\n" + "\n".join(f"- {k}: {v}" for k, v in provenance_info.items())
        md_parts.append(text)
        cells.append(nbformat.v4.new_markdown_cell(text))

    exporter = HTMLExporter(
        template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True, exclude_anchor_links=True
    )
    page, _ = exporter.from_notebook_node(
        nbformat.v4.new_notebook(cells=cells), resources={"metadata": {"name": title}}
    )
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text("\n\n".join(md_parts) + "\n", encoding="utf-8")
    html_path.write_text(html_verdict_marks(page), encoding="utf-8")
    return markdown_path, html_path


def html_verdict_marks(page: str) -> str:
    """Each verdict mark (`VERDICT_MARKS`) of an HTML page drawn as a coloured CSS square with its verdict
    as hover text (no emoji font needed), and each table cell holding one tinted in its first mark's
    colour."""
    by_mark = {mark: (verdict, square, cell) for verdict, (mark, square, cell) in VERDICT_MARKS.items()}

    def square(mark: str) -> str:
        verdict, colour, _ = by_mark[mark]
        return (
            f'<span class="verdict-mark" title="{verdict}" aria-label="{verdict}" style="display:inline-block;'
            f"width:0.75em;height:0.75em;margin-right:0.2em;vertical-align:-0.05em;background:{colour};"
            f'border:1px solid #555"></span>'
        )

    marks = "|".join(map(re.escape, by_mark))

    def cell(match) -> str:
        attributes, content = match.group(1), match.group(2)
        first = re.search(marks, content)
        if first is None:
            return match.group(0)
        tint = by_mark[first.group(0)][2]
        return f'<td{attributes} style="background:{tint}">{re.sub(marks, lambda m: square(m.group(0)), content)}</td>'

    page = re.sub(r"<td([^>]*)>(.*?)</td>", cell, page, flags=re.S)
    return re.sub(marks, lambda m: square(m.group(0)), page)
