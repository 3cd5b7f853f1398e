"""DuckDB layout: history keeps every version, only passing versions are promoted (curated_set: staged,
then published by a passing evaluation), writes are atomic."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from synth_assets.storage import GateRecord, Publication, StorageError, Warehouse, stage_columns


def _curated(ids: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * len(ids) for column in stage_columns("curated_set")})
    frame["sample_id"] = ids
    frame["prompt_id"] = "p"
    frame["label"] = "positive"
    frame["text"] = [f"text {i}" for i in ids]
    frame["normalized_hash"] = ids
    return frame


def test_history_keeps_versions_and_promotion_is_gated(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "demo", "run1", _curated(["a", "b"]), promote=True)
    store.write_version("curated_set", "demo", "run2", _curated(["c"]), promote=False)
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a", "b"]
    assert store.read_version("curated_set", "demo", "run2")["sample_id"].tolist() == ["c"]
    store.write_version("curated_set", "demo", "run3", _curated(["d"]), promote=True)
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["d"]
    runs = store.query("SELECT DISTINCT run_id FROM curated_set_history ORDER BY run_id")
    assert runs["run_id"].tolist() == ["run1", "run2", "run3"]


def test_specs_do_not_touch_each_other(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "one", "r1", _curated(["a"]), promote=True)
    store.write_version("curated_set", "two", "r2", _curated(["b"]), promote=True)
    assert store.read_current("curated_set", "one")["sample_id"].tolist() == ["a"]


def test_failed_write_leaves_previous_version_intact(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "demo", "run1", _curated(["a"]), promote=True)
    bad_rejected = pd.DataFrame({"sample_id": ["x"]})  # lacks columns: the whole write must fail
    with pytest.raises(ValueError, match="lacks columns"):
        store.write_versions(
            {"curated_set": _curated(["z"]), "rejected_samples": bad_rejected}, "demo", "run2", promote=True
        )
    seed_rows = pd.DataFrame(
        {c: ["x"] for c in stage_columns("seed_data")} | {"source_row": ["not a number"]}
    )
    # curated_set is inserted first, then seed_data fails to cast: the transaction must roll back
    with pytest.raises(Exception, match=r"source_row|Could not convert|Conversion"):
        store.write_versions(
            {"curated_set": _curated(["z"]), "seed_data": seed_rows}, "demo", "run3", promote=True
        )
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a"]
    assert store.query("SELECT count(*) AS n FROM curated_set_history")["n"].iloc[0] == 1


def test_read_only_query_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no DuckDB file yet"):
        Warehouse(tmp_path / "none.duckdb").read_only_query("SELECT 1")


def _rejected(ids: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * len(ids) for column in stage_columns("rejected_samples")})
    frame["sample_id"], frame["reasons"] = ids, '["too_short"]'
    return frame


def _report(passed: bool) -> pd.DataFrame:
    return pd.DataFrame([{"metrics": "{}", "passed": passed}]).reindex(
        columns=stage_columns("evaluation_report")
    )


def _stage(store: Warehouse, run: str, ids: list[str], *, gx_passed: bool = True) -> None:
    """A curated_set version as the asset writes it: history only, with its GX verdict."""
    store.write_versions(
        {"curated_set": _curated(ids), "rejected_samples": _rejected([f"{run}-rej"])},
        "demo",
        run,
        promote=False,
    )
    store.record_gate("demo", run, "curated_set", "gx_gate", gx_passed, "verdict")


def test_staged_versions_are_published_only_by_a_passing_evaluation(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    _stage(store, "run1", ["a", "b"])
    _stage(store, "run2", ["c"], gx_passed=False)
    assert store.staged_runs("demo") == ["run1"]  # run2 failed its GX gate: never a candidate
    assert (
        store.read_current("curated_set", "demo").empty and store.published_run("curated_set", "demo") is None
    )

    store.write_version(
        "evaluation_report", "demo", "eval1", _report(True), promote=True,
        publication=Publication("curated_set", "run1", True, "gate passed"),
    )  # fmt: skip
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a", "b"]
    assert store.read_current("rejected_samples", "demo")["sample_id"].tolist() == ["run1-rej"]  # companion
    assert store.published_run("curated_set", "demo") == "run1"

    _stage(store, "run3", ["d"])
    assert store.staged_runs("demo") == ["run3", "run1"]  # newest first
    store.write_version(
        "evaluation_report", "demo", "eval3", _report(False), promote=False,
        publication=Publication("curated_set", "run3", False, "FAILED: same run: worse"),
    )  # fmt: skip
    # held back: nothing current changes, the decision and its reason are recorded
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a", "b"]
    assert store.read_current("rejected_samples", "demo")["sample_id"].tolist() == ["run1-rej"]
    log = store.publications("demo")
    assert log["version_run_id"].tolist() == ["run3", "run1"]  # newest first
    assert log["published"].tolist() == [False, True]
    assert log["reason"].iloc[0] == "FAILED: same run: worse"
    assert log["previously_published_run_id"].tolist() == ["run1", None]
    assert log["decided_in_run_id"].tolist() == ["eval3", "eval1"]
    assert store.publications("demo", read_only=True).equals(log)
    # the report row of the failed evaluation is history only, as before
    assert store.read_current("evaluation_report", "demo")["run_id"].tolist() == ["eval1"]


def test_publishing_a_missing_version_writes_nothing(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    with pytest.raises(LookupError, match="no version from run ghost"):
        store.write_version(
            "evaluation_report", "demo", "eval1", _report(True), promote=True,
            publication=Publication("curated_set", "ghost", True, "gate passed"),
        )  # fmt: skip
    assert store.query("SELECT count(*) AS n FROM evaluation_history")["n"].iloc[0] == 0
    assert store.publications("demo").empty


def test_publications_of_a_database_from_before_publication(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "old.duckdb"
    duckdb.connect(str(path)).close()  # a file without the publications table
    assert Warehouse(path).publications("demo", read_only=True).empty


def test_a_version_and_its_gate_verdict_commit_together(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    verdict = GateRecord("curated_set", "gx_gate", True, "all passed")
    store.write_versions({"curated_set": _curated(["a"])}, "demo", "run1", promote=False, gate=verdict)
    gates = store.query("SELECT run_id, asset, check_name, passed, summary FROM gate_results")
    assert gates.to_dict("records") == [
        {
            "run_id": "run1",
            "asset": "curated_set",
            "check_name": "gx_gate",
            "passed": True,
            "summary": "all passed",
        }
    ]
    assert store.staged_runs("demo") == ["run1"]
    # a write that fails part-way leaves neither the version nor its verdict (no version without one)
    bad_rejected = pd.DataFrame({"sample_id": ["x"]})
    with pytest.raises(ValueError, match="lacks columns"):
        store.write_versions(
            {"curated_set": _curated(["b"]), "rejected_samples": bad_rejected}, "demo", "run2",
            promote=False, gate=GateRecord("curated_set", "gx_gate", True, "all passed"),
        )  # fmt: skip
    with pytest.raises(LookupError):
        store.write_versions(
            {"curated_set": _curated(["c"])}, "demo", "run3", promote=False,
            publication=Publication("curated_set", "ghost", True, "x"),
            gate=GateRecord("curated_set", "gx_gate", True, "all passed"),
        )  # fmt: skip
    assert store.query("SELECT count(*) AS n FROM gate_results")["n"].iloc[0] == 1
    assert store.query("SELECT DISTINCT run_id FROM curated_set_history")["run_id"].tolist() == ["run1"]


@pytest.mark.parametrize("kind", ["directory", "not duckdb"])
def test_a_path_that_is_no_duckdb_file_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path
    if kind == "not duckdb":
        path = tmp_path / "notes.duckdb"
        path.write_text("a text file\n")
    expected = "is a directory" if kind == "directory" else "not a DuckDB database file"
    for read_only in (False, True):
        with (
            pytest.raises(StorageError, match=expected) as raised,
            Warehouse(path).connect(read_only=read_only),
        ):
            pass
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB filesystem (tmpfs), mounted for the test: needs root, skipped otherwise."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_says_so_in_one_line_and_keeps_the_last_version(full_disk: Path) -> None:
    store = Warehouse(full_disk / "w.duckdb")
    store.write_version("curated_set", "demo", "run1", _curated(["a", "b"]), promote=True)
    big = _curated([f"id{i}" for i in range(20000)])
    big["text"] = ["x" * 200 + str(i) for i in range(len(big))]
    with pytest.raises(StorageError) as raised:
        store.write_version("curated_set", "demo", "run2", big, promote=True)
    message = str(raised.value)
    assert "No space left on device" in message and str(full_disk / "w.duckdb") in message
    assert "\n" not in message and "cannot rollback" not in message
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a", "b"]
    store.close()  # before the fixture unmounts it: SQLite maps the catalog's WAL index into memory


def test_a_warehouse_written_by_a_newer_duckdb_is_one_line_saying_how_to_move_it(tmp_path: Path) -> None:
    # the project pins DuckDB 1.4.4 LTS (DuckLake offline); warehouses made under the old 2.0 pin
    # cannot be opened by it, and the user must learn how to carry them over, not read a traceback
    import gzip

    import duckdb

    if int(duckdb.__version__.split(".")[0]) >= 2:
        pytest.skip(f"DuckDB {duckdb.__version__} opens files written by 2.0.1; the pin is 1.4.4")
    newer = tmp_path / "synth_assets.duckdb"
    data = Path(__file__).parent / "data" / "duckdb2_layout.duckdb.gz"
    newer.write_bytes(gzip.decompress(data.read_bytes()))
    before = newer.read_bytes()
    with pytest.raises(StorageError) as raised:
        Warehouse(newer).check_usable()
    message = str(raised.value)
    assert "\n" not in message and str(newer) in message
    assert "written by a newer DuckDB than 1.4.4" in message and "EXPORT DATABASE" in message
    assert newer.read_bytes() == before
