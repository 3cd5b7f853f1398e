"""The one Dagster entry point (`workspace.yaml` and `[tool.dg.project]` point here).

The assets, checks, jobs, schedules and sensors are autoloaded from the `defs/` folder
(`dg.load_from_defs_folder`, as Dagster 1.13 projects do): a new module there needs no edit here.
This module adds what the folder cannot say by itself: each stage's wiring to the spec and its table
in the DuckDB file chosen at load time, the resources, and the in-process executor."""

# ruff: noqa: E402 (the process settings must come before any import that may load torch)
from __future__ import annotations

from synth_assets.runtime import prepare_process

prepare_process()  # OMP_WAIT_POLICY=PASSIVE and thread counts, before torch starts (runtime.py)

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import dagster as dg

from synth_assets.defs.automation import DOWNSTREAM_STAGES, downstream_condition
from synth_assets.defs.common import column_schema, table_name
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.defs.seed_data import spec_inputs
from synth_assets.storage import default_database_path

T = TypeVar("T")


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


def unique(objects: Iterable[T] | None) -> list[T]:
    """`objects` without repeats of the same object, in first-seen order."""
    return list({id(item): item for item in objects or []}.values())


def _from_defs_folder() -> dg.Definitions:
    """Everything the `defs/` modules define at module level, each object once (a module that
    imports another's asset, e.g. `assets.py`, exposes the same object again)."""
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions(
        assets=unique(loaded.assets),
        asset_checks=unique(loaded.asset_checks),
        jobs=unique(loaded.jobs),
        schedules=unique(loaded.schedules),
        sensors=unique(loaded.sensors),
    )


def build_definitions(database: str = "", specs_dir: str = "", model_cache_dir: str = "") -> dg.Definitions:
    """Definitions with resources pointed at a DuckDB file, a specs folder and a model cache
    (empty strings: the defaults, `SYNTH_ASSETS_DB` and friends)."""
    found = _from_defs_folder()
    assets = [
        _wire_stage(asset, database)
        if isinstance(asset, dg.AssetsDefinition) and asset.key != spec_inputs.key
        else asset  # spec_inputs, an observable source asset
        for asset in found.assets or []
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=found.asset_checks,
        jobs=found.jobs,
        schedules=found.schedules,
        sensors=found.sensors,
        resources={
            "warehouse": WarehouseResource(database=database),
            "specs": SpecCatalog(specs_dir=specs_dir),
            "llm": LocalModelResource(cache_dir=model_cache_dir),
        },
        # DuckDB takes one writer process: steps run in the run's own process, one after another
        executor=dg.in_process_executor,
    )


defs = build_definitions()
