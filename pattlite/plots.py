"""The plots of the paper's figures: confusion matrices as seaborn heatmaps (`plot_confusion_matrix`, Figs. 2-5
and 8) and accuracy against parameter count (`plot_accuracy_vs_params`, Figs. 9-10). Matplotlib and seaborn are
imported when a plot is drawn. Importable from `pattlite.report` too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def normalize_confusion_matrix(cm) -> np.ndarray:
    """Row-normalise a confusion matrix (rows = true class) to percent; a row with no samples is NaN."""
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * cm / totals, np.nan)


def plot_confusion_matrix(cm, classes, title: str, normalize: bool = True, ax=None):
    """Confusion matrix as a heat map with the value in every cell, like the paper's Figs. 2-5 and 8.

    Args:
        cm: square array of counts, rows = true class, columns = predicted class.
        classes: class names in the matrix's order.
        title: axes title.
        normalize: show row-normalised percentages (per-class recall on the diagonal); else raw counts.
        ax: matplotlib Axes to draw on; a new figure when None.

    Returns:
        The Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn

    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(classes):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {len(classes)} classes {list(classes)}")
    shown = normalize_confusion_matrix(counts) if normalize else counts
    if ax is None:
        size = 1.0 + 0.75 * len(classes)
        _, ax = plt.subplots(figsize=(size + 1.0, size))
    vmax = 100.0 if normalize else max(float(np.nanmax(shown)) if shown.size else 1.0, 1.0)
    labels = [["-" if np.isnan(v) else (f"{v:.2f}" if normalize else f"{int(v)}") for v in row] for row in shown]
    seaborn.heatmap(
        np.nan_to_num(shown, nan=0.0),
        annot=np.array(labels, dtype=object),
        fmt="",
        cmap="Blues",
        vmin=0.0,
        vmax=vmax,
        square=True,
        ax=ax,
        annot_kws={"fontsize": 8},
        cbar_kws={"fraction": 0.046, "pad": 0.04},
        xticklabels=list(classes),
        yticklabels=list(classes),
    )
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return ax


def _points_frame(rows, what: str) -> pd.DataFrame:
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    if len(df) == 0:
        return pd.DataFrame(columns=["method", "params", "accuracy"])
    missing = [c for c in ("method", "params", "accuracy") if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; expected method, params (count), accuracy (%)")
    return df


def plot_accuracy_vs_params(methods_df, ours_rows, title: str, ax=None):
    """Accuracy against parameter count (log scale), like the paper's Figs. 9 (RAF-DB) and 10 (FERPlus).

    Args:
        methods_df: the paper's points, columns `method`, `params` (count), `accuracy` (%), optional
            `is_pattlite`; `pattlite.paper.figure_points(9 or 10)` gives them. Points without a parameter
            count cannot be placed on the axis; they are named in a note under the plot.
        ours_rows: our points (DataFrame or list of dicts) with the same columns; may be empty.
        title: axes title.
        ax: matplotlib Axes; a new figure when None.

    Returns:
        The Axes.
    """
    import matplotlib.pyplot as plt

    paper_pts = _points_frame(methods_df, "methods_df")
    ours_pts = _points_frame(ours_rows, "ours_rows")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 5.0))
    is_pattlite = (
        paper_pts["is_pattlite"].astype(bool)
        if "is_pattlite" in paper_pts
        else paper_pts["method"].astype(str).str.startswith("PAtt-Lite")
    )
    placeable = paper_pts["params"].notna()
    groups = (
        (paper_pts[placeable & ~is_pattlite], dict(marker="o", color="tab:gray"), "published methods"),
        (paper_pts[placeable & is_pattlite], dict(marker="*", s=180, color="tab:blue"), "PAtt-Lite (paper)"),
        (ours_pts[ours_pts["params"].notna()], dict(marker="D", color="tab:red"), "ours"),
    )
    for pts, style, label in groups:
        if len(pts) == 0:
            continue
        ax.scatter(
            pts["params"].astype(float), pts["accuracy"].astype(float), label=label, zorder=3, **{"s": 40, **style}
        )
        for row in pts.itertuples(index=False):
            ax.annotate(
                str(row.method),
                (float(row.params), float(row.accuracy)),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_xlabel("Parameters (log scale)")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    unplaced = list(paper_pts.loc[~placeable, "method"]) + list(ours_pts.loc[ours_pts["params"].isna(), "method"])
    if unplaced:
        ax.text(
            0.0,
            -0.16,
            "Not plotted (no parameter count): " + ", ".join(map(str, unplaced)),
            transform=ax.transAxes,
            fontsize=7,
            va="top",
        )
    return ax
