"""`synth-assets run --dry-run`: what a run will cost, before it starts.

Renders the prompts exactly as `expanded_prompts` will, counts the LLM calls (and those already in
`llm_cache`, which a run does not make again), the prompt tokens exactly (the model's own tokenizer
over the text the model will see: chat template applied, or the raw text in continuation mode) and
the completion tokens as their `max_new_tokens` bound, then times one real batch of the spec's batch
size on this machine (a short warm-up: `WARMUP_TOKENS` new tokens) to estimate the generation time.
Nothing is written: the warm-up's answers are thrown away.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd

from synth_assets.generation.backends import LocalBackend
from synth_assets.generation.engine import call_key, format_duration
from synth_assets.generation.prompts import prompt_messages
from synth_assets.generation.types import Backend, ChatRequest, ChatResult
from synth_assets.spec import GenerationSpec
from synth_assets.storage import Warehouse

# New tokens in the timed warm-up batch: long enough that decoding (not the prompt pass) dominates,
# short enough to take a few seconds.
WARMUP_TOKENS = 16


@dataclass(frozen=True)
class RunPlan:
    """Counts and estimate for one run of a spec. Token counts are of the first step (the prompts the
    spec renders); later steps and structured-output retries add at most `max_calls - calls`."""

    prompts: int
    calls: int  # first-step calls (one per distinct prompt request)
    cached_calls: int  # of those, already answered in llm_cache
    max_calls: int  # every step and retry included (upper bound)
    prompt_tokens: int | None  # exact, over the calls still to make (None: no tokenizer here)
    max_completion_tokens: int  # calls still to make x max_new_tokens (later steps included)
    batch_size: int
    seconds_per_batch: float | None  # measured warm-up, scaled to max_new_tokens
    estimate_s: float | None  # generation time of the calls still to make
    note: str = ""

    def lines(self) -> list[str]:
        """The dry run's report, one fact a line."""
        to_make = self.calls - self.cached_calls
        tokens = f"{self.prompt_tokens:,}" if self.prompt_tokens is not None else "not counted (no tokenizer)"
        out = [
            f"prompts: {self.prompts}",
            f"LLM calls: {self.calls} for the first step, {self.cached_calls} already in llm_cache, "
            f"{to_make} to make (at most {self.max_calls - self.cached_calls} with later steps and retries)",
            f"prompt tokens to send: {tokens} (exact)",
            f"completion tokens: at most {self.max_completion_tokens:,} (calls x max_new_tokens)",
        ]
        if self.estimate_s is not None and self.seconds_per_batch is not None:
            batches = math.ceil(to_make / self.batch_size) if to_make else 0
            # fewer calls than batch_size: one batch of them (the warm-up timed that many, not more)
            size = min(self.batch_size, to_make)
            counted = f"{batches} batches of {size}" if batches != 1 else f"1 batch of {size}"
            out.append(
                f"estimated generation time: {format_duration(self.estimate_s)} ({counted} x "
                f"{self.seconds_per_batch:.1f} s, timed by a warm-up batch here)"
            )
        if self.note:
            out.append(self.note)
        return out


def first_step_requests(spec: GenerationSpec, prompts: pd.DataFrame, fingerprint: str) -> list[ChatRequest]:
    """The first-step requests a run makes for these prompts, keyed as the engine keys them."""
    identity = spec.generation.identity()
    continuation = spec.generation.mode == "continuation"
    requests = []
    for prompt in prompts.itertuples(index=False):
        messages = (
            [{"role": "user", "content": prompt.prompt_text}]
            if continuation
            else prompt_messages(prompt.system_prompt, prompt.prompt_text)
        )
        seed = int(prompt.generation_seed)
        requests.append(
            ChatRequest(
                key=call_key(fingerprint, messages, identity, seed),
                messages=messages,
                seed=seed,
                continuation=continuation,
                stop=spec.generation.stop_strings(),
            )
        )
    return requests


def _prompt_tokens(backend: Backend, requests: list[ChatRequest]) -> int | None:
    if not isinstance(backend, LocalBackend):
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backend.model.model_dir)
    texts = [
        r.messages[0]["content"] if r.continuation else backend.model.render_chat(r.messages)
        for r in requests
    ]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def _warmup(backend: Backend, spec: GenerationSpec, requests: list[ChatRequest]) -> float:
    """Seconds one full batch of `max_new_tokens` takes here: one real batch of the spec's size with
    WARMUP_TOKENS new tokens, timed, then scaled per decoding step (a batch runs until its longest row
    ends, which for a batch of several rows is usually the max_new_tokens limit)."""
    batch = requests[: spec.generation.batch_size]
    warm_tokens = min(WARMUP_TOKENS, spec.generation.max_new_tokens)
    params = spec.generation.model_copy(update={"max_new_tokens": warm_tokens})
    produced: list[ChatResult] = []
    started = time.perf_counter()
    backend.generate(batch, params, lambda results, failures: produced.extend(results))
    seconds = time.perf_counter() - started
    steps = max((r.completion_tokens for r in produced), default=warm_tokens) or 1
    return seconds / steps * spec.generation.max_new_tokens


def answered_calls(store: Warehouse | None, cache_keys: list[str]) -> tuple[set[str], str]:
    """(the keys among `cache_keys` that llm_cache already answers, a note for the plan), read without
    writing: from the catalog when it exists; from the old-layout DuckDB file the first run will
    import (`Warehouse.pending_import`, the migration's own detection), with a note saying so, when
    the catalog is not made yet; none for a new warehouse (or `store` None). Raises StorageError (one
    line) when the warehouse or the old file cannot be read, as the run would."""
    if store is None or not cache_keys:
        return set(), ""
    pending = store.pending_import()
    if pending is not None:
        from synth_assets.storage.migrate import legacy_cached_keys

        return legacy_cached_keys(pending, cache_keys), (
            f"warehouse: {pending} (the old layout) is imported into {store.path} by the first run, "
            "not by this dry run; its llm_cache is counted above"
        )
    catalog = store.config.catalog_file
    if catalog is not None and not catalog.exists():
        return set(), ""  # a new warehouse: nothing answered yet
    return set(store.cached_calls(cache_keys, read_only=True)["cache_key"]), ""


def plan_run(
    spec: GenerationSpec,
    prompts: pd.DataFrame,
    backend: Backend,
    store: Warehouse | None,
    warmup: bool = True,
) -> RunPlan:
    """Count and estimate a run of `spec` over `prompts` (see RunPlan). `store`: whose llm_cache counts
    as answered (None: a new database). A warm-up needs the local backend; other backends get counts
    only."""
    requests = list({r.key: r for r in first_step_requests(spec, prompts, backend.fingerprint)}.values())
    cached, note = answered_calls(store, [r.key for r in requests])
    to_make = [r for r in requests if r.key not in cached]
    structured = spec.structured_output
    per_prompt = 1 + len(spec.steps) + ((structured.max_attempts - 1) if structured else 0)
    max_calls = len(requests) * per_prompt
    max_new = spec.generation.max_new_tokens
    per_batch = estimate = None
    if spec.per_cell is not None:
        note = (note + "; " if note else "") + (
            "per_cell: prompts are a budget; the run stops a cell once it has its accepted rows"
        )
    if warmup and to_make and isinstance(backend, LocalBackend):
        per_batch = _warmup(backend, spec, to_make)
        calls_to_make = len(to_make) * per_prompt
        estimate = math.ceil(calls_to_make / spec.generation.batch_size) * per_batch
    elif to_make and not isinstance(backend, LocalBackend):
        note = (
            note + "; " if note else ""
        ) + "time not estimated for a server backend (its speed is the server's)"
    return RunPlan(
        prompts=len(prompts),
        calls=len(requests),
        cached_calls=len(requests) - len(to_make),
        max_calls=max_calls,
        prompt_tokens=_prompt_tokens(backend, to_make),
        max_completion_tokens=len(to_make) * per_prompt * max_new,
        batch_size=spec.generation.batch_size,
        seconds_per_batch=per_batch,
        estimate_s=estimate,
        note=note,
    )
