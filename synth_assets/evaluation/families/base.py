"""What a metric family is: the unit the evaluation report is built from.

A family (usefulness, diversity, fidelity, ...) computes its scalars and tables from one
`EvaluationContext`, declares the `Figure`s it wants shown (key-figures table, Dagster UI metadata,
dataset card) and writes its own report section. `families/__init__.py` registers them in report
order; the report, the UI metadata keys and the card's preferred figures are derived from that list.

Adding a family: one module here with a class that satisfies `MetricFamily`, one line in
`FAMILIES`. Pure: no Dagster, no DuckDB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from synth_assets.evaluation.inputs import EvaluationInputs
    from synth_assets.evaluation.report import EvaluationReport
    from synth_assets.spec import GenerationSpec

# texts -> L2-normalized embeddings, shape (len(texts), d) (`synth_assets.embeddings.embed`)
Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Figure:
    """One scalar metric a family wants shown beyond the `metrics` JSON.

    key: the metric's key in `EvaluationReport.metrics`. label: its row title in the report's
    key-figures table ("" = not in the table). direction: +1 higher is better, -1 lower is better, 0
    neither (a count or a size); it sets the ▲/▼ of a delta. ui: a top-level numeric entry of the
    Dagster materialization, plotted across runs. card: one of the figures the dataset card lists
    first. status: the metric holding "too few rows: ..." when the score was withheld. volatile: a
    wall-clock number, left out of the report's data version."""

    key: str
    label: str = ""
    direction: int = 0
    ui: bool = True
    card: bool = False
    status: str | None = None
    volatile: bool = False


@dataclass
class FamilyResult:
    """What one family computed: flat `metrics` (JSON values, the same keys every run, None when not
    measured), `details` (JSON-able, stored in evaluation_history.details), `notes` for the report's
    notes box, `tables` (named objects its section and the plots read: DataFrames, result types),
    `plot_data` (inputs of `plots.py`) and `size_minimums` (withheld score -> rows needed per side)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)
    plot_data: dict[str, Any] = field(default_factory=dict)
    size_minimums: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationContext:
    """What every family reads for one run.

    `train` / `holdout`: every seed row of that split (columns seed_id, text, label, ...).
    `embedded_train` / `embedded_holdout`: the rows of each that were embedded, a label-stratified
    sample of at most `curation.pipeline.MAX_SEED_ROWS_EMBEDDED` (all rows of a smaller seed), the
    same bound curation uses. `vectors`: embeddings (float32, L2-normalized, shape (rows, d)) of
    "train" and "holdout" (the embedded_* rows, in order), "samples", "curated" and "rejected"
    (every row of `inputs`' frames, in order). Metrics that need every seed row (usefulness, the
    seed cross-validation, length statistics) read `train` / `holdout`; those on embeddings read the
    embedded sample. `embed` embeds further texts (condition texts)."""

    spec: GenerationSpec
    inputs: EvaluationInputs
    train: pd.DataFrame
    holdout: pd.DataFrame
    embedded_train: pd.DataFrame
    embedded_holdout: pd.DataFrame
    vectors: Mapping[str, np.ndarray]
    embed: Embedder

    @property
    def seed(self) -> int:
        return self.spec.random_seed


class MetricFamily(Protocol):
    """A metric family: `name` (unique, lower case), `figures` (what it wants shown, in order),
    `decides_gate` (its figures lead the key-figures table and the card: the usefulness gate reads
    them), `compute` (one run's numbers; raises nothing on degenerate input, it reports None with a
    note instead) and `section` (its Markdown, a list of lines ending with a blank line; `images`
    maps plot names to link targets and may be empty)."""

    name: str
    figures: tuple[Figure, ...]
    decides_gate: bool

    def compute(self, context: EvaluationContext) -> FamilyResult: ...

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]: ...


# ------------------------------------------------------------------------------- Markdown helpers


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: "n/a" for None/NaN, yes/no, floats to `digits` places."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(value: float | None, interval: tuple[float, float] | None) -> str:
    """`0.812 [0.700, 0.900]`, the bare value without an interval, "n/a" without a value."""
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def fmt_signed_ci(value: float | None, interval: tuple[float, float] | None) -> str:
    """As `fmt_ci`, with signs (a difference)."""
    if value is None:
        return "n/a"
    return f"{value:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else f"{value:+.3f}"


def md_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to 3 places), "_no rows_" when empty."""
    return frame.to_markdown(index=False, floatfmt=".3f") if len(frame) else "_no rows_"


# plot name (plots.py) -> its title in the report
PLOT_TITLES = {
    "label_balance": "Label balance",
    "attribute_balance": "Attribute balance",
    "lengths": "Length distributions",
    "embedding_map": "Embedding map (PCA)",
    "usefulness": "Usefulness",
}


def image(name: str, images: Mapping[str, str]) -> list[str]:
    """The Markdown image of plot `name` and a blank line, or nothing when it was not drawn."""
    return [f"![{PLOT_TITLES[name]}]({images[name]})", ""] if name in images else []


# ----------------------------------------------------------------------------------- JSON helpers


def plain(value: Any) -> Any:
    """numpy scalars and tuples as plain JSON values, NaN as None."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON-able rows (for `FamilyResult.details`)."""
    from synth_assets.evaluation.metrics import finite_or_none

    return [{k: finite_or_none(plain(v)) for k, v in row.items()} for row in frame.to_dict("records")]
