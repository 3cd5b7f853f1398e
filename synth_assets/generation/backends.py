"""Where completions come from: the local model, or any OpenAI-compatible chat-completions server.

Both backends take the same requests and report results per batch as they finish, so the engine
can persist every finished call before the next one starts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import re
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth_assets.generation.local_llm import get_local_model
from synth_assets.generation.types import (
    Backend,
    BatchCallback,
    CallFailure,
    ChatRequest,
    ChatResult,
    ProgressCallback,
    ProgressUpdate,
    cut_at_stop,
)
from synth_assets.spec import GenerationParams, content_hash

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LocalBackend:
    """SmolLM2-135M-Instruct in this process (transformers + torch)."""

    name = "local"

    def __init__(self, cache_dir: Any = None, dtype: str = "float32", source: Path | None = None) -> None:
        self.model = get_local_model(cache_dir, dtype, source)

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


# A chat-template control marker written as text: ChatML and its relatives (`<|im_end|>`, Llama 3's
# `<|eot_id|>`, Phi's `<|end|>`), Llama 2 / Mistral (`[INST]`, `<<SYS>>`, `</s>`), Gemma (`<start_of_turn>`).
_CONTROL_TOKEN = re.compile(
    r"<\|[A-Za-z0-9_]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>", re.IGNORECASE
)
# openai-python's rule (`_calculate_retry_timeout`): a server's Retry-After is obeyed up to 60 s; beyond
# that, or when absent or unreadable, our own exponential backoff applies.
MAX_RETRY_AFTER_S = 60.0
# Data Designer's rule: stop when at least half of the recent calls failed, once 10 have finished.
ABORT_MIN_CALLS = 10
ABORT_WINDOW = 20
ABORT_ERROR_SHARE = 0.5
# ...and, before that many prompts have given up (each may retry for minutes), when this many attempts in
# a row failed over at least this long: the server is down or unreachable, not merely flaky.
ABORT_CONSECUTIVE_ATTEMPTS = 20
ABORT_CONSECUTIVE_SECONDS = 30.0
# Seconds per reply this many times the usual (same size, no more in flight) mean a queue (_AdaptiveLimit).
LATENCY_TOLERANCE = 2.0
# A server reporting more slots than this is driven at this many (the spec's own max_concurrency bound).
MAX_SERVER_SLOTS = 256
# Two replies are of a similar size when their token counts (plus one) differ by at most this factor.
SIZE_TOLERANCE = 1.25
# Finished calls are stored every `batch_size` calls or after this many seconds, whichever comes first:
# with 64 calls a batch, a hard kill (no handler runs) against a slow or paid API could otherwise lose
# minutes of answers; a store is one short DuckDB write, so at most one every few seconds costs little.
PERSIST_EVERY_S = 10.0


class GenerationAborted(RuntimeError):
    """Most recent calls to the server failed: the run stops instead of failing every prompt slowly."""


def control_tokens_in(text: str) -> list[str]:
    """The chat-template control markers written in `text` (e.g. `<|im_end|>`, `[INST]`), in order."""
    return _CONTROL_TOKEN.findall(text)


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """How long a server asks us to wait: `retry-after-ms`, else `Retry-After` as seconds or an HTTP
    date (RFC 9110 §10.2.3), as openai-python reads them. None when absent, unreadable, negative or
    above MAX_RETRY_AFTER_S (a server answering 3600 would park a prompt for an hour per attempt)."""
    seconds: float | None = None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            seconds = float(milliseconds) / 1000
        except ValueError:
            seconds = None
    value = headers.get("retry-after")
    if seconds is None and value is not None:
        try:
            seconds = float(value)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                seconds = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if seconds is None or math.isnan(seconds) or not 0 <= seconds <= MAX_RETRY_AFTER_S:
        return None
    return seconds


@dataclass(frozen=True)
class _Ticket:
    """One request's slot: the limit's epoch when it was taken, when (perf_counter seconds), and how
    many requests were in flight once it was sent, itself included (the load it met on arrival)."""

    epoch: int
    started: float
    in_flight: int


class _AdaptiveLimit:
    """Concurrency that follows the server's throughput, not its latency alone.

    Decrease: halve on a 429, a 5xx, a timeout, or a queue. A queue is read the way TCP Vegas reads it
    (Brakmo & Peterson 1995, "TCP Vegas: end to end congestion avoidance on a global internet": the
    throughput expected from the base round trip against the throughput got), with the base taken at
    no more requests in flight instead of the bare minimum: by Little's law a reply that took
    `seconds` with `in_flight` requests out was served at `in_flight / seconds` replies per second,
    so its seconds per reply (`seconds / in_flight`) is compared with the 10th percentile of earlier
    replies of a similar size sent with at most as many in flight (see `slow`). A batching server
    (llama-server's slots, vLLM) takes longer per reply with more in flight without any queue (on 2
    cores prefill grows with the batch): seconds per reply then stay level or fall and nothing is cut,
    where a latency-only rule (Netflix concurrency-limits' Gradient2Limit, our previous rule: latency
    against the usual latency, tolerance 2) read it as overload and cut llama-server -np 8 to 2. Only
    when more in flight buys less throughput (seconds per reply LATENCY_TOLERANCE times the usual, the
    median of the last 5 such ratios) is it a queue: the server is saturated, or busy with others.
    Replies that finish while no request waits for a slot (the run's tail) are not judged, as
    concurrency-limits' VegasLimit skips samples while application-limited (in flight < limit / 2).
    Halving happens at most once per round trip: replies to requests sent before the last cut neither
    cut again nor count towards the next verdict.

    Increase: +1 after `limit` good replies in a row (additive, as Vegas and AIMD), up to `maximum`.
    `start` (default maximum // 2) is where it begins: the server's own slot count when it reports one
    (`OpenAICompatibleBackend._new_limit`), so llama-server is driven at its parallelism at once.

    `slots`: the server's reported slot count (0: unknown). Replies sent with at most that many in
    flight are never read as a queue: the server decodes them all at once, none of ours waits, and a
    slower reply there is its compute shared (prefill of new arrivals, other jobs on the box); fewer
    in flight would only shrink its batch. Measured on a fresh llama-server -np 8 (2-core AMD EPYC,
    128 realistic prompts, prefill ~80 % of the time): the Vegas test cut 8 -> 4 in 2 of 4 rounds, and
    those rows took 113.7 and 143.8 s against the direct client's 104.7 and 108.1 s in the same rounds
    (the rounds without a cut: 113.7 and 112.7 s against 111.9 and 138.1 s). 429, 5xx and timeouts
    still halve.
    """

    def __init__(self, maximum: int, start: int | None = None, slots: int = 0) -> None:
        self.maximum = maximum
        self.slots = slots
        self.limit = max(1, min(maximum, start if start is not None else maximum // 2))
        self.in_flight = 0
        self.history = [self.limit]
        self._successes = 0
        self._epoch = 0
        self._waiting = 0
        # (prompt tokens, completion tokens, requests in flight, seconds per reply) of the last 100
        self._replies: deque[tuple[int, int, int, float]] = deque(maxlen=100)
        # each recent reply's seconds per reply over the usual for its size at no more in flight
        self._ratios: deque[float] = deque(maxlen=5)
        self._condition = asyncio.Condition()

    async def acquire(self) -> _Ticket:
        """Wait for a free slot; the ticket goes back to `slow` and `release`."""
        async with self._condition:
            self._waiting += 1
            try:
                await self._condition.wait_for(lambda: self.in_flight < self.limit)
            finally:
                self._waiting -= 1
            self.in_flight += 1
            return _Ticket(self._epoch, time.perf_counter(), self.in_flight)

    def slow(self, ticket: _Ticket, prompt_tokens: int, completion_tokens: int) -> bool:
        """Whether this reply shows a queue (see the class docstring). `ticket`: from `acquire`; the
        token counts: the reply's usage. Like is compared with like: peers are the earlier replies
        with prompt and completion tokens each within SIZE_TOLERANCE (seconds are not comparable
        across sizes: prefill and the round trip dominate short, newline-stopped answers) and sent with
        at most as many requests in flight (more in flight than then is what is judged; fewer in flight
        is under-use, never a reason to cut). At least 10 peers, else no signal."""
        per_reply = (time.perf_counter() - ticket.started) / ticket.in_flight
        peers = [
            earlier
            for prompt, completion, in_flight, earlier in self._replies
            if in_flight <= ticket.in_flight
            and _similar(prompt, prompt_tokens)
            and _similar(completion, completion_tokens)
        ]
        self._replies.append((prompt_tokens, completion_tokens, ticket.in_flight, per_reply))
        if self._waiting == 0:
            return False  # application-limited: nothing waits for the slot this reply frees
        if ticket.in_flight <= self.slots:
            return False  # within the server's own slots: no queue of ours (class docstring)
        if len(peers) >= 10 and ticket.epoch == self._epoch:  # sent at the current limit
            baseline = statistics.quantiles(peers, n=10)[0]
            self._ratios.append(per_reply / baseline if baseline > 0 else 1.0)
        if len(self._ratios) < (self._ratios.maxlen or 0):
            return False
        return statistics.median(self._ratios) > LATENCY_TOLERANCE

    async def release(self, ticket: _Ticket, overloaded: bool) -> None:
        async with self._condition:
            self.in_flight -= 1
            if overloaded:
                if ticket.epoch == self._epoch:
                    self.limit = max(1, self.limit // 2)
                    self._epoch += 1
                    self._ratios.clear()  # the next verdict is on replies sent at the new limit
                self._successes = 0
            else:
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._successes = 0
            if self.limit != self.history[-1]:
                self.history.append(self.limit)
            # wake only as many waiters as there are free slots: notify_all woke every queued request
            # on each reply (256 prompts: ~65k wake-ups for nothing)
            self._condition.notify(max(0, self.limit - self.in_flight))


def _similar(first: int, second: int) -> bool:
    """Whether two token counts are within SIZE_TOLERANCE of each other (counted plus one: 0 ~ 0)."""
    low, high = sorted((first + 1, second + 1))
    return high <= SIZE_TOLERANCE * low


class _Health:
    """Recent outcomes of one run, to stop it early when the server is gone (see the ABORT_ constants)."""

    def __init__(self) -> None:
        self.finished: deque[bool] = deque(maxlen=ABORT_WINDOW)
        self.failed_in_a_row = 0
        self.first_failure_at = 0.0
        self.last_error = ""

    def attempt(self, ok: bool, error: str = "") -> None:
        if ok:
            self.failed_in_a_row = 0
            return
        if self.failed_in_a_row == 0:
            self.first_failure_at = time.monotonic()
        self.failed_in_a_row += 1
        self.last_error = error

    def verdict(self) -> str | None:
        """Why the run should stop now, or None."""
        failed = sum(self.finished)
        if len(self.finished) >= ABORT_MIN_CALLS and failed >= ABORT_ERROR_SHARE * len(self.finished):
            return f"{failed} of the last {len(self.finished)} prompts failed"
        if (
            self.failed_in_a_row >= ABORT_CONSECUTIVE_ATTEMPTS
            and time.monotonic() - self.first_failure_at >= ABORT_CONSECUTIVE_SECONDS
        ):
            seconds = time.monotonic() - self.first_failure_at
            return f"the last {self.failed_in_a_row} attempts failed over {seconds:.0f}s"
        return None


@dataclass(frozen=True)
class HTTPSettings:
    """The openai backend's own settings, apart from sampling (the spec keeps them flat in its
    `generation` block; `from_params` picks them out). `base_url`: the API root, e.g.
    http://127.0.0.1:8000/v1; `model`: the server's model name; `model_revision`: what identifies the
    served weights (see `OpenAICompatibleBackend.fingerprint`); `max_concurrency`: requests in flight
    at most; `timeout_s`: seconds for one whole request; `max_retries`: further attempts per request;
    `concurrency_declared`: the spec set `max_concurrency` (else it is the default, and a server that
    reports its slot count, llama-server's `/props`, sets the ceiling instead)."""

    base_url: str
    model: str
    model_revision: str | None = None
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    concurrency_declared: bool = True

    @classmethod
    def from_params(cls, params: GenerationParams) -> HTTPSettings:
        """The settings of a spec's generation block. Raises ValueError when it has no base_url."""
        if not params.base_url:
            raise ValueError("the openai backend needs base_url")
        return cls(
            base_url=params.base_url.rstrip("/"),
            model=params.model,
            model_revision=params.model_revision,
            max_concurrency=params.max_concurrency,
            timeout_s=params.timeout_s,
            max_retries=params.max_retries,
            concurrency_declared="max_concurrency" in params.model_fields_set,
        )


class _MalformedResponse(ValueError):
    """A 200 whose body is not a completion (cut off, no `choices`): transient, retried like a 503."""


class OpenAICompatibleBackend:
    """Chat completions over HTTP: vLLM, llama.cpp server, Ollama, or a hosted API.

    Bounded adaptive concurrency (backs off on 429, 5xx, timeouts and rising latency); `timeout_s` is
    the deadline of each whole request, not of each read (a server dripping one byte a second cannot
    hold a prompt); retries with exponential backoff and jitter on 429, 5xx, malformed 200 bodies and
    connection errors (Retry-After honoured up to MAX_RETRY_AFTER_S). A prompt that still fails is
    reported with its reason and the others go on, unless most recent calls fail: then the run stops
    with GenerationAborted. The API key is sent as a bearer token and redacted from every error text.
    Content holding chat control tokens is refused without a call (the server applies its own chat
    template and would read them as markup). With a JSON schema on a request the schema goes to the
    server as `response_format` (guided decoding); a server that rejects it is asked without one.
    """

    name = "openai"

    def __init__(self, params: GenerationParams, api_key: str | None = None) -> None:
        self.params = params
        self.settings = HTTPSettings.from_params(params)
        self.base_url = self.settings.base_url
        self._api_key = api_key
        self._fingerprint: str | None = None
        self._entry: dict[str, Any] | None = None
        self._slots: int | None = None  # 0: asked, none reported
        # the response_format shapes to try, best first; None: no guided decoding (see `_choose_format`)
        self._formats: list[str | None] = ["json_schema", "json_object", None]
        self.concurrency_history: list[int] = []

    @property
    def fingerprint(self) -> str:
        """`openai:<model>@<what identifies it>`: the declared `model_revision`, else a hash of what the
        server reports about the model in /models (vLLM's `root`, llama-server's `meta`), else a hash
        of the base URL, so another server's answers for a model of the same name are never reused."""
        if self._fingerprint is None:
            model = self.settings.model
            if self.settings.model_revision:
                self._fingerprint = f"openai:{model}@{self.settings.model_revision}"
            else:
                reported = self._reported_model()
                if reported:
                    self._fingerprint = f"openai:{model}@model-{content_hash(reported, length=12)}"
                else:
                    self._fingerprint = f"openai:{model}@url-{content_hash(self.base_url, length=12)}"
        return self._fingerprint

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _model_entry(self) -> dict[str, Any]:
        """The server's /models entry for our model, asked once ({} when absent or unreachable)."""
        if self._entry is None:
            import httpx

            self._entry = {}
            try:
                response = httpx.get(
                    f"{self.base_url}/models",
                    headers=self._headers(),
                    timeout=min(10.0, self.settings.timeout_s),
                )
                entries = response.json().get("data", []) if response.status_code == 200 else []
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                logger.warning("could not read %s/models: %s", self.base_url, self.redact(str(exc)))
                entries = []
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and entry.get("id") == self.settings.model:
                    self._entry = entry
        return self._entry

    def _new_limit(self) -> _AdaptiveLimit:
        """The adaptive limit of one run. A server that reports its slot count is driven at once at that
        many (capped by a declared `max_concurrency`), and undeclared, its slots are the ceiling too:
        more in flight only waits in its queue; slower replies within its slots are no queue either
        (`_AdaptiveLimit`). Else the limit starts at half of `max_concurrency`."""
        settings = self.settings
        slots = self._server_slots()
        if slots is None:
            return _AdaptiveLimit(settings.max_concurrency)
        ceiling = settings.max_concurrency if settings.concurrency_declared else slots
        return _AdaptiveLimit(ceiling, start=min(ceiling, slots), slots=slots)

    def _server_slots(self) -> int | None:
        """How many requests the server decodes at once, when it says: llama-server's `GET /props`
        answers `total_slots` (its `--parallel`; tools/server/README.md of llama.cpp), at the server's
        root, not under /v1. None when the server does not say (vLLM does not expose `max_num_seqs`,
        hosted APIs answer 404) or cannot be asked; asked once per backend."""
        if self._slots is None:
            import httpx

            root = self.base_url.removesuffix("/v1")
            self._slots = 0
            try:
                response = httpx.get(
                    f"{root}/props", headers=self._headers(), timeout=min(10.0, self.settings.timeout_s)
                )
                reported = response.json().get("total_slots") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                reported = None
            if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 1:
                self._slots = min(reported, MAX_SERVER_SLOTS)
        return self._slots or None

    def _reported_model(self) -> dict[str, Any]:
        """What /models says about our model, less what changes per call or names nothing (empty when
        the server says nothing identifying, or cannot be asked)."""
        ignored = {"id", "object", "created", "owned_by", "permission", "permissions"}
        return {key: value for key, value in self._model_entry().items() if key not in ignored}

    def redact(self, text: str) -> str:
        """`text` with the API key replaced: servers echo request headers in error bodies."""
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return text

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
        if request.json_schema is not None and self._formats[0] is not None:
            schema = request.json_schema
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "sample", "schema": schema}}
                if self._formats[0] == "json_schema"
                else {"type": "json_object", "schema": schema}
            )
        return {**body, "messages": request.messages}

    def _refusal(self, request: ChatRequest) -> str | None:
        for index, message in enumerate(request.messages):
            found = control_tokens_in(str(message.get("content", "")))
            if found:
                where = (
                    "the prompt" if request.continuation else f"message {index + 1} ({message.get('role')})"
                )
                return (
                    f"refused: {where} contains the chat control token {found[0]!r}; the server would read "
                    "it as chat markup (remove it from the seed file, attributes or templates)"
                )
        return None

    def _parse(self, request: ChatRequest, response: Any) -> ChatResult:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            text = choice["text"] if request.continuation else choice["message"].get("content")
            result = ChatResult(
                key=request.key,
                # servers that ignore `stop` still get cut here
                text=cut_at_stop(str(text or ""), request.stop).strip(),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise _MalformedResponse(f"malformed response: {type(exc).__name__}: {exc}") from exc
        return result

    async def _call(
        self,
        client: Any,
        limit: _AdaptiveLimit,
        health: _Health,
        request: ChatRequest,
        params: GenerationParams,
    ) -> ChatResult | CallFailure:
        import httpx

        refusal = self._refusal(request)
        if refusal is not None:
            return CallFailure(request.key, refusal)
        last_error = "no attempt made"
        attempt = 0
        settings = self.settings
        while attempt <= settings.max_retries:
            ticket = await limit.acquire()
            overloaded = False
            retry_after: float | None = None
            try:
                endpoint = "/completions" if request.continuation else "/chat/completions"
                shape, body = self._formats[0], self._body(request, params)
                # the deadline covers connecting, waiting and every byte of the body
                response = await asyncio.wait_for(client.post(endpoint, json=body), settings.timeout_s)
                if response.status_code == 200:
                    result = self._parse(request, response)
                    overloaded = limit.slow(ticket, result.prompt_tokens, result.completion_tokens)
                    health.attempt(True)
                    return result
                last_error = self.redact(f"HTTP {response.status_code}: {response.text[:200]}")
                rejected_format = "response_format" in response.text or "schema" in response.text
                if "response_format" in body and response.status_code in {400, 422} and rejected_format:
                    # this server does not take that shape of response_format: try the next, same attempt
                    # (requests in flight may all be rejected: move on once per shape, not once per reply)
                    if self._formats[0] is not None and self._formats[0] == shape:
                        self._formats = self._formats[1:]
                    continue
                if response.status_code not in RETRYABLE_STATUS:
                    return CallFailure(request.key, last_error)
                overloaded = response.status_code == 429 or response.status_code >= 500
                retry_after = retry_after_seconds(response.headers)
            except TimeoutError:
                overloaded = True
                last_error = f"no complete answer within timeout_s={settings.timeout_s:g}s"
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                overloaded = isinstance(exc, httpx.TimeoutException)
                last_error = self.redact(f"{type(exc).__name__}: {exc}")
            except _MalformedResponse as exc:
                last_error = self.redact(str(exc))
            finally:
                await limit.release(ticket, overloaded)
            health.attempt(False, last_error)
            if health.verdict() is not None:
                raise GenerationAborted(health.verdict())
            if attempt < settings.max_retries:
                backoff = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
                await asyncio.sleep(retry_after if retry_after is not None else backoff)
            attempt += 1
        return CallFailure(request.key, f"gave up after {settings.max_retries + 1} attempts: {last_error}")

    async def _run(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None,
    ) -> None:
        import httpx

        limit = self._new_limit()
        self.concurrency_history = limit.history
        health = _Health()
        started = time.perf_counter()
        done = tokens = 0
        pending_results: list[ChatResult] = []
        pending_failures: list[CallFailure] = []
        consumed: set[str] = set()
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers(),
            timeout=httpx.Timeout(self.settings.timeout_s),
        ) as client:
            tasks = [asyncio.create_task(self._call(client, limit, health, r, params)) for r in requests]
            waiting: set[asyncio.Task[ChatResult | CallFailure]] = set(tasks)
            oldest_pending: float | None = None  # when the oldest unstored outcome finished
            try:
                while waiting:
                    timeout = None
                    if oldest_pending is not None:
                        timeout = max(0.0, oldest_pending + PERSIST_EVERY_S - time.perf_counter())
                    finished, waiting = await asyncio.wait(
                        waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in finished:
                        outcome = task.result()
                        done += 1
                        consumed.add(outcome.key)
                        if isinstance(outcome, ChatResult):
                            pending_results.append(outcome)
                            tokens += outcome.completion_tokens
                        else:
                            pending_failures.append(outcome)
                            health.last_error = outcome.error
                        health.finished.append(not isinstance(outcome, ChatResult))
                        verdict = health.verdict()
                        if verdict is not None:
                            raise GenerationAborted(verdict)
                        if oldest_pending is None:
                            oldest_pending = time.perf_counter()
                    pending = len(pending_results) + len(pending_failures)
                    overdue = oldest_pending is not None and (
                        time.perf_counter() - oldest_pending >= PERSIST_EVERY_S
                    )
                    if pending and (pending >= params.batch_size or not waiting or overdue):
                        on_batch(pending_results, pending_failures)
                        pending_results, pending_failures, oldest_pending = [], [], None
                        if on_progress is not None:
                            on_progress(
                                ProgressUpdate(done, len(tasks), tokens, time.perf_counter() - started)
                            )
            except GenerationAborted as exc:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # what finished is kept: the next run resumes from the cache
                on_batch(pending_results, pending_failures)
                message = (
                    f"stopped early: {exc} at {self.base_url} (last error: {health.last_error}); "
                    f"{done} of {len(tasks)} calls finished and are kept, the next run resumes"
                )
                raise GenerationAborted(self.redact(message)) from None
            except BaseException:
                # A stop (Ctrl-C, SIGTERM, the UI's Terminate) arrives here as the interrupt itself or
                # as the CancelledError that asyncio.run's clean-up sends. Calls still running end
                # first, while the client is open: Dagster's interrupt is not one asyncio re-raises at
                # once, so a call left pending would start a request on the closed client and fail
                # with a traceback printed after the stop. Calls that finished but did not yet fill a
                # batch would be lost and paid for again on the next run: store them (one short
                # DuckDB write), then let the stop go on.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                late = [
                    task.result()
                    for task in tasks
                    if task.done() and not task.cancelled() and task.exception() is None
                ]
                pending_results += [r for r in late if isinstance(r, ChatResult) and r.key not in consumed]
                if pending_results or pending_failures:
                    on_batch(pending_results, pending_failures)
                raise

    def _choose_format(self) -> None:
        """Which response_format shape goes first. OpenAI, vLLM and llama-server take OpenAI's
        `{"type": "json_schema", "json_schema": {...}}`; llama-cpp-python's server (`owned_by: me` in
        /models) silently ignores that shape and constrains decoding only for `{"type": "json_object",
        "schema": ...}`. A shape a server rejects (400/422 naming it) moves on to the next."""
        if self._model_entry().get("owned_by") == "me" and self._formats[0] == "json_schema":
            self._formats = ["json_object", "json_schema", None]

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if any(request.json_schema is not None for request in requests):
            self._choose_format()
        if requests:
            asyncio.run(self._run(requests, params, on_batch, on_progress))


def api_key_from_env(params: GenerationParams) -> str | None:
    """The API key named by `generation.api_key_env`, read from the environment at call time and never
    stored (None when the spec names none). Raises ValueError when the variable is not set."""
    if not params.api_key_env:
        return None
    api_key = os.environ.get(params.api_key_env)
    if api_key is None:
        raise ValueError(f"environment variable {params.api_key_env} (generation.api_key_env) is not set")
    return api_key


def build_backend(
    params: GenerationParams,
    model_cache_dir: Any = None,
    model_path: Path | None = None,
    api_key: str | None = None,
) -> Backend:
    """The backend a spec's generation block asks for. `model_path`: the local model's file or folder
    when `params.model` names one (resolved against the spec, see `GenerationSpec.local_model_path`).
    `api_key`: the openai backend's key when the caller already read it (a Dagster resource reads it
    through `dg.EnvVar`); else `api_key_from_env`. No Dagster import here. Raises ValueError on a
    missing base_url or an unset api_key_env variable.

    A new backend: one class satisfying `types.Backend` (its own settings dataclass beside it) and one
    branch here."""
    if params.backend == "local":
        return LocalBackend(model_cache_dir, params.dtype, model_path)
    if params.backend == "llama_cpp":
        from synth_assets.generation.llama_cpp_backend import LlamaCppBackend, LlamaCppSettings

        cache_dir = Path(model_cache_dir) if model_cache_dir else None
        return LlamaCppBackend(LlamaCppSettings.from_params(params, model_path, cache_dir))
    return OpenAICompatibleBackend(params, api_key if api_key is not None else api_key_from_env(params))
