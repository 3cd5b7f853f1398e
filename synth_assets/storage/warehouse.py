"""The warehouse: a DuckLake catalog (lake.py), its connections, transactions, errors and every write.

Every stage reads as two names (views over the lake's tables, see lake.py):
- `<stage>_history` (`evaluation_history` for the report) keeps every version ever written, one per
  (spec_name, run_id), so earlier runs stay queryable after a re-materialization;
- `<stage>` holds, per spec, the current version ("promoted"). A version that fails a blocking check
  is kept in history for inspection but never replaces the current one.
A version's rows are stored once by content id and a version is a list of row ids, so an unchanged
re-materialization adds a `versions` row, not a copy; every write is one DuckLake snapshot, and
`write_versions` returns its id (the assets put it in their Dagster metadata as `snapshot_id`; reads
take `snapshot=` to see the warehouse as it was then).

`curated_set` (with its complement `rejected_samples`) is promoted in two steps, because only the
evaluation can tell whether the data helps: a version that passes its GX gate is *staged* (history
plus a passing `gate_results` row), and it is *published* (made current, which `synth-assets export`
and every reader treat as current) only when the evaluation_report's usefulness gate passes for that
version. Each decision, published or held back and why, is a row of `publications`.

Several processes write at once (two runs, two specs): each write is one transaction, retried whole if
another writer's commit holds the catalog; on the embedded SQLite catalog the writers of one machine
take turns per transaction (`_writer_turn`). Readers (the UI, the CLI) never wait for a writer. A
failure leaves the previous version intact. The named reads are in `reads.py` (`WarehouseReads`).
An old-layout DuckDB file (`data/synth_assets.duckdb`) is imported on first open (migrate.py).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd

from synth_assets.paths import project_root
from synth_assets.storage.lake import (
    CATALOG_SUFFIX,
    SQLITE_MAGIC,
    Engine,
    LakeConfig,
    StorageError,
    content_ids,
    hide_password,
    lake_schema,
    membership_id,
    now,
    prepare_sqlite,
    read_header,
    sql_text,
    stage_sql,
    storage_error,
)
from synth_assets.storage.reads import WarehouseReads
from synth_assets.storage.stages import (
    HISTORY_TABLE,
    PUBLISHED_WITH,
    STAGE_COLUMNS,
    stage_columns,
)

__all__ = [
    "WAREHOUSE_ERRORS",
    "GateRecord",
    "GenerationRecord",
    "Publication",
    "StorageError",
    "Warehouse",
    "default_database_path",
]

# What a reader outside this package catches to mean "the warehouse cannot answer now" (no catalog yet,
# unusable, busy past the lock timeout), without importing the engine.
WAREHOUSE_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, StorageError, duckdb.Error)
# lock errors that a later attempt of the same transaction clears (the other writer's commit ends)
_RETRYABLE = (
    "database is locked",
    "could not set lock",
    "failed to commit ducklake",
    "conflict",
    "already exists",  # two processes creating the tables of a new catalog at once
)
_DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of a DuckDB database file

T = TypeVar("T")
# the version of the views' SQL (lake.stage_sql): a catalog with an older one gets them replaced
LAYOUT_VERSION = 1
# (process, catalog, old-layout file) already checked for import in this process
_LEGACY_CHECKED: set[tuple[int, LakeConfig, Path]] = set()


def is_duckdb_file(path: Path) -> bool:
    """Whether `path` is a DuckDB database file (of any DuckDB version): the old single-file layout."""
    return read_header(path)[8:12] == _DUCKDB_MAGIC


def default_database_path() -> Path:
    """`SYNTH_ASSETS_DB` if set, else `data/synth_assets.ducklake` under the project root: the DuckLake
    catalog file (its Parquet files in `<it>.files/`). An old-layout DuckDB file there, or at
    `data/synth_assets.duckdb` beside the default, is imported on first open."""
    configured = os.environ.get("SYNTH_ASSETS_DB")
    return (
        Path(configured).resolve()
        if configured
        else project_root() / "data" / f"synth_assets{CATALOG_SUFFIX}"
    )


def locate(given: Path) -> tuple[Path, Path | None]:
    """(catalog file, old-layout DuckDB file to import or None) for the path a user named.

    A DuckDB file at `given` is the old layout: its catalog is `given` with the `.ducklake` suffix. A
    missing `given` is the catalog to create; when a DuckDB file of the same stem with `.duckdb` sits
    beside it (the earlier default `data/synth_assets.duckdb`), that one is imported."""
    if given.is_file() and is_duckdb_file(given):
        catalog = given.with_suffix(CATALOG_SUFFIX)
        return (catalog if catalog != given else given.with_name(given.name + ".lake")), given
    if not given.exists() and given.suffix != ".duckdb":
        sibling = given.with_suffix(".duckdb")
        if sibling.is_file() and is_duckdb_file(sibling):
            return given, sibling
    return given, None


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
    """Reads and writes the stage versions of one DuckLake catalog (the named reads: `WarehouseReads`).

    `path`: the embedded catalog file (default `default_database_path()`; an old-layout DuckDB file is
    imported into `<its stem>.ducklake`, see `locate`); `config`: any catalog (PostgreSQL, S3 data);
    without either, `SYNTH_ASSETS_LAKE_CATALOG` (LakeConfig.from_env) if set. A write transaction that
    meets another writer's lock is retried whole, with backoff, until `lock_timeout_s` (seconds)."""

    def __init__(
        self,
        path: str | Path | None = None,
        lock_timeout_s: float = 120.0,
        *,
        config: LakeConfig | None = None,
    ) -> None:
        self.lock_timeout_s = lock_timeout_s
        self.retries: list[str] = []  # the lock errors met and retried (first line of each)
        self.legacy: Path | None = None
        if config is None and path is None:
            config = LakeConfig.from_env()
        if config is not None:
            self.config = config
            # where the reports and exports go, and what `path` prints, for a catalog without a file
            self.path = config.catalog_file or config.local_data or project_root() / "data"
        else:
            self.path, self.legacy = locate(Path(path).resolve() if path else default_database_path())
            self.config = LakeConfig.at(self.path)

    # -- connection ----------------------------------------------------------------------------------
    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """This process's connection to the catalog (attached on first use, then cached), held under
        the process's lock for the block. `read_only`: never creates a catalog (FileNotFoundError when
        there is none and nothing to import); a reader never waits for a writer either way."""
        catalog = self.config.catalog_file
        if catalog is not None:
            if catalog.is_dir():
                raise StorageError(f"{catalog}: is a directory, not a DuckDB file (--db / SYNTH_ASSETS_DB)")
            if not catalog.exists():
                if read_only and self.legacy is None:
                    raise FileNotFoundError(f"{catalog}: no DuckDB file yet (run `synth-assets run` first)")
            elif catalog.stat().st_size and not read_header(catalog).startswith(SQLITE_MAGIC):
                raise StorageError(
                    f"{catalog}: not a DuckDB database file nor a DuckLake catalog (--db / SYNTH_ASSETS_DB)"
                )
        with Engine.guard:
            connection, self._alias = Engine.connection(self.config, self._attach)
            legacy = (os.getpid(), self.config, self.legacy)
            if self.legacy is not None and legacy not in _LEGACY_CHECKED:
                from synth_assets.storage.migrate import import_on_first_open

                _LEGACY_CHECKED.add(legacy)  # first: the import's own writes come back through here
                try:
                    import_on_first_open(self, self.legacy)
                except BaseException:
                    _LEGACY_CHECKED.discard(legacy)
                    raise
            yield connection

    def pending_import(self) -> Path | None:
        """The old-layout DuckDB file (see `locate`) that the first open of this warehouse will import,
        while its catalog does not exist yet; None when there is nothing to import or the catalog
        exists (its first open imported the file). Opens nothing, writes nothing: a dry run asks it."""
        catalog = self.config.catalog_file
        if self.legacy is None or catalog is None or catalog.exists():
            return None
        return self.legacy

    def close(self) -> None:
        """Detach this process's connection to the catalog (the next call attaches again)."""
        Engine.close(self.config)

    def check_usable(self) -> None:
        """Open the catalog once (creating it and its tables if new, importing an old-layout file): a
        bad `--db` fails here, in one line (StorageError), before any run starts."""
        with self.connect():
            pass

    def _attach(self, connection: duckdb.DuckDBPyConnection, alias: str) -> None:
        settings = self.config.s3
        if settings is not None:
            values = (
                settings.key_id,
                settings.secret,
                settings.endpoint,
                settings.region,
                settings.url_style,
            )
            key_id, secret, endpoint, region, style = (sql_text(v) for v in values)
            connection.execute(
                f"CREATE OR REPLACE SECRET {alias}_s3 (TYPE s3, KEY_ID {key_id}, SECRET {secret}, "
                f"ENDPOINT {endpoint}, REGION {region}, URL_STYLE {style}, "
                f"USE_SSL {'true' if settings.use_ssl else 'false'}, SCOPE {sql_text(self.config.data_path)})"
            )
        local, catalog = self.config.local_data, self.config.catalog_file
        try:
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
            if catalog is not None:
                prepare_sqlite(catalog)
        except OSError as exc:
            where = getattr(exc, "filename", None) or self.config.describe()
            raise StorageError(f"{where}: {exc.strerror or exc}") from exc
        except Exception as exc:  # sqlite3.Error: a file that is not a database
            raise StorageError(f"{self.config.describe()}: cannot open the DuckLake catalog: {exc}") from exc
        self._retrying(
            lambda: connection.execute(
                f"ATTACH {sql_text('ducklake:' + self.config.catalog)} AS {alias} "
                f"(DATA_PATH {sql_text(self.config.data_path)}, DATA_INLINING_ROW_LIMIT 100)"
            ),
            "attaching the catalog",
        )
        connection.execute(f"USE {alias}")
        self._retrying(lambda: self._ensure_schema(connection, alias), "creating its tables")

    @staticmethod
    def _ensure_schema(connection: duckdb.DuckDBPyConnection, alias: str) -> None:
        existing: dict[str, set[str]] = {}
        meta = f"__ducklake_metadata_{alias}"  # not information_schema: that reads every attached catalog
        for table, column in connection.execute(
            f"SELECT t.table_name, c.column_name FROM {meta}.ducklake_table t "
            f"JOIN {meta}.ducklake_column c ON c.table_id = t.table_id "
            "WHERE t.end_snapshot IS NULL AND c.end_snapshot IS NULL"
        ).fetchall():
            existing.setdefault(table, set()).add(column)
        views = {
            name
            for (name,) in connection.execute(
                f"SELECT view_name FROM {meta}.ducklake_view WHERE end_snapshot IS NULL"
            ).fetchall()
        }
        layout = (
            connection.execute("SELECT max(version) FROM layout").fetchone()[0]
            if "layout" in existing
            else None
        )
        statements = []
        for table, columns in lake_schema().items():
            if table not in existing:
                body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
                statements.append(f'CREATE TABLE IF NOT EXISTS "{table}" ({body})')
                continue
            # a catalog of an earlier release: add the columns introduced since (inserts go BY NAME)
            statements += [
                f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}'
                for name, kind in columns.items()
                if name not in existing[table]
            ]
        # the stage names are views in the catalog itself (created once, not per connection: binding
        # twelve views took ~0.5 s per attach); replaced when this release's layout is newer
        for stage in STAGE_COLUMNS:
            for name, current in ((stage, True), (HISTORY_TABLE[stage], False)):
                if name not in views or (layout or 0) < LAYOUT_VERSION:
                    statements.append(
                        f'CREATE OR REPLACE VIEW "{name}" AS {stage_sql(stage, current=current)}'
                    )
        if (layout or 0) < LAYOUT_VERSION:
            statements.append(f"INSERT INTO layout VALUES ({LAYOUT_VERSION}, now())")
        if not statements:
            return
        # one transaction: a second process creating them at the same time conflicts and is retried
        connection.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                connection.execute(statement)
            connection.execute("COMMIT")
        except BaseException:
            with suppress(duckdb.Error):
                connection.execute("ROLLBACK")
            raise

    def _retrying(self, work: Callable[[], T], doing: str) -> T:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return work()
            except duckdb.Error as exc:
                text = str(exc).lower()
                if not any(mark in text for mark in _RETRYABLE) or time.monotonic() > deadline:
                    where = self.config.describe()
                    friendly = storage_error(where, exc, doing)
                    if friendly is None and doing == "attaching the catalog":
                        first = hide_password(" ".join(str(exc).split()))
                        friendly = StorageError(f"{where}: cannot attach the DuckLake catalog: {first}")
                    raise friendly or exc from exc
                self.retries.append(" ".join(str(exc).split())[:300])
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Embedded (SQLite) catalog: writers of this machine take turns through a file lock, held for
        one write transaction. SQLite fails a second commit at once ("database is locked", no busy
        wait), so without the turn both writers redo whole transactions: measured (2 processes x 3
        materializations of the demo, 2 shared cores) 16 retried commits and 1.25x the sequential wall.
        Readers never take the lock; a PostgreSQL catalog needs no turn (its commits wait on row locks)."""
        catalog = self.config.catalog_file
        if catalog is None:
            yield
            return
        path = Path(f"{catalog}.write-lock")
        deadline = time.monotonic() + self.lock_timeout_s
        with open(path, "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(
                            f"{path}: another writer held the catalog for {self.lock_timeout_s:.0f}s"
                        ) from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, doing: str, work: Callable[[duckdb.DuckDBPyConnection, str], None]) -> int:
        """Run `work(connection, write_id)` in one DuckLake transaction tagged `write_id` (retried whole
        on a lock); the snapshot id it committed."""
        write_id = uuid.uuid4().hex

        def attempt() -> int:
            with self.connect() as connection, self._writer_turn():
                connection.execute("BEGIN TRANSACTION")
                try:
                    connection.execute(
                        f"CALL {self._alias}.set_commit_message('synth_assets', ?, extra_info => ?)",
                        [doing, write_id],
                    )
                    work(connection, write_id)
                    connection.execute("COMMIT")
                except BaseException:
                    with suppress(duckdb.Error):
                        connection.execute("ROLLBACK")
                    raise
                found = connection.execute(
                    f"SELECT max(snapshot_id) FROM {self._alias}.snapshots() WHERE commit_extra_info = ?",
                    [write_id],
                ).fetchone()
                return int(found[0]) if found and found[0] is not None else self.snapshot_id()

        return self._retrying(attempt, doing)

    # -- writes --------------------------------------------------------------------------------------
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
    ) -> int:
        """Append one version to history and, when `promote`, make it the current one; atomically
        (with `publication`, `gate` and `generation`, see `write_versions`). Returns the snapshot id."""
        return self.write_versions(
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
    ) -> int:
        """Like `write_version` for several stages in one transaction (e.g. curated + rejected), one
        DuckLake snapshot; returns its id. Rows not yet stored are added once, the version's row list
        once per distinct list, a `versions` row always (and a `promotions` row when `promote`).

        A version is named by the run that writes it: writing (spec, run) again replaces that version.

        `publication`, in the same transaction: publish (or hold back) a staged version of another
        stage, e.g. the evaluation report and the curated_set version it approved commit together.
        `gate`: the blocking check's verdict on this version, its `gate_results` row in the same
        transaction. `generation`: what a generated_samples version cost, its `generation_runs` row
        in the same transaction. Raises ValueError when a frame lacks a stage column, LookupError
        (and writes nothing) when the version to publish is not in history, StorageError (nothing
        written) on a full disk or an unusable catalog."""
        prepared: dict[str, tuple[pd.DataFrame, str, int]] = {}
        for stage, frame in frames.items():
            columns = stage_columns(stage)
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"{stage}: frame lacks columns {missing}")
            rows = frame[columns].reset_index(drop=True).copy()
            ids = content_ids(rows, columns)
            rows.insert(0, "content_id", ids)
            rows["ordinal"] = range(len(rows))  # membership order = written order (dropped on insert)
            prepared[stage] = (rows, membership_id(ids), len(ids))
        at = now()

        def work(connection: duckdb.DuckDBPyConnection, write_id: str) -> None:
            for stage, (rows, members, count) in prepared.items():
                self._store_rows(connection, stage, rows, members)
                self._append(connection, "versions", [spec_name, stage, run_id, members, count, at, write_id])
                if promote:
                    self._append(
                        connection, "promotions", [spec_name, stage, run_id, members, at, at, write_id]
                    )
            if publication is not None:
                self._decide(connection, spec_name, run_id, publication, write_id)
            if gate is not None:
                self._append_gate(connection, spec_name, run_id, gate)
            if generation is not None:
                row = {"spec_name": spec_name, "run_id": run_id, **vars(generation), "recorded_at": now()}
                self._append(connection, "generation_runs", list(row.values()), list(row))

        return self._write(f"{spec_name} {run_id}: {', '.join(frames)}", work)

    @staticmethod
    def _append(
        connection: duckdb.DuckDBPyConnection,
        table: str,
        values: list[object],
        names: list[str] | None = None,
    ) -> None:
        marks = ", ".join("?" for _ in values)
        columns = f" ({', '.join(names)})" if names else ""
        connection.execute(f'INSERT INTO "{table}"{columns} VALUES ({marks})', values)

    @staticmethod
    def _store_rows(
        connection: duckdb.DuckDBPyConnection, stage: str, rows: pd.DataFrame, members: str
    ) -> None:
        connection.register("incoming_rows", rows)
        try:
            columns = ", ".join(f'"{c}"' for c in ["content_id", *stage_columns(stage)])
            connection.execute(
                f'INSERT INTO "{stage}_rows" ({columns}) SELECT DISTINCT ON (content_id) {columns} '
                f"FROM incoming_rows i "
                f'WHERE NOT EXISTS (SELECT 1 FROM "{stage}_rows" r WHERE r.content_id = i.content_id)'
            )
            known = connection.execute(
                "SELECT count(*) FROM memberships WHERE membership_id = ?", [members]
            ).fetchone()
            if not (known and known[0]):
                connection.execute(
                    "INSERT INTO memberships (membership_id, position, content_id) "
                    "SELECT ?, ordinal, content_id FROM incoming_rows",
                    [members],
                )
        finally:
            connection.unregister("incoming_rows")

    def _decide(
        self,
        connection: duckdb.DuckDBPyConnection,
        spec_name: str,
        decided_in: str,
        publication: Publication,
        write_id: str,
    ) -> None:
        stage, version = publication.stage, publication.version_run_id
        before = connection.execute(
            f'SELECT any_value(run_id) FROM "{stage}" WHERE spec_name = ?', [spec_name]
        ).fetchone()
        if publication.published:
            for table in (stage, *PUBLISHED_WITH.get(stage, ())):
                found = connection.execute(
                    "SELECT membership_id, materialized_at FROM versions "
                    "WHERE spec_name = ? AND stage = ? AND run_id = ? "
                    "ORDER BY materialized_at DESC, rowid DESC LIMIT 1",
                    [spec_name, str(table), version],
                ).fetchone()
                if table == stage and found is None:
                    raise LookupError(f"{stage} of spec '{spec_name}' has no version from run {version}")
                members, at = found if found is not None else (None, None)
                self._append(
                    connection, "promotions", [spec_name, str(table), version, members, at, now(), write_id]
                )
        self._append(
            connection,
            "publications",
            [
                spec_name,
                stage,
                version,
                decided_in,
                publication.published,
                publication.reason,
                before[0] if before else None,
                now(),
            ],
            ["spec_name", "stage", "version_run_id", "decided_in_run_id", "published", "reason",
             "previously_published_run_id", "decided_at"],
        )  # fmt: skip

    @staticmethod
    def _append_gate(
        connection: duckdb.DuckDBPyConnection, spec_name: str, run_id: str, gate: GateRecord
    ) -> None:
        connection.execute(
            "INSERT INTO gate_results (spec_name, run_id, asset, check_name, passed, summary, evaluated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [spec_name, run_id, gate.asset, gate.check_name, gate.passed, gate.summary, now()],
        )

    def record_gate(
        self, spec_name: str, run_id: str, asset: str, check_name: str, passed: bool, summary: str
    ) -> int:
        """A verdict on its own (prefer `write_versions(..., gate=...)`, which commits it with its
        version); returns the snapshot id."""
        record = GateRecord(asset, check_name, passed, summary)
        return self._write(
            f"{spec_name} {run_id}: gate {asset}",
            lambda connection, _write_id: self._append_gate(connection, spec_name, run_id, record),
        )

    def store_calls(self, calls: pd.DataFrame, failures: pd.DataFrame | None = None) -> int:
        """Persist finished calls (first write of a key wins) and failed ones, in one snapshot (its id)."""
        calls = calls.assign(created_at=now())

        def work(connection: duckdb.DuckDBPyConnection, _write_id: str) -> None:
            if len(calls):
                connection.register("incoming_calls", calls)
                connection.execute(
                    "INSERT INTO llm_cache BY NAME SELECT DISTINCT ON (cache_key) * FROM incoming_calls i "
                    "WHERE NOT EXISTS (SELECT 1 FROM llm_cache c WHERE c.cache_key = i.cache_key)"
                )
                connection.unregister("incoming_calls")
            if failures is not None and len(failures):
                connection.register("incoming_failures", failures.assign(failed_at=now()))
                connection.execute("INSERT INTO generation_failures BY NAME SELECT * FROM incoming_failures")
                connection.unregister("incoming_failures")

        return self._write("storing LLM calls in llm_cache", work)

    # -- the lake itself -----------------------------------------------------------------------------
    def snapshot_id(self, *, read_only: bool = False) -> int:
        """The newest snapshot of the catalog (`read_only`: as the CLI reads, never creating one)."""
        with self.connect(read_only=read_only) as connection:
            return int(connection.execute(f"SELECT id FROM {self._alias}.current_snapshot()").fetchone()[0])

    def version_log(self, stage: str, spec_name: str, *, read_only: bool = False) -> pd.DataFrame:
        """Every write of a version of `stage` for the spec, oldest first: run_id, row_count,
        materialized_at, membership_id, snapshot_id (the DuckLake snapshot that committed it)."""
        with self.connect(read_only=read_only) as connection:
            return connection.execute(
                "SELECT v.run_id, v.row_count, v.materialized_at, v.membership_id, s.snapshot_id "
                f"FROM versions v LEFT JOIN {self._alias}.snapshots() s ON s.commit_extra_info = v.write_id "
                "WHERE v.spec_name = ? AND v.stage = ? ORDER BY s.snapshot_id, v.materialized_at",
                [spec_name, str(stage)],
            ).fetchdf()

    def rows_added_between(self, stage: str, start_snapshot: int, end_snapshot: int) -> pd.DataFrame:
        """Rows of `stage` stored for the first time in snapshots start..end (DuckLake `table_changes`):
        what a range of materializations added, all specs together."""
        return self.query(
            f"SELECT * FROM table_changes('{stage}_rows', ?, ?) WHERE change_type = 'insert' ORDER BY rowid",
            [int(start_snapshot), int(end_snapshot)],
        )

    def data_files(self) -> list[str]:
        """Paths of the Parquet files the catalog references (live ones)."""
        with self.connect() as connection:
            meta = f"__ducklake_metadata_{self._alias}"
            rows = connection.execute(
                f"SELECT f.path FROM {meta}.ducklake_data_file f "
                f"JOIN {meta}.ducklake_table t USING (table_id) "
                "WHERE f.end_snapshot IS NULL AND t.end_snapshot IS NULL"
            ).fetchall()
        return [str(path) for (path,) in rows]

    def storage_bytes(self) -> int:
        """Bytes on disk of an embedded catalog: the catalog file (with its WAL) plus every data file."""
        total = 0
        catalog = self.config.catalog_file
        if catalog is not None:
            total += sum(p.stat().st_size for p in catalog.parent.glob(catalog.name + "*") if p.is_file())
        local = self.config.local_data
        if local is not None and local.exists():
            total += sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return total
