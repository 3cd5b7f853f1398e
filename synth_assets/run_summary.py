"""The closing summary of a run: what it made, which of its versions became current, and why not.

Read from the DuckDB tables only (history, current tables, `gate_results`, `publications`), so the
words match what is stored, whichever way the run ended (passed, refused by a gate, failed, stopped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from synth_assets.spec import GenerationSpec
from synth_assets.storage import HISTORY_TABLE, Warehouse

# In pipeline order; curated_set's complement is shown with it.
SUMMARY_STAGES = ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report")
_GATE_SETTING = re.compile(r"\[gates\.(\w+)\]")


@dataclass(frozen=True)
class StageResult:
    """One stage in one run: rows written (None: the stage did not write a version), whether that
    version is now the current one, and why not when it is not."""

    stage: str
    rows: int | None
    current: bool
    why_not: str | None = None


def _scalar(store: Warehouse, sql: str, parameters: list[object]) -> object:
    try:
        frame = store.read_only_query(sql, parameters)
    except duckdb.CatalogException:  # a table from a later version of the schema: nothing there yet
        return None
    return None if frame.empty else frame.iloc[0, 0]


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
        rows = _scalar(
            store,
            f'SELECT count(*) FROM "{HISTORY_TABLE[stage]}" WHERE spec_name = ? AND run_id = ?',
            [spec.name, run_id],
        )
        made = int(rows) if rows else None  # type: ignore[call-overload]
        current = _scalar(store, f'SELECT any_value(run_id) FROM "{stage}" WHERE spec_name = ?', [spec.name])
        is_current = made is not None and current == run_id
        why = None if is_current or made is None else _why_not(store, spec, run_id, stage)
        results.append(StageResult(stage, made, is_current, why))
    return results


def _why_not(store: Warehouse, spec: GenerationSpec, run_id: str, stage: str) -> str:
    gate = store.read_only_query(
        "SELECT passed, summary FROM gate_results WHERE spec_name = ? AND run_id = ? AND asset = ? "
        "ORDER BY evaluated_at DESC LIMIT 1",
        [spec.name, run_id, stage],
    )
    if len(gate) and not bool(gate["passed"].iloc[0]):
        return _gate_reason(str(gate["summary"].iloc[0]), spec)
    if stage == "curated_set":
        decisions = store.publications(spec.name, read_only=True)
        mine = decisions[decisions["version_run_id"] == run_id]
        if len(mine) and not bool(mine["published"].iloc[0]):
            return "held back by the usefulness gate (why: the publication line)"
        return "staged (passed its GX gate); published only after the usefulness gate passes"
    if stage == "evaluation_report":
        return "its usefulness gate failed (why: the publication line, or synth-assets report)"
    return "not promoted"


def _what(result: StageResult, rejected: int) -> str:
    if result.stage == "curated_set":
        return f"{result.rows} curated" + (f" (+{rejected} rejected)" if rejected else "")
    if result.stage == "evaluation_report":
        return "report written"
    return f"{result.rows} rows"


def summary_lines(store: Warehouse, spec: GenerationSpec, run_id: str) -> list[str]:
    """The run's closing lines, one per stage, then where to look. A refused version reads
    `  curated_set: 41 curated (+55 rejected), not promoted: curated_min_rows 48`."""
    rejected = _scalar(
        store,
        f'SELECT count(*) FROM "{HISTORY_TABLE["rejected_samples"]}" WHERE spec_name = ? AND run_id = ?',
        [spec.name, run_id],
    )
    lines = ["made in this run, and what became current:"]
    for result in stage_results(store, spec, run_id):
        if result.rows is None:
            lines.append(f"  {result.stage}: not made (the previous current version, if any, stays)")
        elif result.current:
            lines.append(f"  {result.stage}: {_what(result, int(rejected or 0))}, promoted")  # type: ignore[call-overload]
        else:
            lines.append(
                f"  {result.stage}: {_what(result, int(rejected or 0))}, not promoted: {result.why_not}"  # type: ignore[call-overload]
            )
    lines.append(
        f"see them: synth-assets report --spec {spec.name} (this run's report, passed or not); "
        "every version stays in the <stage>_history tables"
    )
    return lines


def promoted_stages(store: Warehouse, spec: GenerationSpec, run_id: str) -> tuple[list[str], list[str]]:
    """(stages whose current version is this run's, the others): for the one-line error of a failed run."""
    results = stage_results(store, spec, run_id)
    return [r.stage for r in results if r.current], [r.stage for r in results if not r.current]
