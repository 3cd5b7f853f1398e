"""LLM-as-judge: the configured chat model scores each sample 1-5 on the spec's rubric.

The judge is the spec's own model (`generation`, or `curation.judge_model` when set), called through
the same backend and `llm_cache` as generation (`CachedJudge`): re-curating unchanged samples makes no
new call, and a judge behind an OpenAI-compatible server gets its retries, deadlines and redaction.

Off by default (`curation.judge: false`): a 135M-parameter model is a weak judge and scoring costs
one more model call per sample. Decoding is greedy (temperature 0) so a score is reproducible; the
first digit 1-5 in the reply is the score, and a reply without one stores no score (NaN) instead of
guessing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from synth_assets.generation.local_llm import ChatRequest, ChatResult

if TYPE_CHECKING:
    from synth_assets.generation.backends import Backend
    from synth_assets.spec import GenerationSpec
    from synth_assets.storage import Warehouse

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


class CachedJudge:
    """A `ChatModel` that answers through a generation backend and the `llm_cache` table.

    Each request is keyed like a generation call (model fingerprint, messages, parameters, seed), so a
    judge reply is made once and read back on every later curation of the same sample. Failed calls
    are recorded in `generation_failures` under step `judge` and leave that sample unscored."""

    def __init__(self, backend: Backend, spec: GenerationSpec, store: Warehouse, run_id: str) -> None:
        self.backend, self.spec, self.store, self.run_id = backend, spec, store, run_id

    def generate(
        self,
        requests: Sequence[ChatRequest],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        batch_size: int,
    ) -> list[ChatResult]:
        from synth_assets.generation.engine import CachedCaller, GenerationStats, call_key

        params = self.spec.generation.model_copy(
            update={
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "repetition_penalty": repetition_penalty,
                "batch_size": batch_size,
                # judge prompts are chat turns, whatever mode generation used
                "mode": "chat",
                "stop": None,
            }
        )
        spec = self.spec.model_copy(update={"generation": params})
        caller = CachedCaller(
            self.backend, self.store, spec, self.run_id, GenerationStats(), lambda _: None, None
        )
        keyed = [
            replace(r, key=call_key(self.backend.fingerprint, r.messages, caller.identity, r.seed))
            for r in requests
        ]
        answered, _ = caller.run("judge", keyed, {k.key: "" for k in keyed})
        results = []
        for request, key in zip(requests, keyed, strict=True):
            row = answered.get(key.key)
            if row is not None:
                results.append(
                    ChatResult(
                        key=request.key,
                        text=str(row["text"]),
                        prompt_tokens=int(row["prompt_tokens"]),
                        completion_tokens=int(row["completion_tokens"]),
                        finish_reason=str(row["finish_reason"]),
                    )
                )
        return results


def judge_for_spec(
    spec: GenerationSpec, store: Warehouse, run_id: str, model_cache_dir: Path | None = None
) -> CachedJudge:
    """The judge of a spec: `curation.judge_model` if set, else the generation block, through the cache."""
    from synth_assets.generation.backends import build_backend

    params = spec.curation.judge_model or spec.generation
    judged_by_path = params.runs_in_process and params.names_a_model_path()
    model_path = spec.resolve(Path(params.model).expanduser()) if judged_by_path else None
    backend = build_backend(params, model_cache_dir, model_path)
    return CachedJudge(backend, spec.model_copy(update={"generation": params}), store, run_id)
