"""benchmarks/generation.py: its command line and its workloads (no model, no server)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from synth_assets.generation.prompts import expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import load_spec

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
