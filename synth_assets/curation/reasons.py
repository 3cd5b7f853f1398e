"""Reason codes: why a generated sample was rejected (or flagged), and where findings are collected.

Every filter reports a boolean mask over the samples plus a detail for each flagged row; a row keeps
every reason it earned, listed in the order of `REASON_CODES` so equal rows read the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
TRUNCATED = "truncated"
REPEATED_NGRAMS = "repeated_ngrams"
REPEATED_LINES = "repeated_lines"
ECHOES_PROMPT = "echoes_prompt"
ASSISTANT_TALK = "assistant_talk"
REFUSAL = "refusal"
NON_TEXT = "non_text"
WRONG_LANGUAGE = "wrong_language"
PII = "pii"
LABEL_MISMATCH = "label_mismatch"
LOW_LABEL_FIDELITY = "low_label_fidelity"
OFF_SEED_LENGTH = "off_seed_length"
IRRELEVANT = "irrelevant"
LOW_JUDGE_SCORE = "low_judge_score"
PERPLEXITY_OUTLIER = "perplexity_outlier"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
SEMANTIC_DUPLICATE = "semantic_duplicate"
COPIES_SEED = "copies_seed"
SEEN_IN_PREVIOUS_VERSION = "seen_in_previous_version"
CELL_FULL = "cell_full"

REASONS: dict[str, str] = {
    EMPTY: "no text at all",
    TOO_SHORT: "shorter than curation.min_chars",
    TOO_LONG: "longer than curation.max_chars",
    TRUNCATED: "cut off mid-sentence (hit max_new_tokens) and no complete sentence to keep",
    REPEATED_NGRAMS: "loops: too many word n-grams repeat inside the text",
    REPEATED_LINES: "the same line appears several times",
    ECHOES_PROMPT: "copies the prompt: its instructions, template or demo rows",
    ASSISTANT_TALK: "chat-assistant wrapping ('Sure! Here is...', 'As an AI...') instead of the data",
    REFUSAL: "the model refused ('I'm sorry, but I can't...')",
    NON_TEXT: "mostly symbols, markup, URLs or control characters",
    WRONG_LANGUAGE: "not in the spec's curation.language",
    PII: "personal data found and curation.pii is 'drop'",
    LABEL_MISMATCH: "a classifier trained on the seed data confidently predicts another label",
    LOW_LABEL_FIDELITY: "fits its intended label (against the other labels) worse than real seed rows "
    "of that label do: curation.label_fidelity",
    OFF_SEED_LENGTH: "word count outside curation.seed_length_range of the seed rows' word counts",
    IRRELEVANT: "embedding similarity to its task and conditions below curation.min_relevance",
    LOW_JUDGE_SCORE: "LLM-judge score below curation.judge_min_score",
    PERPLEXITY_OUTLIER: "per-token perplexity under the local model far outside the seed rows' "
    "(garbage or degenerate text): curation.perplexity",
    EXACT_DUPLICATE: "same text as another sample after normalisation",
    NEAR_DUPLICATE: "MinHash-estimated Jaccard similarity to another sample above the threshold",
    SEMANTIC_DUPLICATE: "embedding cosine to another sample above the threshold",
    COPIES_SEED: "duplicates a real seed row (exact, near or semantic): not new data",
    SEEN_IN_PREVIOUS_VERSION: "duplicates a row curated in an earlier version of this spec",
    CELL_FULL: "its per_cell cell already has n accepted samples (exact-N over-generation)",
}
REASON_CODES = tuple(REASONS)

# Soft flags on kept rows (column `flags` of curated_set): something was noticed or repaired.
FLAG_LABEL_DOUBT = "label_doubt"
FLAG_RELABELED = "relabeled"
FLAG_PII_SCRUBBED = "pii_scrubbed"
FLAG_TRIMMED = "trimmed_truncated_ending"
FLAG_LEAD_IN = "stripped_lead_in"

Detail = str | Callable[[int], str]


class Findings:
    """Per-reason masks over n samples, with a readable detail for each flagged row."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._masks: dict[str, np.ndarray] = {}
        self._details: dict[str, dict[int, str]] = {}

    def add(self, reason: str, mask: np.ndarray, detail: Detail) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n,):
            raise ValueError(f"{reason}: mask of shape {mask.shape} for {self.n} rows")
        rows = np.flatnonzero(mask)
        texts = self._details.setdefault(reason, {})
        for row in rows.tolist():
            text = detail(row) if callable(detail) else detail
            # a reason found twice (e.g. echo of the demos and of a template line) keeps both details
            texts[row] = f"{texts[row]}; {text}" if row in texts and texts[row] != text else text
        self._masks[reason] = self._masks.get(reason, np.zeros(self.n, dtype=bool)) | mask

    def merge(self, part: Findings, offset: int) -> None:
        """Take over the findings of rows [offset, offset + part.n), found on a chunk of the rows."""
        for reason, mask in part._masks.items():
            full = self._masks.get(reason, np.zeros(self.n, dtype=bool))
            full[offset : offset + part.n] |= mask
            self._masks[reason] = full
            texts = self._details.setdefault(reason, {})
            for row, text in part._details.get(reason, {}).items():
                texts[row + offset] = text

    def mask(self, reason: str) -> np.ndarray:
        return self._masks.get(reason, np.zeros(self.n, dtype=bool))

    def any(self, exclude: frozenset[str] = frozenset()) -> np.ndarray:
        """Rows flagged by at least one reason outside `exclude`."""
        result = np.zeros(self.n, dtype=bool)
        for reason, mask in self._masks.items():
            if reason not in exclude:
                result |= mask
        return result

    def reasons_and_details(self) -> tuple[list[list[str]], list[dict[str, str]]]:
        reasons: list[list[str]] = [[] for _ in range(self.n)]
        details: list[dict[str, str]] = [{} for _ in range(self.n)]
        for reason in REASON_CODES:
            for row, text in self._details.get(reason, {}).items():
                reasons[row].append(reason)
                details[row][reason] = text
        return reasons, details

    def counts(self) -> dict[str, int]:
        return {reason: int(self.mask(reason).sum()) for reason in REASON_CODES}
