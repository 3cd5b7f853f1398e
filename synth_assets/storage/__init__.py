"""The one place that knows the DuckDB layout.

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
take turns. Each write is one transaction, so a failure leaves the previous version intact.
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
        "cell": "VARCHAR",
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
        "cache_key": "VARCHAR",
        "generated_in_run": "VARCHAR",
        "steps": "VARCHAR",
    },
    "curated_set": {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",  # final label (differs from intended_label only when relabeled)
        "text": "VARCHAR",  # PII scrubbed, truncated ending trimmed
        "normalized_hash": "VARCHAR",
        "intended_label": "VARCHAR",  # the label the prompt asked for
        "predicted_label": "VARCHAR",  # the seed-trained classifier's label (NULL: not checked)
        "label_confidence": "DOUBLE",  # classifier probability of `label`
        "relevance": "DOUBLE",  # cosine to the task/condition text
        "nearest_similarity": "DOUBLE",  # highest cosine to another sample of the batch
        "judge_score": "DOUBLE",  # LLM judge 1-5 (NULL: judge off)
        "pii_hits": "BIGINT",  # personal-data spans found (and scrubbed)
        "flags": "VARCHAR",  # JSON list: label_doubt, relabeled, pii_scrubbed, trimmed_truncated_ending
    },
    "rejected_samples": {
        "sample_id": "VARCHAR",
        "prompt_id": "VARCHAR",
        "label": "VARCHAR",
        "text": "VARCHAR",  # PII scrubbed
        "reasons": "VARCHAR",  # JSON list of every reason code the row failed
        "details": "VARCHAR",  # JSON object: reason code -> what was measured
        "predicted_label": "VARCHAR",
        "label_confidence": "DOUBLE",
        "relevance": "DOUBLE",
        "nearest_similarity": "DOUBLE",
        "judge_score": "DOUBLE",
        "pii_hits": "BIGINT",
    },
    "evaluation_report": {
        "metrics": "VARCHAR",  # JSON: every scalar metric of the run (key figures, usefulness, cost...)
        "markdown": "VARCHAR",
        "report_path": "VARCHAR",
        "details": "VARCHAR",  # JSON: per-label / per-attribute tables, CIs, notes
        "passed": "BOOLEAN",  # the usefulness gate; only passing versions are promoted ("last good")
        "gate_summary": "VARCHAR",
        "curated_run_id": "VARCHAR",  # which curated_set version was evaluated
        "baseline_run_id": "VARCHAR",  # the last good run the deltas and the gate compare against
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
# Every LLM call, keyed by everything that decides its output (model fingerprint, messages, parameters,
# seed). Written per batch as calls finish, so a killed run loses no finished call, and a re-run with
# nothing changed makes no call at all.
LLM_CACHE_COLUMNS = {
    "cache_key": "VARCHAR PRIMARY KEY",
    "backend": "VARCHAR",
    "model_fingerprint": "VARCHAR",
    "messages": "VARCHAR",
    "generation_params": "VARCHAR",
    "seed": "BIGINT",
    "text": "VARCHAR",
    "prompt_tokens": "BIGINT",
    "completion_tokens": "BIGINT",
    "finish_reason": "VARCHAR",
    "seconds": "DOUBLE",
    "run_id": "VARCHAR",
    "created_at": "TIMESTAMP",
}
# Calls that failed (backend errors): kept with the reason, retried on the next materialization.
GENERATION_FAILURE_COLUMNS = {
    "spec_name": "VARCHAR",
    "run_id": "VARCHAR",
    "cache_key": "VARCHAR",
    "prompt_id": "VARCHAR",
    "step": "VARCHAR",
    "error": "VARCHAR",
    "failed_at": "TIMESTAMP",
}
# One row per publication decision on a staged version: published (copied into the current table)
# or held back, with the reason (the usefulness gate's summary) and the evaluation run that decided.
PUBLICATION_COLUMNS = {
    "spec_name": "VARCHAR",
    "stage": "VARCHAR",  # curated_set
    "version_run_id": "VARCHAR",  # the run that wrote (staged) the version
    "decided_in_run_id": "VARCHAR",  # the evaluation_report run whose gate decided
    "published": "BOOLEAN",
    "reason": "VARCHAR",
    "previously_published_run_id": "VARCHAR",  # what was current before the decision (NULL: nothing)
    "decided_at": "TIMESTAMP",
}
# a published stage is copied together with these (written in the same transaction as it)
PUBLISHED_WITH = {"curated_set": ("rejected_samples",)}
HISTORY_TABLE = {stage: f"{stage}_history" for stage in STAGE_COLUMNS} | {
    "evaluation_report": "evaluation_history"
}


class StorageError(Exception):
    """The DuckDB file cannot be used (not a DuckDB file, a directory, a full disk): one line that
    names the file and the problem; nothing was half-written (the transaction was rolled back)."""


def _storage_error(path: Path, exc: BaseException, doing: str) -> StorageError | None:
    """A one-line StorageError for the failures a user can fix, None for anything else."""
    text = str(exc)
    if "No space left on device" in text or getattr(exc, "errno", None) == 28:
        return StorageError(f"{path}: No space left on device while {doing}; nothing of it was kept")
    if "not a valid DuckDB database" in text or "not a DuckDB" in text.lower():
        return StorageError(f"{path}: not a DuckDB database file (--db / SYNTH_ASSETS_DB)")
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


def default_database_path() -> Path:
    """`SYNTH_ASSETS_DB` if set, else `data/synth_assets.duckdb` under the project root."""
    configured = os.environ.get("SYNTH_ASSETS_DB")
    return Path(configured).resolve() if configured else project_root() / "data" / "synth_assets.duckdb"


def stage_columns(stage: str) -> list[str]:
    return list(STAGE_COLUMNS[stage])


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
    ) -> None:
        """Append one version to history and, when `promote`, make it the current one; atomically
        (with `publication` and `gate`, see `write_versions`)."""
        self.write_versions(
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
    ) -> None:
        """Like `write_version` for several stages in one transaction (e.g. curated + rejected).

        `publication`, in the same transaction: publish (or hold back) a staged version of another
        stage, e.g. the evaluation report and the curated_set version it approved commit together.
        `gate`: the blocking check's verdict on this version, its `gate_results` row in the same
        transaction. Raises LookupError (and writes nothing) when the version to publish is not in
        history, StorageError (nothing written) on a full disk."""
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

    def _select(self, sql: str, parameters: list[object], read_only: bool) -> pd.DataFrame:
        return self.read_only_query(sql, parameters) if read_only else self.query(sql, parameters)

    def published_run(self, stage: str, spec_name: str, *, read_only: bool = False) -> str | None:
        """The run whose version of `stage` is current (published) for the spec, None if none is."""
        frame = self._select(
            f'SELECT any_value(run_id) AS run_id FROM "{stage}" WHERE spec_name = ?', [spec_name], read_only
        )
        value = frame["run_id"].iloc[0] if len(frame) else None
        return None if value is None or pd.isna(value) else str(value)

    def staged_runs(
        self, spec_name: str, stage: str = "curated_set", *, read_only: bool = False
    ) -> list[str]:
        """Runs whose version of `stage` passed its blocking GX gate (their newest gate_results row),
        newest version first: the candidates for publication."""
        frame = self._select(
            f"""
            SELECT h.run_id FROM (
                SELECT run_id, max(materialized_at) AS at FROM "{HISTORY_TABLE[stage]}"
                WHERE spec_name = ? GROUP BY run_id
            ) h JOIN (
                SELECT run_id, arg_max(passed, evaluated_at) AS passed FROM gate_results
                WHERE spec_name = ? AND asset = ? GROUP BY run_id
            ) g USING (run_id)
            WHERE g.passed ORDER BY h.at DESC
            """,
            [spec_name, spec_name, stage],
            read_only,
        )
        return [str(run) for run in frame["run_id"]]

    def publications(
        self, spec_name: str, stage: str = "curated_set", *, read_only: bool = False
    ) -> pd.DataFrame:
        """Every publication decision for the spec's `stage`, newest first (PUBLICATION_COLUMNS); empty
        for a database from before publication existed, even read-only (no table to read)."""
        sql = (
            "SELECT * FROM publications WHERE spec_name = ? AND stage = ? "
            "ORDER BY decided_at DESC, rowid DESC"
        )
        try:
            return self._select(sql, [spec_name, stage], read_only)
        except duckdb.CatalogException:
            return pd.DataFrame(columns=list(PUBLICATION_COLUMNS))

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

    def cached_calls(self, cache_keys: list[str]) -> pd.DataFrame:
        """Rows of `llm_cache` for these keys (the ones never called are simply absent)."""
        if not cache_keys:
            return pd.DataFrame(columns=list(LLM_CACHE_COLUMNS))
        with self.connect() as connection:
            connection.register("wanted", pd.DataFrame({"cache_key": list(dict.fromkeys(cache_keys))}))
            return connection.execute("SELECT c.* FROM llm_cache c JOIN wanted w USING (cache_key)").fetchdf()

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
