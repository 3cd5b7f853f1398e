"""LLM-as-judge: reply parsing (fast) and scoring with the real local model (slow)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from synth_assets.curation.judge import judge_prompt, parse_score
from synth_assets.curation.pipeline import CurationContext, curate
from synth_assets.spec import CurationSpec


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("4", 4.0),
        (" 5.", 5.0),
        ("Score: 2/5", 2.0),
        ("I'd give it a 3", 3.0),
        ("10", math.nan),
        ("great", math.nan),
    ],
)
def test_parse_score(reply: str, score: float) -> None:
    parsed = parse_score(reply)
    assert (math.isnan(parsed) and math.isnan(score)) or parsed == score


def test_judge_prompt_carries_task_label_rubric_and_sample() -> None:
    prompt = judge_prompt("Write reviews.", "5: great. 1: bad.", "negative", "  It broke.  ")
    for part in ("Write reviews.", "Intended label: negative", "5: great. 1: bad.", "<<<\nIt broke.\n>>>"):
        assert part in prompt


def test_judge_needs_a_model_and_says_so() -> None:
    rules = CurationSpec(judge=True, semantic_duplicate_threshold=None, label_check="off", min_relevance=None)
    samples = pd.DataFrame(
        {"sample_id": ["s0"], "prompt_id": "p", "label": "positive", "text": ["Nice kettle, boils fast."]}
    )
    outcome = curate(samples, pd.DataFrame(), rules)
    assert any("judge skipped" in note for note in outcome.notes)
    assert outcome.curated["judge_score"].isna().all()


@pytest.mark.slow
def test_local_model_scores_every_sample_and_min_score_filters() -> None:
    from synth_assets.generation.local_llm import get_local_model

    texts = [
        "The kettle boils a litre in three minutes and the handle stays cool. Lovely design.",
        "asdf qwerty zxcv",
        "I'm ready to help. What's your next question?",
    ]
    samples = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(3)], "prompt_id": "p", "label": "positive", "text": texts}
    )
    rules = CurationSpec(
        min_chars=5,
        judge=True,
        judge_min_score=5,
        semantic_duplicate_threshold=None,
        label_check="off",
        min_relevance=None,
        reject_assistant_talk=False,
    )
    context = CurationContext(task="You write customer reviews.", judge_model=get_local_model())
    outcome = curate(samples, pd.DataFrame(), rules, context)
    scores = pd.concat([outcome.curated, outcome.rejected]).set_index("sample_id")["judge_score"]
    # a 135M model is a weak judge: only what it returns is checked, not its taste
    scored = scores.dropna()
    assert ((scored >= 1) & (scored <= 5)).all()
    assert (outcome.curated["judge_score"].dropna() >= 5).all()
    for reasons, score in zip(outcome.rejected["reasons"], outcome.rejected["judge_score"], strict=True):
        if "low_judge_score" in json.loads(reasons):
            assert score < 5
    # greedy decoding: the same samples get the same scores
    again = curate(samples, pd.DataFrame(), rules, context)
    again_scores = pd.concat([again.curated, again.rejected]).set_index("sample_id")["judge_score"]
    assert again_scores.sort_index().equals(scores.sort_index())
