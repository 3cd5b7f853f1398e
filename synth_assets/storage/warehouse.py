"""The warehouse: one DuckDB file, its connections, transactions, errors and every write.

Every stage table exists twice:
- `<stage>_history` (`evaluation_history` for the report) keeps every version ever written, one per
  (spec_name, run_id), so earlier runs stay queryable after a re-materialization;
- `<stage>` holds, per spec, the current version ("promoted"). A version that fails a blocking check
  is kept in history for inspection but never replaces the current one.

`curated_set` (with its complement `rejected_samples`) is promoted in two steps, because only the
evaluation can tell whether the data helps: a version that passes its GX gate is *staged* (history
plus a passing `gate_results` row), and it is *published* (copied into `curated_set`, which
`synth-assets export` and every reader treat as current) only when the evaluation_report's usefulness
gate passes for that version. Each decision, published or held back and why, is a row of
`publications`.

Connections are short-lived: DuckDB allows one writer process, and the UI, the CLI and runs must
take turns. Each write is one transaction, so a failure leaves the previous version intact. The
named reads every other module uses are in `reads.py` (the `WarehouseReads` half of `Warehouse`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from synth_assets.paths import project_root
from synth_assets.storage.reads import WarehouseReads
from synth_assets.storage.stages import (
    GATE_COLUMNS,
    GENERATION_FAILURE_COLUMNS,
    GENERATION_RUN_COLUMNS,
    HISTORY_TABLE,
    LLM_CACHE_COLUMNS,
    PUBLICATION_COLUMNS,
    PUBLISHED_WITH,
    STAGE_COLUMNS,
    stage_columns,
)


class StorageError(Exception):
    """The DuckDB file cannot be used (not a DuckDB file, a directory, a full disk): one line that
    names the file and the problem; nothing was half-written (the transaction was rolled back)."""


# What a reader outside this package catches to mean "the warehouse cannot answer now" (no file yet,
# unusable, busy past the lock timeout), without importing the engine.
WAREHOUSE_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, StorageError, duckdb.Error)


def _storage_error(path: Path, exc: BaseException, doing: str) -> StorageError | None:
    """A one-line StorageError for the failures a user can fix, None for anything else."""
    text = str(exc)
    if "No space left on device" in text or getattr(exc, "errno", None) == 28:
        return StorageError(f"{path}: No space left on device while {doing}; nothing of it was kept")
    if "not a valid DuckDB database" in text or "not a DuckDB" in text.lower():
        return StorageError(f"{path}: not a DuckDB database file (--db / SYNTH_ASSETS_DB)")
    if "created with an newer version of DuckDB" in text or "created with a newer version" in text:
        # the duckdb pin went from 2.0 to 1.4.4 LTS (DuckLake offline); 1.4 cannot open a 2.x file
        return StorageError(
            f"{path}: written by a newer DuckDB than {duckdb.__version__}; with that DuckDB run "
            f"EXPORT DATABASE '<folder>' (FORMAT parquet), then import the folder with "
            f"synth_assets.storage.lake.import_warehouse, or move the file away to start afresh"
        )
    if isinstance(exc, IsADirectoryError) or "Is a directory" in text:
        return StorageError(f"{path}: is a directory, not a DuckDB file (--db / SYNTH_ASSETS_DB)")
    if isinstance(exc, PermissionError) or "Permission denied" in text:
        return StorageError(f"{path}: permission denied while {doing}")
    return None


@contextmanager
def _transaction(connection: duckdb.DuckDBPyConnection, path: Path, doing: str) -> Iterator[None]:
    """BEGIN ... COMMIT; on any failure ROLLBACK (a failed COMMIT has already ended the transaction,
    so a second error there must not hide the first, e.g. a full disk) and re-raise, as a
    StorageError when the cause is one the user can fix."""
    connection.execute("BEGIN TRANSACTION")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException as exc:
        with suppress(duckdb.Error):
            connection.execute("ROLLBACK")
        friendly = _storage_error(path, exc, doing) if isinstance(exc, Exception) else None
        if friendly is not None:
            raise friendly from exc
        raise


@dataclass(frozen=True)
class GateRecord:
    """A blocking check's verdict on the version being written: a `gate_results` row committed in the
    same transaction as that version, so a kill in between can never leave a version without it."""

    asset: str
    check_name: str
    passed: bool
    summary: str


@dataclass(frozen=True)
class GenerationRecord:
    """What one generated_samples version cost (a `generation_runs` row, GENERATION_RUN_COLUMNS),
    committed in the transaction of that version, so the evaluation reads it as data.

    call_seconds: sum of the seconds of the LLM calls behind the samples, as measured when each call
    was made (a call reused from llm_cache keeps its original time), seconds; run_seconds: wall time
    of the materialization that wrote the version, seconds; tokens summed over every call of every
    step of the samples; calls_made / cache_hits: calls sent to the backend in this run / answered
    from llm_cache."""

    samples: int
    call_seconds: float | None
    run_seconds: float
    prompt_tokens: int
    completion_tokens: int
    calls_made: int
    cache_hits: int


def default_database_path() -> Path:
    """`SYNTH_ASSETS_DB` if set, else `data/synth_assets.duckdb` under the project root."""
    configured = os.environ.get("SYNTH_ASSETS_DB")
    return Path(configured).resolve() if configured else project_root() / "data" / "synth_assets.duckdb"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Publication:
    """A decision on a staged version of `stage`, written in the transaction of `write_versions`.

    published: copy the version written by `version_run_id` (and its PUBLISHED_WITH companions) from
    history into the current tables; held back (published=False): leave the current tables alone.
    Either way a `publications` row records it with `reason`."""

    stage: str
    version_run_id: str
    published: bool
    reason: str


class Warehouse(WarehouseReads):
    """Reads and writes the stage tables of one DuckDB file (the named reads: `WarehouseReads`)."""

    def __init__(self, path: str | Path | None = None, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path).resolve() if path else default_database_path()
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the write lock."""
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no DuckDB file yet (run `synth-assets run` first)")
        if self.path.is_dir():
            raise StorageError(f"{self.path}: is a directory, not a DuckDB file (--db / SYNTH_ASSETS_DB)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create its folder: {exc.strerror}") from exc
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                connection = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise _storage_error(self.path, exc, "opening it") or exc from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except duckdb.Error as exc:
                raise _storage_error(self.path, exc, "opening it") or exc from exc
        try:
            if not read_only:
                try:
                    self._ensure_schema(connection)
                except duckdb.Error as exc:
                    raise _storage_error(self.path, exc, "creating its tables") or exc from exc
            yield connection
        finally:
            connection.close()

    def check_usable(self) -> None:
        """Open the file for writing once (creating it and its tables if new): a bad `--db` fails here,
        in one line (StorageError), before any run starts."""
        with self.connect():
            pass

    @staticmethod
    def _ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
        tables: dict[str, dict[str, str]] = {
            "gate_results": GATE_COLUMNS,
            "llm_cache": LLM_CACHE_COLUMNS,
            "generation_failures": GENERATION_FAILURE_COLUMNS,
            "publications": PUBLICATION_COLUMNS,
            "generation_runs": GENERATION_RUN_COLUMNS,
        }
        for stage, columns in STAGE_COLUMNS.items():
            full = {"spec_name": "VARCHAR", **columns, "run_id": "VARCHAR", "materialized_at": "TIMESTAMP"}
            tables[stage] = full
            tables[HISTORY_TABLE[stage]] = full
        existing = {
            (table, column)
            for table, column in connection.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema='main'"
            ).fetchall()
        }
        existing_tables = {table for table, _ in existing}
        for table, columns in tables.items():
            if table not in existing_tables:
                body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
                connection.execute(f'CREATE TABLE "{table}" ({body})')
                continue
            # older databases: add columns introduced since (inserts go BY NAME, so order is free)
            for name, kind in columns.items():
                if (table, name) not in existing:
                    connection.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}')

    def write_version(
        self,
        stage: str,
        spec_name: str,
        run_id: str,
        frame: pd.DataFrame,
        *,
        promote: bool,
        publication: Publication | None = None,
        gate: GateRecord | None = None,
        generation: GenerationRecord | None = None,
    ) -> None:
        """Append one version to history and, when `promote`, make it the current one; atomically
        (with `publication`, `gate` and `generation`, see `write_versions`)."""
        self.write_versions(
            {stage: frame},
            spec_name,
            run_id,
            promote=promote,
            publication=publication,
            gate=gate,
            generation=generation,
        )

    def write_versions(
        self,
        frames: dict[str, pd.DataFrame],
        spec_name: str,
        run_id: str,
        *,
        promote: bool,
        publication: Publication | None = None,
        gate: GateRecord | None = None,
        generation: GenerationRecord | None = None,
    ) -> None:
        """Like `write_version` for several stages in one transaction (e.g. curated + rejected).

        A version is named by the run that writes it: writing (spec, run) again replaces that version.

        `publication`, in the same transaction: publish (or hold back) a staged version of another
        stage, e.g. the evaluation report and the curated_set version it approved commit together.
        `gate`: the blocking check's verdict on this version, its `gate_results` row in the same
        transaction. `generation`: what a generated_samples version cost, its `generation_runs` row
        in the same transaction. Raises ValueError when a frame lacks a stage column, LookupError
        (and writes nothing) when the version to publish is not in history, StorageError (nothing
        written) on a full disk."""
        stamped: dict[str, pd.DataFrame] = {}
        for stage, frame in frames.items():
            columns = stage_columns(stage)
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"{stage}: frame lacks columns {missing}")
            out = frame[columns].copy()
            out.insert(0, "spec_name", spec_name)
            out["run_id"] = run_id
            out["materialized_at"] = _now()
            stamped[stage] = out
        with (
            self.connect() as connection,
            _transaction(connection, self.path, f"writing {', '.join(frames)}"),
        ):
            for stage, out in stamped.items():
                history = HISTORY_TABLE[stage]
                connection.register("incoming", out)
                connection.execute(
                    f'DELETE FROM "{history}" WHERE spec_name = ? AND run_id = ?', [spec_name, run_id]
                )
                connection.execute(f'INSERT INTO "{history}" BY NAME SELECT * FROM incoming')
                if promote:
                    connection.execute(f'DELETE FROM "{stage}" WHERE spec_name = ?', [spec_name])
                    connection.execute(f'INSERT INTO "{stage}" BY NAME SELECT * FROM incoming')
                connection.unregister("incoming")
            if publication is not None:
                self._decide(connection, spec_name, run_id, publication)
            if gate is not None:
                self._insert_gate(connection, spec_name, run_id, gate)
            if generation is not None:
                connection.execute(
                    "DELETE FROM generation_runs WHERE spec_name = ? AND run_id = ?", [spec_name, run_id]
                )
                row = {"spec_name": spec_name, "run_id": run_id, **vars(generation), "recorded_at": _now()}
                connection.execute(
                    f"INSERT INTO generation_runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                    list(row.values()),
                )

    @staticmethod
    def _decide(
        connection: duckdb.DuckDBPyConnection, spec_name: str, decided_in: str, publication: Publication
    ) -> None:
        stage, version = publication.stage, publication.version_run_id
        before = connection.execute(
            f'SELECT any_value(run_id) FROM "{stage}" WHERE spec_name = ?', [spec_name]
        ).fetchone()
        if publication.published:
            for table in (stage, *PUBLISHED_WITH.get(stage, ())):
                history = HISTORY_TABLE[table]
                found = connection.execute(
                    f'SELECT count(*) FROM "{history}" WHERE spec_name = ? AND run_id = ?',
                    [spec_name, version],
                ).fetchone()
                if table == stage and not (found and found[0]):
                    raise LookupError(f"{stage} of spec '{spec_name}' has no version from run {version}")
                connection.execute(f'DELETE FROM "{table}" WHERE spec_name = ?', [spec_name])
                connection.execute(
                    f'INSERT INTO "{table}" BY NAME SELECT * FROM "{history}" '
                    "WHERE spec_name = ? AND run_id = ? ORDER BY rowid",
                    [spec_name, version],
                )
        connection.execute(
            "INSERT INTO publications BY NAME SELECT ? AS spec_name, ? AS stage, ? AS version_run_id, "
            "? AS decided_in_run_id, ? AS published, ? AS reason, ? AS previously_published_run_id, "
            "? AS decided_at",
            [
                spec_name,
                stage,
                version,
                decided_in,
                publication.published,
                publication.reason,
                before[0] if before else None,
                _now(),
            ],
        )

    def record_gate(
        self, spec_name: str, run_id: str, asset: str, check_name: str, passed: bool, summary: str
    ) -> None:
        """A verdict on its own; prefer `write_versions(..., gate=...)`, which commits it with its version."""
        with self.connect() as connection:
            self._insert_gate(connection, spec_name, run_id, GateRecord(asset, check_name, passed, summary))

    @staticmethod
    def _insert_gate(
        connection: duckdb.DuckDBPyConnection, spec_name: str, run_id: str, gate: GateRecord
    ) -> None:
        connection.execute(
            "INSERT INTO gate_results BY NAME SELECT ? AS spec_name, ? AS run_id, ? AS asset, "
            "? AS check_name, ? AS passed, ? AS summary, ? AS evaluated_at",
            [spec_name, run_id, gate.asset, gate.check_name, gate.passed, gate.summary, _now()],
        )

    def store_calls(self, calls: pd.DataFrame, failures: pd.DataFrame | None = None) -> None:
        """Persist finished calls (first write of a key wins) and failed ones, in one transaction."""
        calls = calls.assign(created_at=_now())
        with (
            self.connect() as connection,
            _transaction(connection, self.path, "storing LLM calls in llm_cache"),
        ):
            if len(calls):
                connection.register("incoming_calls", calls)
                connection.execute("INSERT OR IGNORE INTO llm_cache BY NAME SELECT * FROM incoming_calls")
            if failures is not None and len(failures):
                connection.register("incoming_failures", failures.assign(failed_at=_now()))
                connection.execute("INSERT INTO generation_failures BY NAME SELECT * FROM incoming_failures")
