"""Verdicts, comparison tables, table/figure files, plots, the report and provenance."""

import base64
import math
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pattlite import paper, report  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------------- verdicts


def test_verdict_within_and_beyond_tolerance():
    assert report.verdict(95.05, 94.30, 1.0) == "reproduced"
    assert report.verdict(95.05, 94.05, 1.0) == "reproduced"  # exactly at the tolerance (float 1.0000000000000142)
    assert report.verdict(95.05, 94.04, 1.0) == "not reproduced"
    assert report.verdict(70.00, 92.50, 1.0) == "not reproduced"  # better than published is still a difference
    assert report.verdict(221, 221, report.COUNT_TOLERANCE) == "reproduced"
    assert report.verdict(221, 222, report.COUNT_TOLERANCE) == "not reproduced"


def test_verdict_missing_values_and_non_comparable_runs():
    assert report.verdict(95.05, None) == "no result"
    assert report.verdict(95.05, float("nan")) == "no result"
    assert report.verdict(None, 90.0) == "not comparable"
    assert report.verdict(95.05, 95.05, comparable=False) == "not comparable"
    assert report.verdict(95.05, None, comparable=False) == "not comparable"
    with pytest.raises(ValueError, match="tolerance"):
        report.verdict(95.05, 95.0, tolerance=-1)
    with pytest.raises(ValueError, match="expected a number"):
        report.verdict(95.05, "high")
    assert set(report.VERDICTS) == {"reproduced", "not reproduced", "not comparable", "no result"}


def _ours_table4():
    return pd.DataFrame(
        {
            "variant": ["published", "published", "baseline"],
            "dataset": ["rafdb", "fer2013", "rafdb"],
            "value": [94.60, 70.10, 85.17],
        }
    )


def test_compare_joins_and_judges_every_published_number():
    t4 = paper.paper_table(4)
    out = report.compare(t4, _ours_table4(), on=["variant", "dataset"])
    assert len(out) == len(t4)
    assert list(out.columns[:2]) == ["variant", "dataset"]
    assert list(out.columns[-5:]) == ["paper", "ours", "diff", "tolerance", "verdict"]
    row = out.set_index(["variant", "dataset"])
    assert row.loc[("published", "rafdb"), "diff"] == pytest.approx(94.60 - 95.05)
    assert row.loc[("published", "rafdb"), "verdict"] == "reproduced"
    assert row.loc[("published", "fer2013"), "diff"] == pytest.approx(70.10 - 92.50)
    assert row.loc[("published", "fer2013"), "verdict"] == "not reproduced"
    assert row.loc[("baseline", "rafdb"), "verdict"] == "reproduced"
    assert (row.loc[("published", "ckplus"), ["verdict"]] == "no result").all()
    assert out["verdict"].value_counts()["no result"] == len(t4) - 3
    assert (out["tolerance"] == report.ACCURACY_TOLERANCE).all()


def test_compare_synthetic_makes_every_verdict_not_comparable():
    out = report.compare(paper.paper_table(4), _ours_table4(), on=["variant", "dataset"], synthetic=True)
    assert set(out["verdict"]) == {"not comparable"}
    assert out.attrs["synthetic"] is True
    # the numbers are still shown
    assert out["ours"].notna().sum() == 3


def test_compare_counts_are_exact():
    t1 = paper.paper_table(1)
    ours = t1[["dataset", "class", "value"]].copy()
    ours.loc[(ours["dataset"] == "rafdb") & (ours["class"] == "fear"), "value"] += 1
    out = report.compare(t1, ours, on=["dataset", "class"])
    assert (out["tolerance"] == 0).all()
    bad = out[out["verdict"] == "not reproduced"]
    assert bad[["dataset", "class"]].values.tolist() == [["rafdb", "fear"]]
    assert (out["verdict"] != "no result").all()


def test_compare_rejects_ambiguous_or_missing_keys():
    t8 = paper.paper_table(8)
    ours = pd.DataFrame({"method": ["PAtt-Lite"], "dataset": ["rafdb"], "value": [90.0]})
    with pytest.raises(ValueError, match="several rows"):
        report.compare(t8, ours, on=["method"])
    with pytest.raises(ValueError, match="lacks column"):
        report.compare(t8, ours.drop(columns="dataset"), on=["method", "dataset"])
    out = report.compare(t8, ours, on=["method", "dataset"])
    assert out.loc[out["ours"].notna(), "verdict"].item() == "not reproduced"


def test_compare_outer_keeps_our_rows_without_a_published_number():
    ours = pd.DataFrame({"variant": ["published", "pattlite"], "dataset": ["rafdb", "rafdb"], "value": [95.0, 80.0]})
    left = report.compare(paper.paper_table(4), ours, on=["variant", "dataset"])
    outer = report.compare(paper.paper_table(4), ours, on=["variant", "dataset"], how="outer")
    assert "pattlite" not in set(left["variant"])
    extra = outer[outer["variant"] == "pattlite"]
    assert extra["verdict"].item() == "not comparable" and math.isnan(extra["paper"].item())


# ----------------------------------------------------------------------------------- tables


def _small_comparison():
    return report.compare(
        paper.paper_table(6),
        pd.DataFrame({"variant": ["published"], "dataset": ["rafdb"], "value": [93.5]}),
        on=["variant", "dataset"],
    )[["variant", "dataset", "paper", "ours", "diff", "verdict"]]


@pytest.mark.parametrize("synthetic", [False, True])
def test_save_table_writes_three_formats_with_caption_and_banner(tmp_path, synthetic):
    df = _small_comparison()
    caption = paper.table_caption(6)
    paths = report.save_table(df, "table6_patch_attention", tmp_path / "tables", caption, synthetic=synthetic)
    assert set(paths) == {"csv", "md", "tex"}
    texts = {k: p.read_text(encoding="utf-8") for k, p in paths.items()}
    for kind, text in texts.items():
        assert paths[kind].parent == tmp_path / "tables"
        assert ("SYNTHETIC DATA" in text) == synthetic, kind
    assert texts["csv"].splitlines()[0] == f"# {caption}"
    assert caption in texts["md"]
    assert r"\caption{Table 6. Comparison between patch extraction" in texts["tex"]
    if synthetic:
        assert texts["csv"].splitlines()[1] == f"# {report.SYNTHETIC_BANNER}"
        assert "not comparable with the paper" in texts["md"]
        assert rf"\caption{{{caption} ({report.SYNTHETIC_BANNER})}}" in texts["tex"]
    # every row of the frame is in each format
    assert sum(line.endswith(r" \\") for line in texts["tex"].splitlines()) == len(df) + 1  # header + rows
    assert "| published" in texts["md"] and "93.50" in texts["md"]
    back = report.read_table_csv(paths["csv"])
    assert list(back.columns) == list(df.columns)
    np.testing.assert_allclose(back["paper"], df["paper"])
    assert back["ours"].isna().sum() == df["ours"].isna().sum() == len(df) - 1


def test_save_table_escapes_latex_and_rejects_bad_names(tmp_path):
    df = pd.DataFrame({"Methods": ["A_b [1]"], "# Params": ["1.10M"], "Acc (%)": [95.05]})
    paths = report.save_table(df, "t", tmp_path, "Table 8. x & y")
    tex = paths["tex"].read_text()
    assert r"A\_b [1]" in tex and r"\# Params" in tex and r"Acc (\%)" in tex and r"x \& y" in tex
    assert report.read_table_csv(paths["csv"]).columns.tolist() == ["Methods", "# Params", "Acc (%)"]
    for bad in ("../t", "a b", ""):
        with pytest.raises(ValueError, match="file name stem"):
            report.save_table(df, bad, tmp_path, "c")


# ----------------------------------------------------------------------------------- figures


@pytest.mark.parametrize("synthetic", [False, True])
def test_save_figure_writes_png_and_pdf_with_banner_on_the_figure(tmp_path, synthetic):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    paths = report.save_figure(fig, "fig_test", tmp_path, synthetic=synthetic)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    banners = [t for t in fig.texts if "SYNTHETIC DATA" in t.get_text()]
    assert bool(banners) == synthetic
    if synthetic:
        assert all("not comparable with the paper" in t.get_text() for t in banners)
        report.save_figure(fig, "fig_test", tmp_path, synthetic=True)
        assert len([t for t in fig.texts if "SYNTHETIC DATA" in t.get_text()]) == len(banners)  # not stacked


def test_confusion_matrix_is_row_normalised_percent():
    cm = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
    pct = report.normalize_confusion_matrix(cm)
    np.testing.assert_allclose(pct[:2].sum(axis=1), [100.0, 100.0])
    np.testing.assert_allclose(pct[0], [80.0, 20.0, 0.0])
    assert np.isnan(pct[2]).all()  # no samples of that class
    ax = report.plot_confusion_matrix(cm, ["anger", "disgust", "fear"], "RAF-DB")
    cell_texts = [t.get_text() for t in ax.texts]
    assert cell_texts[:3] == ["80.00", "20.00", "0.00"] and cell_texts[3] == "25.00" and cell_texts[-1] == "-"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["anger", "disgust", "fear"]
    counts = report.plot_confusion_matrix(cm, ["a", "b", "c"], "counts", normalize=False)
    assert [t.get_text() for t in counts.texts][:2] == ["8", "2"]
    with pytest.raises(ValueError, match="does not match 2 classes"):
        report.plot_confusion_matrix(cm, ["a", "b"], "x")


def test_accuracy_vs_params_plots_paper_and_our_points():
    pts = paper.figure_points(9)
    ours = [
        {"method": "ours: published", "params": 1_102_664, "accuracy": 88.0},
        {"method": "ours: no params", "params": None, "accuracy": 70.0},
    ]
    ax = report.plot_accuracy_vs_params(pts, ours, "Fig. 9")
    assert ax.get_xscale() == "log"
    labels = {t.get_text() for t in ax.texts}
    placed = pts.loc[pts["params"].notna(), "method"]
    assert set(placed) | {"ours: published"} <= labels
    note = [t for t in labels if t.startswith("Not plotted")]
    assert note and "ARBEx [47]" in note[0] and "ours: no params" in note[0]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(offsets) == len(placed) + 1
    assert [1_102_664, 88.0] in offsets.tolist()
    with pytest.raises(ValueError, match="lacks column"):
        report.plot_accuracy_vs_params(pts.drop(columns="params"), [], "x")


# ----------------------------------------------------------------------------------- report


def test_render_report_markdown_and_standalone_html(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    image = report.save_figure(fig, "fig_curve", tmp_path / "figures")["png"]
    table = _small_comparison()
    sections = [
        ("Ablation (Table 6)", ["Our **patch extraction** vs `patch_attention`.\n\n- first\n- second", table]),
        ("Figures", [image, "Text after the figure."]),
    ]
    md_path, html_path = report.render_report(
        tmp_path / "out" / "report.md",
        tmp_path / "out" / "report.html",
        sections,
        synthetic=True,
        provenance_info={"git_commit": "abc123"},
    )
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    for title, _ in sections:
        assert f"## {title}" in md
        assert f"<h2>{title}</h2>" in page
    # The HTML is nbconvert's rendering of the same Markdown: tables, emphasis, code and lists become HTML.
    assert "<table>" in page and ">published</td>" in page and "93.50" in page
    assert "<strong>patch extraction</strong>" in page and "<code>patch_attention</code>" in page
    assert "<li>first</li>" in page and "<title>PAtt-Lite replication report</title>" in page
    encoded = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == image.read_bytes()
    assert "](../figures/fig_curve.png)" in md
    assert "| published" in md
    assert md.count("SYNTHETIC DATA") == 1 and page.count("SYNTHETIC DATA") == 1
    assert "abc123" in md and "abc123" in page


def test_render_report_contents_link_explicit_anchors(tmp_path):
    cells = pd.DataFrame({"Methods": ["a | b"], "CK+": ["paper 99.90<br>🟩 99.50 (published protocol)"]})
    sections = [
        ("Summary", ["text"]),
        ("Table 4", [cells]),
        ("Figures 6-7 (Grad-CAM)", ["none"]),
        ("Table 4", ["a second section of the same title"]),
    ]
    md_path, html_path = report.render_report(tmp_path / "r.md", tmp_path / "r.html", sections, title="T")
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    anchors = ["summary", "table-4", "figures-6-7-grad-cam", "table-4-1"]
    contents = "\n".join(f"- [{name}](#{anchor})" for (name, _), anchor in zip(sections, anchors))
    assert md.startswith(f"# T\n\n**Contents**\n\n{contents}\n\n")
    for (name, _), anchor in zip(sections, anchors):
        assert f'<a id="{anchor}"></a>\n\n## {name}\n' in md
        # In the HTML the link and its target both survive nbconvert.
        assert f'href="#{anchor}"' in page and f'<a id="{anchor}"></a>' in page
    # A cell's "|" is escaped (else it splits the cell); "<br>" breaks the line in both renderings.
    assert "| a \\| b " in md and "paper 99.90<br>🟩 99.50" in md
    assert ">a | b</td>" in page and "🟩" not in page  # marks drawn by CSS in the HTML (no emoji font needed)
    tint = report.VERDICT_MARKS["reproduced"][2]
    assert f'style="background:{tint}">paper 99.90<br/><span class="verdict-mark" title="reproduced"' in page
    assert "</span> 99.50 (published protocol)</td>" in page


def test_render_report_rejects_bad_blocks(tmp_path):
    out = (tmp_path / "r.md", tmp_path / "r.html")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        report.render_report(*out, [("S", [tmp_path / "missing.png"])])
    (tmp_path / "fig.pdf").write_bytes(b"%PDF-")
    with pytest.raises(ValueError, match="supported"):
        report.render_report(*out, [("S", [tmp_path / "fig.pdf"])])
    with pytest.raises(TypeError, match="block must be"):
        report.render_report(*out, [("S", [42])])
    with pytest.raises(TypeError, match="list of blocks"):
        report.render_report(*out, [("S", "just text")])
    assert not out[0].exists()


# ----------------------------------------------------------------------------------- provenance


def test_provenance_has_versions_backend_and_device_but_no_hostname():
    import keras

    info = report.provenance()
    for key in (
        "git_commit",
        "git_dirty",
        "python",
        "keras",
        "tensorflow",
        "numpy",
        "pandas",
        "pattlite",
        "keras_backend",
        "device",
        "platform",
        "created_utc",
    ):
        assert key in info, key
    assert info["keras"] == keras.__version__ and info["numpy"] == np.__version__
    assert info["keras_backend"] == keras.config.backend()
    assert isinstance(info["git_commit"], str) and info["git_commit"]
    if info["git_commit"] != "unknown":
        assert len(info["git_commit"]) == 40 and isinstance(info["git_dirty"], bool)
    assert info["device"]
    host = socket.gethostname()
    if len(host) >= 4:
        assert all(host not in str(v) for v in info.values())


def test_provenance_outside_git_says_unknown(tmp_path, monkeypatch):
    from pattlite import config

    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    info = report.provenance()
    assert info["git_commit"] == "unknown" and info["git_dirty"] is None
