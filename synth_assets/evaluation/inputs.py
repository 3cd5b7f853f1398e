"""What the evaluation reads from DuckDB: the staged curated set it decides on and the versions it
came from, and the last good report to compare against. No Dagster here, so it tests on a temporary
file.

The evaluation reads the newest *staged* curated_set version (passed its GX gate; normally the one
its own run just wrote), not the published one: publication waits for this very evaluation, so
reading the published version would judge stale data and never let a new version through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from synth_assets.storage import Stage, Warehouse


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
    """(run_id, passed, summary) of the newest curated_set version; passed None: never judged."""
    versions = store.versions(Stage.CURATED_SET, spec_name)
    if not versions:
        return None
    newest = versions[-1].run_id
    verdict = store.gate_verdict(Stage.CURATED_SET, spec_name, newest)
    return (newest, None, "") if verdict is None else (newest, verdict.passed, verdict.summary)


def _curated_to_evaluate(store: Warehouse, spec_name: str) -> pd.DataFrame:
    """The newest good (staged) curated_set version; for a database without curated gate verdicts
    (written before staging existed, or by hand) the published one."""
    staged = store.good_versions(Stage.CURATED_SET, spec_name)
    if staged:
        return store.read_version(Stage.CURATED_SET, spec_name, staged[0])
    return store.read_current(Stage.CURATED_SET, spec_name)


def load_inputs(store: Warehouse, spec_name: str) -> EvaluationInputs:
    """The newest staged curated set (the newest version that passed its GX gate, published or not)
    and what it came from. Raises EvaluationInputError when there is none, or no seed data."""
    curated = _curated_to_evaluate(store, spec_name)
    seed_rows = store.read_current(Stage.SEED_DATA, spec_name)
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
    samples = _version(store, Stage.GENERATED_SAMPLES, spec_name, curated_run)
    prompts = _version(store, Stage.EXPANDED_PROMPTS, spec_name, curated_run)
    # rejected rows are written in the same transaction as the curated set they complement
    rejected = (
        store.read_version(Stage.REJECTED_SAMPLES, spec_name, curated_run)
        if curated_run
        else store.read_current(Stage.REJECTED_SAMPLES, spec_name)
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
        published_run_id=store.published_run(Stage.CURATED_SET, spec_name),
        shown_seed_ids=shown_seed_ids(store, spec_name, curated),
    )
    samples_run = inputs.samples_run_id
    record = store.generation_record(spec_name, samples_run) if samples_run else None
    if record is not None and record.call_seconds is not None:
        inputs.generation_seconds = float(record.call_seconds)
        inputs.generation_seconds_source = (
            f"generation_runs.call_seconds of the generated_samples version of run {samples_run}: the sum "
            "of what the LLM calls behind these samples took when they were made (a batch's time is "
            "shared by its calls; a call reused from the cache keeps its original time)"
        )
    return inputs


def shown_seed_ids(store: Warehouse, spec_name: str, curated: pd.DataFrame) -> dict[str, list[str]]:
    """prompt_id -> seed ids its prompt showed (expanded_prompts.demo_ids: the anchor row first, then
    the few-shot demos), for the prompts of the curated rows: from the newest expanded_prompts
    version written up to the curated one that has the prompt (normally the same run's; a prompt_id
    hashes its demo_ids, so an earlier version that has it says the same). A
    prompt found nowhere is left out (the seed cross-validation then uses its rows in no fold)."""
    wanted = sorted({str(p) for p in curated["prompt_id"]}) if "prompt_id" in curated.columns else []
    run_id = str(curated["run_id"].iloc[0]) if len(curated) and "run_id" in curated.columns else None
    prompts = store.rows_by_ids(
        Stage.EXPANDED_PROMPTS, wanted, spec_name, newest_only=True, written_by=run_id
    )
    return {
        str(prompt_id): [str(i) for i in ids]
        for prompt_id, ids in zip(prompts.get("prompt_id", []), prompts.get("demo_ids", []), strict=True)
        if isinstance(ids, list)
    }


def last_good_run(store: Warehouse, spec_name: str, exclude_run_id: str | None = None) -> BaselineRun | None:
    """The newest good evaluation of the spec (`storage.is_good`: its usefulness gate passed; reports
    from before the gate existed count as good), other than `exclude_run_id`."""
    run_id = store.last_good(Stage.EVALUATION_REPORT, spec_name, exclude_run_id=exclude_run_id)
    if run_id is None:
        return None
    report = store.read_version(Stage.EVALUATION_REPORT, spec_name, run_id, decoded=True)
    return BaselineRun(run_id, report["metrics"].iloc[0] or {})
