"""Great Expectations Core suites that gate `generated_samples` and `curated_set`.

GX is imported inside the functions: the import costs seconds and ~230 MB, and the Dagster code
server loads this package on every reload.

The curated-set gate validates more than the table itself. Each expectation runs on the frame where
it reads most naturally, and a failure names the rows or values that broke it:
- the curated rows: schema, ids, texts, labels, score ranges and score distributions;
- the curated rows re-scanned by the PII detector (one row per sample, `pii_left`);
- the curation run (one row): yield and duplicate rate;
- the label balance (one row per label): |curated share - requested share|.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from synth_assets.spec import GenerationSpec
from synth_assets.storage import Stage, stage_columns

_EXAMPLES = 5
_DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    unexpected_percent: float | None
    observed_value: Any
    examples: list[Any] = field(default_factory=list)
    description: str | None = None

    def describe(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.unexpected_count is not None:
            text = f"{target}: {self.unexpected_count} rows ({self.unexpected_percent or 0:.1f}%) unexpected"
        else:
            text = f"{target}: observed {_plain(self.observed_value)}"
        return f"{text} [{self.description}]" if self.description else text


@dataclass(frozen=True)
class GateOutcome:
    """One Great Expectations suite run on one stage's rows: the suite name, how many rows it judged,
    and one `ExpectationOutcome` per expectation (success, unexpected count and share, examples).
    `passed` when every expectation succeeded; `summary()` is the one-line verdict the asset check and
    the CLI show, `as_records()` the per-expectation table for the check's metadata. Built by
    `validate_generated_samples` / `validate_curated_set`; raises nothing itself."""

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
                "observed": str(_plain(r.observed_value))[:200] if r.observed_value is not None else "",
                "examples": [str(e)[:120] for e in r.examples[:3]],
                "why": r.description or "",
            }
            for r in self.results
        ]


def _plain(value: Any) -> Any:
    """numpy scalars print as np.float64(0.5); people want 0.5."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class _Batch:
    name: str
    frame: pd.DataFrame
    expectations: list[Any]
    id_columns: tuple[str, ...] = ()  # rows that fail are reported by these columns


def _run_batches(suite_name: str, rows: int, batches: list[_Batch]) -> GateOutcome:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    outcomes: list[ExpectationOutcome] = []
    for batch in batches:
        if not batch.expectations:
            continue
        batch_definition = (
            context.data_sources.add_pandas(batch.name)
            .add_dataframe_asset(batch.name)
            .add_batch_definition_whole_dataframe("whole")
        )
        suite = gx.ExpectationSuite(name=batch.name, expectations=batch.expectations)
        result_format: Any = "SUMMARY"
        if batch.id_columns and set(batch.id_columns) <= set(batch.frame.columns) and len(batch.frame):
            result_format = {
                "result_format": "COMPLETE",
                "unexpected_index_column_names": list(batch.id_columns),
            }
        validation = batch_definition.get_batch(batch_parameters={"dataframe": batch.frame}).validate(
            suite, result_format=result_format
        )
        for result in validation.results:
            details = result.result or {}
            examples = details.get("unexpected_index_list") or details.get("partial_unexpected_list") or []
            if not result.success and result.exception_info and result.exception_info.get("raised_exception"):
                examples = [str(result.exception_info.get("exception_message", ""))[:200]]
            outcomes.append(
                ExpectationOutcome(
                    expectation=result.expectation_config.type,
                    column=result.expectation_config.kwargs.get("column"),
                    success=bool(result.success),
                    unexpected_count=details.get("unexpected_count"),
                    unexpected_percent=details.get("unexpected_percent"),
                    observed_value=_plain(details.get("observed_value")),
                    examples=[_plain(e) for e in list(examples)[:_EXAMPLES]],
                    description=result.expectation_config.description,
                )
            )
    return GateOutcome(suite=suite_name, rows=rows, results=outcomes)


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> GateOutcome:
    return _run_batches(name, len(frame), [_Batch(name, frame, expectations)])


def validate_generated_samples(frame: pd.DataFrame, spec: GenerationSpec) -> GateOutcome:
    """Schema, non-null text, unique ids, labels from the spec, and mostly-in-bounds lengths."""
    import great_expectations.expectations as gxe

    rules = spec.curation
    return _run_suite(
        "generated_samples_gate",
        frame,
        [
            gxe.ExpectTableColumnsToMatchOrderedList(column_list=stage_columns(Stage.GENERATED_SAMPLES)),
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


def curation_metrics(
    curated: pd.DataFrame, rejected: pd.DataFrame, generated_rows: int | None = None
) -> dict:
    """Yield and in-batch duplicate rate of one curation run."""
    generated = generated_rows if generated_rows is not None else len(curated) + len(rejected)
    duplicates = sum(
        any(reason in _DUPLICATE_REASONS for reason in json.loads(encoded)) for encoded in rejected["reasons"]
    )
    return {
        "generated": generated,
        "yield": len(curated) / generated if generated else 0.0,
        "duplicate_rate": duplicates / generated if generated else 0.0,
    }


def label_balance_frame(curated: pd.DataFrame, spec: GenerationSpec) -> pd.DataFrame:
    """Requested vs curated share per label (requested from the planned cells with per_cell), and
    their absolute difference."""
    from synth_assets.evaluation.metrics import requested_shares

    requested = requested_shares(spec, "label")
    counts = curated["label"].value_counts() if len(curated) else pd.Series(dtype=int)
    total = max(len(curated), 1)
    return pd.DataFrame(
        [
            {
                "label": label,
                "requested_share": round(share, 4),
                "curated_share": round(int(counts.get(label, 0)) / total, 4),
                "abs_diff": round(abs(int(counts.get(label, 0)) / total - share), 4),
            }
            for label, share in requested.items()
        ]
    )


def validate_curated_set(
    frame: pd.DataFrame,
    spec: GenerationSpec,
    *,
    rejected: pd.DataFrame | None = None,
    generated_rows: int | None = None,
) -> GateOutcome:
    """The curated rows (schema, unique ids and texts, labels, scores within the curation rules,
    score distributions), zero PII left, and, given the rejected rows, yield, duplicate rate and
    label balance against what the spec asked for."""
    import great_expectations.expectations as gxe

    from synth_assets.curation.pii import scan

    rules, gates = spec.curation, spec.gates
    rows: list[Any] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=stage_columns(Stage.CURATED_SET)),
        # an empty dataset is never promoted, whatever the threshold says (a spec copied in code can
        # carry curated_min_rows 0 past the spec's own validation)
        gxe.ExpectTableRowCountToBeBetween(
            min_value=max(1, gates.curated_min_rows),
            description="gates.curated_min_rows",
        ),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeUnique(column="normalized_hash", description="no exact duplicates kept"),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text",
            min_value=max(1, rules.min_chars),
            max_value=rules.max_chars,
            description="curation.min_chars/max_chars",
        ),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.labels)),
        gxe.ExpectColumnValuesToBeBetween(column="label_confidence", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="pii_hits", min_value=0),
    ]
    if rules.min_relevance is not None:
        rows.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="relevance", min_value=rules.min_relevance, description="curation.min_relevance"
            )
        )
    if gates.min_mean_relevance is not None:
        rows.append(
            gxe.ExpectColumnMeanToBeBetween(
                column="relevance", min_value=gates.min_mean_relevance, description="gates.min_mean_relevance"
            )
        )
    if rules.judge:
        rows.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="judge_score",
                min_value=rules.judge_min_score if rules.judge_min_score is not None else 1.0,
                max_value=5.0,
                description="judge scores 1-5, at least curation.judge_min_score",
            )
        )
    if gates.min_mean_judge_score is not None:
        rows.append(
            gxe.ExpectColumnMeanToBeBetween(
                column="judge_score",
                min_value=gates.min_mean_judge_score,
                description="gates.min_mean_judge_score",
            )
        )
    batches = [_Batch("curated_set_gate", frame, rows, id_columns=("sample_id",))]

    if gates.require_no_pii:
        texts = frame["text"].fillna("").astype(str).tolist()
        left = pd.DataFrame({"sample_id": frame["sample_id"].astype(str), "pii_left": scan(texts).counts})
        batches.append(
            _Batch(
                "curated_pii_gate",
                left,
                [
                    gxe.ExpectColumnValuesToBeBetween(
                        column="pii_left", max_value=0, description="no personal data left in curated text"
                    )
                ],
                id_columns=("sample_id",),
            )
        )
    if rejected is not None:
        metrics = pd.DataFrame([curation_metrics(frame, rejected, generated_rows)])
        batches.append(
            _Batch(
                "curation_run_gate",
                metrics,
                [
                    gxe.ExpectColumnMeanToBeBetween(
                        column="yield",
                        min_value=gates.curated_min_yield,
                        max_value=gates.curated_max_yield,
                        description="gates.curated_min_yield/curated_max_yield",
                    ),
                    gxe.ExpectColumnMeanToBeBetween(
                        column="duplicate_rate",
                        max_value=gates.max_duplicate_rate,
                        description="gates.max_duplicate_rate",
                    ),
                ],
            )
        )
    if gates.label_balance_tolerance is not None:
        batches.append(
            _Batch(
                "label_balance_gate",
                label_balance_frame(frame, spec),
                [
                    gxe.ExpectColumnValuesToBeBetween(
                        column="abs_diff",
                        max_value=gates.label_balance_tolerance,
                        description="gates.label_balance_tolerance: |curated share - requested share|",
                    )
                ],
                id_columns=("label", "requested_share", "curated_share"),
            )
        )
    return _run_batches("curated_set_gate", len(frame), batches)
