"""From expanded prompts to generated samples: one completion per prompt, with its lineage ids."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pandas as pd

from synth_assets.generation.local_llm import ChatRequest, ChatResult, LocalChatModel, ProgressUpdate
from synth_assets.generation.prompts import prompt_messages
from synth_assets.spec import GenerationSpec, content_hash
from synth_assets.storage import stage_columns

# Small chat models often wrap the answer in quotes or repeat the template's lead-in; those bytes are
# formatting, not content, so they are removed before curation judges the text.
_LEAD_IN = re.compile(
    r"^\s*(?:new\s+)?(?:review|description|conversation|answer)\s*(?:\([^)]*\))?\s*:\s*", re.I
)


def clean_completion(text: str) -> str:
    cleaned = _LEAD_IN.sub("", text.strip(), count=1).strip()
    if len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in "\"'":
        cleaned = cleaned[1:-1].strip()
    return cleaned


def sample_id_for(prompt_id: str, model_fingerprint: str, params: dict[str, object], seed: int) -> str:
    """Content id of a generation: same prompt, model, parameters and seed give the same id."""
    return "s-" + content_hash(
        {"prompt_id": prompt_id, "model": model_fingerprint, "params": params, "seed": seed}
    )


def generate_samples(
    spec: GenerationSpec,
    prompts: pd.DataFrame,
    model: LocalChatModel,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
) -> pd.DataFrame:
    """One generated sample per prompt, in `generated_samples` column order."""
    params = spec.generation
    requests = [
        ChatRequest(
            key=row.prompt_id,
            messages=prompt_messages(row.system_prompt, row.prompt_text),
            seed=int(row.generation_seed),
        )
        for row in prompts.itertuples(index=False)
    ]
    results: list[ChatResult] = model.generate(
        requests,
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        repetition_penalty=params.repetition_penalty,
        batch_size=params.batch_size,
        on_progress=on_progress,
    )
    by_key = {result.key: result for result in results}
    identity = params.identity()
    records = []
    for row in prompts.itertuples(index=False):
        result = by_key[row.prompt_id]
        records.append(
            {
                "sample_id": sample_id_for(
                    row.prompt_id, model.fingerprint, identity, int(row.generation_seed)
                ),
                "prompt_id": row.prompt_id,
                "label": row.label,
                "text": clean_completion(result.text),
                "model": params.model,
                "model_fingerprint": model.fingerprint,
                "backend": params.backend,
                "generation_params": json.dumps(identity, sort_keys=True),
                "generation_seed": int(row.generation_seed),
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason,
            }
        )
    return pd.DataFrame.from_records(records, columns=stage_columns("generated_samples"))
