"""DuckLake as the warehouse's engine (synth_assets.storage.lake, through `Warehouse`): every write a
snapshot readable by time travel, an unchanged re-write adds no data file, two real writer processes on the
embedded catalog and on a PostgreSQL catalog with S3 data lose nothing while a reader reads, and an
old-layout DuckDB warehouse is imported on first open or refused in one line. Skipped as a whole, saying
what to install, where DuckDB 1.4.4 and the extension wheels are not installed."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from conftest import lake_catalog, run_cli, write_openai_spec

from synth_assets.export import load_export_data
from synth_assets.generation.backends import build_backend
from synth_assets.generation.plan import first_step_requests
from synth_assets.generation.prompts import expand_prompts
from synth_assets.lineage.diff import load_diff
from synth_assets.lineage.versions import PinnedVersion, resolve_published, resolve_version
from synth_assets.seed import load_seed_data
from synth_assets.spec import load_spec
from synth_assets.storage import (
    HISTORY_TABLE,
    STAGE_COLUMNS,
    WAREHOUSE_ERRORS,
    GateRecord,
    Publication,
    StorageError,
    Warehouse,
    stage_columns,
)
from synth_assets.storage.lake import LakeConfig, LakeUnavailable, S3Settings, extension_dir, hide_password
from synth_assets.storage.migrate import MigrationRefused, import_warehouse

try:
    extension_dir()
except LakeUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

DATA = Path(__file__).parent / "data"


def seeds(count: int, changed: dict[int, str] | None = None) -> pd.DataFrame:
    rows = [
        {
            "seed_id": f"s{i}",
            "split": "train",
            "text": (changed or {}).get(i, f"review number {i}"),
            "label": "positive" if i % 2 else "negative",
            "source_file": "seeds.csv",
            "source_row": i,
        }
        for i in range(count)
    ]
    return pd.DataFrame(rows)


def curated(count: int, tag: str) -> pd.DataFrame:
    columns = stage_columns("curated_set")
    return pd.DataFrame(
        [
            {c: None for c in columns} | {"sample_id": f"{tag}{i}", "text": f"{tag} text {i}"}
            for i in range(count)
        ]
    )


def rejected(count: int, tag: str) -> pd.DataFrame:
    columns = stage_columns("rejected_samples")
    return pd.DataFrame(
        [{c: None for c in columns} | {"sample_id": f"{tag}-r{i}", "reasons": "[]"} for i in range(count)]
    )


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Warehouse]:
    lake = Warehouse(config=LakeConfig.embedded(tmp_path / "data"))
    yield lake
    lake.close()


def test_every_write_is_a_snapshot_and_earlier_ones_stay_readable(lake: Warehouse) -> None:
    first = lake.write_version("seed_data", "demo", "run-1", seeds(5), promote=True)
    second = lake.write_version("seed_data", "demo", "run-2", seeds(5, {0: "edited"}), promote=True)
    assert second > first
    assert lake.read_current("seed_data", "demo")["text"].iloc[0] == "edited"
    assert lake.published_run("seed_data", "demo") == "run-2"
    # time travel: the catalog as it was at the first snapshot
    assert lake.read_current("seed_data", "demo", snapshot=first)["text"].iloc[0] == "review number 0"
    assert lake.read_version("seed_data", "demo", "run-2", snapshot=first).empty
    history = lake.version_log("seed_data", "demo")
    assert history["run_id"].tolist() == ["run-1", "run-2"]
    assert history["snapshot_id"].tolist() == [first, second]
    assert lake.version_snapshot("seed_data", "run-1") == first
    assert lake.version_snapshot("seed_data", "run-2", "demo") == second
    assert lake.version_snapshot("seed_data", "never") is None
    version = lake.read_version("seed_data", "demo", "run-1")
    assert list(version.columns) == ["spec_name", *stage_columns("seed_data"), "run_id", "materialized_at"]
    assert version["seed_id"].tolist() == [f"s{i}" for i in range(5)]  # written order kept


def test_a_version_not_promoted_stays_out_of_the_current_one(lake: Warehouse) -> None:
    lake.write_version("seed_data", "demo", "good", seeds(3), promote=True)
    lake.write_version("seed_data", "demo", "bad", seeds(4), promote=False)
    assert lake.published_run("seed_data", "demo") == "good"
    assert len(lake.read_current("seed_data", "demo")) == 3
    assert len(lake.read_version("seed_data", "demo", "bad")) == 4


def test_unchanged_rewrite_adds_no_data_file_and_stays_within_a_tenth(lake: Warehouse) -> None:
    lake.write_version("seed_data", "demo", "run-0", seeds(400), promote=True)
    files, size = sorted(lake.data_files()), lake.storage_bytes()
    assert files  # 400 rows are over the inlining limit: Parquet files
    for run in range(1, 10):
        lake.write_version("seed_data", "demo", f"run-{run}", seeds(400), promote=True)
    assert sorted(lake.data_files()) == files
    assert lake.storage_bytes() <= 1.1 * size
    assert len(lake.version_log("seed_data", "demo")) == 10


def test_rows_added_between_snapshots_are_the_changed_rows_only(lake: Warehouse) -> None:
    before = lake.write_version("seed_data", "demo", "a", seeds(6), promote=True)
    after = lake.write_version("seed_data", "demo", "b", seeds(6, {2: "new text"}), promote=True)
    inserted = lake.rows_added_between("seed_data", before + 1, after)
    assert inserted["text"].tolist() == ["new text"]


def test_publication_and_gates_as_the_warehouse_does(lake: Warehouse) -> None:
    gate = GateRecord("curated_set", "curated_set_gate", True, "ok")
    lake.write_versions(
        {"curated_set": curated(3, "v1"), "rejected_samples": rejected(2, "v1")},
        "demo",
        "run-1",
        promote=False,
        gate=gate,
    )
    assert lake.staged_runs("demo") == ["run-1"]
    assert lake.published_run("curated_set", "demo") is None
    report = pd.DataFrame([{c: None for c in stage_columns("evaluation_report")} | {"passed": True}])
    lake.write_version(
        "evaluation_report",
        "demo",
        "eval-1",
        report,
        promote=True,
        publication=Publication("curated_set", "run-1", True, "usefulness gate passed"),
    )
    assert lake.read_current("curated_set", "demo")["sample_id"].tolist() == ["v10", "v11", "v12"]
    assert len(lake.read_current("rejected_samples", "demo")) == 2  # published together
    decisions = lake.publications("demo")
    assert decisions[["version_run_id", "decided_in_run_id", "published"]].values.tolist() == [
        ["run-1", "eval-1", True]
    ]
    assert [g["check_name"] for g in lake.gate_records("demo", "run-1")] == ["curated_set_gate"]
    before = lake.snapshot_id()
    with pytest.raises(LookupError, match="no version from run nope"):
        lake.write_version(
            "evaluation_report",
            "demo",
            "eval-2",
            report,
            promote=True,
            publication=Publication("curated_set", "nope", True, "x"),
        )
    assert lake.snapshot_id() == before  # nothing of the failed write was kept
    assert lake.read_version("evaluation_report", "demo", "eval-2").empty


def publication_story(store: Warehouse) -> dict[str, object]:
    """Stage, gate, publish, hold back, fail part-way: what a reader of `store` then sees."""

    def stage(run: str, ids: list[str], passed: bool) -> None:
        store.write_versions(
            {"curated_set": curated(len(ids), run), "rejected_samples": rejected(1, run)},
            "demo",
            run,
            promote=False,
            gate=GateRecord("curated_set", "gx_gate", passed, "verdict"),
        )

    def evaluate(run: str, version: str, passed: bool) -> None:
        report = pd.DataFrame([{c: None for c in stage_columns("evaluation_report")} | {"passed": passed}])
        decision = Publication("curated_set", version, passed, "gate passed" if passed else "FAILED: worse")
        store.write_version("evaluation_report", "demo", run, report, promote=passed, publication=decision)

    stage("run1", ["a", "b"], True)
    stage("run2", ["c"], False)
    evaluate("eval1", "run1", True)
    stage("run3", ["d"], True)
    evaluate("eval3", "run3", False)
    seed_rows = pd.DataFrame(
        {c: ["x"] for c in stage_columns("seed_data")} | {"source_row": ["not a number"]}
    )
    with pytest.raises(Exception, match=r"source_row|Could not convert|Conversion"):
        store.write_versions(
            {"curated_set": curated(1, "z"), "seed_data": seed_rows}, "demo", "run4", promote=True
        )
    log = store.publications("demo", read_only=True)
    return {
        "staged": store.staged_runs("demo"),
        "published": [
            store.published_run(s, "demo") for s in ("curated_set", "rejected_samples", "evaluation_report")
        ],
        "curated": store.read_current("curated_set", "demo")["sample_id"].tolist(),
        "rejected": store.read_current("rejected_samples", "demo")["sample_id"].tolist(),
        "run2": store.read_version("curated_set", "demo", "run2")["sample_id"].tolist(),
        "run4": len(store.read_version("curated_set", "demo", "run4")),
        "log": [
            [None if pd.isna(value) else value for value in row]
            for row in log[
                ["version_run_id", "decided_in_run_id", "published", "reason", "previously_published_run_id"]
            ]
            .astype(object)
            .values.tolist()
        ],
    }


def test_the_lake_answers_as_the_duckdb_file_did(lake: Warehouse) -> None:
    # what the DuckDB-file layout (main before the swap) answered for the same story, verbatim
    assert publication_story(lake) == {
        "staged": ["run3", "run1"],
        "published": ["run1", "run1", "eval1"],
        "curated": ["run10", "run11"],
        "rejected": ["run1-r0"],
        "run2": ["run20"],
        "run4": 0,
        "log": [
            ["run3", "eval3", False, "FAILED: worse", "run1"],
            ["run1", "eval1", True, "gate passed", None],
        ],
    }


def test_llm_cache_first_write_wins(lake: Warehouse) -> None:
    calls = pd.DataFrame([{"cache_key": "k1", "text": "first", "seconds": 1.0}])
    lake.store_calls(calls)
    lake.store_calls(calls.assign(text="second"))
    assert lake.cached_calls(["k1", "never"])["text"].tolist() == ["first"]


def test_missing_extension_wheels_is_one_line_saying_what_to_install() -> None:
    # the import system's own "not installed": a None entry in sys.modules makes `import` fail
    code = (
        "import sys; sys.modules['duckdb_ext'] = None\n"
        "from synth_assets.storage import LakeConfig, Warehouse\n"
        f"config = LakeConfig.embedded({str(Path('/nonexistent'))!r})\n"
        "Warehouse(config=config).published_run('seed_data', 'x')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert "LakeUnavailable: DuckLake extension wheels not installed: pip install duckdb==1.4.4" in last
    assert "duckdb-ext-ducklake==1.4.4.20260205" in last


def test_an_unusable_catalog_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=r"a-file.*Not a directory") as bad_folder:
        Warehouse(config=LakeConfig.embedded(blocker / "data")).snapshot_id()
    assert "\n" not in str(bad_folder.value)
    started = time.monotonic()
    unreachable = "postgres:dbname=lake host=127.0.0.1 port=1 user=u password=secret"
    with pytest.raises(StorageError, match="cannot attach the DuckLake catalog") as refused:
        Warehouse(config=LakeConfig(unreachable, f"{tmp_path / 'parquet'}/"), lock_timeout_s=5).snapshot_id()
    message = str(refused.value)
    assert "\n" not in message and "secret" not in message and "Connection refused" in message
    assert time.monotonic() - started < 30


# one writer process: SPEC versions of ROWS rows each, its own spec, started at the same time as another
WRITER = """
import json, sys, time
import pandas as pd
from synth_assets.storage import LakeConfig, S3Settings, Warehouse
config, spec, versions, rows = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s3 = S3Settings(**config["s3"]) if config.get("s3") else None
lake = Warehouse(config=LakeConfig(config["catalog"], config["data_path"], s3))
lake.check_usable()  # attached: what follows is the writes alone
print("ready", flush=True)
sys.stdin.readline()  # both start together: on a fast machine one finished before the other attached
started = time.time()
for version in range(versions):
    frame = pd.DataFrame([{"seed_id": f"{spec}-{version}-{i}", "split": "train", "text": f"{spec} {i}",
        "label": "a", "source_file": "f.csv", "source_row": i} for i in range(rows)])
    lake.write_version("seed_data", spec, f"run-{version}", frame, promote=True)
print(json.dumps({"spec": spec, "writing": [started, time.time()]}))
"""


def run_two_writers(config: LakeConfig, versions: int = 4, rows: int = 300) -> None:
    Warehouse(config=config).check_usable()  # the catalog exists before the first read, as after `make run`
    payload = json.dumps(
        {
            "catalog": config.catalog,
            "data_path": config.data_path,
            "s3": dataclasses.asdict(config.s3) if config.s3 else None,
        }
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, payload, spec, str(versions), str(rows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in ("alpha", "beta")
    ]
    for writer in writers:
        assert writer.stdout is not None
        said = writer.stdout.readline()
        if said.strip() != "ready":
            _, err = writer.communicate(timeout=60)
            pytest.fail(f"a writer did not start (said {said!r}): {err[-2000:]}")
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    reader, reads, failed = Warehouse(config=config, lock_timeout_s=5), 0, []
    while any(writer.poll() is None for writer in writers):
        try:
            reader.read_current("seed_data", "alpha", read_only=True)  # as the UI and the CLI read
            reads += 1
        except WAREHOUSE_ERRORS as exc:
            failed.append(str(exc).splitlines()[0])
        time.sleep(0.05)
    spans = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
        spans.append(json.loads(out.strip().splitlines()[-1])["writing"])
    # the two processes really wrote at the same time: each started writing before the other finished
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    assert failed == [], f"{len(failed)} of {reads + len(failed)} reads failed during the writes"
    for spec in ("alpha", "beta"):
        history = reader.version_log("seed_data", spec)
        assert history["run_id"].tolist() == [f"run-{v}" for v in range(versions)]
        assert history["row_count"].tolist() == [rows] * versions
        assert history["snapshot_id"].notna().all()
        for version in range(versions):
            frame = reader.read_version("seed_data", spec, f"run-{version}")
            assert frame["seed_id"].tolist() == [f"{spec}-{version}-{i}" for i in range(rows)]
        assert reader.published_run("seed_data", spec) == f"run-{versions - 1}"
    reader.close()


def test_two_writer_processes_on_the_embedded_catalog_lose_nothing(tmp_path: Path) -> None:
    run_two_writers(LakeConfig.embedded(tmp_path / "data"))


# run in another process: whether some process holds a read lock on SQLite's SHARED byte range of the
# database file (PENDING_BYTE + 2, 510 bytes: os_unix.c), i.e. whether a connection of it is protected
SHARED_LOCK_PROBE = """
import fcntl, os, struct, sys
descriptor = os.open(sys.argv[1], os.O_RDONLY)
probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0x40000000 + 2, 510, 0)
print(struct.unpack("hhqqi4x", fcntl.fcntl(descriptor, fcntl.F_GETLK, probe))[0] != fcntl.F_UNLCK)
"""


def test_opening_the_catalog_again_keeps_the_sqlite_locks_of_an_open_transaction(tmp_path: Path) -> None:
    # issue 11: a header read of the catalog file (Warehouse(path), connect()) closed a descriptor of
    # it, which drops all of the process's POSIX locks on it, also the SHARED lock DuckDB's SQLite held
    # for an open transaction; another process then deleted the WAL under it and a commit was lost
    config = LakeConfig.embedded(tmp_path / "data")
    lake = Warehouse(config=config)
    lake.write_version("seed_data", "alpha", "run-1", seeds(3), promote=True)
    catalog = config.catalog_file
    assert catalog is not None

    def locked() -> bool:
        probe = [sys.executable, "-c", SHARED_LOCK_PROBE, str(catalog)]
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip() == "True"

    with lake.connect() as connection:
        connection.execute("BEGIN TRANSACTION")
        connection.execute("SELECT count(*) FROM versions").fetchall()  # SQLite reads: SHARED lock taken
        assert locked()
        assert Warehouse(catalog).pending_import() is None  # locate(): an old-layout DuckDB file?
        Warehouse(config=config).check_usable()  # connect(): a SQLite file?
        assert locked()
        connection.execute("COMMIT")
    assert lake.version_log("seed_data", "alpha")["run_id"].tolist() == ["run-1"]
    lake.close()


def test_postgres_catalog_with_s3_data_two_writer_processes(
    postgres_database: dict[str, str], s3_session: dict[str, str]
) -> None:
    # the scale-out configuration (issue 11): catalog on a real PostgreSQL, Parquet on moto's S3 server
    settings = S3Settings(s3_session["endpoint"], s3_session["key_id"], s3_session["secret"])
    prefix = postgres_database["DAGSTER_PG_DB"]  # a fresh database per test: its name is unique
    config = LakeConfig(lake_catalog(postgres_database), f"s3://{s3_session['bucket']}/{prefix}/", settings)
    run_two_writers(config, versions=3, rows=200)
    lake = Warehouse(config=config)
    assert all(not path.startswith("/") for path in lake.data_files())  # in the bucket, not on disk
    lake.close()


def test_postgres_catalog_with_local_data(postgres_database: dict[str, str], tmp_path: Path) -> None:
    lake = Warehouse(config=LakeConfig(lake_catalog(postgres_database), f"{tmp_path / 'parquet'}/"))
    snapshot = lake.write_version("seed_data", "demo", "run-1", seeds(300), promote=True)
    lake.write_version("seed_data", "demo", "run-2", seeds(300, {1: "x"}), promote=True)
    assert lake.read_current("seed_data", "demo", snapshot=snapshot)["text"].iloc[1] == "review number 1"
    assert list((tmp_path / "parquet").rglob("*.parquet"))
    lake.close()


def old_layout_file(path: Path, *, earlier_curated: bool = False) -> dict[str, pd.DataFrame]:
    """A small warehouse of the earlier layout, written with plain SQL as that layout stored it (every
    stage twice: `<stage>` current, `<stage>_history` every version; rows copied per run): two seed
    versions, a staged curated set published by an evaluation, a gate row, a publication, an LLM call;
    `earlier_curated`: a curated set of run-1 before it (3 rows, tag b). Returns the history rows
    written, per history table."""
    stamp = pd.Timestamp("2026-11-01 10:00:00")
    earlier = [("run-1", curated(3, "b"))] if earlier_curated else []
    versions = {
        "seed_data": [("run-1", seeds(4)), ("run-2", seeds(4, {3: "later"}))],
        "curated_set": [*earlier, ("run-2", curated(2, "c"))],
        "rejected_samples": [("run-2", rejected(1, "c"))],
        "evaluation_report": [
            (
                "eval-1",
                pd.DataFrame([{c: None for c in stage_columns("evaluation_report")} | {"passed": True}]),
            )
        ],
    }
    current = {
        "seed_data": "run-2",
        "curated_set": "run-2",
        "rejected_samples": "run-2",
        "evaluation_report": "eval-1",
    }
    written: dict[str, pd.DataFrame] = {}
    with duckdb.connect(str(path)) as connection:
        for stage, columns in STAGE_COLUMNS.items():
            body = ", ".join(f'"{n}" {k}' for n, k in {"spec_name": "VARCHAR", **columns}.items())
            for table in (stage, HISTORY_TABLE[stage]):
                connection.execute(
                    f'CREATE TABLE "{table}" ({body}, run_id VARCHAR, materialized_at TIMESTAMP)'
                )
        connection.execute(
            "CREATE TABLE gate_results (spec_name VARCHAR, run_id VARCHAR, asset VARCHAR, "
            "check_name VARCHAR, passed BOOLEAN, summary VARCHAR, evaluated_at TIMESTAMP)"
        )
        connection.execute(
            "CREATE TABLE publications (spec_name VARCHAR, stage VARCHAR, version_run_id VARCHAR, "
            "decided_in_run_id VARCHAR, published BOOLEAN, reason VARCHAR, "
            "previously_published_run_id VARCHAR, decided_at TIMESTAMP)"
        )
        connection.execute(
            "CREATE TABLE llm_cache "
            "(cache_key VARCHAR PRIMARY KEY, text VARCHAR, seconds DOUBLE, run_id VARCHAR)"
        )
        for minute, (stage, runs) in enumerate(versions.items()):
            frames = []
            for offset, (run, frame) in enumerate(runs):
                rows = frame[stage_columns(stage)].copy()
                rows.insert(0, "spec_name", "demo")
                rows["run_id"], rows["materialized_at"] = (
                    run,
                    stamp + pd.Timedelta(minutes=minute * 10 + offset),
                )
                frames.append(rows)
                connection.register("incoming", rows)
                connection.execute(f'INSERT INTO "{HISTORY_TABLE[stage]}" BY NAME SELECT * FROM incoming')
                if run == current[stage]:
                    connection.execute(f'INSERT INTO "{stage}" BY NAME SELECT * FROM incoming')
                connection.unregister("incoming")
            written[HISTORY_TABLE[stage]] = pd.concat(frames, ignore_index=True)
        connection.execute(
            "INSERT INTO gate_results "
            "VALUES ('demo', 'run-2', 'curated_set', 'curated_set_gate', true, 'ok', ?)",
            [stamp],
        )
        connection.execute(
            "INSERT INTO publications "
            "VALUES ('demo', 'curated_set', 'run-2', 'eval-1', true, 'passed', NULL, ?)",
            [stamp],
        )
        connection.execute("INSERT INTO llm_cache VALUES ('k1', 'an answer', 1.5, 'run-1')")
    return written


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None whatever the dtype (NULL reads back as NaN in a float column)."""
    return frame.astype(object).where(frame.notna(), None)


def assert_imported(written: dict[str, pd.DataFrame], store: Warehouse) -> None:
    """Every old version reads back as it was written, the same versions are current, verdicts and
    publications came along."""
    for history, rows in written.items():
        stage = next(s for s, h in HISTORY_TABLE.items() if h == history)
        for run_id, old in rows.groupby("run_id", sort=False):
            new = store.read_version(stage, "demo", str(run_id))
            pd.testing.assert_frame_equal(plain(old.reset_index(drop=True)), plain(new), check_dtype=False)
    assert [store.published_run(s, "demo") for s in ("seed_data", "curated_set", "rejected_samples")] == [
        "run-2",
        "run-2",
        "run-2",
    ]
    assert store.published_run("evaluation_report", "demo") == "eval-1"
    assert store.staged_runs("demo") == ["run-2"]
    assert store.publications("demo")["version_run_id"].tolist() == ["run-2"]
    assert store.cached_calls(["k1"])["text"].tolist() == ["an answer"]


def test_an_old_layout_file_is_imported_on_first_open_and_only_read(tmp_path: Path) -> None:
    old = tmp_path / "synth_assets.duckdb"
    written = old_layout_file(old)
    before = old.read_bytes()
    store = Warehouse(old)  # --db / SYNTH_ASSETS_DB naming the old file
    assert store.path == tmp_path / "synth_assets.ducklake"
    assert_imported(written, store)
    assert old.read_bytes() == before  # only read
    store.write_version("seed_data", "demo", "run-3", seeds(4), promote=True)
    store.close()
    again = Warehouse(old)  # a second open (a new process's view) imports nothing twice
    assert [v.run_id for v in again.versions("seed_data", "demo")] == ["run-1", "run-2", "run-3"]
    assert again.query("SELECT count(*) AS n FROM imports")["n"].iloc[0] == 1


def test_two_processes_opening_an_old_file_at_once_import_it_once(tmp_path: Path) -> None:
    old = tmp_path / "synth_assets.duckdb"
    old_layout_file(old)
    code = (
        "import sys\nfrom synth_assets.storage import Warehouse\n"
        "print(len(Warehouse(sys.argv[1]).versions('seed_data', 'demo', read_only=True)))\n"
    )
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(old)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    answers = [reader.communicate(timeout=120) for reader in readers]
    assert [
        (reader.returncode, out.strip()) for reader, (out, _err) in zip(readers, answers, strict=True)
    ] == [(0, "2")] * 2
    store = Warehouse(old)
    assert store.query("SELECT count(*) AS n FROM imports")["n"].iloc[0] == 1
    assert store.query("SELECT count(*) AS n FROM versions WHERE stage = 'seed_data'")["n"].iloc[0] == 2


def test_the_default_catalog_imports_the_old_default_file_beside_it(tmp_path: Path) -> None:
    written = old_layout_file(tmp_path / "synth_assets.duckdb")
    store = Warehouse(tmp_path / "synth_assets.ducklake")  # the new default, the old file beside it
    assert_imported(written, store)
    assert store.versions("seed_data", "demo", read_only=True)  # read-only opens import too


def test_import_of_an_export_folder(tmp_path: Path, lake: Warehouse) -> None:
    written = old_layout_file(tmp_path / "synth_assets.duckdb")
    with duckdb.connect(str(tmp_path / "synth_assets.duckdb")) as connection:
        connection.execute(f"EXPORT DATABASE '{tmp_path / 'export'}' (FORMAT parquet)")
    counts = import_warehouse(tmp_path / "export", lake)
    assert counts["seed_data_history"] == 8 and counts["gate_results"] == 1
    assert_imported(written, lake)
    with pytest.raises(MigrationRefused, match=r"export: already imported into"):
        import_warehouse(tmp_path / "export", lake)


def test_a_file_of_a_newer_duckdb_is_refused_saying_how(tmp_path: Path) -> None:
    # a real warehouse written by DuckDB 2.0.1 (the version this project pinned before DuckLake)
    newer = tmp_path / "synth_assets.duckdb"
    newer.write_bytes(gzip.decompress((DATA / "duckdb2_layout.duckdb.gz").read_bytes()))
    store = Warehouse(newer)
    with pytest.raises(MigrationRefused) as refused:
        store.check_usable()
    message = str(refused.value)
    assert "\n" not in message
    assert "written by a newer DuckDB than 1.4.4" in message
    assert "EXPORT DATABASE '<folder>' (FORMAT parquet) and import the folder" in message
    assert newer.read_bytes() == gzip.decompress((DATA / "duckdb2_layout.duckdb.gz").read_bytes())


def test_a_duckdb_file_without_the_layout_is_refused_in_one_line(tmp_path: Path, lake: Warehouse) -> None:
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as connection:
        connection.execute("CREATE TABLE unrelated (a INTEGER)")
    with pytest.raises(
        MigrationRefused, match=r"other\.duckdb: a DuckDB file without the warehouse's tables"
    ):
        Warehouse(other).check_usable()
    with pytest.raises(MigrationRefused, match=r"missing\.duckdb: no such file to import"):
        import_warehouse(tmp_path / "missing.duckdb", lake)


def test_imported_versions_share_one_snapshot_and_still_diff_and_export_by_run(tmp_path: Path) -> None:
    written = old_layout_file(tmp_path / "synth_assets.duckdb", earlier_curated=True)
    store = Warehouse(tmp_path / "synth_assets.ducklake")
    assert_imported(written, store)
    imported = {v.run_id: v.snapshot_id for v in store.versions("curated_set", "demo", read_only=True)}
    assert list(imported) == ["run-1", "run-2"] and len(set(imported.values())) == 1
    store.write_version("curated_set", "demo", "run-3", curated(1, "d"), promote=False)
    # a run reference reads that run's rows at the import snapshot, not the other run's
    result, before, after = load_diff(store, "demo", "run-1", "run-2")
    assert before.snapshot_id == after.snapshot_id == imported["run-1"]
    assert before.curated["sample_id"].tolist() == ["b0", "b1", "b2"]
    assert after.curated["sample_id"].tolist() == ["c0", "c1"] and (result.rows_a, result.rows_b) == (3, 2)
    # @import snapshot: the newest of the versions it brought in
    assert resolve_version(store, "demo", f"@{imported['run-1']}") == PinnedVersion(
        "run-2", imported["run-1"]
    )
    assert resolve_version(store, "demo", "run-1").snapshot_id == imported["run-1"]
    # export: the imported publication of run-2, read at the import snapshot
    snapshot = resolve_published(store, "demo", "run-2")
    assert snapshot == imported["run-2"]
    data = load_export_data(store, "demo", snapshot=snapshot)
    assert data.curated_run_id == "run-2" and data.rows["sample_id"].tolist() == ["c0", "c1"]


def test_a_dry_run_counts_the_llm_cache_of_the_old_file_it_will_import(tmp_path: Path) -> None:
    spec_path = write_openai_spec(tmp_path / "specs", "http://127.0.0.1:9/v1", num_samples=3)
    spec = load_spec(spec_path)
    prompts = expand_prompts(spec, load_seed_data(spec))
    backend = build_backend(spec.generation)
    keys = [r.key for r in first_step_requests(spec, prompts, backend.fingerprint)]
    old = tmp_path / "data" / "synth_assets.duckdb"
    old.parent.mkdir()
    old_layout_file(old)
    with duckdb.connect(str(old)) as connection:  # two of the three calls answered in the old cache
        for key in keys[:2]:
            connection.execute("INSERT INTO llm_cache VALUES (?, 'old answer', 1.0, 'run-1')", [key])
    before = old.read_bytes()
    catalog = old.with_suffix(".ducklake")
    env = {**os.environ, "SYNTH_ASSETS_DB": str(catalog), "DAGSTER_HOME": str(tmp_path / "home")}
    dry = run_cli("run", "--spec", str(spec_path), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"LLM calls: {len(keys)} for the first step, 2 already in llm_cache" in dry.stdout
    assert f"warehouse: {old} (the old layout) is imported into {catalog} by the first run" in dry.stdout
    assert not catalog.exists() and old.read_bytes() == before  # nothing imported, nothing written


def test_two_processes_importing_one_old_file_into_a_postgres_catalog_import_it_once(
    postgres_database: dict[str, str], tmp_path: Path
) -> None:
    # a PostgreSQL catalog has no writer's turn: without the import's advisory lock both would import
    old = tmp_path / "synth_assets.duckdb"
    old_layout_file(old)
    catalog = lake_catalog(postgres_database)
    env = {
        **os.environ,
        "SYNTH_ASSETS_LAKE_CATALOG": catalog,
        "SYNTH_ASSETS_LAKE_DATA": f"{tmp_path / 'parquet'}/",
    }
    Warehouse(config=LakeConfig(catalog, f"{tmp_path / 'parquet'}/")).check_usable()  # tables exist
    importers = [
        subprocess.Popen(
            [sys.executable, "-m", "synth_assets.storage.migrate", str(old)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    answers = [(importer.communicate(timeout=120), importer.returncode) for importer in importers]
    codes = sorted(code for _answer, code in answers)
    assert codes == [0, 2, 2], answers
    refusals = [err.strip() for (_out, err), code in answers if code == 2]
    assert all(r == f"error: {old}: already imported into {hide_password(catalog)}" for r in refusals), (
        refusals
    )
    store = Warehouse(config=LakeConfig(catalog, f"{tmp_path / 'parquet'}/"))
    assert store.query("SELECT count(*) AS n FROM imports")["n"].iloc[0] == 1
    assert store.query("SELECT count(*) AS n FROM versions WHERE stage = 'seed_data'")["n"].iloc[0] == 2
    assert store.query("SELECT count(*) AS n FROM llm_cache")["n"].iloc[0] == 1
    store.close()


def test_an_import_into_an_unreachable_postgres_catalog_stops_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "synth_assets.duckdb"
    old_layout_file(old)
    unreachable = "postgres:dbname=lake host=127.0.0.1 port=1 user=u password=secret"
    store = Warehouse(config=LakeConfig(unreachable, f"{tmp_path / 'parquet'}/"), lock_timeout_s=5)
    with pytest.raises(StorageError, match=r"cannot take the import lock of synth_assets\.duckdb") as refused:
        import_warehouse(old, store)
    message = str(refused.value)
    assert "\n" not in message and "secret" not in message and "password=***" in message
