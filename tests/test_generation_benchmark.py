"""benchmarks/generation.py: its command line, its workloads and how its server rows are run (no model,
no llama-server: loopback servers stand in)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import LoopbackHandler, LoopbackServer, completion_payload

from synth_assets.generation.local_llm import ChatRequest
from synth_assets.generation.prompts import expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import GenerationParams, load_spec

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "generation.py"
_spec = importlib.util.spec_from_file_location("generation_benchmark", BENCHMARK)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_defaults_are_the_realistic_workload_with_every_row() -> None:
    args = bench.parse_args([])
    assert (args.prompts, args.new_tokens, args.parallel) == (256, 128, 8)
    assert args.rows == list(bench.ROWS)
    assert args.processes == [1, 2, 4]
    assert args.spec == bench.DEFAULT_SPEC and args.spec.is_file()


def test_smaller_sizes_and_a_subset_of_rows() -> None:
    args = bench.parse_args(["--prompts", "8", "--rows", "engine, naive", "--processes", "1,2"])
    assert args.prompts == 8
    assert args.rows == ["engine", "naive"]
    assert args.processes == [1, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "engine,turbo"], "--rows: unknown turbo"),
        (["--prompts", "0"], "--prompts must be >= 1"),
        (["--processes", "1,two"], "--processes: expected a comma list of integers"),
        (["--processes", "0"], "--processes: every count must be >= 1"),
        (["--server-rounds", "0"], "--server-rounds must be >= 1"),
    ],
)
def test_bad_arguments_exit_with_a_one_line_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_realistic_workload_is_what_a_run_of_the_demo_spec_sends() -> None:
    workload = bench.realistic_workload(bench.DEFAULT_SPEC, 24, 128)
    spec = load_spec(bench.DEFAULT_SPEC)
    spec = spec.model_copy(update={"num_samples": 24})
    frame = expand_prompts(spec, load_seed_data(spec))

    assert len(workload.requests) == 24
    assert workload.params.max_new_tokens == 128
    # the spec's own mode, stop strings and per-prompt seeds
    assert workload.params.mode == spec.generation.mode == "continuation"
    assert all(r.continuation and r.stop == ("\n",) for r in workload.requests)
    assert [r.seed for r in workload.requests] == [int(s) for s in frame["generation_seed"]]
    assert [r.messages[0]["content"] for r in workload.requests] == list(frame["prompt_text"])
    assert len({r.key for r in workload.requests}) == 24
    # demos included, lengths vary
    texts = [r.messages[0]["content"] for r in workload.requests]
    assert all(text.count("\n- ") >= 4 for text in texts)
    assert len({len(text) for text in texts}) > 10


def test_current_workload_keeps_round_one() -> None:
    workload = bench.current_workload(32, 64)
    assert len(workload.requests) == 32
    assert workload.params.max_new_tokens == 64
    assert [r.seed for r in workload.requests] == list(range(32))
    assert workload.requests[0].messages[0]["role"] == "system"
    assert json.dumps(workload.requests[1].messages).count("review") >= 2


def test_ratios_of_missing_rows_are_nan() -> None:
    fast = bench.Measurement("w", "a", tokens=300, seconds=1.0)
    slow = bench.Measurement("w", "b", tokens=100, seconds=1.0)
    assert bench.ratio(fast, slow) == pytest.approx(3.0)
    assert bench.ratio(fast, None) != bench.ratio(fast, None)  # nan


def test_alternating_rounds_of_a_row_add_up() -> None:
    rounds = [bench.Measurement("w", "ours", 100, 10.0, "limit 8"), bench.Measurement("w", "ours", 50, 2.0)]
    total = bench.combined(rounds)
    assert (total.tokens, total.seconds) == (150, 12.0) and total.tok_s == pytest.approx(12.5)
    assert total.note == "round 1: 10.0 tok/s limit 8; round 2: 25.0 tok/s"
    assert bench.combined([]) is None
    assert bench.parse_args([]).server_rounds == 2


def test_every_server_row_meets_a_fresh_server_after_the_same_warm_up_and_the_order_turns_round(
    loopback: Callable[..., LoopbackServer],
) -> None:
    # llama-server keeps prompts it has seen: a row that shared a server with an earlier row found its
    # prompts cached and measured 2.6x the speed of the first. Every row gets a server of its own, sees
    # only the warm-up's prompts there before its own, and the first row changes every round.
    def answer(handler: LoopbackHandler, body: dict, number: int) -> None:
        handler.send(200, completion_payload())

    params = GenerationParams(backend="openai", model="m", base_url="http://x/v1", max_new_tokens=4)
    ask = lambda name: ChatRequest(key=name, messages=[{"role": "user", "content": name}], seed=1)  # noqa: E731
    workload = bench.Workload("w", [ask("measured-1"), ask("measured-2")], params)
    warm = bench.Workload("warm-up", [ask("warm-1"), ask("warm-2"), ask("warm-3")], params)
    servers: dict[str, LoopbackServer] = {}
    seen: list[tuple[str, str, list[str]]] = []

    @contextmanager
    def start(label: str) -> Iterator[str]:
        servers[label] = loopback(answer)
        yield servers[label].url

    def row(load: bench.Workload, row_params: GenerationParams, name: str) -> bench.Measurement:
        server = next(s for s in servers.values() if s.url == row_params.base_url)
        seen.append((name, server.url, [b["messages"][0]["content"] for b in server.handler.bodies]))
        return bench.Measurement(load.name, name, tokens=10, seconds=1.0, note=f"{name} note")

    measured = bench.server_rounds(workload, warm, 2, {"ours": row, "direct": row}, 3, start)
    assert [name for name, _, _ in seen] == ["ours", "direct", "direct", "ours", "ours", "direct"]
    assert len({url for _, url, _ in seen}) == 6 and len(servers) == 6
    assert all(sorted(before) == ["warm-1", "warm-2", "warm-3"] for _, _, before in seen)
    assert sorted(servers) == [f"round{r}_row{i}" for r in (1, 2, 3) for i in (1, 2)]
    assert [m.note for m in measured["ours"]] == ["ours note"] * 3  # a server without /metrics adds nothing
    # rounds split over invocations keep turning: a lone round 2 starts with the other row
    seen.clear()
    bench.server_rounds(workload, warm, 2, {"ours": row, "direct": row}, 1, start, first_round=2)
    assert [name for name, _, _ in seen] == ["direct", "ours"]
    assert bench.parse_args(["--first-round", "2"]).first_round == 2


def test_what_llama_server_did_for_a_row_comes_from_its_metrics() -> None:
    text = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1200
llamacpp:prompt_tokens_cached_total 40
llamacpp:prompt_seconds_total 6.25
llamacpp:tokens_predicted_total 300
llamacpp:n_decode_total 90
llamacpp:requests_processing not-a-number
"""
    before = bench.prometheus_counters(text)
    assert before["prompt_tokens_total"] == 1200 and "requests_processing" not in before
    after = {**before, "prompt_tokens_total": 13507.0, "prompt_seconds_total": 66.25, "n_decode_total": 600.0}
    assert bench.server_work(before, after) == (
        "server: 12307 prompt tokens evaluated (60.0s), 0 from its cache, 0 generated, 510 decode calls"
    )
    assert bench.server_work({}, after) == ""
