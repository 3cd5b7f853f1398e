"""The named reads every other module uses: the vocabulary of the storage boundary.

Terms:
- *stage*: one of `Stage` (a table of the same name, and its history table);
- *version*: the rows one run wrote for one spec into a stage, named by that run's id (`run_id`);
- *promoted* (current, published) version: the one in the stage's own table (`promoted_version`);
- *verdict*: the newest blocking-check record of a version (`gate_verdicts`); *good*: see `is_good`,
  the one definition every caller uses (`good_versions`, `last_good`).

Shapes: frames are pandas DataFrames with the stage's columns plus `spec_name`, `run_id`,
`materialized_at` (UTC, naive). Reads named here decode the JSON columns (`JSON_COLUMNS`) once, so
readers get Python lists and dicts (None where the column is NULL); `read_current` and
`read_version` return a stage's frame as the stage wrote it (JSON as text) unless `decoded=True`,
because the stages hand those frames to code that reads its own encoding.

Every read takes `read_only`: True for the CLI and the UI (never creates the file or takes the write
lock; FileNotFoundError when there is no file yet), False inside a run (the writing process).
A table that an older database lacks reads as empty. Errors: FileNotFoundError (read-only, no file),
StorageError (the file is unusable), duckdb.Error for anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from synth_assets.storage.lake import at_clause, stage_sql
from synth_assets.storage.stages import (
    GATED_STAGES,
    GENERATION_RUN_COLUMNS,
    HISTORY_TABLE,
    ID_COLUMN,
    JSON_COLUMNS,
    LLM_CACHE_COLUMNS,
    POSITION_COLUMN,
    PUBLICATION_COLUMNS,
    Stage,
)

# every column of a stage view but its row order (the frames are the stage's columns as written)
_ROW = f"* EXCLUDE ({POSITION_COLUMN})"


def _source(stage: str, current: bool, snapshot: int | None) -> str:
    """The stage view (`<stage>` or its history), or at a snapshot the same SELECT with time travel."""
    if snapshot is None:
        return f'"{stage}"' if current else f'"{HISTORY_TABLE[stage]}"'
    return f"({stage_sql(stage, current=current, snapshot=snapshot)})"


def _table(name: str, snapshot: int | None, alias: str = "") -> str:
    """A plain table of the catalog (named `alias` in the query), at a snapshot when one is given
    (DuckLake time travel; the alias goes before `AT`)."""
    return f'"{name}"{" " + alias if alias else ""}{at_clause(snapshot)}'


if TYPE_CHECKING:
    from synth_assets.storage.warehouse import GenerationRecord


def decode_json(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """`frame` with the JSON columns of `table` (a stage or `llm_cache`) decoded to Python objects,
    NULL and '' to None; text that is not JSON (written by hand) is kept as it is."""
    columns = [c for c in JSON_COLUMNS.get(table, ()) if c in frame.columns]
    if not columns or frame.empty:
        return frame
    out = frame.copy()
    for column in columns:
        out[column] = [_decoded(value) for value in out[column]]
    return out


def _decoded(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class VersionVerdict:
    """The newest blocking-check record of one version of a stage.

    For generated_samples and curated_set: the newest `gate_results` row of (spec, run, stage); for
    evaluation_report: the usefulness gate's verdict stored on the report row itself
    (`evaluation_history.passed`; NULL on reports from before the gate, which were always promoted,
    so it reads as passed)."""

    run_id: str
    passed: bool
    summary: str
    check_name: str = ""


def is_good(stage: str, verdict: VersionVerdict | None) -> bool:
    """THE definition of a good version: its newest gate verdict passed.

    A version of a gated stage (GATED_STAGES: generated_samples, curated_set, evaluation_report)
    with no verdict is not good (written before its gate existed, or the check never ran). A stage
    without a gate (seed_data, expanded_prompts, rejected_samples) has no verdicts: every version
    it wrote is good; rejected_samples is published with its curated_set version, not on its own."""
    if verdict is None:
        return Stage(stage) not in GATED_STAGES
    return verdict.passed


@dataclass(frozen=True)
class VersionInfo:
    """One version of a stage: the run that wrote it, when (newest row, UTC), how many rows, and the
    DuckLake snapshot that committed it (its newest write; None where the catalog cannot say).
    Versions imported from an old-layout file share the import's snapshot."""

    run_id: str
    materialized_at: pd.Timestamp
    rows: int
    snapshot_id: int | None = None


class WarehouseReads:
    """The read half of `Warehouse` (mixed into it): every named read of the warehouse."""

    if TYPE_CHECKING:
        path: Path
        _alias: str  # the attached catalog's name on the connection `connect` yields

        def connect(self, read_only: bool = False) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    # --- plumbing ----------------------------------------------------------------------------------

    def _select(
        self, sql: str, parameters: Sequence[object] | dict[str, object], read_only: bool
    ) -> pd.DataFrame:
        """Rows of one query; an empty frame when a table is missing (older or empty database)."""
        with self.connect(read_only=read_only) as connection:
            try:
                return connection.execute(sql, parameters).fetchdf()
            except duckdb.CatalogException:
                return pd.DataFrame()

    def query(self, sql: str, parameters: list[object] | None = None) -> pd.DataFrame:
        """Raw SQL on a write connection: for tests and this package only (the boundary test keeps
        every other module off it)."""
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).fetchdf()

    def read_only_query(self, sql: str, parameters: list[object] | None = None) -> pd.DataFrame:
        """Raw SQL without taking the write lock: for tests and this package only."""
        with self.connect(read_only=True) as connection:
            return connection.execute(sql, parameters or []).fetchdf()

    # --- whole versions ----------------------------------------------------------------------------

    def read_current(
        self,
        stage: str,
        spec_name: str,
        *,
        read_only: bool = False,
        decoded: bool = False,
        snapshot: int | None = None,
    ) -> pd.DataFrame:
        """The promoted version of a stage for a spec, in written row order (empty if none);
        `snapshot`: as it was at that DuckLake snapshot (time travel, see `Warehouse.version_log`)."""
        frame = self._select(
            f"SELECT {_ROW} FROM {_source(stage, True, snapshot)} WHERE spec_name = ? "
            f"ORDER BY {POSITION_COLUMN}",
            [spec_name],
            read_only,
        )
        return decode_json(frame, stage) if decoded else frame

    def read_version(
        self,
        stage: str,
        spec_name: str,
        run_id: str,
        *,
        read_only: bool = False,
        decoded: bool = False,
        snapshot: int | None = None,
    ) -> pd.DataFrame:
        """The version of a stage that `run_id` wrote for the spec, in written row order (empty if none);
        `snapshot`: as the warehouse held it at that DuckLake snapshot (time travel)."""
        frame = self._select(
            f"SELECT {_ROW} FROM {_source(stage, False, snapshot)} WHERE spec_name = ? AND run_id = ? "
            f"ORDER BY {POSITION_COLUMN}",
            [spec_name, run_id],
            read_only,
        )
        return decode_json(frame, stage) if decoded else frame

    def read_versions(
        self, stage: str, spec_name: str, run_ids: Sequence[str], *, read_only: bool = False
    ) -> pd.DataFrame:
        """Every row of several versions of a stage, as written (JSON as text), in written order."""
        if not run_ids:
            return pd.DataFrame(columns=["spec_name", "run_id"])
        return self._select(
            f'SELECT {_ROW} FROM "{HISTORY_TABLE[stage]}" WHERE spec_name = ? AND list_contains(?, run_id) '
            f"ORDER BY materialized_at, run_id, {POSITION_COLUMN}",
            [spec_name, list(run_ids)],
            read_only,
        )

    def history(
        self, stage: str, spec_name: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> pd.DataFrame:
        """Every row of every version of a stage for a spec, newest version first, JSON decoded;
        `snapshot`: the versions the warehouse held then."""
        frame = self._select(
            f"SELECT {_ROW} FROM {_source(stage, False, snapshot)} WHERE spec_name = ? "
            f"ORDER BY materialized_at DESC, {POSITION_COLUMN}",
            [spec_name],
            read_only,
        )
        return decode_json(frame, stage)

    def newest_row(
        self, stage: str, spec_name: str | None = None, *, promoted: bool = False, read_only: bool = False
    ) -> dict[str, Any] | None:
        """The newest row of a stage (of one spec, or of any), JSON decoded: from every version, or
        with `promoted` from the promoted versions only. None when there is none."""
        table = stage if promoted else HISTORY_TABLE[stage]
        where = " WHERE spec_name = ?" if spec_name else ""
        frame = self._select(
            f'SELECT {_ROW} FROM "{table}"{where} '
            f"ORDER BY materialized_at DESC, {POSITION_COLUMN} DESC LIMIT 1",
            [spec_name] if spec_name else [],
            read_only,
        )
        return None if frame.empty else decode_json(frame, stage).iloc[0].to_dict()

    # --- rows by id --------------------------------------------------------------------------------

    def rows_by_ids(
        self,
        stage: str,
        ids: Iterable[str],
        spec_name: str | None = None,
        *,
        newest_only: bool = False,
        written_by: str | None = None,
        decoded: bool = True,
        read_only: bool = False,
        snapshot: int | None = None,
    ) -> pd.DataFrame:
        """History rows of a row stage whose id (`ID_COLUMN`: seed_id, prompt_id or sample_id) is in
        `ids`, of one spec or of all, oldest first. `newest_only`: one row per id, from the newest
        version that has it; `written_by`: only versions written up to the end of that run's
        version of curated_set (what that run read); `snapshot`: the versions the warehouse held
        at that DuckLake snapshot. An id is a content hash, so any version that has it holds the
        same content (only the run columns differ)."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        key = ID_COLUMN[Stage(stage)]
        if not wanted:
            return pd.DataFrame(columns=[key, "spec_name", "run_id", "materialized_at"])
        conditions: list[str] = [f"list_contains(?, {key})"]
        parameters: list[object] = [wanted]
        if spec_name is not None:
            conditions.append("spec_name = ?")
            parameters.append(spec_name)
        source = _source(stage, False, snapshot)
        if written_by is not None:
            # what that run read: the warehouse at the snapshot of its curated_set version (time
            # travel: a version rewritten later reads as it was), and of it the versions written up to
            # then (an imported warehouse came in as one snapshot, so the time stamps still decide)
            if snapshot is None:
                snapshot = self.version_snapshot(Stage.CURATED_SET, written_by, read_only=read_only)
            source = _source(stage, False, snapshot)
            curated = _source(Stage.CURATED_SET, False, snapshot)
            conditions.append(
                f"materialized_at <= (SELECT max(materialized_at) FROM {curated} WHERE run_id = ?)"
            )
            parameters.append(written_by)
        newest = (
            f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY materialized_at DESC) = 1"
            if newest_only
            else ""
        )
        frame = self._select(
            f"SELECT {_ROW} FROM {source} WHERE {' AND '.join(conditions)}{newest} "
            f"ORDER BY materialized_at, {POSITION_COLUMN}",
            parameters,
            read_only,
        )
        return decode_json(frame, stage) if decoded else frame

    def version_snapshot(
        self, stage: str, run_id: str, spec_name: str | None = None, *, read_only: bool = False
    ) -> int | None:
        """The DuckLake snapshot that committed the newest write of `run_id`'s version of `stage` (of
        one spec, or of any), None when there is no such version. `read_current(..., snapshot=)` and
        `read_version(..., snapshot=)` read the warehouse as it was then."""
        where = " AND v.spec_name = ?" if spec_name is not None else ""
        with self.connect(read_only=read_only) as connection:
            found = connection.execute(
                f"SELECT max(s.snapshot_id) FROM versions v JOIN {self._alias}.snapshots() s "
                f"ON s.commit_extra_info = v.write_id WHERE v.stage = ? AND v.run_id = ?{where}",
                [str(stage), run_id, *([spec_name] if spec_name is not None else [])],
            ).fetchone()
        return None if not found or found[0] is None else int(found[0])

    def resolve_prefix(
        self, prefix: str, stages: Sequence[str], *, column: str | None = None, read_only: bool = False
    ) -> list[tuple[str, str]]:
        """Every distinct (spec_name, value) whose `column` (default: the stages' id column; or
        `run_id`) starts with `prefix`, in the history of any of `stages`, sorted. The caller
        decides what zero or several matches mean."""
        parts, parameters = [], []
        for stage in stages:
            key = column or ID_COLUMN[Stage(stage)]
            parts.append(
                f'SELECT spec_name, {key} AS value FROM "{HISTORY_TABLE[stage]}" WHERE starts_with({key}, ?)'
            )
            parameters.append(prefix)
        frame = self._select(
            f"SELECT DISTINCT spec_name, value FROM ({' UNION ALL '.join(parts)}) ORDER BY ALL",
            parameters,
            read_only,
        )
        return (
            [(str(spec), str(value)) for spec, value in frame.itertuples(index=False)] if len(frame) else []
        )

    def ids_before(
        self,
        stage: str,
        spec_name: str,
        run_id: str,
        *,
        read_only: bool = False,
        snapshot: int | None = None,
    ) -> set[str]:
        """Ids of the rows of every version of a stage written before `run_id`'s version (`snapshot`:
        among the versions the warehouse held then)."""
        table, key = _source(stage, False, snapshot), ID_COLUMN[Stage(stage)]
        frame = self._select(
            f"SELECT DISTINCT {key} FROM {table} WHERE spec_name = ? AND materialized_at < "
            f"(SELECT min(materialized_at) FROM {table} WHERE spec_name = ? AND run_id = ?)",
            [spec_name, spec_name, run_id],
            read_only,
        )
        return {str(value) for value in frame[key]} if len(frame) else set()

    def version_with_upstream(
        self, spec_name: str, run_id: str, *, read_only: bool = True
    ) -> dict[str, pd.DataFrame]:
        """One curated_set version and what it was cut from, JSON decoded:
        {"curated", "rejected"}: its rows; {"generated", "prompts", "demos"}: the newest
        generated_samples, expanded_prompts and seed_data rows behind them among the versions written
        up to it (what that run read)."""
        curated = self.read_version(Stage.CURATED_SET, spec_name, run_id, read_only=read_only, decoded=True)
        rejected = self.read_version(
            Stage.REJECTED_SAMPLES, spec_name, run_id, read_only=read_only, decoded=True
        )

        def upstream(stage: Stage, ids: Iterable[str]) -> pd.DataFrame:
            return self.rows_by_ids(
                stage, ids, spec_name, newest_only=True, written_by=run_id, read_only=read_only
            )

        generated = upstream(
            Stage.GENERATED_SAMPLES, [*curated.get("sample_id", []), *rejected.get("sample_id", [])]
        )
        prompts = upstream(Stage.EXPANDED_PROMPTS, generated.get("prompt_id", []))
        demos = upstream(Stage.SEED_DATA, [i for ids in prompts.get("demo_ids", []) for i in ids or []])
        return {
            "curated": curated,
            "rejected": rejected,
            "generated": generated,
            "prompts": prompts,
            "demos": demos,
        }

    # --- versions and counts -----------------------------------------------------------------------

    def versions(
        self, stage: str, spec_name: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> list[VersionInfo]:
        """Every version of a stage for a spec, oldest first, each with the DuckLake snapshot that
        committed it (one query); `snapshot`: the versions the warehouse held then (as they were)."""
        with self.connect(read_only=read_only) as connection:
            try:
                found = connection.execute(
                    "WITH held AS (SELECT run_id, max(materialized_at) AS written, count(*) AS n "
                    f"FROM {_source(stage, False, snapshot)} WHERE spec_name = ? GROUP BY run_id), "
                    "committed AS (SELECT v.run_id, max(s.snapshot_id) AS snapshot_id "
                    f"FROM {_table('versions', snapshot, 'v')} JOIN {self._alias}.snapshots() s "
                    "ON s.commit_extra_info = v.write_id WHERE v.stage = ? AND v.spec_name = ? "
                    "GROUP BY v.run_id) "
                    "SELECT held.run_id, written, n, snapshot_id "
                    "FROM held LEFT JOIN committed USING (run_id) ORDER BY written",
                    [spec_name, str(stage), spec_name],
                ).fetchall()
            except duckdb.CatalogException:  # an older or empty catalog
                return []
        return [
            VersionInfo(str(run), pd.Timestamp(at), int(n), None if snap is None else int(snap))
            for run, at, n, snap in found
        ]

    # --- snapshots ---------------------------------------------------------------------------------

    def snapshot_ids(self, *, read_only: bool = False) -> tuple[int, int]:
        """(first, latest) snapshot id of the catalog: every id between them exists (DuckLake numbers
        its commits without gaps)."""
        with self.connect(read_only=read_only) as connection:
            first, latest = connection.execute(
                f"SELECT min(snapshot_id), max(snapshot_id) FROM {self._alias}.snapshots()"
            ).fetchone()
        return int(first), int(latest)

    def version_at(self, stage: str, spec_name: str, snapshot: int, *, read_only: bool = False) -> str | None:
        """The run whose version of `stage` was the newest written for the spec as of `snapshot`
        (time travel on the `versions` list: the newest commit, then the newest materialized_at, so
        of the versions one import brought in as one snapshot the newest one); None when the spec
        had none yet. The caller checks that the snapshot exists (`snapshot_ids`)."""
        with self.connect(read_only=read_only) as connection:
            found = connection.execute(
                f"SELECT v.run_id FROM {_table('versions', snapshot, 'v')} "
                f"JOIN {self._alias}.snapshots() s ON s.commit_extra_info = v.write_id "
                "WHERE v.stage = ? AND v.spec_name = ? "
                "ORDER BY s.snapshot_id DESC, v.materialized_at DESC, v.rowid DESC LIMIT 1",
                [str(stage), spec_name],
            ).fetchone()
        return None if found is None else str(found[0])

    def promotion_snapshot(
        self, stage: str, spec_name: str, run_id: str, *, read_only: bool = False
    ) -> int | None:
        """The newest snapshot that made `run_id`'s version of `stage` current for the spec (for
        curated_set: published it), None when it never was."""
        with self.connect(read_only=read_only) as connection:
            found = connection.execute(
                f"SELECT max(s.snapshot_id) FROM promotions p JOIN {self._alias}.snapshots() s "
                "ON s.commit_extra_info = p.write_id WHERE p.stage = ? AND p.spec_name = ? AND p.run_id = ?",
                [str(stage), spec_name, run_id],
            ).fetchone()
        return None if not found or found[0] is None else int(found[0])

    def stage_exists(self, stage: str, *, read_only: bool = False) -> bool:
        """Whether any version of the stage was ever written (False for a warehouse no run wrote to)."""
        frame = self._select("SELECT count(*) AS n FROM versions WHERE stage = ?", [str(stage)], read_only)
        return bool(len(frame) and frame["n"].iloc[0])

    def newest_spec(self, stage: str = Stage.CURATED_SET, *, read_only: bool = False) -> str | None:
        """The spec whose version of `stage` was written last, None when the stage has none."""
        frame = self._select(
            f'SELECT spec_name FROM "{HISTORY_TABLE[stage]}" ORDER BY materialized_at DESC LIMIT 1',
            [],
            read_only,
        )
        return None if frame.empty else str(frame["spec_name"].iloc[0])

    def specs_with(self, stage: str, *, read_only: bool = False) -> list[str]:
        """Every spec with at least one version of `stage`, sorted."""
        frame = self._select(
            f'SELECT DISTINCT spec_name FROM "{HISTORY_TABLE[stage]}" ORDER BY spec_name', [], read_only
        )
        return [str(name) for name in frame["spec_name"]] if len(frame) else []

    def row_count(
        self,
        stage: str,
        spec_name: str,
        run_id: str | None = None,
        *,
        read_only: bool = False,
        snapshot: int | None = None,
    ) -> int:
        """Rows of the promoted version of a stage for the spec, or of the version `run_id` wrote
        (`snapshot`: as the warehouse held them then)."""
        if run_id is None:
            sql = f"SELECT count(*) AS n FROM {_source(stage, True, snapshot)} WHERE spec_name = ?"
            parameters = [spec_name]
        else:
            sql = (
                f"SELECT count(*) AS n FROM {_source(stage, False, snapshot)} "
                "WHERE spec_name = ? AND run_id = ?"
            )
            parameters = [spec_name, run_id]
        frame = self._select(sql, parameters, read_only)
        return int(frame["n"].iloc[0]) if len(frame) else 0

    def value_counts(
        self,
        stage: str,
        spec_name: str,
        column: str,
        *,
        read_only: bool = False,
        snapshot: int | None = None,
    ) -> dict[str, int]:
        """{value: rows} of one column of the promoted version of a stage, sorted by value
        (`snapshot`: of the version promoted then)."""
        frame = self._select(
            f'SELECT "{column}" AS value, count(*) AS n FROM {_source(stage, True, snapshot)} '
            "WHERE spec_name = ? "
            "GROUP BY ALL ORDER BY value",
            [spec_name],
            read_only,
        )
        return {str(value): int(n) for value, n in frame.itertuples(index=False)} if len(frame) else {}

    # --- promotion and verdicts --------------------------------------------------------------------

    def promoted_version(
        self, stage: str, spec_name: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> str | None:
        """The run whose version of `stage` is current (promoted; for curated_set: published) for the
        spec, None if none is; `snapshot`: the one current then."""
        frame = self._select(
            f"SELECT any_value(run_id) AS run_id FROM {_source(stage, True, snapshot)} WHERE spec_name = ?",
            [spec_name],
            read_only,
        )
        value = frame["run_id"].iloc[0] if len(frame) else None
        return None if value is None or pd.isna(value) else str(value)

    def published_run(self, stage: str, spec_name: str, *, read_only: bool = False) -> str | None:
        """`promoted_version` under the name curated_set's two-step promotion uses."""
        return self.promoted_version(stage, spec_name, read_only=read_only)

    def gate_verdicts(
        self, stage: str, spec_name: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> dict[str, VersionVerdict]:
        """{run_id: the newest verdict} of every judged version of a stage for the spec (see
        VersionVerdict for where each stage's verdicts live); a version never judged is absent;
        `snapshot`: the verdicts recorded up to then."""
        if Stage(stage) is Stage.EVALUATION_REPORT:
            frame = self._select(
                f"SELECT run_id, coalesce(passed, true) AS passed, coalesce(gate_summary, '') AS summary, "
                f"'usefulness' AS check_name FROM {_source(stage, False, snapshot)} WHERE spec_name = ? "
                "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY materialized_at DESC) = 1",
                [spec_name],
                read_only,
            )
        else:
            frame = self._select(
                f"SELECT run_id, passed, summary, check_name FROM {_table('gate_results', snapshot)} "
                "WHERE spec_name = ? AND asset = ? "
                "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY evaluated_at DESC, rowid DESC) = 1",
                [spec_name, str(stage)],
                read_only,
            )
        if frame.empty:
            return {}
        return {
            str(run): VersionVerdict(str(run), bool(passed), str(summary or ""), str(check or ""))
            for run, passed, summary, check in frame.itertuples(index=False)
        }

    def gate_verdict(
        self, stage: str, spec_name: str, run_id: str, *, read_only: bool = False
    ) -> VersionVerdict | None:
        """The newest verdict on one version, None when it was never judged."""
        return self.gate_verdicts(stage, spec_name, read_only=read_only).get(run_id)

    def gate_records(
        self, spec_name: str, run_id: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> list[dict[str, Any]]:
        """Every `gate_results` row of one run (asset, check_name, passed, summary), oldest first
        (`snapshot`: recorded up to then)."""
        frame = self._select(
            f"SELECT asset, check_name, passed, summary FROM {_table('gate_results', snapshot)} "
            "WHERE spec_name = ? AND run_id = ? ORDER BY evaluated_at",
            [spec_name, run_id],
            read_only,
        )
        return frame.to_dict("records") if len(frame) else []

    def good_versions(
        self, stage: str, spec_name: str, *, read_only: bool = False, snapshot: int | None = None
    ) -> list[str]:
        """Runs whose version of `stage` is good (`is_good`), newest version first (`snapshot`: of
        the versions and verdicts the warehouse held then)."""
        verdicts = self.gate_verdicts(stage, spec_name, read_only=read_only, snapshot=snapshot)
        versions = self.versions(stage, spec_name, read_only=read_only, snapshot=snapshot)
        return [v.run_id for v in reversed(versions) if is_good(stage, verdicts.get(v.run_id))]

    def last_good(
        self, stage: str, spec_name: str, *, exclude_run_id: str | None = None, read_only: bool = False
    ) -> str | None:
        """The newest good version of `stage` other than `exclude_run_id`, None when there is none."""
        return next(
            (
                run
                for run in self.good_versions(stage, spec_name, read_only=read_only)
                if run != exclude_run_id
            ),
            None,
        )

    def staged_runs(
        self, spec_name: str, stage: str = Stage.CURATED_SET, *, read_only: bool = False
    ) -> list[str]:
        """Good curated_set versions, newest first: the candidates for publication (`good_versions`)."""
        return self.good_versions(stage, spec_name, read_only=read_only)

    def publications(
        self,
        spec_name: str,
        stage: str = Stage.CURATED_SET,
        *,
        read_only: bool = False,
        snapshot: int | None = None,
    ) -> pd.DataFrame:
        """Every publication decision for the spec's `stage`, newest first (PUBLICATION_COLUMNS); empty
        for a database from before publication existed, even read-only (no table to read);
        `snapshot`: the decisions made up to then."""
        frame = self._select(
            f"SELECT * FROM {_table('publications', snapshot)} WHERE spec_name = ? AND stage = ? "
            "ORDER BY decided_at DESC, rowid DESC",
            [spec_name, str(stage)],
            read_only,
        )
        return frame if len(frame.columns) else pd.DataFrame(columns=list(PUBLICATION_COLUMNS))

    # --- LLM calls and generation cost -------------------------------------------------------------

    def cached_calls(
        self, cache_keys: list[str], *, read_only: bool = False, decoded: bool = False
    ) -> pd.DataFrame:
        """Rows of `llm_cache` for these keys (the ones never called are simply absent); `decoded`:
        messages and generation_params as Python objects (the engine keeps the stored text)."""
        if not cache_keys:
            return pd.DataFrame(columns=list(LLM_CACHE_COLUMNS))
        frame = self._select(
            # first write of a key (two writers on a PostgreSQL catalog may both store one)
            "SELECT * FROM llm_cache WHERE list_contains(?, cache_key) "
            "QUALIFY row_number() OVER (PARTITION BY cache_key ORDER BY created_at, rowid) = 1",
            [list(dict.fromkeys(cache_keys))],
            read_only,
        )
        if not len(frame.columns):
            return pd.DataFrame(columns=list(LLM_CACHE_COLUMNS))
        return decode_json(frame, "llm_cache") if decoded else frame

    def call_seconds(self, cache_keys: list[str], *, read_only: bool = False) -> float | None:
        """Sum of `llm_cache.seconds` of these calls (seconds), None when none of them has a time."""
        if not cache_keys:
            return None
        frame = self._select(
            "SELECT sum(seconds) AS seconds, count(seconds) AS calls FROM llm_cache "
            "WHERE list_contains(?, cache_key)",
            [list(dict.fromkeys(cache_keys))],
            read_only,
        )
        return float(frame["seconds"].iloc[0]) if len(frame) and int(frame["calls"].iloc[0]) else None

    def calls_made_in(self, run_id: str, *, read_only: bool = False) -> int:
        """How many finished LLM calls `run_id` stored in llm_cache."""
        frame = self._select("SELECT count(*) AS n FROM llm_cache WHERE run_id = ?", [run_id], read_only)
        return int(frame["n"].iloc[0]) if len(frame) else 0

    def generation_record(
        self, spec_name: str, run_id: str, *, read_only: bool = False
    ) -> GenerationRecord | None:
        """What the generated_samples version of `run_id` cost (GenerationRecord), None when that
        version was written before generation recorded it (or there is no such version)."""
        from synth_assets.storage.warehouse import GenerationRecord

        frame = self._select(
            "SELECT * FROM generation_runs WHERE spec_name = ? AND run_id = ? "
            "ORDER BY recorded_at DESC LIMIT 1",
            [spec_name, run_id],
            read_only,
        )
        if frame.empty:
            return None
        row = frame.astype(object).where(frame.notna(), None).iloc[0]
        fields = [c for c in GENERATION_RUN_COLUMNS if c not in ("spec_name", "run_id", "recorded_at")]
        return GenerationRecord(**{name: row[name] for name in fields})
