"""What the evaluation reads from DuckDB: the promoted curated set and the versions it came from,
and the last good report to compare against. No Dagster here, so it tests on a temporary file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from synth_assets.storage import HISTORY_TABLE, Warehouse

# per-row generation time, if the generation stage ever stores one; summed for the cost section
SECONDS_COLUMNS = ("generation_seconds", "elapsed_s", "latency_s", "seconds")


class EvaluationInputError(ValueError):
    """Nothing to evaluate (no promoted curated set or seed data)."""


@dataclass
class EvaluationInputs:
    seed_rows: pd.DataFrame
    prompts: pd.DataFrame
    samples: pd.DataFrame
    curated: pd.DataFrame
    rejected: pd.DataFrame
    curated_run_id: str | None
    samples_run_id: str | None
    generation_seconds: float | None = None
    generation_seconds_source: str | None = None
    notes: list[str] = field(default_factory=list)
    fell_back: bool = False  # the latest curated_set failed its gate; the last good one is evaluated


@dataclass(frozen=True)
class BaselineRun:
    """The last good (promoted) evaluation of a spec: what deltas and the gate compare against."""

    run_id: str
    metrics: dict[str, Any]


def _run_of(frame: pd.DataFrame) -> str | None:
    return str(frame["run_id"].iloc[0]) if len(frame) and "run_id" in frame.columns else None


def _version(store: Warehouse, stage: str, spec_name: str, run_id: str | None) -> pd.DataFrame:
    """The stage's version written by `run_id`, else its promoted version.

    When a later run promoted new generated samples but its curated set failed, the promoted
    samples are newer than the promoted curated set; the matching version keeps yield, bias and
    the uncurated comparison about the same samples the curated set was cut from."""
    if run_id:
        frame = store.read_version(stage, spec_name, run_id)
        if len(frame):
            return frame
    return store.read_current(stage, spec_name)


def _latest_curated_attempt(store: Warehouse, spec_name: str) -> tuple[str, bool | None, str] | None:
    """(run_id, passed, summary) of the newest curated_set version: from gate_results, else history."""
    gates = store.query(
        "SELECT run_id, passed, summary FROM gate_results WHERE spec_name = ? AND asset = 'curated_set' "
        "ORDER BY evaluated_at DESC LIMIT 1",
        [spec_name],
    )
    if len(gates):
        row = gates.iloc[0]
        return str(row["run_id"]), bool(row["passed"]), str(row["summary"])
    history = store.query(
        f'SELECT run_id FROM "{HISTORY_TABLE["curated_set"]}" WHERE spec_name = ? '
        "ORDER BY materialized_at DESC LIMIT 1",
        [spec_name],
    )
    return (str(history["run_id"].iloc[0]), None, "") if len(history) else None


def load_inputs(store: Warehouse, spec_name: str) -> EvaluationInputs:
    """The promoted curated set (the last version that passed its gate) and what it came from."""
    curated = store.read_current("curated_set", spec_name)
    seed_rows = store.read_current("seed_data", spec_name)
    if curated.empty:
        raise EvaluationInputError(
            f"curated_set has no promoted rows for spec '{spec_name}': materialize it first "
            "(or every version so far failed its gate)"
        )
    if seed_rows.empty:
        raise EvaluationInputError(f"seed_data has no promoted rows for spec '{spec_name}'")
    curated_run = _run_of(curated)
    notes: list[str] = []
    fell_back = False
    latest = _latest_curated_attempt(store, spec_name)
    if latest is not None and latest[0] != curated_run:
        latest_run, passed, summary = latest
        if passed is False:
            fell_back = True
            notes.append(
                f"the latest curated_set (run {latest_run}) failed its gate ({summary}); this report "
                f"evaluates the last good version, from run {curated_run}"
            )
        else:
            notes.append(
                f"the newest curated_set version (run {latest_run}) is not promoted; this report "
                f"evaluates the promoted version, from run {curated_run}"
            )
    samples = _version(store, "generated_samples", spec_name, curated_run)
    prompts = _version(store, "expanded_prompts", spec_name, curated_run)
    # rejected rows are written in the same transaction as the curated set they complement
    rejected = (
        store.read_version("rejected_samples", spec_name, curated_run)
        if curated_run
        else store.read_current("rejected_samples", spec_name)
    )
    inputs = EvaluationInputs(
        seed_rows=seed_rows,
        prompts=prompts,
        samples=samples,
        curated=curated,
        rejected=rejected,
        curated_run_id=curated_run,
        samples_run_id=_run_of(samples),
        notes=notes,
        fell_back=fell_back,
    )
    for column in SECONDS_COLUMNS:
        if column in samples.columns:
            inputs.generation_seconds = float(pd.to_numeric(samples[column], errors="coerce").sum())
            inputs.generation_seconds_source = f"sum of generated_samples.{column}"
            break
    else:
        seconds = seconds_from_steps(samples)
        if seconds is not None:
            inputs.generation_seconds = seconds
            inputs.generation_seconds_source = "sum of the LLM calls' seconds in generated_samples.steps"
        else:
            seconds = _llm_cache_seconds(store, call_keys(samples))
            if seconds is not None:
                inputs.generation_seconds = seconds
                inputs.generation_seconds_source = (
                    "sum of llm_cache.seconds of the calls behind these samples (what the calls took when "
                    "they were made: a batch's time is shared by its calls, and a call reused from the cache "
                    "costs no time in the run that reuses it)"
                )
    return inputs


def call_keys(samples: pd.DataFrame) -> list[str]:
    """Cache keys of every LLM call behind the samples: `cache_key`, plus each call in `steps`."""
    keys: list[str] = []
    if "cache_key" in samples.columns:
        keys += [str(k) for k in samples["cache_key"] if isinstance(k, str) and k]
    if "steps" in samples.columns:
        for raw in samples["steps"]:
            try:
                calls = json.loads(raw).get("calls", []) if isinstance(raw, str) and raw else []
            except (ValueError, AttributeError):
                continue
            keys += [str(c["cache_key"]) for c in calls if isinstance(c, dict) and c.get("cache_key")]
    return list(dict.fromkeys(keys))


def _llm_cache_seconds(store: Warehouse, keys: list[str]) -> float | None:
    if not keys:
        return None
    try:
        frame = store.query(
            "SELECT sum(seconds) AS seconds, count(seconds) AS calls FROM llm_cache "
            "WHERE list_contains(?, cache_key)",
            [keys],
        )
    except duckdb.Error:  # no llm_cache table, or one without a seconds column
        return None
    return float(frame["seconds"].iloc[0]) if int(frame["calls"].iloc[0]) else None


def seconds_from_steps(samples: pd.DataFrame) -> float | None:
    """Total `seconds` of the LLM calls recorded per sample in the `steps` JSON ({"calls": [...]}),
    None when no call carries a time."""
    if "steps" not in samples.columns:
        return None
    total, found = 0.0, False
    for raw in samples["steps"]:
        try:
            calls = json.loads(raw).get("calls", []) if isinstance(raw, str) and raw else []
        except (ValueError, AttributeError):
            continue
        for call in calls:
            value = call.get("seconds") if isinstance(call, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += float(value)
                found = True
    return total if found else None


def last_good_run(store: Warehouse, spec_name: str, exclude_run_id: str | None = None) -> BaselineRun | None:
    """The newest evaluation of the spec that passed its gate (rows from before the gate existed
    have passed = NULL and were always promoted, so they count as good), other than `exclude_run_id`."""
    frame = store.query(
        f'SELECT run_id, metrics FROM "{HISTORY_TABLE["evaluation_report"]}" '
        "WHERE spec_name = ? AND run_id IS DISTINCT FROM ? AND (passed OR passed IS NULL) "
        "ORDER BY materialized_at DESC LIMIT 1",
        [spec_name, exclude_run_id],
    )
    if frame.empty:
        return None
    return BaselineRun(str(frame["run_id"].iloc[0]), json.loads(frame["metrics"].iloc[0]))
