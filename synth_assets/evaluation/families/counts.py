"""Counts and yield: rows per stage, curated / generated, the share cut off at the token limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, fmt

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


class Counts:
    name = "counts"
    decides_gate = False
    figures = (
        Figure("curated", "curated rows", 0, card=True),
        Figure("generated", card=True),
        Figure("yield", "yield (curated / generated)", 1, card=True),
        Figure("prompts"),
        Figure("rejected"),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        inputs = context.inputs
        samples, curated = inputs.samples, inputs.curated
        return FamilyResult(
            metrics={
                "seed_train_rows": len(context.train),
                "seed_holdout_rows": len(context.holdout),
                "prompts": len(inputs.prompts),
                "generated": len(samples),
                "curated": len(curated),
                "rejected": len(inputs.rejected),
                "yield": len(curated) / len(samples) if len(samples) else 0.0,
                "truncated_share": (
                    float((samples["finish_reason"] == "length").mean()) if len(samples) else 0.0
                ),
            }
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        metrics = report.metrics
        return [
            "## Rows per stage",
            "",
            "| stage | rows |",
            "|---|---|",
            f"| seed_data (train / holdout) | {metrics['seed_train_rows']} / "
            f"{metrics['seed_holdout_rows']} |",
            f"| expanded_prompts | {metrics['prompts']} |",
            f"| generated_samples | {metrics['generated']} |",
            f"| curated_set | {metrics['curated']} (yield {fmt(metrics['yield'])}) |",
            f"| rejected_samples | {metrics['rejected']} |",
            "",
        ]


FAMILY = Counts()
