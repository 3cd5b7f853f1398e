"""The public face of curation (kept for existing imports): `curate`, its outcome, the reason codes,
and the text helpers other stages share (the report's distinct-n uses `normalize_text`).

The filters live in their own modules: heuristics, dedup, label_check, relevance, pii, judge; the
order they run in is in pipeline.
"""

from __future__ import annotations

from synth_assets.curation.pipeline import CurationContext, CurationOutcome, curate
from synth_assets.curation.reasons import REASON_CODES, REASONS
from synth_assets.curation.text import normalize_text, normalized_hash

__all__ = [
    "REASONS",
    "REASON_CODES",
    "CurationContext",
    "CurationOutcome",
    "curate",
    "echo_ratio",
    "normalize_text",
    "normalized_hash",
]


def echo_ratio(sample: str, prompt: str, n: int = 5) -> float:
    """Share of the sample's word n-grams that also occur in the prompt (n shrinks for short text).

    The row-at-a-time definition; `heuristics.echo_share` computes the same for a whole column.
    """
    sample_words = normalize_text(sample).split()
    prompt_words = normalize_text(prompt).split()
    size = min(n, max(1, len(sample_words) // 2))
    if len(sample_words) < size or not sample_words:
        return 0.0
    grams = [tuple(sample_words[i : i + size]) for i in range(len(sample_words) - size + 1)]
    prompt_grams = {tuple(prompt_words[i : i + size]) for i in range(len(prompt_words) - size + 1)}
    return sum(gram in prompt_grams for gram in grams) / len(grams)
