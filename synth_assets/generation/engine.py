"""From expanded prompts to generated samples: cached, resumable, multi-step, optionally structured.

Every LLM call goes through the `llm_cache` table first. A call is keyed by the model's
fingerprint, the exact messages, the generation parameters and the seed, so:
- re-materializing with nothing changed makes no call; 10 % new prompts cost about 10 % of a run;
- finished calls are written per batch as they complete, so a killed run resumes where it stopped;
- identical calls are made once.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from synth_assets.curation.heuristics import chat_wrapping
from synth_assets.generation.prompts import prompt_messages, render_prompt
from synth_assets.generation.self_instruct import NoveltyPool
from synth_assets.generation.structured import parse_structured
from synth_assets.generation.types import Backend, CallFailure, ChatRequest, ChatResult, ProgressUpdate
from synth_assets.spec import GenerationSpec, content_hash
from synth_assets.storage import Stage, Warehouse, stage_columns
from synth_assets.templates import TemplateProblem, render, step_context

FIRST_STEP = "answer"

# Small chat models often wrap the answer in quotes or repeat the template's lead-in; those bytes are
# formatting, not content, so they are removed before curation judges the text.
_LEAD_IN = re.compile(
    r"^\s*(?:new\s+)?(?:review|description|conversation|answer|message|customer|agent)\s*"
    r"(?:\([^)]*\))?\s*:\s*",
    re.I,
)


def clean_completion(text: str) -> str:
    cleaned = _LEAD_IN.sub("", text.strip(), count=1).strip()
    if len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in "\"'":
        cleaned = cleaned[1:-1].strip()
    return cleaned


def call_key(fingerprint: str, messages: list[dict[str, str]], params: dict[str, Any], seed: int) -> str:
    """Cache key of one LLM call: everything that decides its output, nothing else."""
    return "c-" + content_hash(
        {"model": fingerprint, "messages": messages, "params": params, "seed": seed}, length=24
    )


def sample_id_for(prompt_id: str, model_fingerprint: str, params: dict[str, object], seed: int) -> str:
    """Content id of a generation: same prompt, model, parameters and seed give the same id."""
    return "s-" + content_hash(
        {"prompt_id": prompt_id, "model": model_fingerprint, "params": params, "seed": seed}
    )


def _step_seed(base_seed: int, step: str, attempt: int) -> int:
    if step == FIRST_STEP and attempt == 0:
        return base_seed
    return int(content_hash([base_seed, step, attempt]), 16) % (2**31)


@dataclass
class GenerationStats:
    """Counters of one generation run: prompts taken, LLM calls needed / made / answered from
    `llm_cache`, failed calls, completion tokens of new calls, `call_seconds` (wall seconds spent in
    backend calls) and structured-output parse attempts, failures and repairs."""

    prompts: int = 0
    calls_needed: int = 0
    calls_made: int = 0
    cache_hits: int = 0
    failed_calls: int = 0
    new_completion_tokens: int = 0
    call_seconds: float = 0.0
    structured_attempts: int = 0
    structured_failures: int = 0
    structured_repaired: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_completion_tokens / self.call_seconds if self.call_seconds else 0.0

    def as_metadata(self) -> dict[str, float | int]:
        return {
            "prompts": self.prompts,
            "llm_calls_needed": self.calls_needed,
            "llm_calls_made": self.calls_made,
            "llm_cache_hits": self.cache_hits,
            "llm_failed_calls": self.failed_calls,
            "new_completion_tokens": self.new_completion_tokens,
            "llm_seconds": round(self.call_seconds, 2),
            "tokens_per_second": round(self.tokens_per_s, 2),
            "structured_parse_failures": self.structured_failures,
            "structured_parse_failure_rate": round(self.structured_failures / self.structured_attempts, 4)
            if self.structured_attempts
            else 0.0,
        }


@dataclass
class GenerationOutcome:
    """What `generate_samples` made. `samples`: one row per prompt that got through every step, in the
    `generated_samples` table's columns (`stage_columns("generated_samples")`: ids, text, label,
    attributes, lineage, `cache_key`, token counts); `failures`: one row per prompt that did not,
    columns `prompt_id` and `error` (a one-line reason, API keys redacted); `stats`: call and cache
    counts, tokens and seconds of the run (`GenerationStats.as_metadata()` is what the asset shows).
    Nothing here raises; the backend's GenerationAborted propagates from `generate_samples` itself."""

    samples: pd.DataFrame
    failures: pd.DataFrame
    stats: GenerationStats = field(default_factory=GenerationStats)


class CachedCaller:
    """Answers requests from `llm_cache`, calling the backend only for keys never answered."""

    def __init__(
        self,
        backend: Backend,
        store: Warehouse,
        spec: GenerationSpec,
        run_id: str,
        stats: GenerationStats,
        log: Callable[[str], None],
        on_progress: Callable[[ProgressUpdate], None] | None,
    ) -> None:
        self.backend, self.store, self.spec, self.run_id = backend, store, spec, run_id
        self.params = spec.generation
        self.identity = spec.generation.identity()
        self.stats, self.log, self.on_progress = stats, log, on_progress

    def run(
        self, step: str, requests: list[ChatRequest], prompt_of: dict[str, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """(answers by cache key, errors by cache key) for these requests."""
        keys = [r.key for r in requests]
        answered = {row["cache_key"]: row for row in self.store.cached_calls(keys).to_dict("records")}
        missing = list({r.key: r for r in requests if r.key not in answered}.values())
        self.stats.calls_needed += len(set(keys))
        self.stats.cache_hits += len(set(keys)) - len(missing)
        unique = len(set(keys))
        self.log(f"step '{step}': {unique} calls, {unique - len(missing)} cached, {len(missing)} to make")
        errors: dict[str, str] = {}
        if missing:
            by_key = {r.key: r for r in missing}
            batch_started = [time.perf_counter()]

            def persist(results: list[ChatResult], failures: list[CallFailure]) -> None:
                now = time.perf_counter()
                seconds = (now - batch_started[0]) / max(len(results), 1)
                batch_started[0] = now
                rows = [
                    {
                        "cache_key": r.key,
                        "backend": self.backend.name,
                        "model_fingerprint": self.backend.fingerprint,
                        "messages": json.dumps(by_key[r.key].messages, ensure_ascii=False),
                        "generation_params": json.dumps(self.identity, sort_keys=True),
                        "seed": by_key[r.key].seed,
                        "text": r.text,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "finish_reason": r.finish_reason,
                        "seconds": seconds,
                        "run_id": self.run_id,
                    }
                    for r in results
                ]
                failed_rows = [
                    {
                        "spec_name": self.spec.name,
                        "run_id": self.run_id,
                        "cache_key": f.key,
                        "prompt_id": prompt_of.get(f.key, ""),
                        "step": step,
                        "error": f.error,
                    }
                    for f in failures
                ]
                self.store.store_calls(pd.DataFrame(rows), pd.DataFrame(failed_rows))
                self.stats.calls_made += len(results) + len(failures)
                self.stats.failed_calls += len(failures)
                self.stats.new_completion_tokens += sum(r.completion_tokens for r in results)
                errors.update({f.key: f.error for f in failures})

            started = time.perf_counter()
            self.backend.generate(missing, self.params, persist, self._with_eta(step))
            self.stats.call_seconds += time.perf_counter() - started
            answered.update(
                {
                    row["cache_key"]: row
                    for row in self.store.cached_calls([r.key for r in missing]).to_dict("records")
                }
            )
        return answered, errors

    def _with_eta(self, step: str) -> Callable[[ProgressUpdate], None]:
        """The caller's progress callback, followed by a log line with the time left in this step
        (calls left at the pace of the calls done so far)."""

        def progress(update: ProgressUpdate) -> None:
            if self.on_progress is not None:
                self.on_progress(update)
            if 0 < update.done < update.total and update.elapsed_s > 0:
                left = update.elapsed_s / update.done * (update.total - update.done)
                self.log(f"step '{step}': {update.done}/{update.total} calls, ETA {format_duration(left)}")

        return progress


def format_duration(seconds: float) -> str:
    """'45 s', '12 min 5 s', '2 h 41 min'."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min {int(seconds % 60)} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _context(spec: GenerationSpec, prompt: Any, steps: dict[str, str]) -> dict[str, Any]:
    return step_context(
        task=spec.task,
        label=prompt.label,
        labels=list(spec.labels),
        attributes=json.loads(prompt.attributes),
        prompt=prompt.prompt_text,
        steps=steps,
    )


def generate_samples(
    spec: GenerationSpec,
    prompts: pd.DataFrame,
    backend: Backend,
    store: Warehouse,
    run_id: str,
    log: Callable[[str], None] = lambda message: None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
    accept: Callable[[pd.DataFrame], pd.Series] | None = None,
    seed_rows: pd.DataFrame | None = None,
) -> GenerationOutcome:
    """One sample per prompt that got through every step; the others are returned as failures.

    With `spec.per_cell` and an `accept` rule (the cheap curation heuristics), prompts are taken in
    waves per cell until each cell has `n` accepted samples or has used its budget.
    """
    stats = GenerationStats()
    caller = CachedCaller(backend, store, spec, run_id, stats, log, on_progress)
    if spec.self_instruct is not None and seed_rows is not None:
        return _bootstrap(spec, prompts, seed_rows, backend, caller, stats, log, accept)
    if spec.per_cell is None or accept is None:
        stats.prompts = len(prompts)
        samples, failures = _generate_frame(spec, prompts, backend, caller, stats)
        return GenerationOutcome(samples, failures, stats)

    queues = dict(iter(prompts.groupby("cell", sort=False)))
    taken = dict.fromkeys(queues, 0)
    accepted = dict.fromkeys(queues, 0)
    sample_frames, failure_frames = [], []
    target = spec.per_cell.n
    for wave in range(1, 1000):
        batch = []
        for cell, frame in queues.items():
            deficit = target - accepted[cell]
            if deficit <= 0 or taken[cell] >= len(frame):
                continue
            # budget follows failure: a cell whose samples keep failing asks for more prompts at once
            observed_yield = accepted[cell] / taken[cell] if taken[cell] else 1.0
            take = min(math.ceil(deficit / max(observed_yield, 0.25)), len(frame) - taken[cell])
            batch.append(frame.iloc[taken[cell] : taken[cell] + take])
            taken[cell] += take
        if not batch:
            break
        wave_prompts = pd.concat(batch)
        stats.prompts += len(wave_prompts)
        samples, failures = _generate_frame(spec, wave_prompts, backend, caller, stats)
        cell_of = dict(zip(wave_prompts["prompt_id"], wave_prompts["cell"], strict=True))
        for prompt_id, ok in zip(samples["prompt_id"], accept(samples), strict=True):
            accepted[cell_of[prompt_id]] += int(bool(ok))
        sample_frames.append(samples)
        failure_frames.append(failures)
        full = sum(count >= target for count in accepted.values())
        log(f"wave {wave}: {len(wave_prompts)} prompts, {full}/{len(queues)} cells have {target} accepted")
    unfilled = {cell: count for cell, count in accepted.items() if count < target}
    if unfilled:
        log(f"{len(unfilled)} cells did not reach {target} accepted samples within budget: {unfilled}")
    return GenerationOutcome(
        pd.concat(sample_frames, ignore_index=True), pd.concat(failure_frames, ignore_index=True), stats
    )


def _bootstrap(
    spec: GenerationSpec,
    prompts: pd.DataFrame,
    seed_rows: pd.DataFrame,
    backend: Backend,
    caller: CachedCaller,
    stats: GenerationStats,
    log: Callable[[str], None],
    accept: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> GenerationOutcome:
    """Self-Instruct rounds: demos drawn from seed rows and accepted samples; ROUGE-L novelty.

    As in Self-Instruct (Wang et al., 2023), a sample whose ROUGE-L to the pool reaches the threshold
    is discarded: it is returned as a failure ("not novel"), never as a sample. A novel sample joins
    the pool, and becomes a machine demo only if it also passes the cheap curation rules (`accept`)
    and is not chat wrapping, so a "Sure! Here is..." answer is never shown to the model as an
    example. Each sample records the prompt actually sent and its demos in `steps`."""
    settings = spec.self_instruct
    assert settings is not None
    train = seed_rows[seed_rows["split"] == "train"]
    human = [
        {"text": t, "label": lab, "seed_id": sid}
        for t, lab, sid in zip(train["text"], train["label"], train["seed_id"], strict=True)
    ]
    pool = NoveltyPool(settings.threshold)
    for demo in human:
        pool.add(demo["text"])
    machine: list[dict[str, str]] = []
    sample_frames, failure_frames = [], []
    for start in range(0, len(prompts), settings.per_round):
        chunk = prompts.iloc[start : start + settings.per_round].copy()
        texts, shown = [], {}
        for row in chunk.itertuples(index=False):
            rng = random.Random(int(row.generation_seed))
            from_machine = min(settings.machine_demos, len(machine))
            demos = rng.sample(human, min(spec.few_shot.k - from_machine, len(human)))
            demos += rng.sample(machine, from_machine)
            rng.shuffle(demos)
            texts.append(render_prompt(spec, row.label, json.loads(row.attributes), demos))
            shown[row.prompt_id] = [d.get("seed_id") or f"machine:{d['sample_id']}" for d in demos]
        chunk["prompt_text"] = texts
        sent = dict(zip(chunk["prompt_id"], texts, strict=True))
        stats.prompts += len(chunk)
        samples, failures = _generate_frame(spec, chunk, backend, caller, stats)
        good_demo = ~chat_wrapping(samples["text"].astype(str).tolist())
        if accept is not None and len(samples):
            good_demo &= accept(samples).to_numpy(dtype=bool)
        novelty, novel = [], []
        for row, demo_ok in zip(samples.itertuples(index=False), good_demo, strict=True):
            check = pool.check(row.text)
            if check.novel:
                pool.add(row.text)
                if demo_ok:
                    machine.append({"text": row.text, "label": row.label, "sample_id": row.sample_id})
            closest = pool.items[check.most_similar] if check.most_similar is not None else None
            novel.append(check.novel)
            novelty.append(
                {
                    "novel": check.novel,
                    "max_rouge_l": round(check.max_rouge_l, 4),
                    "closest": closest,
                    "demo_eligible": bool(check.novel and demo_ok),
                }
            )
        samples["steps"] = [
            json.dumps(
                {
                    **json.loads(steps),
                    "novelty": info,
                    "prompt_text": sent[prompt_id],
                    "demo_ids": shown[prompt_id],
                },
                ensure_ascii=False,
            )
            for steps, info, prompt_id in zip(samples["steps"], novelty, samples["prompt_id"], strict=True)
        ]
        kept = np.asarray(novel, dtype=bool)
        not_novel = pd.DataFrame(
            {
                "prompt_id": samples["prompt_id"][~kept],
                "error": [
                    f"not novel: ROUGE-L {info['max_rouge_l']:.2f} >= {settings.threshold} to a pooled text"
                    for info, ok in zip(novelty, novel, strict=True)
                    if not ok
                ],
            }
        )
        sample_frames.append(samples[kept])
        failure_frames += [failures, not_novel]
        log(
            f"self-instruct round {start // settings.per_round + 1}: pool {len(pool)} "
            f"({len(machine)} machine demos), {int(kept.sum())}/{len(samples)} novel"
        )
    return GenerationOutcome(
        pd.concat(sample_frames, ignore_index=True),
        pd.concat(failure_frames, ignore_index=True)[["prompt_id", "error"]],
        stats,
    )


def _generate_frame(
    spec: GenerationSpec,
    prompts: pd.DataFrame,
    backend: Backend,
    caller: CachedCaller,
    stats: GenerationStats,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    identity = caller.identity
    rows = list(prompts.itertuples(index=False))
    # per prompt: conversation so far, outputs per step, call records, failure reason
    conversations = {p.prompt_id: prompt_messages(p.system_prompt, p.prompt_text) for p in rows}
    outputs: dict[str, dict[str, str]] = {p.prompt_id: {} for p in rows}
    calls: dict[str, list[dict[str, Any]]] = {p.prompt_id: [] for p in rows}
    failed: dict[str, str] = {}

    step_plan = [
        (FIRST_STEP, None, True),
        *((s.name, s.template, s.continue_conversation) for s in spec.steps),
    ]
    structured = spec.structured_output
    for index, (step, template, continues) in enumerate(step_plan):
        last = index == len(step_plan) - 1
        attempts = structured.max_attempts if (structured and last) else 1
        pending = [p for p in rows if p.prompt_id not in failed]
        for attempt in range(attempts):
            if not pending:
                break
            requests, prompt_of, messages_of = [], {}, {}
            for p in pending:
                if step == FIRST_STEP:
                    messages = conversations[p.prompt_id]
                else:
                    try:
                        text = render(template or "", _context(spec, p, outputs[p.prompt_id]))
                    except TemplateProblem as exc:  # a template error is the spec's fault: name the step
                        raise ValueError(f"{spec.source_path}: steps.{step}: {exc}") from exc
                    base = (
                        conversations[p.prompt_id] if continues else prompt_messages(p.system_prompt, "")[:-1]
                    )
                    messages = [*base, {"role": "user", "content": text.strip()}]
                seed = _step_seed(int(p.generation_seed), step, attempt)
                continuation = spec.generation.mode == "continuation" and step == FIRST_STEP
                if continuation:
                    messages = [{"role": "user", "content": p.prompt_text}]
                request = ChatRequest(
                    key=call_key(backend.fingerprint, messages, identity, seed),
                    messages=messages,
                    seed=seed,
                    continuation=continuation,
                    stop=spec.generation.stop_strings(),
                    json_schema=structured.json_schema if (structured and last) else None,
                )
                requests.append(request)
                prompt_of[request.key] = p.prompt_id
                messages_of[p.prompt_id] = (request, messages)
            answered, errors = caller.run(
                step if attempt == 0 else f"{step}#retry{attempt}", requests, prompt_of
            )
            still_pending = []
            for p in pending:
                request, messages = messages_of[p.prompt_id]
                row = answered.get(request.key)
                if row is None:
                    failed[p.prompt_id] = f"step {step}: {errors.get(request.key, 'no answer')}"
                    continue
                text = str(row["text"])
                calls[p.prompt_id].append(
                    {
                        "step": step,
                        "attempt": attempt,
                        **{
                            k: row[k]
                            for k in (
                                "cache_key",
                                "completion_tokens",
                                "prompt_tokens",
                                "finish_reason",
                                "run_id",
                            )
                        },
                        "text": text,
                    }
                )
                if structured and last:
                    stats.structured_attempts += 1
                    parsed = parse_structured(text, structured.json_schema)
                    if parsed.value is None:
                        stats.structured_failures += 1
                        calls[p.prompt_id][-1]["parse_error"] = parsed.error
                        if attempt == attempts - 1:
                            failed[p.prompt_id] = (
                                f"step {step}: no valid JSON after {attempts} attempts ({parsed.error})"
                            )
                        else:
                            still_pending.append(p)
                        continue
                    stats.structured_repaired += int(parsed.repaired)
                    calls[p.prompt_id][-1]["structured"] = parsed.value
                    text = str(parsed.value[structured.text_field])
                outputs[p.prompt_id][step] = clean_completion(text) if spec.steps else text
                conversations[p.prompt_id] = [*messages, {"role": "assistant", "content": text}]
            pending = still_pending

    # steps, structure and output template change what a sample is, so they are part of its id
    sample_identity = {
        **identity,
        **({"steps": [s.model_dump() for s in spec.steps]} if spec.steps else {}),
        **({"structured": structured.model_dump()} if structured else {}),
        **({"output_template": spec.output_template} if spec.output_template else {}),
    }
    records = []
    for p in rows:
        if p.prompt_id in failed:
            continue
        steps = outputs[p.prompt_id]
        final_calls = calls[p.prompt_id]
        if spec.output_template:
            # the steps are cleaned one by one; cleaning the assembled text again would cut its
            # own leading "Customer:" speaker tag as if it were a lead-in
            try:
                text = render(spec.output_template, _context(spec, p, steps)).strip()
            except TemplateProblem as exc:
                raise ValueError(f"{spec.source_path}: output_template: {exc}") from exc
        else:
            text = clean_completion(steps[step_plan[-1][0]])
        structured_value = next((c["structured"] for c in reversed(final_calls) if "structured" in c), None)
        records.append(
            {
                "sample_id": sample_id_for(
                    p.prompt_id, backend.fingerprint, sample_identity, int(p.generation_seed)
                ),
                "prompt_id": p.prompt_id,
                "label": p.label,
                "text": text,
                "model": spec.generation.model,
                "model_fingerprint": backend.fingerprint,
                "backend": backend.name,
                "generation_params": json.dumps(identity, sort_keys=True),
                "generation_seed": int(p.generation_seed),
                "prompt_tokens": sum(int(c["prompt_tokens"]) for c in final_calls),
                "completion_tokens": sum(int(c["completion_tokens"]) for c in final_calls),
                "finish_reason": final_calls[-1]["finish_reason"],
                "cache_key": final_calls[-1]["cache_key"],
                "generated_in_run": final_calls[-1]["run_id"],
                "steps": json.dumps(
                    {"calls": final_calls, **({"structured": structured_value} if structured_value else {})},
                    ensure_ascii=False,
                    default=str,
                ),
            }
        )
    failures = pd.DataFrame(
        [{"prompt_id": pid, "error": reason} for pid, reason in failed.items()],
        columns=["prompt_id", "error"],
    )
    return pd.DataFrame.from_records(records, columns=stage_columns(Stage.GENERATED_SAMPLES)), failures
