"""The stage names and the column layout of every table in the warehouse.

A *stage* is one asset of the pipeline and the DuckDB table of the same name (`Stage`); its history
table (`HISTORY_TABLE`) keeps every version. A *version* of a stage is the set of rows one run wrote
for one spec: it is named by that run's id (`run_id`), so "version" and "run id" are the same thing
everywhere in this package.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """The pipeline's stages in order, plus curated_set's complement. A `StrEnum`, so a constant is
    the table name itself (`Stage.CURATED_SET == "curated_set"`) and works wherever a name does."""

    SEED_DATA = "seed_data"
    EXPANDED_PROMPTS = "expanded_prompts"
    GENERATED_SAMPLES = "generated_samples"
    CURATED_SET = "curated_set"
    REJECTED_SAMPLES = "rejected_samples"
    EVALUATION_REPORT = "evaluation_report"


# The row tables of the pipeline (every stage but the report), in pipeline order.
ROW_STAGES: tuple[Stage, ...] = (
    Stage.SEED_DATA,
    Stage.EXPANDED_PROMPTS,
    Stage.GENERATED_SAMPLES,
    Stage.CURATED_SET,
    Stage.REJECTED_SAMPLES,
)
# Stages whose versions a blocking check judges (see `reads.is_good`); seed_data and expanded_prompts
# have no gate, rejected_samples follows the curated_set version it complements.
GATED_STAGES: frozenset[Stage] = frozenset(
    {Stage.GENERATED_SAMPLES, Stage.CURATED_SET, Stage.EVALUATION_REPORT}
)
# The id column of each row stage: what `rows_by_ids` and `resolve_prefix` match.
ID_COLUMN: dict[Stage, str] = {
    Stage.SEED_DATA: "seed_id",
    Stage.EXPANDED_PROMPTS: "prompt_id",
    Stage.GENERATED_SAMPLES: "sample_id",
    Stage.CURATED_SET: "sample_id",
    Stage.REJECTED_SAMPLES: "sample_id",
}

# Columns each stage writes, in order; `spec_name`, `run_id` and `materialized_at` are added here.
STAGE_COLUMNS: dict[Stage, dict[str, str]] = {
    Stage.SEED_DATA: {
        "seed_id": "VARCHAR",
        "split": "VARCHAR",
        "text": "VARCHAR",
        "label": "VARCHAR",
        "source_file": "VARCHAR",
        "source_row": "BIGINT",
    },
    Stage.EXPANDED_PROMPTS: {
        "prompt_id": "VARCHAR",
        "prompt_index": "BIGINT",
        "label": "VARCHAR",
        "attributes": "VARCHAR",
        "demo_ids": "VARCHAR",
        "system_prompt": "VARCHAR",
        "prompt_text": "VARCHAR",
        "generation_seed": "BIGINT",
        "cell": "VARCHAR",
    },
    Stage.GENERATED_SAMPLES: {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",
        "model": "VARCHAR",
        "model_fingerprint": "VARCHAR",
        "backend": "VARCHAR",
        "generation_params": "VARCHAR",
        "generation_seed": "BIGINT",
        "prompt_tokens": "BIGINT",
        "completion_tokens": "BIGINT",
        "finish_reason": "VARCHAR",
        "cache_key": "VARCHAR",
        "generated_in_run": "VARCHAR",
        "steps": "VARCHAR",
    },
    Stage.CURATED_SET: {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",  # final label (differs from intended_label only when relabeled)
        "text": "VARCHAR",  # PII scrubbed, truncated ending trimmed
        "normalized_hash": "VARCHAR",
        "intended_label": "VARCHAR",  # the label the prompt asked for
        "predicted_label": "VARCHAR",  # the seed-trained classifier's label (NULL: not checked)
        "label_confidence": "DOUBLE",  # classifier probability of `label`
        "relevance": "DOUBLE",  # cosine to the task/condition text
        "nearest_similarity": "DOUBLE",  # highest cosine to another sample of the batch
        "judge_score": "DOUBLE",  # LLM judge 1-5 (NULL: judge off)
        "pii_hits": "BIGINT",  # personal-data spans found (and scrubbed)
        "flags": "VARCHAR",  # JSON list: label_doubt, relabeled, pii_scrubbed, trimmed_truncated_ending
    },
    Stage.REJECTED_SAMPLES: {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",  # PII scrubbed
        "reasons": "VARCHAR",  # JSON list of every reason code the row failed
        "details": "VARCHAR",  # JSON object: reason code -> what was measured
        "predicted_label": "VARCHAR",
        "label_confidence": "DOUBLE",
        "relevance": "DOUBLE",
        "nearest_similarity": "DOUBLE",
        "judge_score": "DOUBLE",
        "pii_hits": "BIGINT",
    },
    Stage.EVALUATION_REPORT: {
        "metrics": "VARCHAR",  # JSON: every scalar metric of the run (key figures, usefulness, cost...)
        "markdown": "VARCHAR",
        "report_path": "VARCHAR",
        "details": "VARCHAR",  # JSON: per-label / per-attribute tables, CIs, notes
        "passed": "BOOLEAN",  # the usefulness gate; only passing versions are promoted ("last good")
        "gate_summary": "VARCHAR",
        "curated_run_id": "VARCHAR",  # which curated_set version was evaluated
        "baseline_run_id": "VARCHAR",  # the last good run the deltas and the gate compare against
    },
}
COMMON_COLUMNS = {"spec_name": "VARCHAR", "run_id": "VARCHAR", "materialized_at": "TIMESTAMP"}
# The stage views (`<stage>`, `<stage>_history`) end with this column: a row's place in its version, the
# order it was written in (a view has no rowid). The named reads order by it and leave it out.
POSITION_COLUMN = "row_position"
GATE_COLUMNS = {
    "spec_name": "VARCHAR",
    "run_id": "VARCHAR",
    "asset": "VARCHAR",
    "check_name": "VARCHAR",
    "passed": "BOOLEAN",
    "summary": "VARCHAR",
    "evaluated_at": "TIMESTAMP",
}
# Every LLM call, keyed by everything that decides its output (model fingerprint, messages, parameters,
# seed). Written per batch as calls finish, so a killed run loses no finished call, and a re-run with
# nothing changed makes no call at all.
LLM_CACHE_COLUMNS = {
    "cache_key": "VARCHAR PRIMARY KEY",
    "backend": "VARCHAR",
    "model_fingerprint": "VARCHAR",
    "messages": "VARCHAR",
    "generation_params": "VARCHAR",
    "seed": "BIGINT",
    "text": "VARCHAR",
    "prompt_tokens": "BIGINT",
    "completion_tokens": "BIGINT",
    "finish_reason": "VARCHAR",
    "seconds": "DOUBLE",
    "run_id": "VARCHAR",
    "created_at": "TIMESTAMP",
}
# Calls that failed (backend errors): kept with the reason, retried on the next materialization.
GENERATION_FAILURE_COLUMNS = {
    "spec_name": "VARCHAR",
    "run_id": "VARCHAR",
    "cache_key": "VARCHAR",
    "prompt_id": "VARCHAR",
    "step": "VARCHAR",
    "error": "VARCHAR",
    "failed_at": "TIMESTAMP",
}
# One row per publication decision on a staged version: published (copied into the current table)
# or held back, with the reason (the usefulness gate's summary) and the evaluation run that decided.
PUBLICATION_COLUMNS = {
    "spec_name": "VARCHAR",
    "stage": "VARCHAR",  # curated_set
    "version_run_id": "VARCHAR",  # the run that wrote (staged) the version
    "decided_in_run_id": "VARCHAR",  # the evaluation_report run whose gate decided
    "published": "BOOLEAN",
    "reason": "VARCHAR",
    "previously_published_run_id": "VARCHAR",  # what was current before the decision (NULL: nothing)
    "decided_at": "TIMESTAMP",
}
# a published stage is copied together with these (written in the same transaction as it)
PUBLISHED_WITH: dict[Stage, tuple[Stage, ...]] = {Stage.CURATED_SET: (Stage.REJECTED_SAMPLES,)}
HISTORY_TABLE: dict[str, str] = {stage: f"{stage}_history" for stage in STAGE_COLUMNS} | {
    Stage.EVALUATION_REPORT: "evaluation_history"
}
# Columns stored as JSON text. The vocabulary of `reads` decodes them once, so readers get Python
# lists and dicts; stage frames (`read_current`, `read_version`) keep the text, as the stages wrote it.
JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    Stage.EXPANDED_PROMPTS: ("attributes", "demo_ids"),
    Stage.GENERATED_SAMPLES: ("generation_params", "steps"),
    Stage.CURATED_SET: ("flags",),
    Stage.REJECTED_SAMPLES: ("reasons", "details"),
    Stage.EVALUATION_REPORT: ("metrics", "details"),
    "llm_cache": ("messages", "generation_params"),
}
# What one generated_samples version cost, written in the transaction of that version (issue 13,
# item 5): evaluation reads it here instead of guessing columns or mining Dagster metadata.
GENERATION_RUN_COLUMNS = {
    "spec_name": "VARCHAR",
    "run_id": "VARCHAR",  # the generated_samples version
    "samples": "BIGINT",
    "call_seconds": "DOUBLE",  # sum of the seconds of the LLM calls behind the samples, when made
    "run_seconds": "DOUBLE",  # wall time of this materialization (near 0 when every call was cached)
    "prompt_tokens": "BIGINT",  # summed over the samples (every call of every step)
    "completion_tokens": "BIGINT",
    "calls_made": "BIGINT",  # calls sent to the backend in this run
    "cache_hits": "BIGINT",  # calls answered from llm_cache
    "recorded_at": "TIMESTAMP",
}


def stage_columns(stage: str) -> list[str]:
    """The columns a stage writes, in order (without `spec_name`, `run_id`, `materialized_at`).
    Raises KeyError for a name that is not a stage."""
    return list(STAGE_COLUMNS[stage])  # type: ignore[index]  # a Stage key matches its plain name too
