"""Relevance: how close a sample is, in embedding space, to the task and the conditions it was asked for.

The reference text of a prompt is the spec's `curation.relevance_text` (a Jinja template with the
same variables as the prompt template, minus the demos) or, by default, the task followed by the
label and the attribute values. The score is the cosine between the sample and that text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from synth_assets import templates

Embed = Callable[[Sequence[str]], np.ndarray]


def default_condition(task: str, label: str, attributes: dict[str, str]) -> str:
    values = ", ".join(str(value) for value in attributes.values())
    return f"{task.strip()} {label}" + (f": {values}" if values else "")


def condition_texts(
    prompts: pd.DataFrame, task: str, labels: Sequence[str], relevance_text: str | None
) -> dict[str, str]:
    """prompt_id -> the text its samples are compared with. Raises `templates.TemplateProblem` when
    `relevance_text` cannot be rendered (the spec's load-time check renders it first)."""
    texts: dict[str, str] = {}
    for row in prompts.itertuples(index=False):
        raw = getattr(row, "attributes", None)
        attributes = json.loads(raw) if isinstance(raw, str) and raw else {}
        label = str(row.label)
        if not relevance_text:
            texts[row.prompt_id] = default_condition(task, label, attributes)
        else:
            context = templates.relevance_context(
                task=task, label=label, labels=list(labels), attributes=attributes
            )
            texts[row.prompt_id] = templates.render(relevance_text, context).strip()
    return texts


def relevance_scores(
    sample_embeddings: np.ndarray, prompt_ids: Sequence[str], conditions: dict[str, str], embed: Embed
) -> np.ndarray:
    """Cosine between each sample and its prompt's condition text (NaN when the prompt is unknown)."""
    unique = sorted({conditions[p] for p in prompt_ids if p in conditions})
    if not unique:
        return np.full(len(prompt_ids), np.nan)
    index = {text: i for i, text in enumerate(unique)}
    reference = embed(unique)
    scores = np.full(len(prompt_ids), np.nan)
    for row, prompt_id in enumerate(prompt_ids):
        if prompt_id in conditions:
            scores[row] = float(sample_embeddings[row] @ reference[index[conditions[prompt_id]]])
    return scores
