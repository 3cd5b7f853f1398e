"""The cheap filters, on the text alone: personal data, repairs, heuristics (phases 1-3)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from synth_assets.curation import reasons as R
from synth_assets.curation.filters.base import CurationFilter, CurationRows, Phase
from synth_assets.curation.heuristics import (
    find_truncated,
    run_heuristics,
    strip_lead_ins,
    trim_to_last_sentence,
)
from synth_assets.curation.pii import scan, scrub
from synth_assets.curation.text import normalize_many

if TYPE_CHECKING:
    from synth_assets.spec import CurationSpec


class PersonalData(CurationFilter):
    """curation.pii: personal data is scrubbed in every mode but 'off', so rejected rows do not spread
    it either; 'drop' rejects the rows that held any. Score: pii_hits (count per row)."""

    name = "pii"
    phase = Phase.PRIVACY
    reasons = (R.PII,)
    flags = (R.FLAG_PII_SCRUBBED,)
    scores = ("pii_hits",)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.pii != "off"

    def run(self, rows: CurationRows) -> None:
        found = scan(rows.texts, rows.rules.pii_types)
        rows.scores["pii_hits"] = found.counts
        rows.pii_by_type = found.by_type()
        hit = np.flatnonzero(found.counts).tolist()
        for row in hit:
            rows.texts[row] = scrub(rows.texts[row], found.hits[row])
        rows.flag(hit, R.FLAG_PII_SCRUBBED)
        if rows.rules.pii == "drop":
            rows.findings.add(
                R.PII, found.counts > 0, lambda i: json.dumps(found.types_of(i), sort_keys=True)
            )


class Repairs(CurationFilter):
    """A chat lead-in ("Here is a positive review:") is cut off (curation.strip_lead_in); a truncated
    ending is trimmed to the last complete sentence (curation.truncated: trim), or the row is marked
    for the heuristics to reject (drop, or trim with nothing long enough left)."""

    name = "repairs"
    phase = Phase.REPAIR
    flags = (R.FLAG_LEAD_IN, R.FLAG_TRIMMED)

    def run(self, rows: CurationRows) -> None:
        rules, texts = rows.rules, rows.texts
        rows.shown_text = list(texts)  # what rejected_samples stores: scrubbed, not trimmed
        if rules.strip_lead_in:
            rows.flag(strip_lead_ins(texts, rules.min_chars), R.FLAG_LEAD_IN)
        samples = rows.samples
        finish = samples["finish_reason"].tolist() if "finish_reason" in samples.columns else None
        truncated, _ = find_truncated(pa.array(texts, type=pa.large_string()), finish)
        unrepaired = np.zeros(rows.n, dtype=bool)
        if rules.truncated == "trim":
            for row in np.flatnonzero(truncated).tolist():
                trimmed = trim_to_last_sentence(texts[row], rules.min_chars)
                if trimmed is None:
                    unrepaired[row] = True
                else:
                    texts[row] = trimmed
                    rows.flag([row], R.FLAG_TRIMMED)
        elif rules.truncated == "drop":
            unrepaired = truncated
        rows.unrepaired = unrepaired


class Heuristics(CurationFilter):
    """Lengths, loops, echoes of the prompt, assistant talk, refusals, non-text, language
    (`curation.heuristics`), on the repaired text; sets `rows.normalized`."""

    name = "heuristics"
    phase = Phase.HEURISTICS
    reasons = (
        R.EMPTY,
        R.TOO_SHORT,
        R.TOO_LONG,
        R.TRUNCATED,
        R.REPEATED_NGRAMS,
        R.REPEATED_LINES,
        R.ECHOES_PROMPT,
        R.ASSISTANT_TALK,
        R.REFUSAL,
        R.NON_TEXT,
        R.WRONG_LANGUAGE,
    )

    def run(self, rows: CurationRows) -> None:
        rows.normalized = normalize_many(rows.texts)
        prompt_texts, prompt_of_row = prompt_lookup(rows.samples, rows.prompts)
        run_heuristics(
            rows.texts,
            rows.normalized,
            rows.findings,
            rows.rules,
            prompt_texts=prompt_texts,
            prompt_of_row=prompt_of_row,
            truncated=rows.unrepaired,
            template=rows.context.template,
            labels=rows.context.labels,
        )


def prompt_lookup(samples: pd.DataFrame, prompts: pd.DataFrame | None) -> tuple[list[str], np.ndarray]:
    """(full prompt texts, index of each sample's prompt in them or -1)."""
    if prompts is None or prompts.empty or "prompt_text" not in prompts.columns:
        return [], np.full(len(samples), -1, dtype=np.int64)
    system = (
        prompts["system_prompt"] if "system_prompt" in prompts.columns else pd.Series([""] * len(prompts))
    )
    # the system prompt is part of what the model saw, so copying it is echoing too
    texts = [
        f"{s}\n{p}" if isinstance(s, str) and s else str(p)
        for s, p in zip(system.tolist(), prompts["prompt_text"].tolist(), strict=True)
    ]
    position = {pid: i for i, pid in enumerate(prompts["prompt_id"].tolist())}
    index = np.asarray([position.get(pid, -1) for pid in samples["prompt_id"].tolist()], dtype=np.int64)
    return texts, index
