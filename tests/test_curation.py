"""Curation rules on real-looking samples: what must be rejected (with reasons) and what must be kept."""

from __future__ import annotations

import json

import pandas as pd

from synth_assets.curation.rules import curate, echo_ratio, normalize_text
from synth_assets.spec import CurationSpec

PROMPT = (
    "Write a short product review.\nReview (positive): These headphones sound amazing and the battery "
    "lasts all week.\nWrite one new positive review of headphones. Reply with the review text only."
)


def _frames(texts: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "prompt_id": "p0",
            "label": "positive",
            "text": texts,
        }
    )
    prompts = pd.DataFrame({"prompt_id": ["p0"], "prompt_text": [PROMPT]})
    return samples, prompts


def test_normalize_folds_case_punctuation_and_spaces() -> None:
    assert normalize_text("  Great  BLENDER!!  ") == normalize_text("great blender")


def test_echo_ratio() -> None:
    copied = "These headphones sound amazing and the battery lasts all week."
    assert echo_ratio(copied, PROMPT) == 1.0
    assert echo_ratio("The cushions are soft and I wear them on long flights without pain.", PROMPT) == 0.0


def test_curate_keeps_good_rows_and_gives_every_reason() -> None:
    samples, prompts = _frames(
        [
            "Crisp sound, comfy fit, and the case is tiny enough for my jacket pocket.",
            "crisp sound comfy fit and the case is tiny enough for my jacket pocket",  # duplicate
            "Great.",  # too short
            "These headphones sound amazing and the battery lasts all week.",  # echo of a demo
            "",  # empty
            "x" * 700,  # too long
            "I returned them: the left ear cup rattles whenever the bass kicks in.",
        ]
    )
    outcome = curate(samples, prompts, CurationSpec(min_chars=20, max_chars=600, echo_threshold=0.6))
    assert outcome.curated["sample_id"].tolist() == ["s0", "s6"]
    reasons = dict(
        zip(outcome.rejected["sample_id"], outcome.rejected["reasons"].map(json.loads), strict=True)
    )
    assert reasons == {
        "s1": ["exact_duplicate"],
        "s2": ["too_short"],
        "s3": ["echoes_prompt"],
        "s4": ["empty"],
        "s5": ["too_long"],
    }
    assert len(outcome.curated) + len(outcome.rejected) == len(samples)
    assert outcome.reason_counts()["exact_duplicate"] == 1
    assert "same normalized text as s0" in outcome.rejected.set_index("sample_id").loc["s1", "details"]


def test_a_row_failing_several_rules_keeps_all_reasons() -> None:
    samples, prompts = _frames(["Lasts all week.", "lasts all week"])
    outcome = curate(samples, prompts, CurationSpec(min_chars=20, max_chars=600, echo_threshold=0.6))
    second = json.loads(outcome.rejected.set_index("sample_id").loc["s1", "reasons"])
    assert second == ["too_short", "echoes_prompt", "exact_duplicate"]
