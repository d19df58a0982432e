"""The figures: the paper's Figures 2-10 drawn from results and models, the audit chart, and the
notebooks' illustrations (sample images, learning curves).

- `paper_figure(n, results, ctx)`: Figs. 2-5 and 8 (confusion matrices summed over the result files of
  the matching experiments) and 9-10 (accuracy against parameters, the paper's points and ours);
- `gradcam_samples` + `gradcam_figure`: Figs. 6-7 from the trained model of one experiment;
- `audit_figure`: the audit's accuracy by protocol;
- `sample_grid_figure`, `learning_curves_figure`: what notebooks 01 and 02 show.

Every figure is saved as PNG and PDF by `pattlite.report.save_figure`, with the synthetic banner on
demo/ci data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pattlite import config, paper, report
from pattlite.results import ExperimentResult, result_file
from pattlite.studies import prose
from pattlite.studies.plan import GRADCAM_DATASET, gradcam_experiment
from pattlite.studies.tables import (
    OUR_ROWS,
    WHOLE_TEST,
    audit_table,
    model_param_count,
    ours_accuracy,
    params_text,
    require_columns,
    standard_rows,
)


def load_results_files(results: pd.DataFrame, results_dir, **keys) -> list[ExperimentResult]:
    """The result files of the experiments in `results` that match `keys` (default options)."""
    require_columns(results, ["key"] + list(keys))
    rows = standard_rows(results)
    mask = pd.Series(True, index=rows.index)
    for name, wanted in keys.items():
        mask &= rows[name] == wanted
    return [ExperimentResult.read(result_file(results_dir, key)) for key in dict.fromkeys(rows.loc[mask, "key"])]


def summed_confusion(result_files, protocol: str, subset: str = WHOLE_TEST):
    """Confusion matrix (counts, rows = true class) summed over `ExperimentResult`s, and the class names."""
    total, classes = None, None
    for result in result_files:
        metrics = result.metrics.get(subset, {}).get(protocol)
        if metrics is None:
            continue
        cm = np.asarray(metrics["confusion_matrix"], dtype=float)
        total = cm if total is None else total + cm
        classes = result.classes
    return total, classes


def confusion_figure(
    results: pd.DataFrame, results_dir, panels, variant: str, protocol: str = "published", title: str = ""
):
    """A row of confusion matrices like the paper's Figs. 2-5 and 8.

    Args:
        panels: (dataset, subset) pairs, subset "all" or a challenging subset.
        variant: the model.
        protocol: the evaluation protocol (the paper's figures: "published").

    Returns:
        The matplotlib Figure; a panel without a result says so.
    """
    import matplotlib.pyplot as plt

    panels = list(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False)
    names = {"all": "test set", "occlusion": "occlusion", "pose30": "pose > 30", "pose45": "pose > 45"}
    for ax, (dataset, subset) in zip(axes[0], panels):
        files = load_results_files(results, results_dir, dataset=dataset, variant=variant)
        cm, classes = summed_confusion(files, protocol, subset)
        label = f"{dataset}, {names.get(subset, subset)}"
        if cm is None:
            ax.text(0.5, 0.5, f"no result for {variant}\n{label}", ha="center", va="center")
            ax.axis("off")
            continue
        report.plot_confusion_matrix(cm, classes, title=f"{label} (n = {int(cm.sum())})", ax=ax)
    if title:
        fig.suptitle(title, y=1.0, va="bottom")  # above a synthetic banner
    fig.tight_layout()
    return fig


def accuracy_vs_params_figure(figure: int, results: pd.DataFrame, title: str = ""):
    """Fig. 9 (RAF-DB) or 10 (FERPlus): the paper's methods and PAtt-Lite point, plus our rows."""
    import matplotlib.pyplot as plt

    info = paper.load_results()["figures"].get(str(figure))
    if info is None or info["kind"] != "accuracy_vs_params":
        raise ValueError(f"figure {figure!r}: the accuracy-vs-params figures are 9 and 10")
    dataset = info["dataset"]
    ours = []
    for label, variant, protocol in OUR_ROWS:
        acc = ours_accuracy(results, protocol, WHOLE_TEST, ["dataset", "variant"])
        acc = acc[(acc["dataset"] == dataset) & (acc["variant"] == variant)]
        if acc.empty:
            continue
        ours.append(
            {
                "method": label.replace("Ours: ", "ours: "),
                "accuracy": float(acc["value"].iloc[0]),
                "params": float(model_param_count(variant, len(config.DATASET_CLASSES[dataset]))),
                "params_text": params_text(variant, dataset),
                "is_pattlite": False,
            }
        )
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    ours_frame = pd.DataFrame(ours, columns=["method", "accuracy", "params", "params_text", "is_pattlite"])
    report.plot_accuracy_vs_params(paper.figure_points(figure), ours_frame, title or figure_caption(figure), ax=ax)
    fig.tight_layout()
    return fig


def figure_caption(figure: int) -> str:
    """ "Figure N. <the paper's caption>" (Figures 2-10)."""
    if figure in GRADCAM_FIGURES:
        return f"Figure {figure}. {prose.caption(f'figure{figure}')}"
    info = paper.load_results()["figures"].get(str(figure))
    if info is None:
        raise ValueError(f"figure {figure!r}: the replicated figures are 2-10")
    return f"Figure {figure}. {info['caption']}"


GRADCAM_FIGURES = (6, 7)
FIGURES = (2, 3, 4, 5, 6, 7, 8, 9, 10)


def paper_figure(figure: int, results: pd.DataFrame, ctx, protocol: str = "published"):
    """Draw Figure 2, 3, 4, 5, 8, 9 or 10 from results and save it (PNG, PDF) as `figure<N>` under
    `ctx.figures_dir`, with the synthetic banner in demo/ci. Returns the Figure, or None when its
    dataset is not among `ctx.datasets`."""
    import matplotlib.pyplot as plt

    info = paper.load_results()["figures"].get(str(figure))
    if info is None:
        raise ValueError(
            f"figure {figure!r}: drawn from results are Figures "
            f"{', '.join(paper.load_results()['figures'])}; 6 and 7 are Grad-CAM (gradcam_figure)"
        )
    if info["kind"] == "confusion_matrix":
        datasets = [d for d in info.get("datasets", [info.get("dataset")]) if d in ctx.datasets]
        if not datasets:
            return None
        subsets = info.get("subsets") or [WHOLE_TEST]
        panels = [(d, s) for d in datasets for s in subsets]
        fig = confusion_figure(
            results,
            ctx.results_dir,
            panels,
            info["variant"],
            protocol,
            title=f"{figure_caption(figure)} ({info['variant']} model, {protocol} protocol)",
        )
    else:
        if info["dataset"] not in ctx.datasets:
            return None
        fig = accuracy_vs_params_figure(figure, results)
    report.save_figure(fig, f"figure{figure}", ctx.figures_dir, synthetic=ctx.synthetic)
    plt.close(fig)
    return fig


def gradcam_samples(
    ctx, dataset: str | None = None, variant: str = "published", n_true: int = 6, n_false: int = 6, seed: int = 0
) -> dict:
    """The trained model of (dataset, variant, first seed) and Grad-CAM maps for Figs. 6 and 7.

    `dataset` defaults to `plan.dataset_choice(ctx, "gradcam")` (the paper's RAF-DB when present).
    Fig. 6: one test image per class (a correctly predicted one where possible); Fig. 7: `n_true` right
    and `n_false` wrong predictions. Maps explain the predicted class at `gradcam.default_layer`.
    Predictions are each image's own (the independent protocol: what a single image gets).
    """
    from pattlite import gradcam
    from pattlite.evaluate import predict

    n_true, n_false = int(n_true), int(n_false)
    exp = gradcam_experiment(ctx, dataset, variant)
    model, data = gradcam.trained_model(exp, ctx.results_dir)
    test = data["index"]["test"]
    images = np.asarray(data["pixels"][np.sort(test)])
    y = data["y"][np.sort(test)]
    predictions = predict(model, images, y, "independent").argmax(axis=1)
    classes = list(data["classes"])
    per_class = gradcam.pick_per_class(y, predictions, len(classes), seed=seed)
    true_false = gradcam.pick_true_false(y, predictions, n_true, n_false, seed=seed)
    layer = gradcam.default_layer(model)
    return {
        "experiment": exp,
        "model": model,
        "classes": classes,
        "layer": layer,
        "images": images[per_class],
        "labels": y[per_class],
        "predictions": predictions[per_class],
        "maps": gradcam.gradcam_maps(model, images[per_class], predictions[per_class], layer),
        "tf_images": images[true_false],
        "tf_labels": y[true_false],
        "tf_predictions": predictions[true_false],
        "tf_maps": gradcam.gradcam_maps(model, images[true_false], predictions[true_false], layer),
        "test_accuracy": float(np.mean(predictions == y)) * 100.0,
    }


GRADCAM_RECORD = "gradcam.json"  # beside figure6/7.png: which experiment they show, for the report


def gradcam_title(figure: int, dataset: str) -> str:
    """The paper's caption, then what ours shows when it is not the paper's RAF-DB."""
    title = figure_caption(figure)
    if dataset != GRADCAM_DATASET:
        title += f" Ours on {config.DATASET_NAMES[dataset]}, a stand-in for {config.DATASET_NAMES[GRADCAM_DATASET]}."
    return title


def gradcam_figure(figure: int, sample: dict, ctx):
    """Draw and save Figure 6 (one image per class) or 7 (true and false predictions) from `gradcam_samples`,
    and record which experiment they show in `<figures_dir>/gradcam.json` (the report names its dataset)."""
    import json

    import matplotlib.pyplot as plt

    from pattlite import gradcam
    from pattlite.files import write_json_atomic

    exp = sample["experiment"]
    if figure == 6:
        fig = gradcam.plot_per_class(
            sample["images"], sample["maps"], sample["labels"], sample["classes"], title=gradcam_title(6, exp.dataset)
        )
    elif figure == 7:
        fig = gradcam.plot_predictions(
            sample["tf_images"],
            sample["tf_maps"],
            sample["tf_labels"],
            sample["tf_predictions"],
            sample["classes"],
            title=gradcam_title(7, exp.dataset),
        )
    else:
        raise ValueError(f"figure {figure!r}: the Grad-CAM figures are 6 and 7")
    report.save_figure(fig, f"figure{figure}", ctx.figures_dir, synthetic=ctx.synthetic)
    plt.close(fig)
    record = Path(ctx.figures_dir) / GRADCAM_RECORD
    shown = json.loads(record.read_text()) if record.is_file() else {}
    shown = shown if shown.get("key") == exp.key() else {}  # another experiment's record is replaced
    write_json_atomic(
        record,
        {
            "key": exp.key(),
            "dataset": exp.dataset,
            "variant": exp.variant,
            "seed": exp.seed,
            "fold": exp.fold,
            "figures": sorted(set(shown.get("figures", [])) | {figure}),
        },
    )
    return fig


def gradcam_shown(figures_dir) -> dict | None:
    """What `gradcam_figure` recorded beside the Grad-CAM figures of a folder (None: no record)."""
    import json

    record = Path(figures_dir) / GRADCAM_RECORD
    if not record.is_file():
        return None
    try:
        shown = json.loads(record.read_text())
    except ValueError as err:
        raise ValueError(f"{record}: not valid JSON ({err}); delete it and rerun notebook 06") from None
    if not isinstance(shown, dict) or shown.get("dataset") not in config.DATASET_NAMES:
        raise ValueError(
            f'{record}: expected {{"dataset": <benchmark>, ...}} as notebook 06 writes it; delete '
            "it and rerun notebook 06"
        )
    return shown


def audit_figure(results: pd.DataFrame, ctx=None, synthetic: bool | None = None):
    """Bar chart: each benchmark's accuracy per variant and protocol (saved as `audit` when ctx is given)."""
    import matplotlib.pyplot as plt

    synthetic = ctx.synthetic if synthetic is None and ctx is not None else bool(synthetic)
    audit = audit_table(results, synthetic)
    columns = [c for c in audit.columns if " / " in c]
    fig, ax = plt.subplots(figsize=(3.0 + 2.2 * len(audit), 4.4))
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(audit))
    for i, column in enumerate(columns):
        ax.bar(x + i * width - 0.4 + width / 2, audit[column], width, label=column)
    ax.scatter(x, audit["paper"], marker="*", s=120, color="black", zorder=5, label="paper (Table 4)")
    ax.set_xticks(x, audit["dataset"])
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Audit: accuracy by evaluation protocol")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if ctx is not None:
        report.save_figure(fig, "audit", ctx.figures_dir, synthetic=synthetic)
    return fig


def sample_grid_figure(manifest: pd.DataFrame, pixels, per_class: int = 4, seed: int = 0, title: str = ""):
    """A grid of `per_class` images of each class (one row per class), labelled, drawn at random (seeded)
    from a manifest and its pixels (row i of `pixels` is row i of `manifest`)."""
    import matplotlib.pyplot as plt

    classes = list(manifest.attrs["classes"])
    rng = np.random.default_rng(seed)
    labels = manifest["y"].to_numpy()
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.3 * per_class, 1.3 * len(classes)), squeeze=False)
    for i, name in enumerate(classes):
        rows = np.flatnonzero(labels == i)
        chosen = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)) if len(rows) else []
        for j, ax in enumerate(axes[i]):
            ax.axis("off")
            if j < len(chosen):
                ax.imshow(np.asarray(pixels[chosen[j]]))
            if j == 0:
                ax.set_title(f"{name} ({len(rows)})", fontsize=8, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves_figure(history: dict, title: str = ""):
    """Loss and accuracy per epoch of one experiment (training and validation, stage 1 then stage 2),
    from its result's `history` ({"stage1": {metric: [per epoch]}, "stage2": {...}})."""
    import matplotlib.pyplot as plt

    history = history or {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        start = 0
        for stage in ("stage1", "stage2"):
            values = history.get(stage) or {}
            for name, style in ((metric, "-"), (f"val_{metric}", "--")):
                if name in values and values[name]:
                    epochs = np.arange(start, start + len(values[name])) + 1
                    ax.plot(epochs, values[name], style, label=f"{stage} {name}")
            start += max((len(v) for k, v in values.items() if k != "epoch"), default=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
