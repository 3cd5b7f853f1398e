"""The one Dagster entry point (`workspace.yaml` points here)."""

# ruff: noqa: E402 (the process settings must come before any import that may load torch)
from __future__ import annotations

from synth_assets.runtime import prepare_process

prepare_process()  # OMP_WAIT_POLICY=PASSIVE and thread counts, before torch starts (runtime.py)

import dagster as dg

from synth_assets.defs.assets import stage_assets
from synth_assets.defs.automation import (
    DOWNSTREAM_STAGES,
    daily_refresh,
    downstream_condition,
    spec_change_sensor,
    synth_automation,
    synth_refresh_job,
)
from synth_assets.defs.common import column_schema, table_name
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.defs.seed_data import spec_inputs
from synth_assets.storage import default_database_path


def _wire_stage(asset: dg.AssetsDefinition, database: str = "") -> dg.AssetsDefinition:
    """Every stage reads the spec, so every stage depends on `spec_inputs` (that is what makes all
    five go stale when a spec changes: Dagster 1.13 does not propagate staleness past a direct
    dependency); the stages after `seed_data` also follow upstream updates declaratively. The
    stage's table, fully qualified in the DuckDB file `database` (default: `SYNTH_ASSETS_DB`), is
    its `dagster/table_name`."""
    name = asset.key.to_user_string()
    automated = name in DOWNSTREAM_STAGES

    def wire(spec: dg.AssetSpec) -> dg.AssetSpec:
        deps = [] if spec_inputs.key in {dep.asset_key for dep in spec.deps} else [spec_inputs]
        # the Columns tab of every stage, also for a stage module that does not declare its schema
        schema = (
            {} if "dagster/column_schema" in spec.metadata else {"dagster/column_schema": column_schema(name)}
        )
        schema["dagster/table_name"] = table_name(name, database or default_database_path())
        wired = spec.merge_attributes(deps=deps, metadata=schema)
        return wired.replace_attributes(automation_condition=downstream_condition()) if automated else wired

    return asset.map_asset_specs(wire)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_reaper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Marks failed the `synth-assets run` runs whose process is gone (SIGKILL, out of memory): with
    `max_concurrent_runs: 1` such a run would hold every queued run forever. Runs launched by the UI
    are watched by Dagster's own run monitoring (dagster.yaml)."""
    from synth_assets.run_control import reap_dead_runs

    reaped = reap_dead_runs(context.instance)
    return dg.SkipReason(f"marked failed: {', '.join(reaped)}" if reaped else "no dead runs")


def build_definitions(database: str = "", specs_dir: str = "", model_cache_dir: str = "") -> dg.Definitions:
    """Definitions with resources pointed at a DuckDB file, a specs folder and a model cache
    (empty strings: the defaults, `SYNTH_ASSETS_DB` and friends)."""
    return dg.Definitions(
        assets=[spec_inputs, *(_wire_stage(asset, database) for asset in stage_assets)],
        jobs=[synth_refresh_job],
        schedules=[daily_refresh],
        sensors=[spec_change_sensor, synth_automation, dead_run_reaper],
        resources={
            "warehouse": WarehouseResource(database=database),
            "specs": SpecCatalog(specs_dir=specs_dir),
            "llm": LocalModelResource(cache_dir=model_cache_dir),
        },
        # DuckDB takes one writer process: steps run in the run's own process, one after another
        executor=dg.in_process_executor,
    )


defs = build_definitions()
