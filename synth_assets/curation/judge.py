"""LLM-as-judge: the configured chat model scores each sample 1-5 on the spec's rubric.

Off by default (`curation.judge: false`): a 135M-parameter model is a weak judge and scoring costs
one more model call per sample. Decoding is greedy (temperature 0) so a score is reproducible; the
first digit 1-5 in the reply is the score, and a reply without one stores no score (NaN) instead of
guessing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from synth_assets.generation.local_llm import ChatRequest, ChatResult

DEFAULT_RUBRIC = (
    "5: realistic, fluent, on-task, clearly expresses the intended label. "
    "3: usable but generic, clumsy or only partly on-task. "
    "1: off-topic, wrong label, talks to the user instead of being the data, or broken text."
)
_SCORE = re.compile(r"(?<!\d)([1-5])(?!\d)")
_SYSTEM = "You are a strict data-quality judge. You reply with a single digit from 1 to 5."


class ChatModel(Protocol):
    def generate(
        self,
        requests: Sequence[ChatRequest],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        batch_size: int,
    ) -> list[ChatResult]: ...


def judge_prompt(task: str, rubric: str, label: str, text: str) -> str:
    return (
        f"Task given to the writer: {task.strip()}\n"
        f"Intended label: {label}\n"
        f"Rubric: {rubric.strip()}\n\n"
        f"Sample:\n<<<\n{text.strip()}\n>>>\n\n"
        "Score the sample from 1 to 5 using the rubric. Reply with the digit only."
    )


def parse_score(reply: str) -> float:
    found = _SCORE.search(reply)
    return float(found.group(1)) if found else float("nan")


def judge_samples(
    model: ChatModel,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    task: str,
    rubric: str,
    batch_size: int = 16,
) -> tuple[np.ndarray, list[str]]:
    """(score per sample, NaN when unparseable; the raw replies)."""
    requests = [
        ChatRequest(
            key=str(index),
            messages=[
                {"role": "system", "content": _SYSTEM},
                {"role": "user", "content": judge_prompt(task, rubric, label, text)},
            ],
            seed=index,
        )
        for index, (text, label) in enumerate(zip(texts, labels, strict=True))
    ]
    if not requests:
        return np.zeros(0), []
    results = model.generate(
        requests, max_new_tokens=4, temperature=0.0, top_p=1.0, repetition_penalty=1.0, batch_size=batch_size
    )
    replies = {result.key: result.text for result in results}
    ordered = [replies.get(str(index), "") for index in range(len(requests))]
    return np.asarray([parse_score(reply) for reply in ordered]), ordered
