"""Cost: prompt and completion tokens, generation seconds (as `generated_samples` recorded them) per
curated sample, and the evaluation's own seconds (set by `build_report` after every family ran)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, fmt

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


class Cost:
    name = "cost"
    decides_gate = False
    figures = (
        Figure("tokens_per_curated_sample", "completion tokens per curated sample", -1),
        Figure("completion_tokens"),
        Figure("generation_seconds"),
        Figure("evaluation_seconds", volatile=True),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        inputs = context.inputs
        samples, curated, seconds = inputs.samples, inputs.curated, inputs.generation_seconds
        completion = int(samples["completion_tokens"].sum()) if len(samples) else 0
        notes = []
        if seconds is None:
            notes.append(
                "generation seconds: not recorded in generated_samples (no per-row time column) nor in its "
                "materialization metadata, so cost is in tokens only"
            )
        return FamilyResult(
            metrics={
                "prompt_tokens": int(samples["prompt_tokens"].sum()) if len(samples) else 0,
                "completion_tokens": completion,
                "tokens_per_curated_sample": completion / len(curated) if len(curated) else None,
                "generation_seconds": seconds,
                "seconds_per_curated_sample": (
                    seconds / len(curated) if seconds is not None and len(curated) else None
                ),
            },
            notes=notes,
            details={"generation_seconds_source": inputs.generation_seconds_source},
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        metrics = report.metrics
        seconds = metrics.get("generation_seconds")
        lines = [
            "## Cost",
            "",
            "| metric | value |",
            "|---|---|",
            f"| prompt tokens | {metrics['prompt_tokens']} |",
            f"| completion tokens | {metrics['completion_tokens']} |",
            f"| completion tokens per curated sample | {fmt(metrics['tokens_per_curated_sample'], 1)} |",
            f"| generation seconds | {fmt(seconds, 1) if seconds is not None else 'not recorded'} |",
            f"| generation seconds per curated sample | {fmt(metrics['seconds_per_curated_sample'], 2)} |",
            f"| evaluation seconds | {fmt(metrics['evaluation_seconds'], 1)} |",
            "",
        ]
        source = report.details.get("generation_seconds_source")
        return [*lines, f"Generation seconds: {source}.", ""] if source else lines


FAMILY = Cost()
