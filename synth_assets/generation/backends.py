"""Where completions come from: the local model, or any OpenAI-compatible chat-completions server.

Both backends take the same requests and report results per batch as they finish, so the engine
can persist every finished call before the next one starts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from synth_assets.generation.local_llm import (
    ChatRequest,
    ChatResult,
    ProgressUpdate,
    cut_at_stop,
    get_local_model,
)
from synth_assets.spec import GenerationParams

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class CallFailure:
    key: str
    error: str


BatchCallback = Callable[[list[ChatResult], list[CallFailure]], None]
ProgressCallback = Callable[[ProgressUpdate], None]


class Backend(Protocol):
    name: str

    @property
    def fingerprint(self) -> str: ...

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None: ...


class LocalBackend:
    """SmolLM2-135M-Instruct in this process (transformers + torch)."""

    name = "local"

    def __init__(self, cache_dir: Any = None, dtype: str = "float32") -> None:
        self.model = get_local_model(cache_dir, dtype)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.model.generate(
            requests,
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            batch_size=params.batch_size,
            on_progress=on_progress,
            on_batch=lambda results: on_batch(results, []),
        )


class _AdaptiveLimit:
    """AIMD concurrency: +1 slot after a window of successes, halve on overload (429, timeouts)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = max(1, maximum // 2)
        self.in_flight = 0
        self._successes = 0
        self._condition = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._condition:
            await self._condition.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def release(self, overloaded: bool) -> None:
        async with self._condition:
            self.in_flight -= 1
            if overloaded:
                self.limit = max(1, self.limit // 2)
                self._successes = 0
            else:
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._successes = 0
            self._condition.notify_all()


class OpenAICompatibleBackend:
    """Chat completions over HTTP: vLLM, llama.cpp server, Ollama, or a hosted API.

    Bounded adaptive concurrency, per-request timeouts, retries with exponential backoff and jitter
    on 429/5xx/connection errors (Retry-After honoured). A prompt that still fails is reported as a
    failure with its reason; the others go on. The API key is sent as a bearer token and nowhere else.
    """

    name = "openai"

    def __init__(self, params: GenerationParams, api_key: str | None = None) -> None:
        if not params.base_url:
            raise ValueError("the openai backend needs base_url")
        self.params = params
        self.base_url = params.base_url.rstrip("/")
        self._api_key = api_key

    @property
    def fingerprint(self) -> str:
        # the server's model name is what a user can control; the URL may change for the same model
        return f"openai:{self.params.model}"

    def _body(self, request: ChatRequest, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": params.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.continuation:
            # raw text continued by the server's model: the legacy completions endpoint, which vLLM,
            # llama.cpp's server and Ollama all serve
            return {**body, "prompt": request.messages[0]["content"]}
        return {**body, "messages": request.messages}

    async def _call(
        self, client: Any, limit: _AdaptiveLimit, request: ChatRequest, params: GenerationParams
    ) -> ChatResult | CallFailure:
        import httpx

        last_error = "no attempt made"
        for attempt in range(params.max_retries + 1):
            await limit.acquire()
            overloaded = False
            retry_after: float | None = None
            try:
                endpoint = "/completions" if request.continuation else "/chat/completions"
                response = await client.post(endpoint, json=self._body(request, params))
                if response.status_code == 200:
                    payload = response.json()
                    choice = payload["choices"][0]
                    usage = payload.get("usage") or {}
                    text = choice["text"] if request.continuation else choice["message"].get("content")
                    # servers that ignore `stop` still get cut here
                    text = cut_at_stop(str(text or ""), request.stop)
                    return ChatResult(
                        key=request.key,
                        text=text.strip(),
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                    )
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    return CallFailure(request.key, last_error)
                overloaded = response.status_code == 429
                header = response.headers.get("retry-after")
                retry_after = float(header) if header and header.replace(".", "", 1).isdigit() else None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                overloaded = isinstance(exc, httpx.TimeoutException)
                last_error = f"{type(exc).__name__}: {exc}"
            except (KeyError, IndexError, ValueError) as exc:
                return CallFailure(request.key, f"malformed response: {exc}")
            finally:
                await limit.release(overloaded)
            if attempt < params.max_retries:
                backoff = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
                await asyncio.sleep(retry_after if retry_after is not None else backoff)
        return CallFailure(request.key, f"gave up after {params.max_retries + 1} attempts: {last_error}")

    async def _run(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limit = _AdaptiveLimit(params.max_concurrency)
        started = time.perf_counter()
        done = tokens = 0
        pending_results: list[ChatResult] = []
        pending_failures: list[CallFailure] = []
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(params.timeout_s)
        ) as client:
            tasks = [asyncio.create_task(self._call(client, limit, r, params)) for r in requests]
            for finished in asyncio.as_completed(tasks):
                outcome = await finished
                done += 1
                if isinstance(outcome, ChatResult):
                    pending_results.append(outcome)
                    tokens += outcome.completion_tokens
                else:
                    pending_failures.append(outcome)
                if len(pending_results) + len(pending_failures) >= params.batch_size or done == len(tasks):
                    on_batch(pending_results, pending_failures)
                    pending_results, pending_failures = [], []
                    if on_progress is not None:
                        on_progress(ProgressUpdate(done, len(tasks), tokens, time.perf_counter() - started))

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if requests:
            asyncio.run(self._run(requests, params, on_batch, on_progress))


def build_backend(params: GenerationParams, model_cache_dir: Any = None) -> Backend:
    """The backend a spec asks for; the API key is read through Dagster's EnvVar, never stored."""
    if params.backend == "local":
        return LocalBackend(model_cache_dir, params.dtype)
    api_key = None
    if params.api_key_env:
        import dagster as dg

        api_key = dg.EnvVar(params.api_key_env).get_value()
        if api_key is None:
            raise ValueError(f"environment variable {params.api_key_env} (generation.api_key_env) is not set")
    return OpenAICompatibleBackend(params, api_key)
