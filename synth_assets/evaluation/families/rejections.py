"""Rejections: how many rejected rows carry each curation reason code (`curation/reasons.py`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


def _reasons(value: Any) -> list[str]:
    """A row's reason codes: the stored JSON text, or the list a decoding read already made of it."""
    decoded = json.loads(value) if isinstance(value, str) else value
    return [str(reason) for reason in decoded or []]


class Rejections:
    name = "rejections"
    decides_gate = False
    figures: tuple[Figure, ...] = ()

    def compute(self, context: EvaluationContext) -> FamilyResult:
        counts: Counter[str] = Counter()
        for value in context.inputs.rejected["reasons"]:
            counts.update(_reasons(value))
        return FamilyResult(details={"rejections": dict(counts)}, tables={"reject_reasons": dict(counts)})

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        lines = ["## Rejections by reason", ""]
        if not report.reject_reasons:
            return [*lines, "No sample was rejected.", ""]
        return [
            *lines,
            "| reason | rows |",
            "|---|---|",
            *(f"| {reason} | {count} |" for reason, count in sorted(report.reject_reasons.items())),
            "",
        ]


FAMILY = Rejections()
