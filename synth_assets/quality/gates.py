"""Great Expectations Core suites that gate `generated_samples` and `curated_set`.

GX is imported inside the functions: the import costs seconds and ~230 MB, and the Dagster code
server loads this package on every reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from synth_assets.spec import GenerationSpec
from synth_assets.storage import stage_columns


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    unexpected_percent: float | None
    observed_value: Any
    examples: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.unexpected_count is not None:
            return f"{target}: {self.unexpected_count} rows ({self.unexpected_percent or 0:.1f}%) unexpected"
        return f"{target}: observed {self.observed_value}"


@dataclass(frozen=True)
class GateOutcome:
    suite: str
    rows: int
    results: list[ExpectationOutcome]

    @property
    def passed(self) -> bool:
        return all(result.success for result in self.results)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [result for result in self.results if not result.success]

    def summary(self) -> str:
        if self.passed:
            return f"{self.suite}: all {len(self.results)} expectations passed on {self.rows} rows"
        return f"{self.suite}: " + "; ".join(failure.describe() for failure in self.failures)

    def as_records(self) -> list[dict[str, Any]]:
        return [
            {
                "expectation": r.expectation,
                "column": r.column or "",
                "success": r.success,
                "unexpected_count": r.unexpected_count,
                "observed": str(r.observed_value)[:200] if r.observed_value is not None else "",
                "examples": [str(e)[:120] for e in r.examples[:3]],
            }
            for r in self.results
        ]


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> GateOutcome:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    validation = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format="SUMMARY"
    )
    outcomes = []
    for result in validation.results:
        details = result.result or {}
        outcomes.append(
            ExpectationOutcome(
                expectation=result.expectation_config.type,
                column=result.expectation_config.kwargs.get("column"),
                success=bool(result.success),
                unexpected_count=details.get("unexpected_count"),
                unexpected_percent=details.get("unexpected_percent"),
                observed_value=details.get("observed_value"),
                examples=list(details.get("partial_unexpected_list") or []),
            )
        )
    return GateOutcome(suite=name, rows=len(frame), results=outcomes)


def validate_generated_samples(frame: pd.DataFrame, spec: GenerationSpec) -> GateOutcome:
    """Schema, non-null text, unique ids, labels from the spec, and mostly-in-bounds lengths."""
    import great_expectations.expectations as gxe

    rules = spec.curation
    return _run_suite(
        "generated_samples_gate",
        frame,
        [
            gxe.ExpectTableColumnsToMatchOrderedList(column_list=stage_columns("generated_samples")),
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.labels)),
            # single bad lengths are curation's job; the gate stops a batch that is mostly broken
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="text",
                min_value=rules.min_chars,
                max_value=rules.max_chars,
                mostly=spec.gates.generated_min_valid_fraction,
            ),
        ],
    )


def validate_curated_set(frame: pd.DataFrame, spec: GenerationSpec) -> GateOutcome:
    """Unique ids and texts, non-empty text, labels from the spec, at least the minimum row count."""
    import great_expectations.expectations as gxe

    return _run_suite(
        "curated_set_gate",
        frame,
        [
            gxe.ExpectTableColumnsToMatchOrderedList(column_list=stage_columns("curated_set")),
            gxe.ExpectTableRowCountToBeBetween(min_value=spec.gates.curated_min_rows),
            gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
            gxe.ExpectColumnValuesToBeUnique(column="normalized_hash"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.labels)),
        ],
    )
