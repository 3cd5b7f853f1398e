"""PNG plots of the report (matplotlib, Agg): label and attribute balance, length distributions,
the embedding map and the four-way usefulness comparison.

matplotlib is imported inside the functions (it costs about a second), and only its object API is
used (`Figure`, no pyplot): no global figure state, no GUI backend, safe in a Dagster worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from synth_assets.evaluation.report import EvaluationReport

DPI = 90  # small files: the PNGs are also inlined into the UI's Markdown
COLORS = {"requested": "#9e9e9e", "prompted": "#bdbdbd", "curated": "#1f77b4", "real": "#ff7f0e"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def plot_label_balance(table: pd.DataFrame, path: Path) -> Path:
    figure = _figure(6, 3.2)
    axes = figure.subplots()
    x = np.arange(len(table))
    axes.bar(x - 0.2, table["requested_share"], 0.4, label="requested", color=COLORS["requested"])
    axes.bar(x + 0.2, table["curated_share"], 0.4, label="curated", color=COLORS["curated"])
    axes.set_xticks(x, table["label"].astype(str), rotation=20 if len(table) > 4 else 0)
    axes.set_ylabel("share")
    axes.set_title("Labels: requested vs curated share")
    axes.legend()
    return _save(figure, path)


def plot_attribute_balance(tables: dict[str, pd.DataFrame], path: Path) -> Path:
    heights = [max(1.5, 0.32 * len(t) + 0.8) for t in tables.values()]
    figure = _figure(9, sum(heights))
    grid = figure.subplots(len(tables), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for row, (name, table) in enumerate(tables.items()):
        y = np.arange(len(table))
        share, yields = grid[row][0], grid[row][1]
        share.barh(y - 0.2, table["requested_share"], 0.4, label="requested", color=COLORS["requested"])
        share.barh(y + 0.2, table["curated_share"], 0.4, label="curated", color=COLORS["curated"])
        share.set_yticks(y, table["value"].astype(str))
        share.invert_yaxis()
        share.set_title(f"{name}: share", fontsize=10)
        yields.barh(y, table["yield"].astype(float).fillna(0.0), color=COLORS["curated"])
        yields.set_yticks(y, [""] * len(y))
        yields.invert_yaxis()
        yields.set_xlim(0, 1)
        yields.set_title(f"{name}: yield (curated / generated)", fontsize=10)
        if row == 0:
            share.legend(fontsize=8)
    return _save(figure, path)


def plot_lengths(lengths: dict[str, np.ndarray], path: Path) -> Path:
    figure = _figure(6, 3.2)
    axes = figure.subplots()
    present = [values for values in lengths.values() if len(values)]
    top = max((float(v.max()) for v in present), default=1.0)
    bins = np.linspace(0, max(top, 1.0), 25)
    styles = {"real": COLORS["real"], "curated": COLORS["curated"], "rejected": "#d62728"}
    for name, values in lengths.items():
        if len(values):
            axes.hist(
                values,
                bins=bins,
                density=True,
                histtype="step",
                linewidth=2,
                label=f"{name} (n={len(values)})",
                color=styles.get(name),
            )
    axes.set_xlabel("words per text")
    axes.set_ylabel("density")
    axes.set_title("Length distributions: real vs synthetic")
    axes.legend()
    return _save(figure, path)


def plot_embedding_map(points: pd.DataFrame, path: Path) -> Path:
    figure = _figure(6.5, 5)
    axes = figure.subplots()
    colors = {
        "real train": COLORS["real"],
        "real holdout": "#ffbb78",
        "synthetic curated": COLORS["curated"],
        "synthetic rejected": "#d62728",
    }
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    labels = sorted(points["label"].astype(str).unique())
    for group, color in colors.items():
        for i, label in enumerate(labels):
            rows = points[(points["group"] == group) & (points["label"].astype(str) == label)]
            if len(rows):
                axes.scatter(
                    rows["x"],
                    rows["y"],
                    s=22,
                    alpha=0.75,
                    color=color,
                    marker=markers[i % len(markers)],
                    label=f"{group} · {label}",
                )
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("MiniLM embeddings, 2-D PCA (colour: set, marker: label)")
    axes.legend(fontsize=7, ncol=2, loc="best")
    return _save(figure, path)


def plot_usefulness(configs: list[Any], path: Path) -> Path:
    figure = _figure(7, 3.4)
    axes = figure.subplots()
    measured = [c for c in configs if c.macro_f1 is not None]
    x = np.arange(len(measured))
    for offset, metric, color in (
        (-0.2, "accuracy", COLORS["requested"]),
        (0.2, "macro_f1", COLORS["curated"]),
    ):
        values = np.array([getattr(c, metric) for c in measured], dtype=float)
        intervals = [getattr(c, f"{metric}_ci") for c in measured]
        errors = None
        if all(intervals):
            errors = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, intervals, strict=True)]).T
        axes.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=metric.replace("_", "-"), color=color)
    axes.set_xticks(
        x,
        [c.description.replace(" (all generated)", "").replace(" + ", " +\n") for c in measured],
        fontsize=8,
    )
    axes.set_ylim(0, 1)
    axes.set_ylabel("score on the real holdout")
    axes.set_title("Usefulness: classifier trained on ..., tested on real held-out rows (95% CI)")
    axes.legend(fontsize=8, loc="lower right", framealpha=0.9)
    return _save(figure, path)


def render_plots(report: EvaluationReport, folder: Path) -> dict[str, Path]:
    """Every plot that has data, as PNG files in `folder`; name -> path. A plot whose family was not
    among the report's families has no data and is left out."""
    plots: dict[str, Path] = {}
    if len(report.label_table):
        plots["label_balance"] = plot_label_balance(report.label_table, folder / "label_balance.png")
    if report.attribute_tables:
        plots["attribute_balance"] = plot_attribute_balance(
            report.attribute_tables, folder / "attribute_balance.png"
        )
    lengths = report.plot_data.get("lengths", {})
    if any(len(v) for v in lengths.values()):
        plots["lengths"] = plot_lengths(lengths, folder / "lengths.png")
    if len(report.plot_data.get("embedding_map", ())):
        plots["embedding_map"] = plot_embedding_map(
            report.plot_data["embedding_map"], folder / "embedding_map.png"
        )
    if any(c.macro_f1 is not None for c in report.usefulness.configs):
        plots["usefulness"] = plot_usefulness(report.usefulness.configs, folder / "usefulness.png")
    return plots
