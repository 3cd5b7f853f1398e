"""Row-level lineage: seed demos -> prompt -> generation -> curation decision, across runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from synth_assets.storage import HISTORY_TABLE, Warehouse


class LineageError(LookupError):
    """No row with that id (one-line message)."""


@dataclass
class LineageChain:
    sample_id: str
    spec_name: str
    demos: list[dict[str, Any]]
    prompt: dict[str, Any]
    generation: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "spec_name": self.spec_name,
            "seed_demos": self.demos,
            "prompt": self.prompt,
            "generation": self.generation,
            "curation_decisions": self.decisions,
        }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def trace(warehouse: Warehouse, row_id: str) -> LineageChain:
    """The whole chain for a curated or rejected sample id (an unambiguous prefix is enough)."""
    generated_table = HISTORY_TABLE["generated_samples"]
    matches = warehouse.read_only_query(
        f"SELECT DISTINCT sample_id FROM {generated_table} WHERE sample_id LIKE ? || '%'", [row_id]
    )
    if matches.empty:
        raise LineageError(f"no generated sample with id '{row_id}'")
    if len(matches) > 1:
        raise LineageError(f"id '{row_id}' is ambiguous: {len(matches)} samples start with it")
    sample_id = str(matches["sample_id"].iloc[0])
    generations = warehouse.read_only_query(
        f"SELECT * FROM {generated_table} WHERE sample_id = ? ORDER BY materialized_at", [sample_id]
    )
    generation = _records(generations.tail(1))[0]
    generation["first_run_id"] = str(generations["run_id"].iloc[0])
    spec_name = generation["spec_name"]
    prompt_rows = warehouse.read_only_query(
        f"SELECT * FROM {HISTORY_TABLE['expanded_prompts']} WHERE spec_name = ? AND prompt_id = ? "
        "ORDER BY materialized_at DESC LIMIT 1",
        [spec_name, generation["prompt_id"]],
    )
    prompt = _records(prompt_rows)[0] if len(prompt_rows) else {"prompt_id": generation["prompt_id"]}
    demo_ids = json.loads(prompt.get("demo_ids") or "[]")
    demos: list[dict[str, Any]] = []
    if demo_ids:
        demo_rows = warehouse.read_only_query(
            f"SELECT * FROM {HISTORY_TABLE['seed_data']} WHERE spec_name = ? AND seed_id IN "
            f"({', '.join('?' for _ in demo_ids)}) QUALIFY row_number() OVER "
            "(PARTITION BY seed_id ORDER BY materialized_at DESC) = 1",
            [spec_name, *demo_ids],
        )
        by_id = {row["seed_id"]: row for row in _records(demo_rows)}
        demos = [by_id.get(seed_id, {"seed_id": seed_id}) for seed_id in demo_ids]
    decisions = warehouse.read_only_query(
        f"SELECT 'curated' AS decision, run_id, materialized_at, NULL AS reasons, NULL AS details "
        f"FROM {HISTORY_TABLE['curated_set']} WHERE sample_id = ? "
        f"UNION ALL SELECT 'rejected', run_id, materialized_at, reasons, details "
        f"FROM {HISTORY_TABLE['rejected_samples']} WHERE sample_id = ? ORDER BY materialized_at",
        [sample_id, sample_id],
    )
    promoted = warehouse.read_only_query("SELECT run_id FROM curated_set WHERE sample_id = ?", [sample_id])
    decision_records = _records(decisions)
    promoted_runs = set(promoted["run_id"])
    for decision in decision_records:
        decision["in_promoted_curated_set"] = decision["run_id"] in promoted_runs
    return LineageChain(sample_id, spec_name, demos, prompt, generation, decision_records)


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_chain(chain: LineageChain) -> str:
    """A readable, top-to-bottom account of where a row came from."""
    prompt, generation = chain.prompt, chain.generation
    lines = [f"sample {chain.sample_id}  (spec {chain.spec_name})", "", "seed demos:"]
    if not chain.demos:
        lines.append("  (none: zero-shot prompt)")
    for demo in chain.demos:
        lines.append(
            f"  {demo.get('seed_id')}  [{demo.get('label', '?')}] row {demo.get('source_row', '?')} "
            f"of {demo.get('source_file', '?')}"
        )
        lines.append(f"      {_short(demo.get('text', ''))}")
    lines += [
        "      |",
        "      v",
        f"prompt {prompt.get('prompt_id')}  label={prompt.get('label')}  "
        f"attributes={prompt.get('attributes')}",
        f"      made in run {prompt.get('run_id', '?')}",
        f"      {_short(prompt.get('prompt_text', ''), 160)}",
        "      |",
        "      v",
        f"generation by {generation['model']} ({generation['backend']}, "
        f"fingerprint {generation['model_fingerprint']})",
        f"      params {generation['generation_params']}  seed {generation['generation_seed']}",
        f"      {generation['completion_tokens']} tokens, finish={generation['finish_reason']}, "
        f"first made in run {generation['first_run_id']}",
        f"      text: {_short(generation['text'], 160)}",
        "      |",
        "      v",
        "curation decisions:",
    ]
    if not chain.decisions:
        lines.append("  (not curated yet)")
    for decision in chain.decisions:
        reasons = f" reasons={decision['reasons']} {decision['details']}" if decision["reasons"] else ""
        current = "  <- in the current curated_set" if decision["in_promoted_curated_set"] else ""
        lines.append(f"  run {decision['run_id']}: {decision['decision']}{reasons}{current}")
    return "\n".join(lines)
