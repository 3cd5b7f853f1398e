"""What a generated_samples version cost, as the record storage keeps with it (issue 13, item 5):
the evaluation reads it from `generation_runs` instead of guessing columns or reading Dagster
metadata of another asset."""

from __future__ import annotations

import json

import pandas as pd

from synth_assets.generation.engine import GenerationOutcome
from synth_assets.storage import GenerationRecord


def calls_seconds(samples: pd.DataFrame) -> float | None:
    """Total `seconds` of the LLM calls recorded per sample in the `steps` JSON text the engine
    writes ({"calls": [{"seconds": ...}, ...]}), in seconds; None when no call carries a time."""
    if "steps" not in samples.columns:
        return None
    total, found = 0.0, False
    for raw in samples["steps"]:
        # the engine's own encoding of a frame it just built (not a storage read): NULL for rows
        # from backends that record no steps
        calls = json.loads(raw).get("calls", []) if isinstance(raw, str) and raw else []
        for call in calls:
            value = call.get("seconds") if isinstance(call, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += float(value)
                found = True
    return total if found else None


def generation_record(generation: GenerationOutcome, run_seconds: float) -> GenerationRecord:
    """The cost record of the version `generation.samples` becomes; `run_seconds`: the wall time of
    the materialization, seconds."""
    samples = generation.samples
    return GenerationRecord(
        samples=len(samples),
        call_seconds=calls_seconds(samples),
        run_seconds=round(run_seconds, 3),
        prompt_tokens=int(samples["prompt_tokens"].sum()) if len(samples) else 0,
        completion_tokens=int(samples["completion_tokens"].sum()) if len(samples) else 0,
        calls_made=generation.stats.calls_made,
        cache_hits=generation.stats.cache_hits,
    )
