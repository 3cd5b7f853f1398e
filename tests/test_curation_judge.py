"""LLM-as-judge: reply parsing (fast) and scoring with the real local model (slow)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import LoopbackHandler, LoopbackServer, completion_payload, write_openai_spec

from synth_assets.curation.judge import judge_for_spec, judge_prompt, parse_score
from synth_assets.curation.pipeline import CurationContext, curate
from synth_assets.spec import CurationSpec, load_spec
from synth_assets.storage import Warehouse


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


def _judge_rules() -> CurationSpec:
    return CurationSpec(
        min_chars=5,
        judge=True,
        semantic_duplicate_threshold=None,
        label_check="off",
        min_relevance=None,
        reject_assistant_talk=False,
    )


def test_the_judge_uses_the_specs_backend_and_the_llm_cache(
    loopback: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    def judge(handler: LoopbackHandler, body: dict, number: int) -> None:
        prompt = body["messages"][-1]["content"]
        handler.send(200, completion_payload("4" if "It boils fast" in prompt else "2"))

    server = loopback(judge)
    spec = load_spec(write_openai_spec(tmp_path, server.url))
    store = Warehouse(tmp_path / "w.duckdb")
    samples = pd.DataFrame(
        {
            "sample_id": ["s0", "s1"],
            "prompt_id": "p",
            "label": "positive",
            "text": ["It boils fast.", "Meh kettle."],
        }
    )
    context = CurationContext(task=spec.task, judge_model=judge_for_spec(spec, store, "run-1"))
    outcome = curate(samples, pd.DataFrame(), _judge_rules(), context)
    scores = outcome.curated.set_index("sample_id")["judge_score"].to_dict()
    assert scores == {"s0": 4.0, "s1": 2.0} and server.handler.count == 2
    cached = store.query("SELECT run_id, messages, text FROM llm_cache")
    assert len(cached) == 2 and set(cached["run_id"]) == {"run-1"}
    assert all("Score the sample" in messages for messages in cached["messages"])
    # curating the same samples again (another run) asks the server nothing
    again = curate(
        samples,
        pd.DataFrame(),
        _judge_rules(),
        CurationContext(task=spec.task, judge_model=judge_for_spec(spec, store, "run-2")),
    )
    assert again.curated["judge_score"].tolist() == outcome.curated["judge_score"].tolist()
    assert server.handler.count == 2


def test_a_judge_model_block_sends_the_judging_elsewhere(
    loopback: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    generator = loopback(lambda handler, body, number: handler.send(200, completion_payload("1")))
    judge = loopback(lambda handler, body, number: handler.send(500, {"error": "judge down"}))
    block = "  judge: true\n  judge_model:\n    backend: openai\n    model: judge\n"
    block += f"    base_url: {judge.url}\n    max_retries: 0\n"
    spec = load_spec(
        write_openai_spec(
            tmp_path, generator.url, replacements={"  min_chars: 10\n": f"  min_chars: 10\n{block}"}
        )
    )
    assert spec.curation.judge_model is not None and spec.curation.judge_model.model == "judge"
    store = Warehouse(tmp_path / "w.duckdb")
    samples = pd.DataFrame(
        {"sample_id": ["s0"], "prompt_id": "p", "label": "positive", "text": ["It boils fast."]}
    )
    context = CurationContext(task=spec.task, judge_model=judge_for_spec(spec, store, "run-1"))
    outcome = curate(samples, pd.DataFrame(), _judge_rules(), context)
    # the judge's server failed: the sample stays unscored, the failure is recorded, the generator idle
    assert outcome.curated["judge_score"].isna().all() and generator.handler.count == 0
    failures = store.query("SELECT step, error FROM generation_failures")
    assert failures["step"].tolist() == ["judge"] and "HTTP 500" in failures["error"][0]
