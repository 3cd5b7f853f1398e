"""The evaluation report: every metric of a run, compared with the last good run, as Markdown.

`build_report` computes (pure: DataFrames in, numbers out; the embedding function is passed in),
`render_markdown` writes it up, `write_report` puts the Markdown and the plots in a folder next to
the DuckDB file. The metrics come from the registered metric families (`evaluation/families/`:
counts and yield, usefulness, seed cross-validation, diversity, Vendi score, fidelity to the real
seed, relevance and label faithfulness, bias, cost, rejections); this module embeds once, runs them,
asks the usefulness gate and lays out the page around their sections.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth_assets.curation.seed_sample import MAX_SEED_ROWS_EMBEDDED, bounded_sample
from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families import (
    FAMILIES,
    key_figures,
    ui_metrics,
    volatile_metrics,
    withheld_status,
)
from synth_assets.evaluation.families.base import (
    PLOT_TITLES,  # noqa: F401  (re-exported: plot titles were defined here)
    Embedder,
    EvaluationContext,
    MetricFamily,
    fmt,
    plain,
)
from synth_assets.evaluation.gate import GateVerdict, usefulness_gate
from synth_assets.evaluation.inputs import BaselineRun, EvaluationInputs
from synth_assets.evaluation.seed_cv import SeedCVResult
from synth_assets.evaluation.usefulness import UsefulnessResult
from synth_assets.spec import GenerationSpec, content_hash

# (metric, label, direction) of the key-figures table; direction +1: higher is better, -1: lower,
# 0: neither (a count or a size). Derived from the families' figures (`families/__init__.py`).
KEY_FIGURES: tuple[tuple[str, str, int], ...] = key_figures()
# Top-level numeric metadata of the materialization, which the UI plots across runs: the key figures
# and a few more; every metric is still in the `metrics` JSON entry and in evaluation_history.
UI_METRICS: tuple[str, ...] = ui_metrics()
# wall-clock metrics change every run: kept out of the data version so an unchanged run is not "new"
VOLATILE_METRICS = volatile_metrics()
# distribution scores withheld below a minimum row count: score -> the metric saying "too few rows: ..."
WITHHELD_STATUS = withheld_status()


@dataclass
class EvaluationReport:
    """One run's evaluation: every metric, the gate verdict, and what the page and plots are made of.

    `metrics`: flat JSON values (None when not measured; the same keys every run, so history and the
    gate compare runs), stored in evaluation_history.metrics. `details`: JSON tables per family plus
    the gate's verdict, stored in evaluation_history.details. `tables`: the families' named objects
    (`label_table`, `attribute_tables`, `diversity`, `vendi`, `usefulness`, `seed_cv`,
    `reject_reasons`, ...), read by their sections and by `plots.py`. `plot_data`: inputs of the
    length plot and the embedding map. `size_minimums`: rows per side each withheld score needs, to
    judge a baseline computed before the minimum. `publication`: what happened to the evaluated
    curated_set version (set by the asset before the report is written). `families`: the families
    that computed it, whose sections `render_markdown` lays out."""

    spec_name: str
    run_id: str
    model: str
    num_samples: int
    curated_run_id: str | None
    metrics: dict[str, Any]
    details: dict[str, Any]
    verdict: GateVerdict
    baseline: BaselineRun | None
    curated_preview: pd.DataFrame
    tables: dict[str, Any] = field(default_factory=dict)
    plot_data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    markdown: str = ""
    size_minimums: dict[str, int] = field(default_factory=dict)
    publication: str | None = None
    families: tuple[MetricFamily, ...] = FAMILIES

    @property
    def label_table(self) -> pd.DataFrame:
        """Per label: requested, generated, curated, shares and yield (the bias family)."""
        return self.tables.get("label_table", pd.DataFrame())

    @property
    def attribute_tables(self) -> dict[str, pd.DataFrame]:
        """Per attribute, the same per value (the bias family)."""
        return self.tables.get("attribute_tables", {})

    @property
    def diversity_table(self) -> pd.DataFrame:
        """Diversity per set and label (the diversity family)."""
        return self.tables.get("diversity", pd.DataFrame())

    @property
    def usefulness(self) -> UsefulnessResult:
        """The four-way train-on-synthetic comparison (the usefulness family)."""
        return self.tables.get("usefulness", UsefulnessResult(0, note="not measured"))

    @property
    def seed_cv(self) -> SeedCVResult | None:
        """Usefulness from the seed rows alone; None when not measured."""
        return self.tables.get("seed_cv")

    @property
    def reject_reasons(self) -> dict[str, int]:
        """Rejected rows per reason code."""
        return self.tables.get("reject_reasons", {})

    def numeric_metrics(self, keys: Sequence[str] | None = None) -> dict[str, float]:
        """Scalar metrics as floats rounded to 4 places (None and flags left out), all or only `keys`."""
        return {
            key: round(float(value), 4)  # readable in the UI; full precision stays in `metrics`
            for key, value in self.metrics.items()
            if (keys is None or key in keys)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }

    def withheld_metrics(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Scores not computed because a side had too few rows: key -> "too few rows: ..." (for the
        UI, which would otherwise show nothing, or a stale number, where a verdict used to be)."""
        return {
            key: str(self.metrics[status])
            for key, status in withheld_status(self.families).items()
            if (keys is None or key in keys) and self.metrics.get(key) is None and self.metrics.get(status)
        }

    def data_version(self) -> str:
        """Content hash of the metrics without the wall-clock ones: equal for an unchanged run."""
        volatile = volatile_metrics(self.families)
        return content_hash({k: v for k, v in self.metrics.items() if k not in volatile})


# ------------------------------------------------------------------------------------------ compute


def _embed_all(embed: Embedder, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Embed every group in one call, each distinct text once."""
    unique = list(dict.fromkeys(text for texts in groups.values() for text in texts))
    vectors = embed(unique) if unique else np.zeros((0, 384), dtype=np.float32)
    index = {text: i for i, text in enumerate(unique)}
    width = vectors.shape[1] if vectors.ndim == 2 else 384
    return {
        name: (vectors[[index[t] for t in texts]] if texts else np.zeros((0, width), dtype=np.float32))
        for name, texts in groups.items()
    }


def evaluation_context(spec: GenerationSpec, inputs: EvaluationInputs, embed: Embedder) -> EvaluationContext:
    """Split the seed rows, bound the embedded ones the way curation does (a label-stratified sample of
    at most MAX_SEED_ROWS_EMBEDDED per split: embedding every seed row made evaluation grow with the
    seed) and embed everything in one call."""
    seed_rows = inputs.seed_rows
    train = seed_rows[seed_rows["split"] == "train"].reset_index(drop=True)
    holdout = seed_rows[seed_rows["split"] == "holdout"].reset_index(drop=True)
    embedded_train = bounded_sample(train, MAX_SEED_ROWS_EMBEDDED, spec.random_seed).reset_index(drop=True)
    embedded_holdout = bounded_sample(holdout, MAX_SEED_ROWS_EMBEDDED, spec.random_seed).reset_index(
        drop=True
    )
    vectors = _embed_all(
        embed,
        {
            "train": embedded_train["text"].tolist(),
            "holdout": embedded_holdout["text"].tolist(),
            "samples": inputs.samples["text"].tolist(),
            "curated": inputs.curated["text"].tolist(),
            "rejected": inputs.rejected["text"].tolist(),
        },
    )
    return EvaluationContext(spec, inputs, train, holdout, embedded_train, embedded_holdout, vectors, embed)


def build_report(
    spec: GenerationSpec,
    *,
    run_id: str,
    inputs: EvaluationInputs,
    embed: Embedder,
    baseline: BaselineRun | None = None,
    families: tuple[MetricFamily, ...] = FAMILIES,
) -> EvaluationReport:
    """Every metric of one run, family by family; the gate verdict against `baseline` (the last good
    run). Raises ValueError when two families write the same metric key."""
    started = time.perf_counter()
    context = evaluation_context(spec, inputs, embed)
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    notes = list(inputs.notes)
    tables: dict[str, Any] = {}
    plot_data: dict[str, Any] = {}
    minimums: dict[str, int] = {}
    for family in families:
        result = family.compute(context)
        clash = metrics.keys() & result.metrics.keys()
        if clash:
            raise ValueError(f"metric family '{family.name}' writes metrics already written: {sorted(clash)}")
        metrics |= result.metrics
        details |= result.details
        notes += result.notes
        tables |= result.tables
        plot_data |= result.plot_data
        minimums |= result.size_minimums

    verdict = usefulness_gate(
        metrics,
        baseline.metrics if baseline else None,
        spec.evaluation.usefulness_tolerance,
        baseline.run_id if baseline else None,
        harm_tolerance=spec.evaluation.harm_tolerance,
        harm_min_holdout_rows=spec.evaluation.harm_min_holdout_rows,
    )
    metrics["passed"] = verdict.passed
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 2)
    metrics = {key: m.finite_or_none(plain(value)) for key, value in metrics.items()}
    details |= {
        "gate": verdict.as_dict(),
        "curated_run_id": inputs.curated_run_id,
        "samples_run_id": inputs.samples_run_id,
        "notes": notes,
    }
    preview = inputs.curated[["label", "text"]].head(5).copy()
    preview["text"] = preview["text"].str.replace("\n", " ").str.slice(0, 160)
    return EvaluationReport(
        spec_name=spec.name,
        run_id=run_id,
        model=spec.generation.model,
        num_samples=spec.num_samples,
        curated_run_id=inputs.curated_run_id,
        metrics=metrics,
        details=json.loads(json.dumps(details, default=plain)),
        verdict=verdict,
        baseline=baseline,
        curated_preview=preview,
        tables=tables,
        plot_data=plot_data,
        notes=notes,
        size_minimums=minimums,
        families=families,
    )


# ------------------------------------------------------------------------------------------- render


def _delta(now: Any, before: Any, direction: int) -> str:
    if not isinstance(now, int | float) or not isinstance(before, int | float):
        return "—"
    change = now - before
    if abs(change) < 1e-12:
        return "="
    arrow = "" if direction == 0 else (" ▲" if change * direction > 0 else " ▼")
    number = f"{change:+d}" if isinstance(change, int) else f"{change:+.3f}"
    return f"{number}{arrow}"


def _withheld(metrics: dict[str, Any], key: str, minimums: dict[str, int]) -> str | None:
    """ "too few rows" when the score `key` was withheld, or (for a baseline from before the minimum
    existed) computed on fewer rows than the minimum now asks for; None when the number may be shown."""
    if key not in WITHHELD_STATUS:
        return None
    if metrics.get(key) is None:
        return m.TOO_FEW_ROWS if metrics.get(WITHHELD_STATUS[key]) else None
    minimum = minimums.get(key)
    real = (metrics.get("seed_train_rows") or 0) + (metrics.get("seed_holdout_rows") or 0)
    synthetic = metrics.get("curated")
    if minimum and isinstance(synthetic, int) and min(real, synthetic) < minimum:
        return m.TOO_FEW_ROWS
    return None


def _shown(metrics: dict[str, Any], key: str, minimums: dict[str, int], digits: int = 3) -> str:
    return _withheld(metrics, key, minimums) or fmt(metrics.get(key), digits)


def _comparison_rows(verdict: GateVerdict) -> list[str]:
    """The gate's two comparisons as Markdown table rows, and the seed cross-validation when it was
    measured but did not decide (shown, "not judged")."""
    rows = []
    shown = [verdict.same_run]
    if verdict.seed_cv is not None and verdict.seed_cv is not verdict.same_run:
        shown.append(verdict.seed_cv)
    for c in (*shown, verdict.last_good):
        if c.kind == "same_run" and c.basis == "seed_cv":
            what = f"same run: vs real only (seed cross-validation over {c.seed_cv_rows} seed rows)"
            if c is not verdict.same_run:
                what = what[:-1] + "; shown, the holdout decides)"
            tolerance = f"harm ≤ {c.tolerance:.3f}"
        elif c.kind == "same_run":
            what = "same run: vs real only (paired bootstrap on the holdout)"
            tolerance = f"harm ≤ {c.tolerance:.3f}"
        else:
            what = f"vs last good run `{c.reference_run_id}`" if c.reference_run_id else "vs last good run"
            tolerance = f"drop ≤ {c.tolerance:.3f}"
        delta = "—" if c.delta is None else f"{c.delta:+.3f}"
        if c.delta is not None and c.delta_ci:
            delta += f" [{c.delta_ci[0]:+.3f}, {c.delta_ci[1]:+.3f}]"
        outcome = {"passed": "passed", "failed": "**FAILED**", "not judged": "not judged"}[c.outcome]
        rows.append(f"| {what} | {fmt(c.current)} | {fmt(c.reference)} | {delta} | {tolerance} | {outcome} |")
    return rows


def _header(report: EvaluationReport) -> list[str]:
    """Title, the gate's verdict and comparisons, publication, notes."""
    verdict = report.verdict
    status = (
        "**Usefulness gate passed.**"
        if verdict.passed
        else "**Usefulness gate FAILED**: this report is not promoted, and the curated_set version it "
        "evaluated is not published (the last good report and the published curated_set stay current)."
    )
    lines = [
        f"# Evaluation report: `{report.spec_name}`",
        "",
        f"Run `{report.run_id}` · model `{report.model}` · {report.num_samples} prompts requested · "
        f"curated_set from run `{report.curated_run_id}`",
        "",
        status,
        "",
        verdict.summary,
        "",
        "| comparison | macro-F1, real + curated | reference | Δ [paired 95% CI] | tolerance | verdict |",
        "|---|---|---|---|---|---|",
        *_comparison_rows(verdict),
        "",
    ]
    if report.publication:
        lines += [f"**Publication:** {report.publication}", ""]
    if report.notes:
        lines += ["> **Notes**", ">"] + [f"> - {note}" for note in report.notes] + [""]
    return lines


def _key_figures(report: EvaluationReport) -> list[str]:
    """The families' key figures, this run against the last good run."""
    metrics, baseline, minimums = report.metrics, report.baseline, report.size_minimums
    against = (
        f"Deltas against the last good run `{baseline.run_id}`; ▲ better, ▼ worse."
        if baseline
        else "No earlier good run to compare with: this run sets the baseline."
    )
    lines = ["## Key figures", "", against, "", "| metric | this run | last good | Δ |", "|---|---|---|---|"]
    for key, label, direction in key_figures(report.families):
        now, before = metrics.get(key), (baseline.metrics.get(key) if baseline else None)
        shown_now = _shown(metrics, key, minimums)
        shown_before = _shown(baseline.metrics, key, minimums) if baseline else "n/a"
        # a score on too few rows is no verdict, so neither is its change
        withheld = shown_now == m.TOO_FEW_ROWS or shown_before == m.TOO_FEW_ROWS
        change = "—" if withheld else _delta(now, before, direction)
        lines.append(f"| {label} | {shown_now} | {shown_before} | {change} |")
    return [*lines, ""]


def render_markdown(report: EvaluationReport, images: Mapping[str, str]) -> str:
    """The report as Markdown: header, key figures, each family's section in registry order, a
    preview of the curated rows; `images` maps plot names to link targets (relative paths, data URIs)."""
    lines = _header(report) + _key_figures(report)
    for family in report.families:
        lines += family.section(report, images)
    if len(report.curated_preview):
        lines += ["## Curated samples (first 5)", "", report.curated_preview.to_markdown(index=False)]
    return "\n".join(lines).rstrip("\n") + "\n"


# -------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class WrittenReport:
    path: Path  # <reports>/<spec>/<run_id>/report.md, links relative to its folder
    latest_path: Path  # <reports>/<spec>/report.md, the newest run's report (good or not)
    plots: dict[str, Path]
    markdown: str  # the per-run file's text (stored in DuckDB, printed by the CLI)
    ui_markdown: str  # for Dagster metadata: plots inlined as data URIs, or left out


def write_report(report: EvaluationReport, spec_folder: Path, *, inline_plots: bool) -> WrittenReport:
    """Plots and Markdown under `spec_folder/<run_id>/`, plus a copy of the Markdown (with links
    into the run folder) at `spec_folder/report.md`, so every run keeps its own plots."""
    from synth_assets.evaluation.plots import render_plots

    run_folder = spec_folder / report.run_id
    run_folder.mkdir(parents=True, exist_ok=True)
    plots = render_plots(report, run_folder)
    markdown = render_markdown(report, {name: path.name for name, path in plots.items()})
    path = run_folder / "report.md"
    path.write_text(markdown, encoding="utf-8")
    latest = spec_folder / "report.md"
    tmp = latest.with_suffix(".md.tmp")
    tmp.write_text(
        render_markdown(report, {name: f"{report.run_id}/{p.name}" for name, p in plots.items()}),
        encoding="utf-8",
    )
    shutil.move(tmp, latest)  # readers never see a half-written file
    if inline_plots:
        # the Dagster UI cannot reach files next to the DuckDB file, but renders data: image URIs
        uris = {
            name: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            for name, p in plots.items()
        }
        ui_markdown = render_markdown(report, uris)
    else:
        ui_markdown = render_markdown(report, {})
    report.markdown = markdown
    return WrittenReport(path, latest, plots, markdown, ui_markdown)
