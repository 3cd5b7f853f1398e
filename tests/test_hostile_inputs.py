"""A small subset of issue 15's hostile-input battery (`benchmarks/hostile_inputs.py`), so it cannot rot.

The real CLI runs in subprocesses against a DuckDB file that already holds a table; each bad input must
stop with one `error:` line naming the file or field, no traceback and the table unchanged. The whole
battery (98 cases, kill -9, 30 % faults) is the benchmark, not this test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import hostile_inputs

SUBSET = {
    "duplicate YAML key",
    "billion-laughs YAML aliases",
    "broken JSONL line 3",
    "chat control tokens in a seed row",
    "system prompt with control tokens",
    "'a' * 1000000000",
    "--db is a folder",
}


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[hostile_inputs.Bench]:
    server = hostile_inputs.Server()
    bench = hostile_inputs.Bench(tmp_path, server)
    with duckdb.connect(str(bench.database)) as connection:  # stands in for the last good run's tables
        connection.execute("CREATE TABLE curated_set AS SELECT 'kept' AS text, 1 AS n")
    yield bench
    server.close()


def test_a_subset_of_the_battery_stops_in_one_line_with_the_tables_intact(
    bench: hostile_inputs.Bench,
) -> None:
    cases = [case for case in hostile_inputs.all_cases() if case.name in SUBSET]
    assert len(cases) == len(SUBSET)
    before = hostile_inputs.snapshot(bench.database)
    outcomes = hostile_inputs.run_cases(bench, cases, timeout_s=120)
    assert [(o.case.name, o.problem) for o in outcomes if not o.clear] == []
    assert all(o.exit_code != 0 and len(o.error_lines) == 1 for o in outcomes)
    assert hostile_inputs.snapshot(bench.database) == before == {"curated_set": before["curated_set"]}


def test_the_judge_flags_a_command_that_succeeds_or_touches_the_tables(
    bench: hostile_inputs.Bench, tmp_path: Path
) -> None:
    succeeds = hostile_inputs.Case("CLI", "help", lambda folder, b: ["run", "--help"], "spec")
    assert "exit code 0" in hostile_inputs.judge(succeeds, bench, tmp_path / "a").problem

    def writes(folder: Path, b: hostile_inputs.Bench) -> list[str]:
        with duckdb.connect(str(b.database)) as connection:
            connection.execute("INSERT INTO curated_set VALUES ('lost', 2)")
        return ["run", "--spec", str(folder / "absent.yaml")]

    touched = hostile_inputs.judge(
        hostile_inputs.Case("CLI", "w", writes, "absent.yaml"), bench, tmp_path / "b"
    )
    assert touched.problem == "tables changed: curated_set"


def test_the_server_answer_names_the_prompt_it_answered() -> None:
    first, second = "Write a positive review.", "Write a negative review."
    assert f"reference {hostile_inputs.prompt_tag(first)}" in hostile_inputs.answer_for(first)
    assert hostile_inputs.prompt_tag(first) not in hostile_inputs.answer_for(second)
    assert len(hostile_inputs.all_cases()) >= 80
