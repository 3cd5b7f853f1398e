"""Import of a warehouse of the earlier layout: one DuckDB file (`data/synth_assets.duckdb`) holding
every stage twice (`<stage>` current, `<stage>_history` every version, copies of the rows per run), plus
`gate_results`, `publications`, `llm_cache`, `generation_failures` and `generation_runs`.

`Warehouse` imports such a file the first time it opens its catalog (`import_on_first_open`), in one
snapshot, and records it in `imports` so it is never imported twice; the file itself is only read. A
file it cannot import stops the open with a one-line `MigrationRefused` that says what to do.

"Never twice" must hold with two processes importing at once. On the embedded (SQLite) catalog the
writers of one machine take turns per transaction (`Warehouse._writer_turn`), so the check inside the
import's transaction is enough. A PostgreSQL catalog has no such turn and DuckLake lets two
transactions append to `imports` at once (append-only tables never conflict), so both would import:
there the whole import runs under a PostgreSQL advisory lock keyed by the source (`_import_turn`),
taken in a transaction of the catalog's own server, released when it ends (or its session dies).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from synth_assets.storage.lake import (
    StorageError,
    content_ids,
    extension_dir,
    hide_password,
    membership_id,
    now,
    sql_text,
)
from synth_assets.storage.stages import HISTORY_TABLE, STAGE_COLUMNS, stage_columns

if TYPE_CHECKING:
    from synth_assets.storage.warehouse import Warehouse

# the plain tables of the earlier layout, imported as they are (columns matched by name)
PLAIN_TABLES = ("gate_results", "publications", "llm_cache", "generation_failures", "generation_runs")


class MigrationRefused(StorageError):
    """An existing DuckDB file of the earlier layout cannot be imported as it is: one line saying how."""


def source_tables(source: Path) -> tuple[duckdb.DuckDBPyConnection, set[str]]:
    """A connection on which the earlier layout's tables are readable by name, and their names.

    `source` is the DuckDB file (opened read-only, never changed), or the folder
    `EXPORT DATABASE '<folder>' (FORMAT parquet)` wrote (the way over from a file of a DuckDB this
    version cannot open). Raises MigrationRefused (one line) when it cannot be read."""
    connection = duckdb.connect()
    if source.is_dir():
        tables = {path.stem for path in source.glob("*.parquet")}
        for table in tables:
            parquet = sql_text(str(source / f"{table}.parquet"))
            # the file's row order stands in for the table's rowid (the order versions were written in)
            connection.execute(
                f'CREATE VIEW "{table}" AS SELECT * EXCLUDE (file_row_number), file_row_number AS rowid '
                f"FROM read_parquet({parquet}, file_row_number = true)"
            )
        return connection, tables
    try:
        connection.execute(f"ATTACH {sql_text(str(source))} AS source (READ_ONLY)")
    except duckdb.Error as exc:
        connection.close()
        if "newer version" in str(exc) or "version number" in str(exc):
            raise MigrationRefused(
                f"{source}: written by a newer DuckDB than {duckdb.__version__}, which cannot open it; "
                f"with that DuckDB run EXPORT DATABASE '<folder>' (FORMAT parquet) and import the folder "
                f"(python -m synth_assets.storage.migrate <folder> <catalog>), or move the file away"
            ) from None
        raise MigrationRefused(f"{source}: not a readable DuckDB file ({str(exc).splitlines()[0]})") from None
    connection.execute("USE source")
    tables = {name for (name,) in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return connection, tables


def _read(source: Path) -> tuple[list[tuple[str, str, str, pd.DataFrame]], list[tuple[str, str, str]], dict]:
    """(versions, current, plain tables) of an old-layout file: every history version
    (stage, spec, run, rows), which run is current per stage and spec, and the plain tables."""
    connection, tables = source_tables(source)
    try:
        if tables and not (set(HISTORY_TABLE.values()) | set(PLAIN_TABLES)) & tables:
            raise MigrationRefused(
                f"{source}: a DuckDB file without the warehouse's tables (none of "
                f"{', '.join(sorted(HISTORY_TABLE.values()))}); point --db / SYNTH_ASSETS_DB elsewhere "
                "or move it away"
            )
        versions: list[tuple[str, str, str, pd.DataFrame]] = []
        for stage, history in HISTORY_TABLE.items():
            if history not in tables:
                continue
            order = "materialized_at, rowid" if _has(connection, history, "materialized_at") else "rowid"
            frame = connection.execute(f'SELECT *, rowid FROM "{history}" ORDER BY {order}').fetchdf()
            frame = frame.drop(columns="rowid", errors="ignore")
            for (spec_name, run_id), rows in frame.groupby(["spec_name", "run_id"], sort=False, dropna=False):
                versions.append((stage, str(spec_name), str(run_id), rows))
        current = [
            (stage, str(spec_name), str(run_id))
            for stage in STAGE_COLUMNS
            if stage in tables
            for spec_name, run_id in connection.execute(
                f'SELECT spec_name, any_value(run_id) FROM "{stage}" GROUP BY spec_name'
            ).fetchall()
        ]
        plain = {
            table: connection.execute(f'SELECT * FROM "{table}"')
            .fetchdf()
            .drop(columns="rowid", errors="ignore")
            for table in PLAIN_TABLES
            if table in tables
        }
        return versions, current, plain
    finally:
        connection.close()


def _has(connection: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    found = connection.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall()
    return column in {name for (name,) in found}


class AlreadyImported(MigrationRefused):
    """The source was imported into this catalog before (by this or another process)."""


def advisory_key(source: Path) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of importing `source`."""
    digest = hashlib.sha256(f"synth_assets import {source}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _import_turn(warehouse: Warehouse, source: Path) -> Iterator[None]:
    """Hold the import of `source` into `warehouse` for this process: on a PostgreSQL catalog a
    transaction-level advisory lock (`pg_advisory_xact_lock`) on the catalog's server, through DuckDB's
    postgres extension on a connection of its own, waited for up to `warehouse.lock_timeout_s`
    (`lock_timeout`), released when the block ends; on any other catalog nothing (see the module
    docstring). Raises StorageError (one line, password masked) when the lock cannot be had."""
    catalog = warehouse.config.catalog
    if not catalog.startswith("postgres:"):
        yield
        return
    connection = duckdb.connect()
    try:
        try:
            connection.execute(f"LOAD '{extension_dir() / 'postgres_scanner'}.duckdb_extension'")
            connection.execute(
                f"ATTACH {sql_text(catalog.removeprefix('postgres:'))} AS lock_db (TYPE postgres)"
            )
            connection.execute("BEGIN TRANSACTION")
            wait_ms = max(1, int(warehouse.lock_timeout_s * 1000))
            connection.execute(
                "CALL postgres_execute('lock_db', "
                f"'SET LOCAL lock_timeout = {wait_ms}; SELECT pg_advisory_xact_lock({advisory_key(source)})')"
            )
        except duckdb.Error as exc:
            first = hide_password(" ".join(str(exc).split()))
            raise StorageError(
                f"{warehouse.config.describe()}: cannot take the import lock of {source.name}: {first}"
            ) from None
        yield
    finally:
        with suppress(duckdb.Error):
            connection.execute("ROLLBACK")  # ends the transaction: PostgreSQL releases the lock
        connection.close()


def import_warehouse(source: str | Path, warehouse: Warehouse) -> dict[str, int]:
    """Import a warehouse of the earlier layout (a DuckDB file, or the folder EXPORT DATABASE wrote from
    one) into `warehouse`, in one snapshot: every history version (with its run id and
    materialized_at), which version is current per spec and stage, gate results, publications, the LLM
    cache, failures and generation costs. Records the import in `imports`.

    Returns rows imported per source table. Raises MigrationRefused (one line, nothing written) when the
    source is missing, unreadable, of a newer DuckDB (says how to export it), not of this layout, or
    already imported into this catalog."""
    path = Path(source).resolve()
    if not path.exists():
        raise MigrationRefused(f"{path}: no such file to import")
    with _import_turn(warehouse, path):
        return _import(path, warehouse)


def _import(path: Path, warehouse: Warehouse) -> dict[str, int]:
    done = warehouse.query("SELECT count(*) AS n FROM imports WHERE source = ?", [str(path)])["n"].iloc[0]
    if done:
        raise AlreadyImported(f"{path}: already imported into {warehouse.config.describe()}")
    versions, current, plain = _read(path)
    counts: dict[str, int] = {}
    for stage, _spec, _run, rows in versions:
        counts[HISTORY_TABLE[stage]] = counts.get(HISTORY_TABLE[stage], 0) + len(rows)

    def work(connection: duckdb.DuckDBPyConnection, write_id: str) -> None:
        # checked again inside the writer's turn: two processes opening the old file at once import once
        again = connection.execute("SELECT count(*) FROM imports WHERE source = ?", [str(path)]).fetchone()
        if again and again[0]:
            raise AlreadyImported(f"{path}: already imported into {warehouse.config.describe()}")
        written: dict[tuple[str, str, str], tuple[str, object]] = {}
        for stage, spec_name, run_id, rows in versions:
            columns = stage_columns(stage)
            present = rows.reindex(columns=columns).reset_index(drop=True)
            ids = content_ids(present, columns)
            present.insert(0, "content_id", ids)
            present["ordinal"] = range(len(present))
            members = membership_id(ids)
            warehouse._store_rows(connection, stage, present, members)
            at = rows["materialized_at"].max() if "materialized_at" in rows else now()
            at = now() if pd.isna(at) else at
            written[(stage, spec_name, run_id)] = (members, at)
            warehouse._append(
                connection, "versions", [spec_name, stage, run_id, members, len(ids), at, write_id]
            )
        for stage, spec_name, run_id in current:
            members, at = written.get((stage, spec_name, run_id), (None, None))
            warehouse._append(
                connection, "promotions", [spec_name, stage, run_id, members, at, now(), write_id]
            )
        for table, frame in plain.items():
            if len(frame):
                connection.register("imported", frame)
                connection.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM imported')
                connection.unregister("imported")
            counts[table] = len(frame)
        warehouse._append(connection, "imports", [str(path), ",".join(sorted(counts)), now()])

    warehouse._write(f"import {path.name}", work)
    return counts


def import_on_first_open(warehouse: Warehouse, legacy: Path) -> None:
    """Import the old-layout file `legacy` into `warehouse` unless this catalog already did; raises
    MigrationRefused (one line) when it cannot."""
    done = warehouse.query("SELECT count(*) AS n FROM imports WHERE source = ?", [str(legacy.resolve())])
    if not done["n"].iloc[0]:
        with suppress(AlreadyImported):  # another process opening it at the same moment was first
            import_warehouse(legacy, warehouse)


def main(argv: list[str] | None = None) -> int:
    """`python -m synth_assets.storage.migrate SOURCE [CATALOG]`: import an old-layout DuckDB file or its
    EXPORT DATABASE folder into the catalog file CATALOG (created if new); without CATALOG, into the
    warehouse `synth-assets` uses (`SYNTH_ASSETS_LAKE_CATALOG` / `SYNTH_ASSETS_LAKE_DATA`, e.g. a
    PostgreSQL catalog, else `SYNTH_ASSETS_DB` or the default catalog)."""
    import argparse
    import sys

    from synth_assets.storage.warehouse import Warehouse

    parser = argparse.ArgumentParser(prog="python -m synth_assets.storage.migrate", description=main.__doc__)
    parser.add_argument("source", help="old-layout DuckDB file, or the folder EXPORT DATABASE wrote")
    parser.add_argument(
        "catalog",
        nargs="?",
        help="DuckLake catalog file to import into (e.g. data/synth_assets.ducklake); default: the "
        "warehouse of SYNTH_ASSETS_LAKE_CATALOG / SYNTH_ASSETS_DB",
    )
    args = parser.parse_args(argv)
    try:
        counts = import_warehouse(args.source, Warehouse(args.catalog))
    except (StorageError, ValueError) as exc:  # ValueError: incomplete S3 settings (LakeConfig.from_env)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(", ".join(f"{table}: {rows}" for table, rows in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def legacy_cached_keys(source: Path, cache_keys: list[str]) -> set[str]:
    """The keys among `cache_keys` that the `llm_cache` of the old-layout file `source` answers, read
    without importing or changing anything: what a dry run counts as answered before the first real
    open imports the file (`Warehouse.pending_import`). Raises MigrationRefused (one line) when the
    file cannot be read, as that open would."""
    connection, tables = source_tables(source)
    try:
        if "llm_cache" not in tables or not cache_keys:
            return set()
        found = connection.execute(
            "SELECT DISTINCT cache_key FROM llm_cache WHERE list_contains(?, cache_key)",
            [list(dict.fromkeys(cache_keys))],
        ).fetchall()
        return {str(key) for (key,) in found}
    finally:
        connection.close()
