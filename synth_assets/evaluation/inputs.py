"""What the evaluation reads from DuckDB: the staged curated set it decides on and the versions it
came from, and the last good report to compare against. No Dagster here, so it tests on a temporary
file.

The evaluation reads the newest *staged* curated_set version (passed its GX gate; normally the one
its own run just wrote), not the published one: publication waits for this very evaluation, so
reading the published version would judge stale data and never let a new version through."""

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
    """Nothing to evaluate (no staged or published curated set, or no seed data)."""


@dataclass
class EvaluationInputs:
    """What one evaluation reads, as DataFrames in the stage tables' columns (`storage.stage_columns`).

    `seed_rows`: the promoted seed_data (both splits, column `split` = "train" | "holdout").
    `curated` / `rejected`: the staged curated_set version evaluated and the rejected rows written with
    it (`reasons`: reason codes). `samples` / `prompts`: the generated_samples and expanded_prompts
    versions that curated set was cut from (the same run's, else the promoted ones). `curated_run_id` /
    `samples_run_id`: the runs that wrote them. `generation_seconds`: wall-clock seconds of the LLM
    calls behind `samples` (None when not recorded), `generation_seconds_source` says where it came
    from. `notes`: warnings for the report (e.g. a fallback to an older curated_set). Built by
    `load_inputs`, which raises EvaluationInputError when there is nothing to evaluate."""

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
    published_run_id: str | None = None  # the curated_set version current before this evaluation
    # prompt_id -> the seed ids its prompt showed (expanded_prompts.demo_ids: the anchor row first,
    # then the few-shot demos), for every curated row's prompt whose lineage was found; the seed
    # cross-validation keeps a synthetic row out of the folds that hold out a row its prompt showed
    shown_seed_ids: dict[str, list[str]] = field(default_factory=dict)


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


def _curated_to_evaluate(store: Warehouse, spec_name: str) -> pd.DataFrame:
    """The newest staged curated_set version; for a database without curated gate verdicts (written
    before staging existed, or by hand) the published one."""
    staged = store.staged_runs(spec_name)
    if staged:
        return store.read_version("curated_set", spec_name, staged[0])
    return store.read_current("curated_set", spec_name)


def load_inputs(store: Warehouse, spec_name: str) -> EvaluationInputs:
    """The newest staged curated set (the newest version that passed its GX gate, published or not)
    and what it came from. Raises EvaluationInputError when there is none, or no seed data."""
    curated = _curated_to_evaluate(store, spec_name)
    seed_rows = store.read_current("seed_data", spec_name)
    if curated.empty:
        raise EvaluationInputError(
            f"curated_set has no staged rows for spec '{spec_name}': materialize it first "
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
                f"evaluates the newest version that passed it, from run {curated_run}"
            )
        else:
            notes.append(
                f"the newest curated_set version (run {latest_run}) has no gate verdict; this report "
                f"evaluates the newest staged version, from run {curated_run}"
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
        published_run_id=store.published_run("curated_set", spec_name),
        shown_seed_ids=shown_seed_ids(store, spec_name, prompts, curated),
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


def _demo_ids(raw: object) -> list[str] | None:
    """`expanded_prompts.demo_ids` (a JSON list of seed ids) as a list, None when unreadable."""
    try:
        ids = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def shown_seed_ids(
    store: Warehouse, spec_name: str, prompts: pd.DataFrame, curated: pd.DataFrame
) -> dict[str, list[str]]:
    """prompt_id -> seed ids its prompt showed, for the prompts of the curated rows.

    From the expanded_prompts version read with the curated set (normally the same run's); a prompt
    missing there (the curated set's run wrote no prompts, and the current version differs) is looked
    up in expanded_prompts_history: a prompt_id hashes its demo_ids, so any version that has it says
    the same. A prompt found nowhere is left out (the seed cross-validation then uses its rows in no
    fold). The history query lives here because the storage package has no read by prompt_id."""
    wanted = {str(p) for p in curated["prompt_id"]} if "prompt_id" in curated.columns else set()
    shown: dict[str, list[str]] = {}
    if {"prompt_id", "demo_ids"} <= set(prompts.columns):
        for prompt_id, raw in zip(prompts["prompt_id"], prompts["demo_ids"], strict=True):
            ids = _demo_ids(raw)
            if str(prompt_id) in wanted and ids is not None:
                shown[str(prompt_id)] = ids
    missing = sorted(wanted - set(shown))
    if missing:
        frame = store.query(
            f'SELECT prompt_id, demo_ids FROM "{HISTORY_TABLE["expanded_prompts"]}" '
            "WHERE spec_name = ? AND list_contains(?, prompt_id) "
            "QUALIFY row_number() OVER (PARTITION BY prompt_id ORDER BY materialized_at DESC) = 1",
            [spec_name, missing],
        )
        for prompt_id, raw in zip(frame["prompt_id"], frame["demo_ids"], strict=True):
            ids = _demo_ids(raw)
            if ids is not None:
                shown[str(prompt_id)] = ids
    return shown


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
