"""DuckLake as the storage engine: stage versions as snapshots, rows stored once, several writers.

DuckLake (DuckDB's lakehouse format, https://ducklake.select) keeps a catalog of snapshots in a SQL
database and the rows in Parquet files. Every commit is a snapshot: `AT (VERSION => n)` reads a table as it
was, `table_changes` lists what a range of snapshots inserted. Three configurations, tested here:

- embedded (the default, zero servers): a SQLite catalog `data/lake.sqlite` and Parquet under
  `data/lake/`. SQLite, not a DuckDB-file catalog, because two processes must write at once; measured
  here (AMD EPYC, 2 cores, 2 processes x 20 commits of 100 rows, each opening per commit): a DuckDB-file
  catalog is held by one process while attached (63 "Could not set lock" refusals, readers refused too),
  a SQLite catalog is locked only while a commit is flushed (15 "database is locked" commits, all retried;
  4,000 rows either way, nothing lost);
- PostgreSQL catalog + local data folder;
- PostgreSQL catalog + S3 data (any S3-compatible store; tested with moto's server on loopback).

The layout, designed for snapshots (every table append-only, so concurrent writers never conflict):
- `<stage>_rows`: each distinct row of a stage once, keyed by `content_id`, a SHA-256 of its column values;
- `memberships`: an ordered list of row ids (`membership_id` = SHA-256 of the list), stored once, so an
  unchanged re-materialization adds one `versions` row and no Parquet file (small tables are inlined in the
  catalog: DATA_INLINING_ROW_LIMIT);
- `versions`: which membership a (spec, stage, run) version holds; `promotions`: which run is current
  (the newest row per spec and stage); `gate_results`, `publications`, `llm_cache`,
  `generation_failures` as in the DuckDB-file layout (synth_assets.storage).
Each write is one DuckLake transaction tagged with a write id (`commit_extra_info`); `write_versions`
returns the snapshot id it committed, for the materialization's Dagster metadata.

Needs DuckDB 1.4.4 and the extension wheels (`duckdb-ext-ducklake` & co.); DuckDB 2.0 cannot load
DuckLake offline. The extensions are loaded by path from the wheels, never downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import duckdb
import pandas as pd

from synth_assets.paths import project_root
from synth_assets.storage import (
    GATE_COLUMNS,
    GENERATION_FAILURE_COLUMNS,
    HISTORY_TABLE,
    LLM_CACHE_COLUMNS,
    PUBLICATION_COLUMNS,
    PUBLISHED_WITH,
    STAGE_COLUMNS,
    GateRecord,
    Publication,
    StorageError,
    stage_columns,
)
from synth_assets.storage.warehouse import _now, _storage_error

DUCKDB_VERSION = "1.4.4"
EXTENSION_WHEEL_VERSION = "1.4.4.20260205"
# parquet: data files; ducklake: the format; sqlite_scanner / postgres_scanner: catalogs; httpfs: S3
EXTENSIONS = ("parquet", "ducklake", "sqlite_scanner", "postgres_scanner", "httpfs")
INSTALL_HINT = f"pip install duckdb=={DUCKDB_VERSION} " + " ".join(
    f"duckdb-ext-{name}=={EXTENSION_WHEEL_VERSION}"
    for name in ("ducklake", "parquet", "postgres", "sqlite", "httpfs")
)
# tables of at most this many rows per insert live in the catalog, not in a Parquet file: the bookkeeping
# rows of a write (a version, a promotion, a gate verdict) then add no file
INLINING_ROW_LIMIT = 100
LAKE = "lake"  # the attached catalog's name
_PASSWORD = re.compile(r"password=\S+")

VERSION_COLUMNS = {
    "spec_name": "VARCHAR",
    "stage": "VARCHAR",
    "run_id": "VARCHAR",
    "membership_id": "VARCHAR",
    "row_count": "BIGINT",
    "materialized_at": "TIMESTAMP",
    "write_id": "VARCHAR",  # the commit's `commit_extra_info`: finds the snapshot that wrote it
}
PROMOTION_COLUMNS = {
    "spec_name": "VARCHAR",
    "stage": "VARCHAR",
    "run_id": "VARCHAR",
    "promoted_at": "TIMESTAMP",
    "write_id": "VARCHAR",
}
MEMBERSHIP_COLUMNS = {"membership_id": "VARCHAR", "position": "BIGINT", "content_id": "VARCHAR"}
# lock errors that a later attempt of the same transaction clears (the other writer's commit ends)
_RETRYABLE = (
    "database is locked",
    "could not set lock",
    "failed to commit ducklake",
    "conflict",
    "already exists",  # two processes creating the tables of a new catalog at once
)

T = TypeVar("T")


class LakeUnavailable(StorageError):
    """DuckLake cannot be loaded here (wrong DuckDB version, extension wheels missing): one line saying
    what to install."""


def extension_dir() -> Path:
    """The folder of DuckDB's signed extension binaries shipped by the `duckdb-ext-*` wheels.

    Raises LakeUnavailable (one line with the install command) when DuckDB is not 1.4.4 or a wheel is
    missing."""
    if duckdb.__version__ != DUCKDB_VERSION:
        raise LakeUnavailable(
            f"DuckLake needs duckdb=={DUCKDB_VERSION} (found {duckdb.__version__}): {INSTALL_HINT}"
        )
    try:
        import duckdb_ext  # type: ignore[import-not-found]  # namespace package of the wheels
    except ImportError:
        raise LakeUnavailable(f"DuckLake extension wheels not installed: {INSTALL_HINT}") from None
    for root in duckdb_ext.__path__:
        folder = Path(root) / "extensions" / f"v{DUCKDB_VERSION}" / "linux_amd64"
        missing = [name for name in EXTENSIONS if not (folder / f"{name}.duckdb_extension").exists()]
        if not missing:
            return folder
    raise LakeUnavailable(
        f"DuckLake extension wheels incomplete (need {', '.join(EXTENSIONS)}): {INSTALL_HINT}"
    )


@dataclass(frozen=True)
class S3Settings:
    """Credentials and address of an S3-compatible store (AWS, MinIO, moto...)."""

    endpoint: str  # host:port, no scheme
    key_id: str
    secret: str
    region: str = "us-east-1"
    url_style: str = "path"  # "path" for MinIO/moto, "vhost" for AWS
    use_ssl: bool = False


@dataclass(frozen=True)
class LakeConfig:
    """Where the catalog and the data files live.

    catalog: DuckLake metadata database, `sqlite:<file>` or `postgres:<libpq connection string>`
    (e.g. `postgres:dbname=lake host=127.0.0.1 port=5432 user=u password=p`);
    data_path: a folder, or `s3://bucket/prefix/` with `s3` set."""

    catalog: str
    data_path: str
    s3: S3Settings | None = None

    @classmethod
    def embedded(cls, folder: str | Path | None = None) -> LakeConfig:
        """The zero-server default: `lake.sqlite` and the `lake/` data folder in `folder` (`data/`)."""
        base = Path(folder).resolve() if folder else project_root() / "data"
        return cls(catalog=f"sqlite:{base / 'lake.sqlite'}", data_path=f"{base / 'lake'}/")

    @classmethod
    def from_env(cls) -> LakeConfig:
        """`SYNTH_ASSETS_LAKE_CATALOG` and `SYNTH_ASSETS_LAKE_DATA` (S3: `SYNTH_ASSETS_S3_ENDPOINT`,
        `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`); the embedded default when unset.
        Raises ValueError (one line) when the S3 settings are incomplete."""
        catalog = os.environ.get("SYNTH_ASSETS_LAKE_CATALOG")
        if not catalog:
            return cls.embedded()
        data = os.environ.get("SYNTH_ASSETS_LAKE_DATA", str(project_root() / "data" / "lake") + "/")
        s3 = None
        if data.startswith("s3://"):
            needed = ("SYNTH_ASSETS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            missing = [name for name in needed if not os.environ.get(name)]
            if missing:
                raise ValueError(f"SYNTH_ASSETS_LAKE_DATA={data}: S3 data needs {', '.join(missing)} set")
            s3 = S3Settings(
                endpoint=os.environ["SYNTH_ASSETS_S3_ENDPOINT"],
                key_id=os.environ["AWS_ACCESS_KEY_ID"],
                secret=os.environ["AWS_SECRET_ACCESS_KEY"],
                region=os.environ.get("AWS_REGION", "us-east-1"),
            )
        return cls(catalog=catalog, data_path=data, s3=s3)

    def describe(self) -> str:
        """The catalog for messages: its file, or its PostgreSQL address without the password."""
        return _PASSWORD.sub("password=***", self.catalog.removeprefix("sqlite:"))

    @property
    def local_data(self) -> Path | None:
        return None if self.data_path.startswith("s3://") else Path(self.data_path)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def content_ids(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """SHA-256 content id of each row over `columns` (NULL and NaN hash alike; values as JSON)."""
    ids = []
    for values in frame[columns].itertuples(index=False, name=None):
        clean = [None if (not isinstance(v, str) and pd.isna(v)) else v for v in values]
        ids.append(hashlib.sha256(json.dumps(clean, default=str).encode()).hexdigest())
    return ids


def membership_id(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _schema() -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {
        f"{stage}_rows": {"content_id": "VARCHAR", **columns} for stage, columns in STAGE_COLUMNS.items()
    }
    # DuckLake has no primary keys: llm_cache's "first write wins" is an anti-join (see store_calls)
    cache = {name: kind.replace(" PRIMARY KEY", "") for name, kind in LLM_CACHE_COLUMNS.items()}
    return tables | {
        "memberships": MEMBERSHIP_COLUMNS,
        "versions": VERSION_COLUMNS,
        "promotions": PROMOTION_COLUMNS,
        "gate_results": GATE_COLUMNS,
        "publications": PUBLICATION_COLUMNS,
        "llm_cache": cache,
        "generation_failures": GENERATION_FAILURE_COLUMNS,
    }


class Lake:
    """The functions `Warehouse` offers, on a DuckLake catalog: same arguments, same frames back.

    One connection per process and catalog (loading the extensions and attaching costs ~1 s), used
    under a lock; a write transaction that meets another writer's lock is retried whole, with backoff,
    until `lock_timeout_s`."""

    _connections: ClassVar[dict[tuple[int, LakeConfig], duckdb.DuckDBPyConnection]] = {}
    _guard = threading.RLock()

    def __init__(self, config: LakeConfig | None = None, lock_timeout_s: float = 120.0) -> None:
        self.config = config or LakeConfig.from_env()
        self.lock_timeout_s = lock_timeout_s
        self.retries: list[str] = []  # the lock errors met and retried (first line of each)

    # -- connection ----------------------------------------------------------------------------------
    def _open(self) -> duckdb.DuckDBPyConnection:
        folder = extension_dir()
        connection = duckdb.connect()
        for name in EXTENSIONS:
            connection.execute(f"LOAD '{folder / name}.duckdb_extension'")
        settings = self.config.s3
        if settings is not None:
            connection.execute(
                "CREATE OR REPLACE SECRET lake_s3 (TYPE s3, KEY_ID ?, SECRET ?, ENDPOINT ?, REGION ?, "
                "URL_STYLE ?, USE_SSL ?)".replace("?", "{}").format(
                    *(
                        _sql_text(v)
                        for v in (settings.key_id, settings.secret, settings.endpoint, settings.region)
                    ),
                    _sql_text(settings.url_style),
                    "true" if settings.use_ssl else "false",
                )
            )
        local = self.config.local_data
        try:
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
            if self.config.catalog.startswith("sqlite:"):
                self._prepare_sqlite(Path(self.config.catalog.removeprefix("sqlite:")))
        except (OSError, sqlite3.Error) as exc:
            connection.close()
            raise StorageError(f"{getattr(exc, 'filename', None) or self.config.describe()}: {exc}") from exc
        self._retrying(
            lambda: connection.execute(
                f"ATTACH {_sql_text('ducklake:' + self.config.catalog)} AS {LAKE} "
                f"(DATA_PATH {_sql_text(self.config.data_path)}, "
                f"DATA_INLINING_ROW_LIMIT {INLINING_ROW_LIMIT})"
            ),
            "attaching the catalog",
        )
        connection.execute(f"USE {LAKE}")
        self._retrying(lambda: self._ensure_schema(connection), "creating its tables")
        return connection

    @staticmethod
    def _prepare_sqlite(catalog: Path) -> None:
        """Create the SQLite catalog in WAL mode (kept in the file): readers then never block a commit,
        and a commit blocks only the other writer's commit, not its reads."""
        catalog.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(catalog, timeout=60)) as database:
            if database.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                database.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """This process's connection to the catalog (opened on first use), held under a lock."""
        key = (os.getpid(), self.config)
        with self._guard:
            connection = self._connections.get(key)
            if connection is None:
                connection = self._connections[key] = self._open()
            yield connection

    def close(self) -> None:
        """Detach and drop this process's connection (the next call opens a new one)."""
        with self._guard:
            connection = self._connections.pop((os.getpid(), self.config), None)
            if connection is not None:
                connection.close()

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
                    friendly = _storage_error(Path(where), exc, doing)
                    if friendly is None and doing == "attaching the catalog":
                        first = _PASSWORD.sub("password=***", str(exc).strip().splitlines()[0])
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
        if not self.config.catalog.startswith("sqlite:"):
            yield
            return
        path = Path(self.config.catalog.removeprefix("sqlite:") + ".write-lock")
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

    @staticmethod
    def _ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
        existing = {
            name
            for (name,) in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [LAKE]
            ).fetchall()
        }
        missing = {table: columns for table, columns in _schema().items() if table not in existing}
        if not missing:
            return
        # one transaction: a second process creating them at the same time conflicts and is retried
        connection.execute("BEGIN TRANSACTION")
        try:
            for table, columns in missing.items():
                body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
                connection.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({body})')
            connection.execute("COMMIT")
        except BaseException:
            with suppress(duckdb.Error):
                connection.execute("ROLLBACK")
            raise

    def _write(self, doing: str, work: Callable[[duckdb.DuckDBPyConnection, str], None]) -> int:
        """Run `work(connection, write_id)` in one DuckLake transaction tagged `write_id` (retried whole
        on a lock); the snapshot id it committed."""
        write_id = uuid.uuid4().hex

        def attempt() -> int:
            with self.connect() as connection, self._writer_turn():
                connection.execute("BEGIN TRANSACTION")
                try:
                    connection.execute(
                        f"CALL {LAKE}.set_commit_message('synth_assets', ?, extra_info => ?)",
                        [doing, write_id],
                    )
                    work(connection, write_id)
                    connection.execute("COMMIT")
                except BaseException:
                    with suppress(duckdb.Error):
                        connection.execute("ROLLBACK")
                    raise
                found = connection.execute(
                    f"SELECT max(snapshot_id) FROM {LAKE}.snapshots() WHERE commit_extra_info = ?", [write_id]
                ).fetchone()
                return int(found[0]) if found and found[0] is not None else self.snapshot_id()

        return self._retrying(attempt, doing)

    def query(self, sql: str, parameters: list[object] | None = None) -> pd.DataFrame:
        """A read on the newest snapshot (the lake's tables are the current schema)."""
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).fetchdf()

    def snapshot_id(self) -> int:
        """The newest snapshot of the catalog."""
        return int(self.query(f"SELECT id FROM {LAKE}.current_snapshot()")["id"].iloc[0])

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
    ) -> int:
        """`Warehouse.write_version`; returns the snapshot id the write committed."""
        return self.write_versions(
            {stage: frame}, spec_name, run_id, promote=promote, publication=publication, gate=gate
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
    ) -> int:
        """`Warehouse.write_versions` as one snapshot: rows not yet stored are added once, the version's
        membership once per distinct list, a `versions` row always (and a `promotions` row when
        `promote`). Returns the snapshot id. Raises ValueError (missing columns), LookupError (the
        version to publish does not exist), StorageError (disk full, catalog unusable); nothing is
        written then."""
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
        at = _now()

        def work(connection: duckdb.DuckDBPyConnection, write_id: str) -> None:
            for stage, (rows, members, count) in prepared.items():
                self._store_rows(connection, stage, rows, members)
                self._append(connection, "versions", [spec_name, stage, run_id, members, count, at, write_id])
                if promote:
                    self._append(connection, "promotions", [spec_name, stage, run_id, at, write_id])
            if publication is not None:
                self._decide(connection, spec_name, run_id, publication, write_id)
            if gate is not None:
                self._append_gate(connection, spec_name, run_id, gate)

        return self._write(f"{spec_name} {run_id}: {', '.join(frames)}", work)

    @staticmethod
    def _append(connection: duckdb.DuckDBPyConnection, table: str, values: list[object]) -> None:
        marks = ", ".join("?" for _ in values)
        connection.execute(f'INSERT INTO "{table}" VALUES ({marks})', values)

    @staticmethod
    def _store_rows(
        connection: duckdb.DuckDBPyConnection, stage: str, rows: pd.DataFrame, members: str
    ) -> None:
        connection.register("incoming_rows", rows)
        try:
            connection.execute(
                f'INSERT INTO "{stage}_rows" SELECT DISTINCT ON (content_id) * EXCLUDE (ordinal) '
                f"FROM incoming_rows i "
                f'WHERE NOT EXISTS (SELECT 1 FROM "{stage}_rows" r WHERE r.content_id = i.content_id)'
            )
            known = connection.execute(
                "SELECT count(*) FROM memberships WHERE membership_id = ?", [members]
            ).fetchone()
            if not (known and known[0]):
                connection.execute(
                    "INSERT INTO memberships SELECT ?, ordinal, content_id FROM incoming_rows",
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
        before = self._current_run(connection, stage, spec_name)
        if publication.published:
            if self._version(connection, stage, spec_name, version) is None:
                raise LookupError(f"{stage} of spec '{spec_name}' has no version from run {version}")
            for table in (stage, *PUBLISHED_WITH.get(stage, ())):
                self._append(connection, "promotions", [spec_name, table, version, _now(), write_id])
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
                before,
                _now(),
            ],
        )

    @staticmethod
    def _append_gate(
        connection: duckdb.DuckDBPyConnection, spec_name: str, run_id: str, gate: GateRecord
    ) -> None:
        connection.execute(
            "INSERT INTO gate_results VALUES (?, ?, ?, ?, ?, ?, ?)",
            [spec_name, run_id, gate.asset, gate.check_name, gate.passed, gate.summary, _now()],
        )

    def record_gate(
        self, spec_name: str, run_id: str, asset: str, check_name: str, passed: bool, summary: str
    ) -> int:
        """A verdict on its own (prefer `write_versions(..., gate=...)`); returns the snapshot id."""
        record = GateRecord(asset, check_name, passed, summary)
        return self._write(
            f"{spec_name} {run_id}: gate {asset}",
            lambda connection, _write_id: self._append_gate(connection, spec_name, run_id, record),
        )

    def store_calls(self, calls: pd.DataFrame, failures: pd.DataFrame | None = None) -> int:
        """Persist finished LLM calls (first write of a key wins) and failed ones, in one snapshot."""
        calls = calls.assign(created_at=_now())

        def work(connection: duckdb.DuckDBPyConnection, _write_id: str) -> None:
            if len(calls):
                connection.register("incoming_calls", calls)
                connection.execute(
                    "INSERT INTO llm_cache BY NAME SELECT DISTINCT ON (cache_key) * FROM incoming_calls i "
                    "WHERE NOT EXISTS (SELECT 1 FROM llm_cache c WHERE c.cache_key = i.cache_key)"
                )
                connection.unregister("incoming_calls")
            if failures is not None and len(failures):
                connection.register("incoming_failures", failures.assign(failed_at=_now()))
                connection.execute("INSERT INTO generation_failures BY NAME SELECT * FROM incoming_failures")
                connection.unregister("incoming_failures")

        return self._write("llm calls", work)

    # -- reads ---------------------------------------------------------------------------------------
    @staticmethod
    def _at(snapshot: int | None) -> str:
        return "" if snapshot is None else f" AT (VERSION => {int(snapshot)})"

    def _current_run(
        self, connection: duckdb.DuckDBPyConnection, stage: str, spec_name: str, snapshot: int | None = None
    ) -> str | None:
        found = connection.execute(
            f"SELECT arg_max(run_id, promoted_at) FROM promotions{self._at(snapshot)} "
            "WHERE spec_name = ? AND stage = ?",
            [spec_name, stage],
        ).fetchone()
        return None if not found or found[0] is None else str(found[0])

    def _version(
        self,
        connection: duckdb.DuckDBPyConnection,
        stage: str,
        spec_name: str,
        run_id: str,
        snapshot: int | None = None,
    ) -> tuple[str, object] | None:
        """(membership_id, materialized_at) of the newest write of that version, None if never written."""
        found = connection.execute(
            "SELECT arg_max(membership_id, materialized_at), max(materialized_at) "
            f"FROM versions{self._at(snapshot)} "
            "WHERE spec_name = ? AND stage = ? AND run_id = ?",
            [spec_name, stage, run_id],
        ).fetchone()
        return None if not found or found[0] is None else (str(found[0]), found[1])

    def read_version(
        self, stage: str, spec_name: str, run_id: str, *, snapshot: int | None = None
    ) -> pd.DataFrame:
        """The version `run_id` wrote, as `Warehouse.read_version` returns it (spec_name, the stage's
        columns, run_id, materialized_at; in written order); empty when there is none. `snapshot`: as
        the catalog was at that snapshot (DuckLake time travel)."""
        columns = stage_columns(stage)
        with self.connect() as connection:
            version = self._version(connection, stage, spec_name, run_id, snapshot)
            if version is None:
                frame = pd.DataFrame(columns=["spec_name", *columns, "run_id", "materialized_at"])
                return frame
            members, materialized_at = version
            picked = ", ".join(f'r."{c}"' for c in columns)
            frame = connection.execute(
                f"SELECT ? AS spec_name, {picked}, ? AS run_id, ?::TIMESTAMP AS materialized_at "
                f"FROM (SELECT * FROM memberships{self._at(snapshot)} WHERE membership_id = ?) m "
                f'JOIN (SELECT DISTINCT ON (content_id) * FROM "{stage}_rows"{self._at(snapshot)}) r '
                "USING (content_id) "
                "ORDER BY m.position",
                [spec_name, run_id, materialized_at, members],
            ).fetchdf()
        return frame

    def read_current(self, stage: str, spec_name: str, *, snapshot: int | None = None) -> pd.DataFrame:
        """The promoted version of `stage` for the spec (empty if none), optionally as of `snapshot`."""
        with self.connect() as connection:
            run_id = self._current_run(connection, stage, spec_name, snapshot)
        if run_id is None:
            return pd.DataFrame(columns=["spec_name", *stage_columns(stage), "run_id", "materialized_at"])
        return self.read_version(stage, spec_name, run_id, snapshot=snapshot)

    def published_run(self, stage: str, spec_name: str, *, read_only: bool = False) -> str | None:
        """The run whose version of `stage` is current for the spec, None if none is. (`read_only`: for
        the Warehouse's signature; a DuckLake reader never takes a writer's lock.)"""
        with self.connect() as connection:
            return self._current_run(connection, stage, spec_name)

    def staged_runs(
        self, spec_name: str, stage: str = "curated_set", *, read_only: bool = False
    ) -> list[str]:
        """Runs whose version of `stage` passed its blocking gate (newest gate row), newest first."""
        frame = self.query(
            """
            SELECT v.run_id FROM (
                SELECT run_id, max(materialized_at) AS at FROM versions
                WHERE spec_name = ? AND stage = ? GROUP BY run_id
            ) v JOIN (
                SELECT run_id, arg_max(passed, evaluated_at) AS passed FROM gate_results
                WHERE spec_name = ? AND asset = ? GROUP BY run_id
            ) g USING (run_id)
            WHERE g.passed ORDER BY v.at DESC
            """,
            [spec_name, stage, spec_name, stage],
        )
        return [str(run) for run in frame["run_id"]]

    def publications(
        self, spec_name: str, stage: str = "curated_set", *, read_only: bool = False
    ) -> pd.DataFrame:
        """Every publication decision for the spec's `stage`, newest first (PUBLICATION_COLUMNS)."""
        return self.query(
            "SELECT * FROM publications WHERE spec_name = ? AND stage = ? "
            "ORDER BY decided_at DESC, rowid DESC",
            [spec_name, stage],
        )

    def gate_records(self, spec_name: str, run_id: str | None = None) -> pd.DataFrame:
        """`gate_results` rows of the spec (of one run when given), oldest first (GATE_COLUMNS)."""
        sql = "SELECT * FROM gate_results WHERE spec_name = ?"
        parameters: list[object] = [spec_name]
        if run_id is not None:
            sql += " AND run_id = ?"
            parameters.append(run_id)
        return self.query(sql + " ORDER BY evaluated_at, rowid", parameters)

    def cached_calls(self, cache_keys: list[str]) -> pd.DataFrame:
        """Rows of `llm_cache` for these keys (first write of a key; never-called keys absent)."""
        if not cache_keys:
            return pd.DataFrame(columns=list(LLM_CACHE_COLUMNS))
        with self.connect() as connection:
            connection.register("wanted", pd.DataFrame({"cache_key": list(dict.fromkeys(cache_keys))}))
            try:
                return connection.execute(
                    "SELECT DISTINCT ON (c.cache_key) c.* FROM llm_cache c JOIN wanted w USING (cache_key) "
                    "ORDER BY c.cache_key, c.created_at, c.rowid"
                ).fetchdf()
            finally:
                connection.unregister("wanted")

    def history(self, stage: str, spec_name: str) -> pd.DataFrame:
        """Every version of `stage` for the spec, oldest first: run_id, row_count, materialized_at,
        membership_id, snapshot_id (the DuckLake snapshot that committed it)."""
        return self.query(
            f"SELECT v.run_id, v.row_count, v.materialized_at, v.membership_id, s.snapshot_id "
            f"FROM versions v LEFT JOIN {LAKE}.snapshots() s ON s.commit_extra_info = v.write_id "
            "WHERE v.spec_name = ? AND v.stage = ? ORDER BY s.snapshot_id, v.materialized_at",
            [spec_name, stage],
        )

    def diff_versions(
        self, stage: str, spec_name: str, before_run: str, after_run: str
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(added, removed): rows of the `after_run` version not in `before_run`, and the reverse; by
        content id, so an unchanged row is in neither."""
        before = self.read_version(stage, spec_name, before_run)
        after = self.read_version(stage, spec_name, after_run)
        columns = stage_columns(stage)
        before_ids = set(content_ids(before, columns))
        after_ids = set(content_ids(after, columns))
        added = after[[content_id not in before_ids for content_id in content_ids(after, columns)]]
        removed = before[[content_id not in after_ids for content_id in content_ids(before, columns)]]
        return added.reset_index(drop=True), removed.reset_index(drop=True)

    def rows_added_between(self, stage: str, start_snapshot: int, end_snapshot: int) -> pd.DataFrame:
        """Rows of `stage` stored for the first time in snapshots start..end (DuckLake `table_changes`):
        what a range of materializations added, all specs together."""
        return self.query(
            f"SELECT * FROM table_changes('{stage}_rows', ?, ?) WHERE change_type = 'insert' ORDER BY rowid",
            [int(start_snapshot), int(end_snapshot)],
        )

    def data_files(self) -> list[str]:
        """Paths of the Parquet files the catalog references (live ones)."""
        frame = self.query(
            "SELECT f.path, f.path_is_relative, t.table_name "
            f"FROM __ducklake_metadata_{LAKE}.ducklake_data_file f "
            f"JOIN __ducklake_metadata_{LAKE}.ducklake_table t USING (table_id) WHERE f.end_snapshot IS NULL "
            "AND t.end_snapshot IS NULL"
        )
        return [str(path) for path in frame["path"]]

    def storage_bytes(self) -> int:
        """Bytes on disk of the embedded configuration: the catalog file plus every data file."""
        total = 0
        if self.config.catalog.startswith("sqlite:"):
            catalog = Path(self.config.catalog.removeprefix("sqlite:"))
            total += sum(p.stat().st_size for p in catalog.parent.glob(catalog.name + "*") if p.is_file())
        local = self.config.local_data
        if local is not None and local.exists():
            total += sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return total


class MigrationRefused(StorageError):
    """An existing DuckDB file of the earlier layout cannot be imported as it is: one line saying how."""


def source_tables(source: Path) -> tuple[duckdb.DuckDBPyConnection, set[str]]:
    """A connection on which the earlier layout's tables are readable by name, and their names.

    `source` is the DuckDB file, or the folder `EXPORT DATABASE '<folder>' (FORMAT parquet)` wrote (the
    way over from a file of a DuckDB this version cannot open)."""
    connection = duckdb.connect()
    if source.is_dir():
        tables = {path.stem for path in source.glob("*.parquet")}
        for table in tables:
            parquet = _sql_text(str(source / f"{table}.parquet"))
            # the file's row order stands in for the table's rowid (the order versions were written in)
            connection.execute(
                f'CREATE VIEW "{table}" AS SELECT * EXCLUDE (file_row_number), file_row_number AS rowid '
                f"FROM read_parquet({parquet}, file_row_number = true)"
            )
        return connection, tables
    try:
        connection.execute(f"ATTACH {_sql_text(str(source))} AS source (READ_ONLY)")
    except duckdb.Error as exc:
        connection.close()
        if "newer version" in str(exc) or "version number" in str(exc):
            raise MigrationRefused(
                f"{source}: written by a newer DuckDB than {duckdb.__version__}, which cannot open it; "
                f"with that DuckDB run EXPORT DATABASE '<folder>' (FORMAT parquet) and import the folder"
            ) from None
        raise MigrationRefused(f"{source}: not a readable DuckDB file ({str(exc).splitlines()[0]})") from None
    connection.execute("USE source")
    tables = {name for (name,) in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return connection, tables


def import_warehouse(source: str | Path, lake: Lake) -> dict[str, int]:
    """Import a warehouse of the earlier layout (`data/synth_assets.duckdb`, see synth_assets.storage)
    into an empty lake, in one snapshot: every history version (with its run id and materialized_at),
    which run is current per spec and stage, gate results, publications, the LLM cache and failures.

    Returns rows imported per source table. Raises MigrationRefused (one line, nothing written) when the
    file is missing, unreadable, of a newer DuckDB (says how to export it), not of this layout, or the
    lake already holds versions."""
    path = Path(source).resolve()
    if not path.exists():
        raise MigrationRefused(f"{path}: no such file to import")
    connection, tables = source_tables(path)
    try:
        if not set(HISTORY_TABLE.values()) & tables:
            raise MigrationRefused(f"{path}: has none of the tables {sorted(HISTORY_TABLE.values())}")
        held = lake.query("SELECT count(*) AS n FROM versions")["n"].iloc[0]
        if held:
            raise MigrationRefused(
                f"{path}: the lake at {lake.config.catalog} already holds {held} versions; "
                "import into an empty lake (a new catalog) so nothing is doubled"
            )
        versions: list[tuple[str, str, str, pd.DataFrame]] = []
        counts: dict[str, int] = {}
        for stage, history in HISTORY_TABLE.items():
            if history not in tables:
                continue
            frame = connection.execute(f'SELECT * FROM "{history}" ORDER BY materialized_at, rowid').fetchdf()
            counts[history] = len(frame)
            for (spec_name, run_id), rows in frame.groupby(["spec_name", "run_id"], sort=False):
                versions.append((stage, str(spec_name), str(run_id), rows))
        current = [
            (stage, str(spec_name), str(run_id), at)
            for stage in STAGE_COLUMNS
            if stage in tables
            for spec_name, run_id, at in connection.execute(
                f'SELECT spec_name, any_value(run_id), max(materialized_at) FROM "{stage}" GROUP BY spec_name'
            ).fetchall()
        ]
        extras = {
            table: connection.execute(f'SELECT * FROM "{table}"')
            .fetchdf()
            .drop(columns="rowid", errors="ignore")
            for table in ("gate_results", "publications", "llm_cache", "generation_failures")
            if table in tables
        }
    finally:
        connection.close()

    def work(lake_connection: duckdb.DuckDBPyConnection, write_id: str) -> None:
        for stage, spec_name, run_id, rows in versions:
            columns = stage_columns(stage)
            present = rows.reindex(columns=columns).reset_index(drop=True)
            ids = content_ids(present, columns)
            present.insert(0, "content_id", ids)
            present["ordinal"] = range(len(present))
            members = membership_id(ids)
            Lake._store_rows(lake_connection, stage, present, members)
            at = rows["materialized_at"].max()
            Lake._append(
                lake_connection, "versions", [spec_name, stage, run_id, members, len(ids), at, write_id]
            )
        for stage, spec_name, run_id, at in current:
            Lake._append(lake_connection, "promotions", [spec_name, stage, run_id, at, write_id])
        for table, frame in extras.items():
            if len(frame):
                lake_connection.register("imported", frame)
                lake_connection.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM imported')
                lake_connection.unregister("imported")
                counts[table] = len(frame)

    lake._write(f"import {path.name}", work)
    return counts
