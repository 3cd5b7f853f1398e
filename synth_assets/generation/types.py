"""What passes between the engine and a backend: requests, results, failures, progress, and the
`Backend` protocol every source of completions implements.

Plain dataclasses with no torch, transformers or HTTP import, so the engine, the LLM judge, the
planner and the tests can use them without loading a model. A new backend is one class that
satisfies `Backend` plus one branch in `backends.build_backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from synth_assets.spec import GenerationParams


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string (the stop string itself removed)."""
    for marker in stop:
        text = text.split(marker, 1)[0]
    return text


@dataclass(frozen=True)
class ChatRequest:
    """One completion to make.

    `key`: the caller's id for it (unique within one `generate` call; results come back under it).
    `messages`: OpenAI-style chat turns, `[{"role": "system"|"user"|"assistant", "content": str}]`.
    `seed`: the request's own sampling seed (the same request and seed give the same text, whatever
    else is batched with it, on the local backend in float32). In continuation mode the single
    message's content is raw text the model continues (no chat template). A completion ends at the
    first of `stop`, which is cut off. `json_schema`: a JSON schema the answer must follow; servers that
    can constrain decoding to it get it (guided decoding), the engine parses and repairs either way.
    """

    key: str
    messages: list[dict[str, str]]
    seed: int
    continuation: bool = False
    stop: tuple[str, ...] = ()
    # a JSON schema the answer must follow; servers that can constrain decoding to it get it
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChatResult:
    """One finished completion: the `key` of its request, its `text` (stripped, cut at the first stop
    string), token counts as the model counted them (`prompt_tokens` fed, `completion_tokens`
    generated, a stop token included; 0 when a server reports no usage) and `finish_reason`: "stop"
    (a stop string or end of sequence) or "length" (max_new_tokens reached)."""

    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class CallFailure:
    """A request that produced no completion: its `key` and a one-line `error` (API keys redacted)."""

    key: str
    error: str


@dataclass(frozen=True)
class ProgressUpdate:
    """Progress of one `generate` call: `done` of `total` requests finished, `completion_tokens`
    generated so far, `elapsed_s` wall seconds since the call started."""

    done: int
    total: int
    completion_tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per wall second so far (0 before any time has passed)."""
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


# Results and failures of requests that finished since the last call, in the order they finished.
BatchCallback = Callable[[list[ChatResult], list[CallFailure]], None]
ProgressCallback = Callable[[ProgressUpdate], None]


class Backend(Protocol):
    """A source of completions: the local model, an OpenAI-compatible server, or a new one.

    `name`: short id shown in run metadata ("local", "openai"). `fingerprint`: what identifies the
    weights that answer (model, revision or weights hash, dtype where it changes the text); it is part
    of every `llm_cache` key, so a changed model never reuses cached answers.
    """

    name: str

    @property
    def fingerprint(self) -> str:
        """Identity of the answering model, stable across processes for the same weights."""
        ...

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Answer every request; sampling comes from `params` (max_new_tokens, temperature, top_p,
        repetition_penalty, batch_size) and each request's seed.

        Reports as it goes: `on_batch(results, failures)` for requests that finished since the last
        report (at most about `batch_size` at a time), so the caller can persist them before the next
        ones start; every request is reported exactly once, as a result or as a failure, unless the
        call raises. `on_progress` gets a `ProgressUpdate` after each report.

        Raises GenerationAborted (backends.py) when most recent calls fail (requests reported before
        it stay reported); ValueError on a setting this backend cannot honour; a stop (KeyboardInterrupt,
        CancelledError) propagates after what already finished has been reported.
        """
        ...
