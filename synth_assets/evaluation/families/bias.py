"""Bias: requested vs realized labels and attribute values (total variation distance), and the yield
of each condition, so a user sees which conditions the model fails at (`metrics.label_balance`,
`metrics.attribute_balance`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families.base import (
    EvaluationContext,
    FamilyResult,
    Figure,
    fmt,
    image,
    md_table,
    records,
)

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


class Bias:
    name = "bias"
    decides_gate = False
    figures = (
        Figure("label_tvd", "label TVD requested vs curated", -1, card=True),
        Figure("attribute_tvd_max", "worst attribute TVD requested vs curated", -1),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        spec, inputs = context.spec, context.inputs
        label_table = m.label_balance(spec, inputs.samples, inputs.curated)
        attribute_tables = m.attribute_balance(spec, inputs.prompts, inputs.samples, inputs.curated)
        attribute_tvds = {name: m.table_tvd(table) for name, table in attribute_tables.items()}
        yields = [
            y for t in attribute_tables.values() for y in t["yield"] if y is not None and not pd.isna(y)
        ]
        return FamilyResult(
            metrics={
                "label_tvd": m.table_tvd(label_table),
                **{f"attribute_tvd_{name}": value for name, value in attribute_tvds.items()},
                "attribute_tvd_max": max(attribute_tvds.values()) if attribute_tvds else None,
                "min_attribute_yield": min(yields) if yields else None,
            },
            details={
                "labels": records(label_table),
                "attributes": {name: records(table) for name, table in attribute_tables.items()},
            },
            tables={"label_table": label_table, "attribute_tables": attribute_tables},
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        metrics = report.metrics
        lines = [
            "## Label balance (requested vs curated)",
            "",
            f"Total variation distance requested vs curated: {fmt(metrics['label_tvd'])}.",
            "",
            md_table(report.label_table),
            "",
            *image("label_balance", images),
        ]
        if report.attribute_tables:
            lines += ["## Attribute balance and yield per condition", ""]
            for name, table in report.attribute_tables.items():
                lines += [
                    f"### `{name}` (TVD requested vs curated: {fmt(metrics.get(f'attribute_tvd_{name}'))})",
                    "",
                    md_table(table),
                    "",
                ]
            lines += image("attribute_balance", images)
        return lines


FAMILY = Bias()
