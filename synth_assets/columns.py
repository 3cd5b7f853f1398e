"""What each stored column means, in a sentence: the Dagster UI's Columns tab and the sample browser
show these. Dagster-free, so `synth-assets browse` does not import Dagster. Keys follow
`storage.STAGE_COLUMNS` (a test keeps the two in step)."""

from __future__ import annotations

from synth_assets.storage.stages import Stage

_SAMPLE = {
    "sample_id": "id of the sample: a hash of prompt, model fingerprint, parameters and seed",
    "prompt_id": "the expanded prompt that produced the sample",
    "label": "the sample's label",
    "text": "the sample text",
}
_SCORES = {
    "predicted_label": "the seed-trained classifier's label (empty: not checked)",
    "label_confidence": "classifier probability of `label`",
    "relevance": "cosine of the text to the task/condition text",
    "nearest_similarity": "highest cosine to another sample of the batch",
    "judge_score": "LLM judge score 1-5 (empty: judge off)",
    "pii_hits": "personal-data spans found (and scrubbed)",
}

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    Stage.SEED_DATA: {
        "seed_id": "id of the seed row: its split and the id column, else a hash of split, text and label",
        "split": "train (shown to the model as demos) or holdout (never shown; evaluation only)",
        "text": "the real text from the seed file",
        "label": "the real label from the seed file",
        "source_file": "the seed file the row came from",
        "source_row": "row number in that file (1-based, header excluded)",
    },
    Stage.EXPANDED_PROMPTS: {
        "prompt_id": "id of the prompt: a hash of the spec identity, label, attributes and demos",
        "prompt_index": "position of the prompt in the spec's plan",
        "label": "the label the prompt asks for",
        "attributes": "JSON object: the sampled attribute values (conditions) of the prompt",
        "demo_ids": "JSON list: seed_ids the prompt was built from (the anchor first, then the demos)",
        "system_prompt": "the system message sent with the prompt",
        "prompt_text": "the rendered user message (or continuation prefix)",
        "generation_seed": "sampling seed of the LLM call",
        "cell": "JSON: the attribute cell this prompt fills (per-cell quotas; empty otherwise)",
    },
    Stage.GENERATED_SAMPLES: {
        **_SAMPLE,
        "label": "the label the prompt asked for",
        "text": "the raw model output (final step)",
        "model": "the model name",
        "model_fingerprint": "the model name and a hash of its weights (or the server model): what wrote it",
        "backend": "local (in-process transformers) or openai (an OpenAI-compatible server)",
        "generation_params": "JSON: temperature, top_p, max_new_tokens, ... of the call",
        "generation_seed": "sampling seed of the call",
        "prompt_tokens": "tokens in the prompt",
        "completion_tokens": "tokens generated",
        "finish_reason": "stop (ended by itself) or length (hit max_new_tokens)",
        "cache_key": "key of the call in llm_cache (same key: the answer is reused, no new call)",
        "generated_in_run": "the run whose call produced the text (earlier runs when cached)",
        "steps": "JSON: the output of every generation step",
    },
    Stage.CURATED_SET: {
        **_SAMPLE,
        "label": "final label (differs from intended_label only when relabeled)",
        "text": "the sample text, PII scrubbed, truncated ending trimmed",
        "normalized_hash": "hash of the normalized text (exact-duplicate detection across versions)",
        "intended_label": "the label the prompt asked for",
        **_SCORES,
        "flags": "JSON list: label_doubt, relabeled, pii_scrubbed, trimmed_truncated_ending",
    },
    Stage.REJECTED_SAMPLES: {
        **_SAMPLE,
        "text": "the sample text, PII scrubbed",
        "reasons": "JSON list of every reason code the row failed",
        "details": "JSON object: reason code -> what was measured",
        **_SCORES,
    },
    Stage.EVALUATION_REPORT: {
        "metrics": "JSON: every scalar metric of the run (key figures, usefulness, cost, ...)",
        "markdown": "the report as Markdown",
        "report_path": "the report file on disk",
        "details": "JSON: per-label / per-attribute tables, confidence intervals, notes",
        "passed": "the usefulness gate; only passing versions are promoted (the last good one)",
        "gate_summary": "the usefulness gate's verdict in a sentence",
        "curated_run_id": "which curated_set version was evaluated",
        "baseline_run_id": "the last good run the deltas and the gate compare against",
    },
}
COMMON_DESCRIPTIONS = {
    "spec_name": "the spec (and Dagster partition) the row belongs to",
    "run_id": "the Dagster run that wrote this version",
    "materialized_at": "when the version was written (UTC)",
}
