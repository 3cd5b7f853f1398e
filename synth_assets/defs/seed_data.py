"""`spec_inputs` (the spec and seed files, observed) and the `seed_data` asset (the real labeled rows).

`spec_inputs` is an observable source asset: its data version per partition is the content hash of
the spec YAML and its seed files (`spec_inputs_digest`). Every stage depends on it (see
`definitions.py`), because every stage reads the spec. So when a spec or seed file changes and is
observed (by the refresh job or by `spec_change_sensor`), the UI marks all five stages "Unsynced";
when the content is unchanged, the data version is the same and nothing goes stale.
"""

import warnings

import dagster as dg

from synth_assets.defs.common import (
    GROUP,
    OWNERS,
    SPEC_INPUTS_METADATA,
    column_schema,
    frame_version,
    preview,
    spec_partitions,
    stage_metadata,
)
from synth_assets.defs.resources import SPEC_PATH_METADATA, SPEC_PATH_TAG, SpecCatalog, WarehouseResource
from synth_assets.runtime import choose_threads
from synth_assets.seed import load_seed_data, spec_inputs_digest
from synth_assets.spec import GenerationSpec, SpecError
from synth_assets.storage import Stage

SPEC_INPUTS = "spec_inputs"


def spec_for_observation(
    instance: dg.DagsterInstance, specs: SpecCatalog, partition: str, run_tags: dict[str, str]
) -> GenerationSpec | None:
    """The spec of a partition as `SpecCatalog.find` locates it (the run's spec-path tag, else the
    specs folder, else the path the last materialization used); None when it finds no loadable spec
    of that name: an observation or a schedule tick skips it with a warning instead of failing."""
    try:
        return specs.find(partition, run_tags.get(SPEC_PATH_TAG), instance)
    except SpecError:
        return None


# observable_source_asset and DataVersionsByPartition are beta in Dagster 1.13; they are the
# documented way to give a partitioned external input a data version, so the warning is noise here
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.observable_source_asset(
        name=SPEC_INPUTS,
        partitions_def=spec_partitions,
        group_name=GROUP,
        description="The spec YAML and its seed files. Data version = content hash of all of them, "
        "so downstream stages go stale only when one of these files really changed.",
        tags={"dagster/kind/yaml": ""},
        metadata=SPEC_INPUTS_METADATA,
    )
    def spec_inputs(context: dg.OpExecutionContext, specs: SpecCatalog) -> dg.DataVersionsByPartition:
        if context.has_partition_key:
            partitions = [context.partition_key]
        else:  # "Observe" from the UI without a partition: every registered spec
            partitions = context.instance.get_dynamic_partitions(spec_partitions.name)
        versions: dict[str, str] = {}
        for partition in partitions:
            spec = spec_for_observation(context.instance, specs, partition, dict(context.run.tags))
            if spec is None:
                context.log.warning(f"no loadable spec named '{partition}' found: not observed")
                continue
            versions[partition] = spec_inputs_digest(spec)
        return dg.DataVersionsByPartition(versions)


@dg.asset(
    partitions_def=spec_partitions,
    deps=[spec_inputs],
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="1",
    metadata={"dagster/column_schema": column_schema(Stage.SEED_DATA)},
)
def seed_data(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The small real labeled dataset named by the spec (CSV, Parquet or JSONL), validated: known
    columns, non-empty text, labels from the spec. The 'holdout' split is never shown to the model."""
    spec = specs.spec_for(context)
    rows = load_seed_data(spec)
    snapshot = warehouse.warehouse().write_version(
        Stage.SEED_DATA, spec.name, context.run.run_id, rows, promote=True
    )
    per_split_label = rows.groupby(["split", "label"]).size().unstack(fill_value=0)
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(Stage.SEED_DATA, rows, spec),
            "snapshot_id": snapshot,  # the DuckLake snapshot of this version (time travel)
            "seed_file": dg.MetadataValue.path(str(spec.seed_path)),
            SPEC_PATH_METADATA: dg.MetadataValue.path(str(spec.source_path)),
            "spec_digest": spec_inputs_digest(spec),
            # decided before torch started (runtime.py); the local model of this run uses the same
            "local_threads": choose_threads().describe(),
            "rows_per_split_and_label": dg.MetadataValue.md(per_split_label.to_markdown()),
            "preview": preview(rows, ["seed_id", "split", "label", "text"]),
        },
        data_version=frame_version(rows, ["seed_id", "split", "text", "label"]),
    )
