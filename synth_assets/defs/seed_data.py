"""The `seed_data` asset: the real labeled rows named by the spec."""

import dagster as dg

from synth_assets.defs.common import (
    GROUP,
    OWNERS,
    column_schema,
    frame_version,
    preview,
    spec_partitions,
    stage_metadata,
)
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.seed import load_seed_data, spec_inputs_digest


@dg.asset(
    partitions_def=spec_partitions,
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="1",
    metadata={"dagster/column_schema": column_schema("seed_data")},
)
def seed_data(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The small real labeled dataset named by the spec (CSV, Parquet or JSONL), validated: known
    columns, non-empty text, labels from the spec. The 'holdout' split is never shown to the model."""
    spec = specs.spec_for(context)
    rows = load_seed_data(spec)
    warehouse.warehouse().write_version("seed_data", spec.name, context.run.run_id, rows, promote=True)
    per_split_label = rows.groupby(["split", "label"]).size().unstack(fill_value=0)
    return dg.MaterializeResult(
        metadata={
            **stage_metadata("seed_data", rows, spec),
            "seed_file": dg.MetadataValue.path(str(spec.seed_path)),
            "spec_digest": spec_inputs_digest(spec),
            "rows_per_split_and_label": dg.MetadataValue.md(per_split_label.to_markdown()),
            "preview": preview(rows, ["seed_id", "split", "label", "text"]),
        },
        data_version=frame_version(rows, ["seed_id", "split", "text", "label"]),
    )
