"""The one place that knows the DuckDB layout.

Every stage table exists twice:
- `<stage>_history` (`evaluation_history` for the report) keeps every version ever written, one per
  (spec_name, run_id), so earlier runs stay queryable after a re-materialization;
- `<stage>` holds, per spec, the last version that passed its gate ("promoted"). A version that
  fails a blocking check is kept in history for inspection but never replaces the promoted one.

Connections are short-lived: DuckDB allows one writer process, and the UI, the CLI and runs must
take turns. Each write is one transaction, so a failure leaves the previous version intact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from synth_assets.paths import project_root

# Columns each stage writes, in order; `spec_name`, `run_id` and `materialized_at` are added here.
STAGE_COLUMNS: dict[str, dict[str, str]] = {
    "seed_data": {
        "seed_id": "VARCHAR",
        "split": "VARCHAR",
        "text": "VARCHAR",
        "label": "VARCHAR",
        "source_file": "VARCHAR",
        "source_row": "BIGINT",
    },
    "expanded_prompts": {
        "prompt_id": "VARCHAR",
        "prompt_index": "BIGINT",
        "label": "VARCHAR",
        "attributes": "VARCHAR",
        "demo_ids": "VARCHAR",
        "system_prompt": "VARCHAR",
        "prompt_text": "VARCHAR",
        "generation_seed": "BIGINT",
    },
    "generated_samples": {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",
        "model": "VARCHAR",
        "model_fingerprint": "VARCHAR",
        "backend": "VARCHAR",
        "generation_params": "VARCHAR",
        "generation_seed": "BIGINT",
        "prompt_tokens": "BIGINT",
        "completion_tokens": "BIGINT",
        "finish_reason": "VARCHAR",
    },
    "curated_set": {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",
        "normalized_hash": "VARCHAR",
    },
    "rejected_samples": {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",
        "reasons": "VARCHAR",
        "details": "VARCHAR",
    },
    "evaluation_report": {
        "metrics": "VARCHAR",
        "markdown": "VARCHAR",
        "report_path": "VARCHAR",
    },
}
COMMON_COLUMNS = {"spec_name": "VARCHAR", "run_id": "VARCHAR", "materialized_at": "TIMESTAMP"}
GATE_COLUMNS = {
    "spec_name": "VARCHAR",
    "run_id": "VARCHAR",
    "asset": "VARCHAR",
    "check_name": "VARCHAR",
    "passed": "BOOLEAN",
    "summary": "VARCHAR",
    "evaluated_at": "TIMESTAMP",
}
HISTORY_TABLE = {stage: f"{stage}_history" for stage in STAGE_COLUMNS} | {
    "evaluation_report": "evaluation_history"
}


def default_database_path() -> Path:
    """`SYNTH_ASSETS_DB` if set, else `data/synth_assets.duckdb` under the project root."""
    configured = os.environ.get("SYNTH_ASSETS_DB")
    return Path(configured).resolve() if configured else project_root() / "data" / "synth_assets.duckdb"


def stage_columns(stage: str) -> list[str]:
    return list(STAGE_COLUMNS[stage])


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Warehouse:
    """Reads and writes the stage tables of one DuckDB file."""

    def __init__(self, path: str | Path | None = None, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path).resolve() if path else default_database_path()
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the write lock."""
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no DuckDB file yet (run `synth-assets run` first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                connection = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            if not read_only:
                self._ensure_schema(connection)
            yield connection
        finally:
            connection.close()

    @staticmethod
    def _ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
        tables: dict[str, dict[str, str]] = {"gate_results": GATE_COLUMNS}
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
        self, stage: str, spec_name: str, run_id: str, frame: pd.DataFrame, *, promote: bool
    ) -> None:
        """Append one version to history and, when `promote`, make it the current one; atomically."""
        self.write_versions({stage: frame}, spec_name, run_id, promote=promote)

    def write_versions(
        self, frames: dict[str, pd.DataFrame], spec_name: str, run_id: str, *, promote: bool
    ) -> None:
        """Like `write_version` for several stages in one transaction (e.g. curated + rejected)."""
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
        with self.connect() as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
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
                connection.execute("COMMIT")
            except Exception:
                connection.execute("ROLLBACK")
                raise

    def record_gate(
        self, spec_name: str, run_id: str, asset: str, check_name: str, passed: bool, summary: str
    ) -> None:
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO gate_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec_name, run_id, asset, check_name, passed, summary, _now()],
            )

    def read_current(self, stage: str, spec_name: str) -> pd.DataFrame:
        """The promoted version of a stage for a spec, in the stage's column order (empty if none)."""
        return self.query(f'SELECT * FROM "{stage}" WHERE spec_name = ? ORDER BY rowid', [spec_name])

    def read_version(self, stage: str, spec_name: str, run_id: str) -> pd.DataFrame:
        return self.query(
            f'SELECT * FROM "{HISTORY_TABLE[stage]}" WHERE spec_name = ? AND run_id = ? ORDER BY rowid',
            [spec_name, run_id],
        )

    def query(self, sql: str, parameters: list[object] | None = None) -> pd.DataFrame:
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).fetchdf()

    def read_only_query(self, sql: str, parameters: list[object] | None = None) -> pd.DataFrame:
        """Query without taking the write lock (for the CLI while the UI may be idle)."""
        with self.connect(read_only=True) as connection:
            return connection.execute(sql, parameters or []).fetchdf()
