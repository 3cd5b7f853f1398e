"""What a generated_samples version cost, as the record storage keeps with it (issue 13, item 5):
the evaluation reads it from `generation_runs` instead of guessing columns or reading Dagster
metadata of another asset."""

from __future__ import annotations

import json

import pandas as pd

from synth_assets.generation.engine import GenerationOutcome
from synth_assets.storage import GenerationRecord, Warehouse


def call_keys(samples: pd.DataFrame) -> list[str]:
    """Cache keys of every LLM call behind the samples, once each: `cache_key`, plus each call the
    engine lists in the `steps` JSON text of the frame it just built ({"calls": [{"cache_key": ...}]})."""
    keys: list[str] = []
    if "cache_key" in samples.columns:
        keys += [str(k) for k in samples["cache_key"] if isinstance(k, str) and k]
    for raw in samples.get("steps", []):
        calls = json.loads(raw).get("calls", []) if isinstance(raw, str) and raw else []
        keys += [str(c["cache_key"]) for c in calls if isinstance(c, dict) and c.get("cache_key")]
    return list(dict.fromkeys(keys))


def generation_record(
    generation: GenerationOutcome, run_seconds: float, store: Warehouse
) -> GenerationRecord:
    """The cost record of the version `generation.samples` becomes. `run_seconds`: the wall time of
    the materialization, seconds; call_seconds: what the calls behind the samples took when they
    were made (llm_cache.seconds: a batch's time shared by its calls; a call reused from the cache
    keeps its original time), None when no call carries a time."""
    samples = generation.samples
    return GenerationRecord(
        samples=len(samples),
        call_seconds=store.call_seconds(call_keys(samples)),
        run_seconds=round(run_seconds, 3),
        prompt_tokens=int(samples["prompt_tokens"].sum()) if len(samples) else 0,
        completion_tokens=int(samples["completion_tokens"].sum()) if len(samples) else 0,
        calls_made=generation.stats.calls_made,
        cache_hits=generation.stats.cache_hits,
    )
