"""Row-level lineage: seed demos -> prompt -> generation steps -> curation decisions, across runs.

Everything here reads DuckDB only (ids are content hashes, every version of every stage is kept in
`<stage>_history` with its run id). The Dagster side (which materialization a run id belongs to) is
looked up through a `RunDirectory`, optional: without one, or when the instance has no record of a
run, the chain is complete except for that annotation.

Columns are read by name and optional ones (`steps`, `generated_in_run`, scores other stages add) are
used when present, so older databases and newer columns both work. Every read goes through the
storage vocabulary, which hands over JSON columns already decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from synth_assets.storage import Stage, Warehouse

# columns every decision row has; anything else on a curated/rejected row is a score or a note
_DECISION_BASE = {"spec_name", "sample_id", "prompt_id", "label", "text", "run_id", "materialized_at"}
_DECISION_SHOWN = {"reasons", "details", "normalized_hash"}


class LineageError(LookupError):
    """No row with that id, or an ambiguous prefix (one-line message)."""


class RunDirectory(Protocol):
    """Where run ids are resolved to Dagster runs and materializations (see `dagster_runs.py`)."""

    def describe(self, run_id: str, partition: str) -> dict[str, Any] | None:
        """Run status, job, times, and {asset: materialization of `partition`}; None if unknown."""
        ...


@dataclass
class LineageChain:
    sample_id: str
    spec_name: str
    demos: list[dict[str, Any]]
    prompt: dict[str, Any]
    generations: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    dagster: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    dagster_note: str = ""

    @property
    def generation(self) -> dict[str, Any]:
        """The newest version of the generated row (what the latest run curated)."""
        return self.generations[-1]

    @property
    def status(self) -> str:
        current = [d for d in self.decisions if d["in_promoted_curated_set"]]
        if current:
            return f"curated: in the published curated_set (run {current[-1]['run_id']})"
        if not self.decisions:
            return "generated, never curated"
        last = self.decisions[-1]
        return f"{last['decision']} in the latest run that judged it ({last['run_id']})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "spec_name": self.spec_name,
            "status": self.status,
            "seed_demos": self.demos,
            "prompt": self.prompt,
            "generation_steps": self.calls,
            "generated_versions": self.generations,
            "curation_decisions": self.decisions,
            "runs": self.runs,
            "dagster": self.dagster,
            "dagster_note": self.dagster_note,
        }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON-ready dicts (timestamps as ISO text, NaN as None)."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def resolve_sample_id(warehouse: Warehouse, row_id: str) -> str:
    """The full sample id for an id or an unambiguous prefix (curated, rejected or generated)."""
    stages = (Stage.GENERATED_SAMPLES, Stage.CURATED_SET, Stage.REJECTED_SAMPLES)
    matches = sorted({value for _, value in warehouse.resolve_prefix(row_id, stages, read_only=True)})
    if not matches:
        raise LineageError(f"no generated sample with id '{row_id}'")
    if len(matches) > 1:
        raise LineageError(f"id '{row_id}' is ambiguous: {len(matches)} samples start with it")
    return matches[0]


def _calls_of(generations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The LLM calls behind the sample, once each: from the `steps` column when the generation stage
    records them (multi-step, cached, retried), else one call described by the row itself."""
    calls: dict[str, dict[str, Any]] = {}
    for version in generations:
        steps = version.get("steps")
        recorded = steps.get("calls", []) if isinstance(steps, dict) else []
        if not recorded:
            recorded = [
                {
                    "step": "answer",
                    "attempt": 0,
                    "cache_key": version.get("cache_key") or f"{version['sample_id']}@{version['run_id']}",
                    "run_id": version.get("generated_in_run") or version["run_id"],
                    "prompt_tokens": version.get("prompt_tokens"),
                    "completion_tokens": version.get("completion_tokens"),
                    "finish_reason": version.get("finish_reason"),
                    "text": version.get("text"),
                }
            ]
        for call in recorded:
            key = str(call.get("cache_key"))
            if key not in calls:
                calls[key] = {
                    **call,
                    "model": version.get("model"),
                    "model_fingerprint": version.get("model_fingerprint"),
                    "backend": version.get("backend"),
                    "generation_params": version.get("generation_params") or {},
                    "seed": version.get("generation_seed"),
                }
    return list(calls.values())


_CACHE_FACTS = ("backend", "model_fingerprint", "generation_params", "seed", "seconds", "run_id")


def _enrich_calls_from_cache(warehouse: Warehouse, calls: list[dict[str, Any]]) -> None:
    """Per-call facts the llm_cache knows exactly (the seed of a step, its seconds, its backend)."""
    keys = [str(c["cache_key"]) for c in calls if c.get("cache_key")]
    frame = warehouse.cached_calls(keys, read_only=True, decoded=True)
    by_key = {row["cache_key"]: row for row in _records(frame)}
    for call in calls:
        row = by_key.get(str(call.get("cache_key")))
        if row is None:
            continue
        for column in _CACHE_FACTS:
            if row.get(column) is not None:
                call[column] = row[column]


def trace(warehouse: Warehouse, row_id: str, runs: RunDirectory | None = None) -> LineageChain:
    """The whole chain for a curated or rejected sample id (an unambiguous prefix is enough).
    Raises LineageError for an unknown or ambiguous id, FileNotFoundError without a DuckDB file."""
    sample_id = resolve_sample_id(warehouse, row_id)
    generations = _records(warehouse.rows_by_ids(Stage.GENERATED_SAMPLES, [sample_id], read_only=True))
    curated = warehouse.rows_by_ids(Stage.CURATED_SET, [sample_id], read_only=True)
    rejected = warehouse.rows_by_ids(Stage.REJECTED_SAMPLES, [sample_id], read_only=True)
    anchor = generations[-1] if generations else _records(pd.concat([curated, rejected]).tail(1))[0]
    spec_name = str(anchor["spec_name"])
    prompt_id = str(anchor["prompt_id"])

    prompt_rows = warehouse.rows_by_ids(Stage.EXPANDED_PROMPTS, [prompt_id], spec_name, read_only=True)
    if len(prompt_rows):
        prompt = _records(prompt_rows.tail(1))[0]
        prompt["attributes"] = prompt.get("attributes") or {}
        prompt["demo_ids"] = prompt.get("demo_ids") or []
        prompt["runs"] = list(dict.fromkeys(prompt_rows["run_id"]))
    else:
        prompt = {"prompt_id": prompt_id, "attributes": {}, "demo_ids": [], "runs": []}
    # self-instruct draws demos at generation time: the sample records the prompt it was sent
    sent = generations[-1].get("steps") if generations else None
    if isinstance(sent, dict) and sent.get("prompt_text"):
        prompt["prompt_text"] = sent["prompt_text"]
        prompt["demo_ids"] = [d for d in sent.get("demo_ids", []) if not str(d).startswith("machine:")]

    demos: list[dict[str, Any]] = []
    if prompt["demo_ids"]:
        demo_ids = [str(d) for d in prompt["demo_ids"]]
        demo_rows = warehouse.rows_by_ids(
            Stage.SEED_DATA, demo_ids, spec_name, newest_only=True, read_only=True
        )
        by_id = {row["seed_id"]: row for row in _records(demo_rows)}
        demos = [by_id.get(seed_id, {"seed_id": seed_id, "missing": True}) for seed_id in demo_ids]

    calls = _calls_of(generations)
    _enrich_calls_from_cache(warehouse, calls)

    verdicts = {
        stage: warehouse.gate_verdicts(stage, spec_name, read_only=True)
        for stage in (Stage.GENERATED_SAMPLES, Stage.CURATED_SET)
    }

    def passed(stage: Stage, run_id: str) -> bool | None:
        verdict = verdicts[stage].get(run_id)
        return None if verdict is None else verdict.passed

    published = warehouse.published_run(Stage.CURATED_SET, spec_name, read_only=True)

    decisions: list[dict[str, Any]] = []
    for decision, frame in (("curated", curated), ("rejected", rejected)):
        for row in _records(frame):
            scores = {k: v for k, v in row.items() if k not in _DECISION_BASE | _DECISION_SHOWN}
            decisions.append(
                {
                    "decision": decision,
                    "run_id": row["run_id"],
                    "materialized_at": row["materialized_at"],
                    "reasons": row.get("reasons") or [],
                    "details": row.get("details") or {},
                    "scores": {k: v for k, v in scores.items() if v not in (None, "", [], {})},
                    "curated_set_gate_passed": passed(Stage.CURATED_SET, row["run_id"]),
                    "in_promoted_curated_set": decision == "curated"
                    and row["spec_name"] == spec_name
                    and row["run_id"] == published,
                }
            )
    decisions.sort(key=lambda d: str(d["materialized_at"]))

    runs_seen: dict[str, dict[str, Any]] = {}
    for version in generations:
        entry = runs_seen.setdefault(version["run_id"], {"run_id": version["run_id"]})
        entry["materialized_at"] = version["materialized_at"]
        entry["generated"] = True
        entry["generated_samples_gate_passed"] = passed(Stage.GENERATED_SAMPLES, version["run_id"])
    for decision in decisions:
        entry = runs_seen.setdefault(decision["run_id"], {"run_id": decision["run_id"]})
        entry.setdefault("materialized_at", decision["materialized_at"])
        entry["decision"] = decision["decision"]
        entry["curated_set_gate_passed"] = decision["curated_set_gate_passed"]
        entry["promoted"] = decision["in_promoted_curated_set"]
    run_list = sorted(runs_seen.values(), key=lambda r: str(r.get("materialized_at")))

    chain = LineageChain(sample_id, spec_name, demos, prompt, generations, calls, decisions, run_list)
    if runs is not None:
        wanted_runs = list(
            dict.fromkeys([*(str(c["run_id"]) for c in calls), *(r["run_id"] for r in run_list)])
        )
        for run_id in wanted_runs:
            try:
                chain.dagster[run_id] = runs.describe(run_id, spec_name)
            except Exception as exc:  # the instance is an annotation: lineage must not fail with it
                chain.dagster_note = f"Dagster instance not readable: {type(exc).__name__}: {exc}"
                break
        if not chain.dagster_note and not any(chain.dagster.values()):
            chain.dagster_note = "the Dagster instance has no record of these runs"
    return chain


def _short(text: Any, width: int = 100) -> str:
    flat = " ".join(str("" if text is None else text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _verdict(passed: bool | None) -> str:
    return "gate n/a" if passed is None else ("gate passed" if passed else "gate FAILED")


def _describe_dagster(info: dict[str, Any] | None, asset: str) -> str:
    if not info:
        return "no record of this run in the Dagster instance"
    run = f"Dagster run {info.get('status', '?')}"
    if info.get("job_name"):
        run += f" ({info['job_name']})"
    materialization = (info.get("materializations") or {}).get(asset)
    if not materialization:
        return f"{run}; no materialization of {asset} recorded in it"
    return (
        f"{run}; {asset}[{materialization.get('partition')}] materialized "
        f"{materialization.get('timestamp', '?')}, data version "
        f"{str(materialization.get('data_version') or '?')[:12]} (UI: /runs/{info.get('run_id')})"
    )


def format_chain(chain: LineageChain) -> str:
    """A readable, top-to-bottom account of where a row came from."""
    prompt = chain.prompt
    lines = [f"sample {chain.sample_id}  (spec {chain.spec_name})", f"status: {chain.status}", ""]
    lines.append(f"seed demos: {len(chain.demos)} real row(s) shown to the model")
    if not chain.demos:
        lines.append("  (none: zero-shot prompt)")
    for demo in chain.demos:
        if demo.get("missing"):
            lines.append(f"  {demo['seed_id']}  (no longer in seed_data_history)")
            continue
        lines.append(
            f"  {demo.get('seed_id')}  {demo.get('split', '?')} [{demo.get('label', '?')}] "
            f"row {demo.get('source_row', '?')} of {demo.get('source_file', '?')}"
        )
        lines.append(f"      {_short(demo.get('text', ''))}")
    attributes = ", ".join(f"{k}={v}" for k, v in (prompt.get("attributes") or {}).items()) or "none"
    lines += [
        "      |",
        "      v",
        f"prompt {prompt.get('prompt_id')}  label={prompt.get('label', '?')}  attributes: {attributes}",
        f"      generation seed {prompt.get('generation_seed', '?')}; in {len(prompt.get('runs', []))} "
        f"run(s), first {prompt['runs'][0] if prompt.get('runs') else '?'}",
    ]
    if prompt.get("system_prompt"):
        lines.append(f"      system: {_short(prompt['system_prompt'], 150)}")
    rendered = str(prompt.get("prompt_text") or "").strip().splitlines()
    lines.append("      rendered:")
    lines += [f"        | {line}" for line in rendered[:14]]
    if len(rendered) > 14:
        lines.append(f"        | ... {len(rendered) - 14} more lines")
    lines += ["      |", "      v", f"generation steps ({len(chain.calls)} LLM call(s)):"]
    for call in chain.calls:
        params = json.dumps(call.get("generation_params") or {}, sort_keys=True)
        attempt = f" attempt {call['attempt']}" if call.get("attempt") else ""
        lines += [
            f"  step {call.get('step', 'answer')}{attempt}: {call.get('model')} via {call.get('backend')} "
            f"(fingerprint {call.get('model_fingerprint')})",
            f"      params {params}  seed {call.get('seed')}",
            f"      {call.get('completion_tokens', '?')} tokens, finish={call.get('finish_reason', '?')}"
            + (f", {float(call['seconds']):.2f}s" if call.get("seconds") is not None else "")
            + f"; made in run {call.get('run_id')}",
        ]
        if chain.dagster or chain.dagster_note:
            info = chain.dagster.get(str(call.get("run_id")))
            lines.append(f"      -> {_describe_dagster(info, Stage.GENERATED_SAMPLES)}")
        lines.append(f"      output: {_short(call.get('text'), 150)}")
    if chain.generations:
        lines.append(f"  sample text: {_short(chain.generation.get('text'), 150)}")
    lines += ["      |", "      v", "curation decisions:"]
    if not chain.decisions:
        lines.append("  (not curated yet)")
    for decision in chain.decisions:
        current = "  <- in the published curated_set" if decision["in_promoted_curated_set"] else ""
        gate = _verdict(decision["curated_set_gate_passed"])
        lines.append(f"  run {decision['run_id']}: {decision['decision'].upper()} ({gate}){current}")
        details = decision["details"] if isinstance(decision["details"], dict) else {}
        for reason in decision["reasons"] or []:
            lines.append(f"      reason {reason}: {details.get(reason, '')}".rstrip(": "))
        for name, value in decision["scores"].items():
            shown = json.dumps(value) if isinstance(value, list | dict) else value
            lines.append(f"      {name}: {_short(shown, 120)}")
    lines += ["", "present in runs:"]
    for run in chain.runs:
        generated = (
            f"generated ({_verdict(run.get('generated_samples_gate_passed'))})"
            if run.get("generated")
            else "not regenerated"
        )
        decision = run.get("decision", "not curated")
        promoted = "  <- promoted" if run.get("promoted") else ""
        lines.append(
            f"  {run['run_id']}  {str(run.get('materialized_at', ''))[:19]}  {generated}, "
            f"{decision}{promoted}"
        )
        if run["run_id"] in chain.dagster:
            info = chain.dagster[run["run_id"]]
            asset = Stage.CURATED_SET if run.get("decision") else Stage.GENERATED_SAMPLES
            lines.append(f"      {_describe_dagster(info, asset)}")
    if chain.dagster_note:
        lines.append(f"(Dagster: {chain.dagster_note})")
    return "\n".join(lines)
