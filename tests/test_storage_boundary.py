"""The storage boundary (issue 11): no SQL outside `synth_assets.storage`, the named reads on a real
DuckDB file, JSON decoded once, one rule for "is this version good?", and the generation cost that
generated_samples records for the evaluation (issue 13, item 5). No Dagster, no model."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from synth_assets.evaluation.inputs import last_good_run, load_inputs
from synth_assets.lineage.diff import curated_versions, load_version
from synth_assets.storage import (
    GateRecord,
    GenerationRecord,
    Publication,
    Stage,
    Warehouse,
    is_good,
    stage_columns,
)

PACKAGE = Path(__file__).resolve().parent.parent / "synth_assets"
STORAGE = PACKAGE / "storage"
# SQL as it is written here: an upper-case statement keyword where a statement starts
SQL = re.compile(
    r"\b(SELECT\s+\S|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW|INDEX)|"
    r"ALTER\s+TABLE|DROP\s+TABLE|ATTACH\s|COPY\s+\S+\s+(TO|FROM))"
)
# SQL that is not against the warehouse: browse.py builds a SQLite file for Datasette from frames the
# storage package read (its DDL/inserts, and the canned query Datasette runs against that file)
SQLITE_EXPORT = {("browse.py", "LINEAGE_SQL"), ("browse.py", "_write_sqlite")}


def _sql_strings(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing top-level name, line, text) of every string literal (f-string parts included) in
    a module that reads as SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for top in tree.body:
        names = [t.id for t in getattr(top, "targets", []) if isinstance(t, ast.Name)]
        owner = getattr(top, "name", None) or (names[0] if names else "<module>")
        for node in ast.walk(top):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append((owner, node.lineno, node.value.strip().splitlines()[0][:80]))
    return found


def _outside_storage() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if STORAGE not in p.parents]


def test_the_scanner_finds_sql_where_there_is_some(tmp_path: Path) -> None:
    """The check below can fail: it finds the SQL of the storage package itself and of a planted module."""
    assert len([hit for p in STORAGE.glob("*.py") for hit in _sql_strings(p)]) > 20
    planted = tmp_path / "leak.py"
    planted.write_text(
        'def rows(store):\n    return store.query(f"SELECT * FROM \\"{table}\\" WHERE spec_name = ?")\n'
    )
    assert [owner for owner, _, _ in _sql_strings(planted)] == ["rows"]
    assert not SQL.search("select the newest version; delete nothing")  # prose is not SQL


def test_no_sql_outside_the_storage_package() -> None:
    leaks = [
        f"{path.relative_to(PACKAGE)}:{line} ({owner}): {text}"
        for path in _outside_storage()
        for owner, line, text in _sql_strings(path)
        if (path.name, owner) not in SQLITE_EXPORT
    ]
    assert leaks == []


def test_no_module_outside_storage_touches_the_engine() -> None:
    """No raw-SQL entry point of the Warehouse, no duckdb import: readers catch WAREHOUSE_ERRORS."""
    offenders = []
    for path in _outside_storage():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            raw_sql = isinstance(node, ast.Attribute) and node.attr in {"query", "read_only_query", "connect"}
            if raw_sql and not (isinstance(node.value, ast.Name) and node.value.id == "sqlite3"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Import) and any(a.name == "duckdb" for a in node.names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} import duckdb")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("duckdb"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from duckdb")
    assert offenders == []


# --------------------------------------------------------------------------- a real warehouse file


def _frame(stage: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=stage_columns(stage))


def _samples(run: str, n: int = 2) -> pd.DataFrame:
    return _frame(
        Stage.GENERATED_SAMPLES,
        [
            {
                "sample_id": f"{run}-s{i}",
                "prompt_id": f"p{i}",
                "label": "positive",
                "text": f"text {i} of {run}",
                "generation_params": json.dumps({"temperature": 0.8}),
                "prompt_tokens": 10,
                "completion_tokens": 5,
            }
            for i in range(n)
        ],
    )


def _write_generated(store: Warehouse, run: str, *verdicts: bool) -> None:
    """A generated_samples version and its gate verdicts in order (the last one is the newest)."""
    store.write_version(Stage.GENERATED_SAMPLES, "demo", run, _samples(run), promote=False)
    for passed in verdicts:
        store.record_gate("demo", run, Stage.GENERATED_SAMPLES, "gx_gate", passed, "ok" if passed else "bad")


def test_a_version_is_good_when_its_newest_verdict_passed(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    _write_generated(store, "run1", True)
    _write_generated(store, "run2", False)
    _write_generated(store, "run3", False, True)  # re-checked: the newest verdict counts
    _write_generated(store, "run4", True, False)
    _write_generated(store, "run5")  # never judged
    assert store.good_versions(Stage.GENERATED_SAMPLES, "demo") == ["run3", "run1"]
    assert store.last_good(Stage.GENERATED_SAMPLES, "demo") == "run3"
    assert store.last_good(Stage.GENERATED_SAMPLES, "demo", exclude_run_id="run3") == "run1"
    verdict = store.gate_verdict(Stage.GENERATED_SAMPLES, "demo", "run4")
    assert verdict is not None and not verdict.passed and verdict.summary == "bad"
    assert store.gate_verdict(Stage.GENERATED_SAMPLES, "demo", "run5") is None
    # no verdict: not good for a gated stage, good for a stage without a gate
    assert not is_good(Stage.CURATED_SET, None) and is_good(Stage.SEED_DATA, None)
    store.write_version(
        Stage.SEED_DATA, "demo", "run1", _frame(Stage.SEED_DATA, [{"seed_id": "a"}]), promote=True
    )
    assert store.good_versions(Stage.SEED_DATA, "demo") == ["run1"]
    assert store.good_versions(Stage.GENERATED_SAMPLES, "other") == []


def test_every_caller_uses_the_one_rule(tmp_path: Path) -> None:
    """diff's gate column, lineage's and evaluation's staged version agree: a curated version that
    failed and then passed a re-check is good (diff used bool_and over all rows before: FAILED)."""
    store = Warehouse(tmp_path / "w.duckdb")
    for run, verdicts in (("run1", (True,)), ("run2", (False, True)), ("run3", (True, False))):
        curated = _frame(Stage.CURATED_SET, [{"sample_id": f"{run}-s0", "prompt_id": "p0", "text": "t"}])
        store.write_versions(
            {Stage.CURATED_SET: curated, Stage.REJECTED_SAMPLES: _frame(Stage.REJECTED_SAMPLES, [])},
            "demo",
            run,
            promote=False,
        )
        for passed in verdicts:
            store.record_gate("demo", run, Stage.CURATED_SET, "gx_gate", passed, "s")
    table = curated_versions(store, "demo")
    assert dict(zip(table["run_id"], table["gate_passed"], strict=True)) == {
        "run1": True,
        "run2": True,
        "run3": False,
    }
    assert load_version(store, "demo", "run2").promoted_gate_passed is True
    assert store.staged_runs("demo") == ["run2", "run1"]  # the candidates evaluation reads


def test_evaluation_reports_are_judged_by_their_usefulness_gate(tmp_path: Path) -> None:
    """The report's verdict lives on its row; NULL (from before the gate) counts as passed."""
    store = Warehouse(tmp_path / "w.duckdb")
    for run, passed in (("run1", None), ("run2", True), ("run3", False)):
        row = _frame(Stage.EVALUATION_REPORT, [{"metrics": json.dumps({"f1": 0.5}), "passed": passed}])
        store.write_version(Stage.EVALUATION_REPORT, "demo", run, row, promote=passed is not False)
    assert store.good_versions(Stage.EVALUATION_REPORT, "demo") == ["run2", "run1"]
    baseline = last_good_run(store, "demo", exclude_run_id="run2")
    assert baseline is not None and baseline.run_id == "run1" and baseline.metrics == {"f1": 0.5}


def test_json_columns_are_decoded_once_at_the_boundary(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    rejected = _frame(
        Stage.REJECTED_SAMPLES,
        [
            {
                "sample_id": "s1",
                "prompt_id": "p1",
                "reasons": '["too_short"]',
                "details": '{"too_short": "3 < 20"}',
            }
        ],
    )
    store.write_version(Stage.REJECTED_SAMPLES, "demo", "run1", rejected, promote=True)
    # stage frames stay as written (JSON text), for the stage code that reads its own encoding
    assert store.read_version(Stage.REJECTED_SAMPLES, "demo", "run1")["reasons"].tolist() == ['["too_short"]']
    decoded = store.read_version(Stage.REJECTED_SAMPLES, "demo", "run1", decoded=True).iloc[0]
    assert decoded["reasons"] == ["too_short"] and decoded["details"] == {"too_short": "3 < 20"}
    row = store.rows_by_ids(Stage.REJECTED_SAMPLES, ["s1"]).iloc[0]
    assert row["reasons"] == ["too_short"]
    assert store.history(Stage.REJECTED_SAMPLES, "demo")["details"].tolist() == [{"too_short": "3 < 20"}]


def test_rows_by_ids_prefixes_versions_and_counts(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    _write_generated(store, "run1", True)
    _write_generated(store, "run2", True)
    prompts = [{"prompt_id": "p0", "demo_ids": '["a"]'}, {"prompt_id": "p1", "demo_ids": "[]"}]
    store.write_version(
        Stage.EXPANDED_PROMPTS, "demo", "run1", _frame(Stage.EXPANDED_PROMPTS, prompts), promote=True
    )
    newer = [{"prompt_id": "p0", "demo_ids": '["b"]'}]
    store.write_version(
        Stage.EXPANDED_PROMPTS, "demo", "run2", _frame(Stage.EXPANDED_PROMPTS, newer), promote=True
    )

    every = store.rows_by_ids(Stage.EXPANDED_PROMPTS, ["p0", "p1"], "demo")
    assert every["run_id"].tolist() == ["run1", "run1", "run2"]  # oldest first
    newest = store.rows_by_ids(Stage.EXPANDED_PROMPTS, ["p0", "p1"], "demo", newest_only=True)
    assert dict(zip(newest["prompt_id"], newest["demo_ids"], strict=True)) == {"p0": ["b"], "p1": []}
    assert store.rows_by_ids(Stage.EXPANDED_PROMPTS, [], "demo").empty
    assert store.rows_by_ids(Stage.GENERATED_SAMPLES, ["run1-s0"], "other").empty

    assert store.resolve_prefix("run1-s", [Stage.GENERATED_SAMPLES]) == [
        ("demo", "run1-s0"),
        ("demo", "run1-s1"),
    ]
    assert store.resolve_prefix("run2", [Stage.GENERATED_SAMPLES], column="run_id") == [("demo", "run2")]
    assert store.resolve_prefix("zzz", [Stage.GENERATED_SAMPLES, Stage.CURATED_SET]) == []

    versions = store.versions(Stage.GENERATED_SAMPLES, "demo")
    assert [(v.run_id, v.rows) for v in versions] == [("run1", 2), ("run2", 2)]
    assert store.ids_before(Stage.GENERATED_SAMPLES, "demo", "run2") == {"run1-s0", "run1-s1"}
    assert store.row_count(Stage.EXPANDED_PROMPTS, "demo") == 1  # the promoted version (run2)
    assert store.row_count(Stage.EXPANDED_PROMPTS, "demo", "run1") == 2
    assert store.promoted_version(Stage.EXPANDED_PROMPTS, "demo") == "run2"
    assert store.promoted_version(Stage.GENERATED_SAMPLES, "demo") is None  # never promoted
    assert store.newest_spec(Stage.GENERATED_SAMPLES) == "demo" and store.newest_spec() is None
    assert store.specs_with(Stage.GENERATED_SAMPLES) == ["demo"]


def test_reads_of_a_database_from_before_the_newer_tables(tmp_path: Path) -> None:
    """A file written before gate_results, publications or generation_runs existed reads as empty."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "CREATE TABLE curated_set_history (spec_name VARCHAR, run_id VARCHAR, sample_id VARCHAR)"
        )
        # one row: an imported (DuckLake) warehouse knows a stage by its versions, not by empty tables
        connection.execute("INSERT INTO curated_set_history VALUES ('demo', 'run1', 'a')")
    store = Warehouse(path)
    assert store.generation_record("demo", "run1", read_only=True) is None
    assert store.publications("demo", read_only=True).empty
    assert store.gate_verdicts(Stage.CURATED_SET, "demo", read_only=True) == {}
    assert not store.stage_exists(Stage.SEED_DATA, read_only=True)
    assert store.stage_exists(Stage.CURATED_SET, read_only=True)
    with pytest.raises(FileNotFoundError):
        Warehouse(tmp_path / "none.duckdb").versions(Stage.CURATED_SET, "demo", read_only=True)


# ------------------------------------------------------------ generation cost as data (issue 13 #5)


RECORD = GenerationRecord(
    samples=2,
    call_seconds=1.5,
    run_seconds=0.25,
    prompt_tokens=20,
    completion_tokens=10,
    calls_made=0,
    cache_hits=2,
)


def test_generation_cost_commits_with_its_version_or_not_at_all(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")

    def write(**with_it: object) -> None:
        store.write_version(
            Stage.GENERATED_SAMPLES,
            "demo",
            "run1",
            _samples("run1"),
            promote=True,
            generation=RECORD,
            **with_it,
        )

    with pytest.raises(LookupError):  # a failing publication rolls the whole transaction back
        write(publication=Publication(Stage.CURATED_SET, "no-such-run", True, "x"))
    assert store.generation_record("demo", "run1") is None
    assert store.read_version(Stage.GENERATED_SAMPLES, "demo", "run1").empty
    write(gate=GateRecord(Stage.GENERATED_SAMPLES, "gx_gate", True, "ok"))
    assert store.generation_record("demo", "run1") == RECORD
    assert store.generation_record("demo", "run1", read_only=True) == RECORD


def test_evaluation_reads_the_recorded_generation_seconds(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    seed = _frame(Stage.SEED_DATA, [{"seed_id": "a", "split": "train", "text": "seed", "label": "positive"}])
    store.write_version(Stage.SEED_DATA, "demo", "run1", seed, promote=True)
    store.write_version(
        Stage.GENERATED_SAMPLES, "demo", "run1", _samples("run1"), promote=True, generation=RECORD
    )
    curated = _frame(Stage.CURATED_SET, _samples("run1").to_dict("records"))
    store.write_versions(
        {Stage.CURATED_SET: curated, Stage.REJECTED_SAMPLES: _frame(Stage.REJECTED_SAMPLES, [])},
        "demo",
        "run1",
        promote=False,
        gate=GateRecord(Stage.CURATED_SET, "gx_gate", True, "ok"),
    )
    inputs = load_inputs(store, "demo")
    assert inputs.generation_seconds == pytest.approx(1.5)
    assert "generation_runs.call_seconds" in str(inputs.generation_seconds_source)
    # a version written before generation recorded its cost: no guessing, no number
    store.write_version(Stage.GENERATED_SAMPLES, "demo", "run1", _samples("run1"), promote=True)
    store.query("DELETE FROM generation_runs")
    assert load_inputs(store, "demo").generation_seconds is None
