"""Run ids in DuckDB -> Dagster runs and materializations, read from the instance (`DAGSTER_HOME`).

This is the only lineage module that imports Dagster, and only when asked: the DuckDB chain is
complete without it, and a run the instance has no record of (another `DAGSTER_HOME`, a wiped
instance, a run made with `dg.materialize` in a test) is reported as such instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class DagsterRunDirectory:
    """Describes runs of one Dagster instance: status, job, and what they materialized/checked."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._cache: dict[str, dict[str, Any] | None] = {}

    def _run_events(self, run_id: str) -> dict[str, Any] | None:
        if run_id in self._cache:
            return self._cache[run_id]
        from dagster._core.events import DagsterEventType

        record = self.instance.get_run_record_by_id(run_id)
        if record is None:
            self._cache[run_id] = None
            return None
        run = record.dagster_run
        materializations: dict[tuple[str, str | None], dict[str, Any]] = {}
        checks: dict[str, bool] = {}
        events = self.instance.get_records_for_run(
            run_id,
            of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION},
        ).records
        for event in events:
            entry = event.event_log_entry
            dagster_event = entry.dagster_event
            if dagster_event is None:
                continue
            if dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = dagster_event.step_materialization_data.materialization
                asset = materialization.asset_key.to_user_string()
                fingerprint = materialization.metadata.get("spec_fingerprint")
                materializations[(asset, materialization.partition)] = {
                    "asset": asset,
                    "partition": materialization.partition,
                    "storage_id": event.storage_id,
                    "timestamp": _iso(entry.timestamp),
                    "data_version": materialization.tags.get("dagster/data_version")
                    if materialization.tags
                    else None,
                    "code_version": materialization.tags.get("dagster/code_version")
                    if materialization.tags
                    else None,
                    "spec_fingerprint": str(fingerprint.value) if fingerprint is not None else None,
                }
            else:
                evaluation = dagster_event.event_specific_data
                key = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                checks[key] = bool(evaluation.passed)
        info = {
            "run_id": run_id,
            "status": run.status.value,
            "job_name": run.job_name,
            "partition": run.tags.get("dagster/partition"),
            "started": _iso(record.start_time),
            "ended": _iso(record.end_time),
            "materializations": materializations,
            "checks": checks,
        }
        self._cache[run_id] = info
        return info

    def describe(self, run_id: str, partition: str) -> dict[str, Any] | None:
        """Status, job, start/end, and per asset the materialization of `partition` in that run."""
        info = self._run_events(run_id)
        if info is None:
            return None
        return {
            **info,
            "materializations": {
                asset: materialization
                for (asset, key), materialization in info["materializations"].items()
                if key in (partition, None)
            },
        }

    def latest_metadata(self, asset: str, partition: str) -> dict[str, Any]:
        """Metadata values of the latest materialization of `asset`[`partition`] ({} if none)."""
        import dagster as dg

        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
        ).records
        if not records or records[0].asset_materialization is None:
            return {}
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _open_instance() -> dg.DagsterInstance | None:
    from synth_assets.paths import ensure_dagster_home

    previous = os.environ.get("DAGSTER_HOME")
    try:
        home = ensure_dagster_home()
        if not (home / "dagster.yaml").exists() and not (home / "storage").exists():
            return None  # no instance was ever created there: nothing to look up
        import dagster as dg

        return dg.DagsterInstance.get()
    except Exception:
        return None
    finally:
        if previous is None:  # leave the environment as it was (tests call the CLI in-process)
            os.environ.pop("DAGSTER_HOME", None)


@contextmanager
def open_run_directory() -> Iterator[DagsterRunDirectory | None]:
    """The instance at `DAGSTER_HOME` (the project's default when unset, as `synth-assets run` does),
    or None when it cannot be opened; the caller then prints lineage without Dagster annotations."""
    instance = _open_instance()
    if instance is None:
        yield None
        return
    try:
        yield DagsterRunDirectory(instance)
    finally:
        instance.dispose()
