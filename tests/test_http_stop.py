"""Stopping a real `synth-assets run` against a slow OpenAI-compatible server (issue 14).

The server is a real HTTP server on 127.0.0.1 in this test process; it takes a while per answer and
answers each prompt deterministically, so every row in `llm_cache` can be checked against the prompt
it was made for. The run is a real subprocess of the CLI, stopped with a real SIGINT or SIGTERM in the
middle of generation. No model is loaded for generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from conftest import (
    LoopbackHandler,
    LoopbackServer,
    completion_payload,
    start_cli_run,
    write_openai_spec,
)

from synth_assets.storage import Warehouse

ROOT = Path(__file__).resolve().parent.parent
ANSWER_S = 1.5  # answers take up to this long: a stop always lands with calls in flight


def answer_for(messages: list[dict[str, str]]) -> str:
    """The one answer the server gives to these messages (a review that passes the tiny spec's curation)."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:10]
    return f"This product number {digest} works well and I would buy it again for my family."


ANSWERED: list[tuple[float, str]] = []  # (when the server finished the answer, its messages as JSON)


def slow_and_deterministic(handler: LoopbackHandler, body: dict, number: int) -> None:
    # staggered (0.6-1.5 s), so a stop finds calls finished that have not yet filled a batch of 4
    time.sleep(0.6 + 0.3 * (number % 4))
    handler.send(200, completion_payload(answer_for(body["messages"])))
    ANSWERED.append((time.monotonic(), json.dumps(body["messages"], ensure_ascii=False)))


def _env(home: Path, database: Path) -> dict[str, str]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SYNTH_ASSETS_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "DAGSTER_HOME": str(home), "SYNTH_ASSETS_DB": str(database), "PYTHONUNBUFFERED": "1"}


def _slow_backend(loopback: Callable[..., LoopbackServer]) -> tuple[Any, Any, list[Any]]:
    """Our HTTP backend on a fresh slow loopback server (4 calls at a time, batches of 4), and 24
    requests for it; ANSWERED starts empty."""
    from synth_assets.generation.backends import OpenAICompatibleBackend
    from synth_assets.generation.local_llm import ChatRequest
    from synth_assets.spec import GenerationParams

    ANSWERED.clear()
    server = loopback(slow_and_deterministic)
    params = GenerationParams(
        backend="openai", model="m", base_url=server.url, timeout_s=30, max_concurrency=4, batch_size=4
    )
    requests = [
        ChatRequest(key=f"k{i}", messages=[{"role": "user", "content": f"question {i}"}], seed=1)
        for i in range(24)
    ]
    return OpenAICompatibleBackend(params), params, requests


def _cache(database: Path) -> list[dict]:
    return (
        Warehouse(database)
        .query("SELECT cache_key, messages, text, run_id FROM llm_cache")
        .to_dict("records")
    )


@pytest.mark.slow  # about 55 s: two CLI runs, the rerun curates and evaluates with the embedding model
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_stopping_a_run_against_a_slow_server_keeps_finished_calls_and_the_rerun_resumes(
    tmp_path: Path, loopback: Callable[..., LoopbackServer], stop: str
) -> None:
    ANSWERED.clear()
    server = loopback(slow_and_deterministic)
    total = 24
    spec_path = write_openai_spec(
        tmp_path / "specs",
        server.url,
        num_samples=total,
        extra="  max_concurrency: 4\n  timeout_s: 30\n",
        replacements={"batch_size: 8": "batch_size: 4"},
    )
    home, database = tmp_path / "home", tmp_path / "w.duckdb"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = _env(home, database)
    process = start_cli_run(spec_path, env)
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
    for line in process.stdout:  # stop once a batch is stored and more calls are in flight
        seen.append(line)
        if "generated 4/24 calls" in line or time.monotonic() > deadline:
            break
    assert any("generated 4/24 calls" in line for line in seen), "".join(seen)[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        run_id = run.run_id
        time.sleep(0.9)  # more calls finish than the stored batch holds
        answered_before = server.handler.count
        process.send_signal(signal.Signals[stop])
        sent = time.monotonic()
        # answered well before the stop (the client had time to read them): these must all be kept
        finished = {messages for at, messages in ANSWERED if at < sent - 0.3}
        rest, _ = process.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
        assert stopped_in < 5, f"took {stopped_in:.1f}s to stop: {rest[-3000:]}"
        assert process.returncode == 130, rest[-3000:]
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
        last = rest.strip().splitlines()[-1]
        assert last.startswith(f"error: stopped by {stop}: run {run_id} recorded as CANCELED"), last
        assert "Traceback" not in rest, rest[-3000:]

        # every call the server finished before the stop is kept, each with its own answer
        time.sleep(ANSWER_S + 0.5)  # requests the run abandoned finish on the server side now
        kept = _cache(database)
        assert 4 <= len(kept) < total
        assert all(row["run_id"] == run_id for row in kept)
        assert all(row["text"] == answer_for(json.loads(row["messages"])) for row in kept)
        assert finished <= {row["messages"] for row in kept}, "a call the server had answered was lost"
        # nothing half-written: no stage after the prompts got a version in this run
        for stage in ("generated_samples", "curated_set"):
            rows = Warehouse(database).query(
                f"SELECT count(*) AS n FROM {stage}_history WHERE run_id = ?", [run_id]
            )
            assert int(rows["n"].iloc[0]) == 0, stage
        assert f"{len(kept)} finished LLM calls of this run are kept in llm_cache" in last
        # nothing more was asked after the stop (the server saw at most the calls already in flight)
        assert server.handler.count <= answered_before + 4

        bodies_before = len(server.handler.bodies)
        rerun = subprocess.run(
            [sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec_path)],
            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert rerun.returncode in (0, 1), rerun.stderr[-3000:]  # 1: a gate may refuse the tiny data
        second = next(r for r in instance.get_runs() if r.run_id != run_id)
        cache = _cache(database)
        assert len(cache) == total and len({row["cache_key"] for row in cache}) == total
        assert all(row["text"] == answer_for(json.loads(row["messages"])) for row in cache)
        # the rerun asked the server only for the calls the stopped run had not finished
        made = sum(row["run_id"] == second.run_id for row in cache)
        assert made == total - len(kept)
        asked = server.handler.bodies[bodies_before:]
        assert len(asked) == made


def test_a_stop_while_calls_are_in_flight_stores_every_answer_already_received(
    loopback: Callable[..., LoopbackServer],
) -> None:
    """Fast and in-process: Ctrl-C lands inside the backend's event loop while answers that have not
    yet filled a batch are in hand; they are stored before the stop goes on (the next run would
    otherwise pay for them again)."""
    backend, params, requests = _slow_backend(loopback)
    stored: list[str] = []

    def store(results: list, failures: list) -> None:
        stored.extend(r.key for r in results)

    # Python's own Ctrl-C handler, as a fresh CLI process has it (Dagster, imported by other tests
    # in this process, may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = threading.Event()

    def ctrl_c_after_five_answers() -> None:  # mid-run however fast or slow the machine is
        while len(ANSWERED) < 5 and not done.wait(0.05):
            pass
        if not done.wait(0.2):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_after_five_answers, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.generate(requests, params, store)
        stopped = time.monotonic()
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    assert len(ANSWERED) < 24  # stopped in the middle
    answered = {json.loads(messages)[0]["content"] for at, messages in ANSWERED if at < stopped - 0.3}
    kept = {f"question {key[1:]}" for key in stored}
    assert answered and answered <= kept, (answered, kept)


@pytest.mark.parametrize("interrupt", ["DagsterExecutionInterruptedError", "KeyboardInterrupt"])
def test_a_stop_that_lands_inside_the_batch_write_stores_the_batch_and_leaves_no_call_running(
    loopback: Callable[..., LoopbackServer], caplog: pytest.LogCaptureFixture, interrupt: str
) -> None:
    """The stop lands while a full batch is being written (CI caught it so): that batch is still stored,
    and every call in flight ends before the HTTP client closes, so none of them fails on a closed
    client and asyncio logs nothing at shutdown (it used to print a traceback after the stop line)."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    backend, params, requests = _slow_backend(loopback)
    stored: list[str] = []
    writes = 0
    # as Dagster raises a stop inside a step, and as a plain Ctrl-C does outside one
    stop = {"DagsterExecutionInterruptedError": DagsterExecutionInterruptedError}.get(
        interrupt, KeyboardInterrupt
    )

    def store_interrupted_once(results: list, failures: list) -> None:
        nonlocal writes
        writes += 1
        if writes == 1:  # the first full batch: the stop arrives before the write
            raise stop
        stored.extend(r.key for r in results)

    with caplog.at_level("DEBUG", logger="asyncio"), pytest.raises(stop):
        backend.generate(requests, params, store_interrupted_once)
    assert writes == 2 and len(stored) >= 4, stored  # the interrupted batch was stored after all
    time.sleep(ANSWER_S + 0.5)  # a call left running would fail on the closed client by now
    shutdown_errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert not shutdown_errors, shutdown_errors
    assert len(ANSWERED) < 24  # nothing more was asked after the stop
