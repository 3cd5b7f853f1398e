"""The closing summary of a run: what it made, which of its versions became current, and why not.

Read from the DuckDB tables only (history, current tables, `gate_results`, `publications`), so the
words match what is stored, whichever way the run ended (passed, refused by a gate, failed, stopped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth_assets.spec import GenerationSpec
from synth_assets.storage import Stage, Warehouse

# In pipeline order; curated_set's complement is shown with it.
SUMMARY_STAGES = (
    Stage.SEED_DATA,
    Stage.EXPANDED_PROMPTS,
    Stage.GENERATED_SAMPLES,
    Stage.CURATED_SET,
    Stage.EVALUATION_REPORT,
)
_GATE_SETTING = re.compile(r"\[gates\.(\w+)\]")


@dataclass(frozen=True)
class StageResult:
    """One stage in one run: rows written (None: the stage did not write a version), whether that
    version is now the current one, and why not when it is not."""

    stage: str
    rows: int | None
    current: bool
    why_not: str | None = None


def _gate_reason(summary: str, spec: GenerationSpec) -> str:
    """'curated_min_rows 48' for a failed row-count expectation, else the gate's own summary."""
    settings = []
    for name in _GATE_SETTING.findall(summary):
        value = getattr(spec.gates, name, None)
        settings.append(f"{name} {value}" if value is not None else name)
    return ", ".join(dict.fromkeys(settings)) or summary


def stage_results(store: Warehouse, spec: GenerationSpec, run_id: str) -> list[StageResult]:
    """Every stage's outcome in `run_id` (see StageResult)."""
    results = []
    for stage in SUMMARY_STAGES:
        made = store.row_count(stage, spec.name, run_id, read_only=True) or None
        current = store.promoted_version(stage, spec.name, read_only=True)
        is_current = made is not None and current == run_id
        why = None if is_current or made is None else _why_not(store, spec, run_id, stage)
        results.append(StageResult(stage, made, is_current, why))
    return results


def _why_not(store: Warehouse, spec: GenerationSpec, run_id: str, stage: str) -> str:
    if stage == Stage.EVALUATION_REPORT:  # a report is not promoted only when its gate failed
        return "its usefulness gate failed (why: the publication line, or synth-assets report)"
    verdict = store.gate_verdict(stage, spec.name, run_id, read_only=True)
    if verdict is not None and not verdict.passed:
        return _gate_reason(verdict.summary, spec)
    if stage == Stage.CURATED_SET:
        decisions = store.publications(spec.name, read_only=True)
        mine = decisions[decisions["version_run_id"] == run_id]
        if len(mine) and not bool(mine["published"].iloc[0]):
            return "held back by the usefulness gate (why: the publication line)"
        return "staged (passed its GX gate); published only after the usefulness gate passes"
    return "not promoted"


def _what(result: StageResult, rejected: int) -> str:
    if result.stage == Stage.CURATED_SET:
        return f"{result.rows} curated" + (f" (+{rejected} rejected)" if rejected else "")
    if result.stage == Stage.EVALUATION_REPORT:
        return "report written"
    return f"{result.rows} rows"


def summary_lines(store: Warehouse, spec: GenerationSpec, run_id: str) -> list[str]:
    """The run's closing lines, one per stage, then where to look. A refused version reads
    `  curated_set: 41 curated (+55 rejected), not promoted: curated_min_rows 48`."""
    rejected = store.row_count(Stage.REJECTED_SAMPLES, spec.name, run_id, read_only=True)
    lines = ["made in this run, and what became current:"]
    for result in stage_results(store, spec, run_id):
        if result.rows is None:
            lines.append(f"  {result.stage}: not made (the previous current version, if any, stays)")
        elif result.current:
            lines.append(f"  {result.stage}: {_what(result, rejected)}, promoted")
        else:
            lines.append(f"  {result.stage}: {_what(result, rejected)}, not promoted: {result.why_not}")
    lines.append(
        f"see them: synth-assets report --spec {spec.name} (this run's report, passed or not); "
        "every version stays in the <stage>_history tables"
    )
    return lines


def promoted_stages(store: Warehouse, spec: GenerationSpec, run_id: str) -> tuple[list[str], list[str]]:
    """(stages whose current version is this run's, the others): for the one-line error of a failed run."""
    results = stage_results(store, spec, run_id)
    return [r.stage for r in results if r.current], [r.stage for r in results if not r.current]
