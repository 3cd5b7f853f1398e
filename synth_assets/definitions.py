"""The one Dagster entry point (`workspace.yaml` points here)."""

from __future__ import annotations

import dagster as dg

from synth_assets.defs.assets import stage_assets
from synth_assets.defs.automation import daily_refresh, spec_change_sensor, synth_refresh_job
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource


def build_definitions(database: str = "", specs_dir: str = "", model_cache_dir: str = "") -> dg.Definitions:
    """Definitions with resources pointed at a DuckDB file, a specs folder and a model cache
    (empty strings: the defaults, `SYNTH_ASSETS_DB` and friends)."""
    return dg.Definitions(
        assets=stage_assets,
        jobs=[synth_refresh_job],
        schedules=[daily_refresh],
        sensors=[spec_change_sensor],
        resources={
            "warehouse": WarehouseResource(database=database),
            "specs": SpecCatalog(specs_dir=specs_dir),
            "llm": LocalModelResource(cache_dir=model_cache_dir),
        },
        # DuckDB takes one writer process: steps run in the run's own process, one after another
        executor=dg.in_process_executor,
    )


defs = build_definitions()
