"""Curation rules: which generated samples are kept, and every reason the others were rejected.

Each rule returns, per sample, either nothing (passed) or a reason code with a detail. A sample is
rejected when any rule fires, and it keeps all the reasons, so nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

import pandas as pd

from synth_assets.spec import CurationSpec
from synth_assets.storage import stage_columns

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
ECHOES_PROMPT = "echoes_prompt"
EXACT_DUPLICATE = "exact_duplicate"
REASON_CODES = (EMPTY, TOO_SHORT, TOO_LONG, ECHOES_PROMPT, EXACT_DUPLICATE)

_NON_WORD = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case, accents' compatibility forms, punctuation and spacing folded away."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", _NON_WORD.sub(" ", folded)).strip()


def normalized_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:16]


def echo_ratio(sample: str, prompt: str, n: int = 5) -> float:
    """Share of the sample's word n-grams that also occur in the prompt (n shrinks for short text)."""
    sample_words = normalize_text(sample).split()
    prompt_words = normalize_text(prompt).split()
    size = min(n, max(1, len(sample_words) // 2))
    if len(sample_words) < size or not sample_words:
        return 0.0
    grams = [tuple(sample_words[i : i + size]) for i in range(len(sample_words) - size + 1)]
    prompt_grams = {tuple(prompt_words[i : i + size]) for i in range(len(prompt_words) - size + 1)}
    return sum(gram in prompt_grams for gram in grams) / len(grams)


@dataclass(frozen=True)
class CurationOutcome:
    curated: pd.DataFrame
    rejected: pd.DataFrame

    def reason_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(REASON_CODES, 0)
        for reasons in self.rejected["reasons"]:
            for reason in json.loads(reasons):
                counts[reason] = counts.get(reason, 0) + 1
        return counts


def curate(samples: pd.DataFrame, prompts: pd.DataFrame, rules: CurationSpec) -> CurationOutcome:
    """Split generated samples into curated and rejected rows (both in their table's column order)."""
    prompt_text = dict(zip(prompts["prompt_id"], prompts["prompt_text"], strict=True))
    seen_hashes: dict[str, str] = {}
    kept: list[dict[str, object]] = []
    rejected: list[dict[str, object]] = []
    for row in samples.itertuples(index=False):
        text = str(row.text or "")
        reasons: list[str] = []
        details: dict[str, object] = {}
        stripped = text.strip()
        if not stripped:
            reasons.append(EMPTY)
        elif len(stripped) < rules.min_chars:
            reasons.append(TOO_SHORT)
            details[TOO_SHORT] = f"{len(stripped)} chars < {rules.min_chars}"
        elif len(stripped) > rules.max_chars:
            reasons.append(TOO_LONG)
            details[TOO_LONG] = f"{len(stripped)} chars > {rules.max_chars}"
        if stripped:
            ratio = echo_ratio(stripped, prompt_text.get(row.prompt_id, ""))
            if ratio >= rules.echo_threshold:
                reasons.append(ECHOES_PROMPT)
                details[ECHOES_PROMPT] = f"{ratio:.2f} of n-grams copied from the prompt"
        digest = normalized_hash(stripped)
        if stripped and digest in seen_hashes:
            reasons.append(EXACT_DUPLICATE)
            details[EXACT_DUPLICATE] = f"same normalized text as {seen_hashes[digest]}"
        elif stripped:
            seen_hashes[digest] = row.sample_id
        base = {"sample_id": row.sample_id, "prompt_id": row.prompt_id, "label": row.label, "text": text}
        if reasons:
            rejected.append(
                {**base, "reasons": json.dumps(reasons), "details": json.dumps(details, sort_keys=True)}
            )
        else:
            kept.append({**base, "normalized_hash": digest})
    return CurationOutcome(
        curated=pd.DataFrame.from_records(kept, columns=stage_columns("curated_set")),
        rejected=pd.DataFrame.from_records(rejected, columns=stage_columns("rejected_samples")),
    )
