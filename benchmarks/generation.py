"""Generation throughput: our local engine against what a user would run instead, on two workloads.

*current* (round 1, kept): 32 review chat prompts × 64 new tokens, in one process: the guide's naive
loop, llama.cpp through llama-cpp-python (one request at a time) and our engine.

*realistic* (round 2): 256 prompts rendered from a demo spec (`specs/product_reviews.yaml`: varied
labels, attributes and prompt lengths, four seed demos each, its own mode and stop strings),
max_new_tokens 128, natural stopping (a row ends at its stop string or end of sequence). Rows:
- engine: our local engine, the spec's default dtype (`auto`: bfloat16 on CPUs with native bf16);
- engine float32 (what CPUs without native bf16 get; the same run as `engine` where auto is float32);
- naive loop: one prompt at a time, `model.generate(..., stop_strings=...)`; measured on the first
  `--naive-prompts` prompts only (it is slow), its tok/s is per token, so it is comparable;
- python server: `python -m synth_assets.generation.llama_server` (llama-cpp-python, answers one
  request at a time), driven through our OpenAI-compatible backend;
- llama-server -np 8: llama.cpp's own server (8 slots, continuous batching; build it with
  `scripts/build_llama_server.sh`), driven through our OpenAI-compatible backend;
- direct client: the same server and request bodies, sent by a minimal stdlib HTTP client with the
  same number of requests in flight (the bar for our backend's overhead). The two llama-server rows
  run in `--server-rounds` rounds, each row on a fresh server after the same warm-up (`warm_server`,
  prompts not measured), the order turned round each round; `http_overhead_pct` is over all the
  rounds run (tokens and seconds added up), `http_overhead_rounds_pct` per round (`--first-round`
  splits rounds over invocations where one would run too long: `--server-rounds 1 --first-round 2`
  is round 2, the direct client first); `http_overhead_wall_pct`: our backend's wall seconds over
  the direct client's for the same requests (answer lengths vary between runs; seconds vary less);
- concurrency: 1, 2 and 4 generation processes at once (each runs the engine on the first
  `--concurrency-prompts` prompts); aggregate tok/s = all their tokens / the wall time they span;
- profile (not in the table): where the engine's seconds go (prefill, decode, sampling, dropping
  finished rows) and how much of the prompts a shared-prefix cache can skip.

Only real tokens count (up to and including the stop token), never padding. Ends with one line:

RESULT engine_vs_llama_server=<x> f32_vs_naive=<y> http_overhead_pct=<z> http_overhead_rounds_pct=<z1,z2>
       http_overhead_wall_pct=<z'> two_proc_vs_one=<w> ...

(targets: >= 1.5, >= 10, <= 10 %, >= 0.8; a row not run gives `nan`).

Run: .venv/bin/python benchmarks/generation.py [--prompts 256] [--rows engine,llama-server,...]
Quick check: .venv/bin/python benchmarks/generation.py --prompts 16 --naive-prompts 4 --concurrency-prompts 8
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from synth_assets.generation.local_llm import ChatRequest  # torch is imported on first use only
from synth_assets.runtime import prepare_process
from synth_assets.spec import GenerationParams

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path (tests)
from usefulness import cpu_model

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "specs" / "product_reviews.yaml"
ROWS = (
    "current",
    "engine",
    "engine-float32",
    "naive",
    "python-server",
    "llama-server",
    "direct-client",
    "concurrency",
    "profile",
)

PRODUCTS = [
    "blender", "pair of headphones", "laptop", "desk chair", "coffee maker", "tent", "phone case",
    "vacuum cleaner",
]  # fmt: skip
SENTIMENTS = ["positive", "negative", "neutral", "positive"]


@dataclass(frozen=True)
class Workload:
    """Requests plus the generation parameters every row uses for them."""

    name: str
    requests: list[ChatRequest]
    params: GenerationParams


@dataclass
class Measurement:
    """One row of the table: `tokens` completion tokens in `seconds` wall time."""

    workload: str
    row: str
    tokens: int
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# ---- workloads -------------------------------------------------------------------------------------


def review_prompts(count: int) -> list[list[dict[str, str]]]:
    """The round-1 workload: short chat prompts asking for one review each."""
    return [
        [
            {"role": "system", "content": "You write short, realistic product reviews."},
            {
                "role": "user",
                "content": f"Write one {SENTIMENTS[i % 4]} review of a {PRODUCTS[i % len(PRODUCTS)]} "
                f"in two sentences. Reply with the review text only.",
            },
        ]
        for i in range(count)
    ]


def current_workload(prompts: int, new_tokens: int) -> Workload:
    """Round 1's workload as ChatRequests (seed = index), 0.8 temperature, top_p 0.95."""
    params = GenerationParams(max_new_tokens=new_tokens, temperature=0.8, top_p=0.95, repetition_penalty=1.1)
    requests = [ChatRequest(key=str(i), messages=m, seed=i) for i, m in enumerate(review_prompts(prompts))]
    return Workload("current", requests, params)


def realistic_workload(spec_path: Path, prompts: int, new_tokens: int) -> Workload:
    """`prompts` requests exactly as `synth-assets run` would send them for `spec_path` with
    num_samples = prompts and max_new_tokens = new_tokens (same rendering, mode, stop strings, seeds).

    Raises SpecError when the spec or its seed file is bad."""
    from synth_assets.generation.prompts import expand_prompts, prompt_messages
    from synth_assets.seed import load_seed_data
    from synth_assets.spec import load_spec

    spec = load_spec(spec_path)
    params = spec.generation.model_copy(update={"max_new_tokens": new_tokens})
    spec = spec.model_copy(update={"num_samples": prompts, "generation": params})
    frame = expand_prompts(spec, load_seed_data(spec))
    continuation = params.mode == "continuation"
    requests = [
        ChatRequest(
            key=str(row.prompt_id),
            messages=[{"role": "user", "content": row.prompt_text}]
            if continuation
            else prompt_messages(row.system_prompt, row.prompt_text),
            seed=int(row.generation_seed),
            continuation=continuation,
            stop=params.stop_strings(),
        )
        for row in frame.itertuples(index=False)
    ]
    return Workload(f"realistic ({spec_path.name})", requests, params)


# ---- in-process rows -------------------------------------------------------------------------------


def run_engine(workload: Workload, dtype: str, batch_size: int) -> Measurement:
    """Our local engine as a spec runs it (per-request seeded sampling, exact top-p)."""
    from synth_assets.generation.local_llm import get_local_model, resolve_dtype

    model = get_local_model(dtype=dtype)
    params = workload.params
    settings = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "repetition_penalty": params.repetition_penalty,
    }
    model.generate(workload.requests[:2], max_new_tokens=4, batch_size=2, **settings)  # warm-up
    started = time.perf_counter()
    results = model.generate(
        workload.requests, max_new_tokens=params.max_new_tokens, batch_size=batch_size, **settings
    )
    seconds = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    return Measurement(workload.name, f"engine ({resolve_dtype(dtype)})", tokens, seconds)


def profile_engine(workload: Workload, dtype: str, batch_size: int) -> None:
    """Where the engine's seconds go on this workload, printed: prefill vs decode forward passes (and
    the prompt tokens each computed, padding included), sampling, dropping finished rows; and how much
    of the prompts a prefix tree shares (what `prefix_cache` can skip)."""
    import functools

    from synth_assets.generation import continuous_batching
    from synth_assets.generation.local_llm import get_local_model
    from synth_assets.generation.prefix_cache import common_prefix

    model = get_local_model(dtype=dtype)
    encoded = sorted(tuple(model.encode(r)) for r in workload.requests)
    total = sum(map(len, encoded))
    # in sorted order, a prompt's longest shared prefix with any other is with a neighbour
    reusable = sum(common_prefix(a, b) for a, b in itertools.pairwise(encoded))
    print(f"profile: {len(encoded)} prompts, {total / len(encoded):.1f} tokens on average; a prefix tree "
          f"over them holds {reusable / total:.1%} fewer tokens", flush=True)  # fmt: skip
    seconds = dict.fromkeys(("prefill", "decode", "sampling", "dropping finished rows"), 0.0)
    counts = dict.fromkeys(("prefill", "decode", "fed", "rows"), 0)
    forward = model._model.forward

    @functools.wraps(forward)
    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = forward(*args, **kwargs)
        kind = "prefill" if kwargs["input_ids"].shape[1] > 1 else "decode"
        seconds[kind] += time.perf_counter() - started
        counts[kind] += 1
        counts["fed" if kind == "prefill" else "rows"] += kwargs["input_ids"].numel()
        return out

    def timed(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - started

        return wrapper

    originals = {name: getattr(continuous_batching, name) for name in ("sample_next", "_select")}
    model._model.forward = timed_forward
    continuous_batching.sample_next = timed("sampling", originals["sample_next"])
    continuous_batching._select = timed("dropping finished rows", originals["_select"])
    try:
        params = workload.params
        started = time.perf_counter()
        results = model.generate(
            workload.requests,
            max_new_tokens=params.max_new_tokens,
            batch_size=batch_size,
            temperature=params.temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
        )
        wall = time.perf_counter() - started
    finally:
        del model._model.forward  # the instance attribute: the class's forward again
        for name, function in originals.items():
            setattr(continuous_batching, name, function)
    tokens = sum(r.completion_tokens for r in results)
    print(
        f"profile: {tokens} tokens in {wall:.1f}s = {tokens / wall:.1f} tok/s, {batch_size} slots", flush=True
    )
    for name, spent in [
        *seconds.items(),
        ("other (Python, prefix gathering, joins)", wall - sum(seconds.values())),
    ]:
        print(f"  {name}: {spent:.1f}s ({spent / wall:.0%})", flush=True)
    fed_per_s = counts["fed"] / max(seconds["prefill"], 1e-9)
    print(f"  prefill: {counts['prefill']} passes fed {counts['fed']} prompt tokens incl. padding "
          f"({counts['fed'] / total:.0%} of the prompts' tokens), {fed_per_s:.0f}/s; "
          f"decode: {counts['decode']} steps, {counts['rows'] / max(counts['decode'], 1):.1f} rows per step, "
          f"{1000 * seconds['decode'] / max(counts['decode'], 1):.0f} ms per step", flush=True)  # fmt: skip


def naive_loop(model_dir: str, workload: Workload, limit: int, threads: int) -> Measurement:
    """The guide's loop: one prompt at a time, `model.generate` with sampling, float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stop = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    params = workload.params
    requests = workload.requests[:limit]
    torch.manual_seed(0)
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for request in requests:
            if request.continuation:
                ids = tokenizer(request.messages[0]["content"], return_tensors="pt")
            else:
                ids = tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
            extra: dict[str, Any] = (
                {"stop_strings": list(request.stop), "tokenizer": tokenizer} if request.stop else {}
            )
            out = model.generate(
                **ids,
                max_new_tokens=params.max_new_tokens,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                repetition_penalty=params.repetition_penalty,
                pad_token_id=tokenizer.eos_token_id,
                **extra,
            )
            completion = out[0, ids["input_ids"].shape[1] :].tolist()
            end = next((i for i, t in enumerate(completion) if t in stop), None)
            tokens += len(completion) if end is None else end + 1
    seconds = time.perf_counter() - started
    note = (
        f"first {len(requests)} of {len(workload.requests)} prompts" if limit < len(workload.requests) else ""
    )
    return Measurement(workload.name, "naive loop (float32)", tokens, seconds, note)


def llama_cpp_in_process(gguf: str, workload: Workload, threads: int) -> Measurement | None:
    """llama.cpp (llama-cpp-python) on the same GGUF file, one request at a time, in this process."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp: llama-cpp-python not installed, skipped", flush=True)
        return None
    from llama_cpp import Llama

    from synth_assets.generation.llama_server import disable_extra_buffer_types

    disable_extra_buffer_types()  # llama-cpp-python 0.3.36 segfaults on AMX CPUs otherwise
    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_batch=512, verbose=False, seed=0)
    params = workload.params
    tokens = 0
    started = time.perf_counter()
    for request in workload.requests:
        response = llm.create_chat_completion(
            messages=request.messages,  # type: ignore[arg-type]
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
        )
        tokens += int(response["usage"]["completion_tokens"])  # type: ignore[index]
    seconds = time.perf_counter() - started
    return Measurement(workload.name, "llama.cpp in-process (sequential)", tokens, seconds)


# ---- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve(command: list[str], port: int, log_path: Path, ready_timeout_s: float = 180.0) -> Iterator[str]:
    """Run a server until the block ends; yields its OpenAI base URL once /v1/models answers.

    Raises RuntimeError (with the log's tail) when it exits or does not answer in time."""
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"{command[0]} exited with {process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not answer on port {port} in {ready_timeout_s:.0f}s")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def server_params(workload: Workload, base_url: str, concurrency: int) -> GenerationParams:
    return workload.params.model_copy(
        update={
            "backend": "openai",
            "base_url": base_url,
            "model": "smollm2-135m-instruct",
            "max_concurrency": concurrency,
            "timeout_s": 600.0,
        }
    )


def through_backend(workload: Workload, params: GenerationParams, row: str) -> Measurement:
    """The workload sent through our OpenAI-compatible backend (adaptive concurrency, retries). The
    server is warmed by `warm_server` beforehand, not here, so both server rows get the same warm-up."""
    import httpx  # noqa: F401  (imported before the clock starts, as the direct client's modules are)

    from synth_assets.generation.backends import OpenAICompatibleBackend

    backend = OpenAICompatibleBackend(params)
    failures: list[str] = []
    tokens = [0]

    def on_batch(results: list[Any], failed: list[Any]) -> None:
        tokens[0] += sum(r.completion_tokens for r in results)
        failures.extend(f.error for f in failed)

    started = time.perf_counter()
    backend.generate(workload.requests, params, on_batch)
    seconds = time.perf_counter() - started
    # the adaptive limit's path shows whether latency backoff throttled a batching server
    history = getattr(backend, "concurrency_history", [])
    note = f"concurrency limit {min(history)}-{max(history)}, last {history[-1]}" if history else ""
    if failures:
        note += f"; {len(failures)} failed: {failures[0][:80]}"
    return Measurement(workload.name, row, tokens[0], seconds, note)


def direct_client(
    workload: Workload, params: GenerationParams, row: str, requests: Sequence[ChatRequest] | None = None
) -> Measurement:
    """The same request bodies, `params.max_concurrency` in flight, stdlib HTTP, no retries
    (`requests`: a part of the workload's, e.g. `warm_server`'s; default all)."""
    import http.client
    from urllib.parse import urlsplit

    from synth_assets.generation.backends import OpenAICompatibleBackend

    backend = OpenAICompatibleBackend(params)  # only to build exactly the bodies the backend sends
    url = urlsplit(str(params.base_url))

    def post(request: ChatRequest) -> int:
        path = f"{url.path}/completions" if request.continuation else f"{url.path}/chat/completions"
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=params.timeout_s)
        try:
            body = json.dumps(backend._body(request, params))
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {str(payload)[:200]}")
            return int(payload["usage"]["completion_tokens"])
        finally:
            connection.close()

    with ThreadPoolExecutor(params.max_concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(post, workload.requests if requests is None else requests))
        seconds = time.perf_counter() - started
    return Measurement(workload.name, row, tokens, seconds)


def warm_server(warm: Workload, params: GenerationParams) -> None:
    """The same warm-up before every server row: `warm`'s prompts (not among the measured ones), all at
    once, so every slot has run a prefill and a decode before the clock starts."""
    direct_client(warm, params, "warm-up")


def server_counters(base_url: str) -> dict[str, float]:
    """llama-server's own counters (`GET /metrics`, served with `--metrics`; Prometheus text), e.g.
    `prompt_tokens_total`: prompt tokens it evaluated, cached ones excluded. {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/metrics", timeout=5) as response:
            return prometheus_counters(response.read().decode())
    except OSError:
        return {}


def prometheus_counters(text: str) -> dict[str, float]:
    """Prometheus text exposition (`name value` lines, `#` comments) as {name: value}, llama.cpp's
    `llamacpp:` prefix dropped; lines that are not a number are skipped."""
    counters: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#"):
            try:
                counters[name.removeprefix("llamacpp:")] = float(value)
            except ValueError:
                continue
    return counters


def server_work(before: dict[str, float], after: dict[str, float]) -> str:
    """What the server did between two `server_counters` readings, as a note: the same prompts must
    cost every row the same prefill, else the rows are not comparable."""
    if not before or not after:
        return ""
    done = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    return (
        f"server: {done.get('prompt_tokens_total', 0):.0f} prompt tokens evaluated "
        f"({done.get('prompt_seconds_total', 0):.1f}s), "
        f"{done.get('prompt_tokens_cached_total', 0):.0f} from its cache, "
        f"{done.get('tokens_predicted_total', 0):.0f} generated, "
        f"{done.get('n_decode_total', 0):.0f} decode calls"
    )


def load_average() -> str:
    """The 1-minute load average (other jobs on a shared box move these figures)."""
    return f"{os.getloadavg()[0]:.2f}"


def server_rounds(
    workload: Workload,
    warm: Workload,
    concurrency: int,
    rows: dict[str, Any],
    rounds: int,
    start: Callable[[str], AbstractContextManager[str]],
    first_round: int = 1,
) -> dict[str, list[Measurement]]:
    """Each row of `rows` (name -> function(workload, params, name) -> Measurement) once per round,
    each on a server of its own (`start(label)` yields its base URL; the label names its log) after
    the same `warm_server`, the order turned round each round (odd rounds in `rows`' order, even ones
    reversed; rounds are numbered from `first_round`, so rounds split over invocations keep turning);
    prints each row's figure as it is measured and returns the rounds per row, each note ending with
    what the server did for it (`server_work`).

    A fresh server per row because llama-server keeps prompts it has seen (slot and host-memory
    prompt cache): on one server the row that ran first evaluated 12,307 prompt tokens, the next
    rows 853-1,808 for the same 128 prompts, and the first row measured a third of the speed. A
    real run sends each prompt once, which is what every row now meets. The order still turns
    round: on a shared box the load of other jobs changes by the minute."""
    measured: dict[str, list[Measurement]] = {name: [] for name in rows}
    for number in range(first_round, first_round + rounds):
        order = list(rows) if number % 2 == 1 else list(reversed(rows))
        for name in order:
            with start(f"round{number}_row{list(rows).index(name) + 1}") as base_url:
                params = server_params(workload, base_url, concurrency)
                warm_server(warm, params)
                before = server_counters(base_url)
                measurement = rows[name](workload, params, name)
                work = server_work(before, server_counters(base_url))
                measurement.note = "; ".join(part for part in (measurement.note, work) if part)
                measured[name].append(measurement)
            print(f"  round {number}, {name}: {measurement.tokens} tokens in {measurement.seconds:.1f}s = "
                  f"{measurement.tok_s:.1f} tok/s; {measurement.note}; load average {load_average()}",
                  flush=True)  # fmt: skip
    return measured


def llama_server_binary(explicit: str | None) -> str | None:
    """--llama-server, else $LLAMA_SERVER, else `llama-server` on PATH, else the build script's cache."""
    from synth_assets.generation.local_llm import default_cache_dir

    for candidate in (explicit, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate:
            return candidate
    version = "unknown"
    try:
        import importlib.metadata

        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        pass
    cached = default_cache_dir() / "llama-server" / version / "llama-server"
    return str(cached) if cached.is_file() else None


# ---- concurrency -----------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """One generation process of the concurrency figure: load, say 'ready', wait for 'go', generate."""
    from synth_assets.runtime import prepare_process

    # first thing, as `synth-assets run` does: the thread count is chosen from the load before this
    # process's own imports and model loading add to it
    prepare_process()
    workload = realistic_workload(Path(args.spec), args.concurrency_prompts, args.new_tokens)
    from synth_assets.generation.local_llm import get_local_model

    params = workload.params
    settings = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "repetition_penalty": params.repetition_penalty,
    }
    from synth_assets.runtime import choose_threads

    model = get_local_model(dtype=args.dtype)
    model.generate(workload.requests[:2], max_new_tokens=4, batch_size=2, **settings)
    print(f"ready {choose_threads().threads}", flush=True)
    sys.stdin.readline()
    started = time.time()
    results = model.generate(
        workload.requests, max_new_tokens=params.max_new_tokens, batch_size=args.batch_size, **settings
    )
    finished = time.time()
    tokens = sum(r.completion_tokens for r in results)
    print(json.dumps({"tokens": tokens, "started": started, "finished": finished}), flush=True)


def wait_for_quiet(below: float = 0.3, limit_s: float = 240.0) -> str:
    """Wait until the 1-minute load average is under `below` (at most `limit_s`); what it waited.

    A run picks its thread count from the load (`runtime.py`), and the rows measured just before leave
    a load of ~2 that decays over minutes: without waiting, the lone run of the concurrency figure
    took 1 thread, not the 2 it gets on a quiet machine, and the ratio flattered the pair."""
    started = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - started < limit_s:
        time.sleep(5)
    return f"waited {time.monotonic() - started:.0f}s for load average {os.getloadavg()[0]:.2f}"


def concurrent_processes(args: argparse.Namespace, count: int, workload_name: str) -> Measurement:
    """`count` worker processes started together, on a machine left quiet first (`wait_for_quiet`);
    aggregate tok/s over the span they all ran."""
    quiet = wait_for_quiet()
    command = [
        sys.executable, __file__, "--worker", "--spec", str(args.spec), "--dtype", args.dtype,
        "--concurrency-prompts", str(args.concurrency_prompts), "--new-tokens", str(args.new_tokens),
        "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    threads: list[str] = []
    try:
        for process in processes:  # every process loaded and warm before any starts timing
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("ready"):
                raise RuntimeError(f"concurrency worker failed to start (said {line!r})")
            threads.append(line.split()[1])
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=3600)
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    span = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    per_process = ", ".join(f"{r['tokens'] / (r['finished'] - r['started']):.1f}" for r in reports)
    return Measurement(
        workload_name,
        f"{count} process{'es' if count > 1 else ''} at once (aggregate)",
        sum(r["tokens"] for r in reports),
        span,
        f"each {args.concurrency_prompts} prompts, threads as a run picks them ({', '.join(threads)}); "
        f"per process tok/s {per_process}; {quiet}",
        {"processes": count},
    )


# ---- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; `--rows` is validated against ROWS. Raises SystemExit on bad arguments."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="demo spec of the realistic workload")
    parser.add_argument("--prompts", type=int, default=256, help="realistic workload: prompts")
    parser.add_argument("--new-tokens", type=int, default=128, help="realistic workload: max_new_tokens")
    parser.add_argument("--current-prompts", type=int, default=32, help="round-1 workload: prompts")
    parser.add_argument("--current-new-tokens", type=int, default=64, help="round-1 workload: new tokens")
    parser.add_argument("--naive-prompts", type=int, default=32, help="naive loop: prompts measured")
    parser.add_argument("--concurrency-prompts", type=int, default=64, help="prompts per process")
    parser.add_argument("--processes", default="1,2,4", help="process counts of the concurrency figure")
    parser.add_argument("--batch-size", type=int, default=64, help="engine: slots (rows decoded at once)")
    parser.add_argument("--parallel", type=int, default=8, help="llama-server slots (-np)")
    parser.add_argument(
        "--server-rounds", type=int, default=2, help="llama-server: alternating rounds per row"
    )
    parser.add_argument(
        "--first-round",
        type=int,
        default=1,
        help="llama-server: number of the first round (odd: our backend first), to split rounds over runs",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--llama-server", default=None, help="path of llama-server (default: see docs)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="server logs go here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (choose from {', '.join(ROWS)})")
    args.rows = rows
    try:
        args.processes = [int(p) for p in str(args.processes).split(",") if p.strip()]
    except ValueError:
        parser.error(f"--processes: expected a comma list of integers, got {args.processes!r}")
    for name in (
        "prompts",
        "new_tokens",
        "naive_prompts",
        "concurrency_prompts",
        "batch_size",
        "parallel",
        "server_rounds",
        "first_round",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(p < 1 for p in args.processes):
        parser.error("--processes: every count must be >= 1")
    return args


def amx_cpu() -> bool:
    import torch

    return bool(torch.cpu._is_amx_tile_supported())


def combined(rounds: list[Measurement]) -> Measurement | None:
    """Rounds of one row as one measurement: tokens and seconds added, notes kept (None when no round)."""
    if not rounds:
        return None
    notes = "; ".join(f"round {n}: {m.tok_s:.1f} tok/s {m.note}".strip() for n, m in enumerate(rounds, 1))
    return Measurement(
        rounds[0].workload,
        rounds[0].row,
        sum(m.tokens for m in rounds),
        sum(m.seconds for m in rounds),
        notes if len(rounds) > 1 else rounds[0].note,
    )


def ratio(numerator: Measurement | None, denominator: Measurement | None) -> float:
    if numerator is None or denominator is None or denominator.tok_s == 0:
        return float("nan")
    return numerator.tok_s / denominator.tok_s


def main(argv: Sequence[str] | None = None) -> None:
    # a SIGTERM (`timeout`, a CI limit) unwinds like Ctrl-C, so `serve` stops the servers it started
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    prepare_process()  # OMP_WAIT_POLICY=PASSIVE and thread counts before torch, as `synth-assets run` does
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    from synth_assets.generation.local_llm import find_gguf_file, get_local_model, resolve_dtype
    from synth_assets.runtime import request_threads

    request_threads(args.threads)  # every in-process row and server uses the same thread count
    dtype = resolve_dtype(args.dtype)
    print(f"CPU: {cpu_model()} ({args.threads} threads); engine dtype: {dtype}; "
          f"load average {load_average()}", flush=True)  # fmt: skip
    gguf = str(find_gguf_file())
    model_dir = str(get_local_model().model_dir)  # also makes sure the weight cache exists
    rows = set(args.rows)
    table: list[Measurement] = []

    def record(measurement: Measurement | None) -> Measurement | None:
        if measurement is not None:
            table.append(measurement)
            print(f"  {measurement.row}: {measurement.tokens} tokens in {measurement.seconds:.1f}s = "
                  f"{measurement.tok_s:.1f} tok/s {measurement.note}", flush=True)  # fmt: skip
        return measurement

    if "current" in rows:
        current = current_workload(args.current_prompts, args.current_new_tokens)
        record(run_engine(current, args.dtype, args.batch_size))
        record(naive_loop(model_dir, current, len(current.requests), args.threads))
        record(llama_cpp_in_process(gguf, current, args.threads))

    workload = realistic_workload(args.spec, args.prompts, args.new_tokens)
    print(f"realistic workload: {len(workload.requests)} prompts from {args.spec}, "
          f"max_new_tokens {args.new_tokens}, mode {workload.params.mode}, "
          f"stop {workload.params.stop_strings()}",
          flush=True)  # fmt: skip
    engine = engine_f32 = naive = llama_np = direct = None
    overhead_rounds: list[float] = []
    if "profile" in rows:
        profile_engine(workload, args.dtype, args.batch_size)
    if "engine" in rows:
        engine = record(run_engine(workload, args.dtype, args.batch_size))
    if "engine-float32" in rows:
        if engine is not None and dtype == "float32":
            engine_f32 = engine  # auto is float32 on this CPU: the same run
        else:
            engine_f32 = record(run_engine(workload, "float32", args.batch_size))
    if "naive" in rows:
        naive = record(naive_loop(model_dir, workload, args.naive_prompts, args.threads))
    if "python-server" in rows:
        if importlib.util.find_spec("llama_cpp") is None:
            print("python server: llama-cpp-python not installed, skipped", flush=True)
        else:
            port = free_port()
            command = [
                sys.executable, "-m", "synth_assets.generation.llama_server", "--model", gguf,
                "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads),
                "--n_ctx", "2048",
            ]  # fmt: skip
            with serve(command, port, args.log_dir / "synth_python_server.log") as base_url:
                params = server_params(workload, base_url, args.parallel)
                record(through_backend(workload, params, "python server (sequential), our backend"))
    if {"llama-server", "direct-client"} & rows:
        binary = llama_server_binary(args.llama_server)
        if binary is None:
            print("llama-server: not found; build it with scripts/build_llama_server.sh, skipped", flush=True)
        else:
            # 1024 tokens of context per slot: the longest realistic prompt plus 128 new tokens fit.
            command = [
                binary, "-m", gguf, "--host", "127.0.0.1", "--port", "{port}", "-np", str(args.parallel),
                "-c", str(1024 * args.parallel), "-t", str(args.threads), "--no-webui", "--metrics",
            ]  # fmt: skip
            if amx_cpu():
                # --no-repack is llama-server's use_extra_bufts=False (common.cpp): the AMX buffer type
                # that makes llama-cpp-python 0.3.36 segfault on multi-token prompts (README). Checked
                # on a 2-core AMX Xeon: without it this llama-server also died (SIGSEGV, exit 139)
                # warming up, before any request; kept off where there is no AMX.
                command.append("--no-repack")
            # the warm-up prompts come after the measured ones: never sent in a measured row
            warm_up = realistic_workload(args.spec, args.prompts + args.parallel, args.new_tokens)
            warm = Workload("warm-up", warm_up.requests[args.prompts :], warm_up.params)
            ours_row = f"llama-server -np {args.parallel}, our backend"
            direct_row = f"llama-server -np {args.parallel}, direct client"
            server_rows = {ours_row: through_backend} if "llama-server" in rows else {}
            if "direct-client" in rows:
                server_rows[direct_row] = direct_client

            def start(label: str) -> AbstractContextManager[str]:
                port = free_port()
                log = args.log_dir / f"synth_llama_server_{label}.log"
                return serve([str(port) if part == "{port}" else part for part in command], port, log)

            measured = server_rounds(
                workload, warm, args.parallel, server_rows, args.server_rounds, start, args.first_round
            )
            # every round ran both rows: the overhead is on matched rounds, added up
            llama_np = record(combined(measured.get(ours_row, [])))
            direct = record(combined(measured.get(direct_row, [])))
            overhead_rounds = [
                (ratio(d, o) - 1) * 100
                for o, d in zip(measured.get(ours_row, []), measured.get(direct_row, []), strict=False)
            ]
    by_processes: dict[int, Measurement] = {}
    if "concurrency" in rows:
        for count in args.processes:
            measured = record(concurrent_processes(args, count, workload.name))
            if measured is not None:
                by_processes[count] = measured

    print()
    print("| workload | row | tokens | seconds | tok/s | note |\n|---|---|---|---|---|---|")
    for m in table:
        print(f"| {m.workload} | {m.row} | {m.tokens} | {m.seconds:.1f} | {m.tok_s:.1f} | {m.note} |")
    print(f"\nCPU: {cpu_model()}, {args.threads} threads, engine dtype {dtype}, "
          f"batch size {args.batch_size}, load average at the end {load_average()}")  # fmt: skip
    overhead = (ratio(direct, llama_np) - 1) * 100
    # the same 128 requests in both rows, but sampled answers differ in length from run to run (the
    # server's batched arithmetic varies with what shares the batch: 2,582 and 2,703 tokens for the
    # same prompts and seeds), and on 2 cores prefill is ~80 % of the time: tok/s moves with the
    # length of the answers, wall seconds for the same requests much less
    wall_overhead = float("nan")
    if llama_np and direct and direct.seconds:
        wall_overhead = (llama_np.seconds / direct.seconds - 1) * 100
    print(
        f"RESULT engine_vs_llama_server={ratio(engine, llama_np):.2f} "
        f"f32_vs_naive={ratio(engine_f32, naive):.2f} "
        f"http_overhead_pct={overhead:.1f} "
        f"http_overhead_rounds_pct={','.join(f'{o:.1f}' for o in overhead_rounds) or 'nan'} "
        f"http_overhead_wall_pct={wall_overhead:.1f} "
        f"two_proc_vs_one={ratio(by_processes.get(2), by_processes.get(1)):.2f} "
        f"four_proc_vs_one={ratio(by_processes.get(4), by_processes.get(1)):.2f} "
        f"engine_tok_s={engine.tok_s if engine else float('nan'):.1f} "
        f"engine_f32_tok_s={engine_f32.tok_s if engine_f32 else float('nan'):.1f} "
        f"naive_tok_s={naive.tok_s if naive else float('nan'):.1f} "
        f"llama_server_tok_s={llama_np.tok_s if llama_np else float('nan'):.1f} "
        f"direct_client_tok_s={direct.tok_s if direct else float('nan'):.1f} "
        f"dtype={dtype} prompts={len(workload.requests)} new_tokens={args.new_tokens}"
    )


if __name__ == "__main__":
    main()
