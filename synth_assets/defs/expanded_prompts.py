"""The `expanded_prompts` asset: the spec's prompts, with demos and sampled conditions."""

import json

import dagster as dg
import pandas as pd

from synth_assets.defs.common import (
    GROUP,
    OWNERS,
    column_schema,
    frame_version,
    preview,
    read_upstream,
    spec_partitions,
    stage_metadata,
)
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.defs.seed_data import seed_data
from synth_assets.generation.prompts import expand_prompts
from synth_assets.storage import Stage


@dg.asset(
    partitions_def=spec_partitions,
    deps=[seed_data],
    group_name=GROUP,
    kinds={"duckdb", "jinja"},
    owners=OWNERS,
    code_version="1",
    metadata={"dagster/column_schema": column_schema(Stage.EXPANDED_PROMPTS)},
)
def expanded_prompts(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Prompts from the spec: labels and attributes sampled with weights, few-shot demos drawn from
    the seed's training split, rendered through the spec's sandboxed Jinja2 template."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    prompts = expand_prompts(spec, read_upstream(store, Stage.SEED_DATA, spec))
    snapshot = store.write_version(
        Stage.EXPANDED_PROMPTS, spec.name, context.run.run_id, prompts, promote=True
    )
    attribute_counts = {
        name: pd.Series([json.loads(a)[name] for a in prompts["attributes"]]).value_counts().to_dict()
        for name in (a.name for a in spec.attributes)
    }
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(Stage.EXPANDED_PROMPTS, prompts, spec),
            "snapshot_id": snapshot,
            "labels_requested": dg.MetadataValue.json(prompts["label"].value_counts().to_dict()),
            "attributes_sampled": dg.MetadataValue.json(attribute_counts),
            "example_prompt": dg.MetadataValue.md(f"```\n{prompts['prompt_text'].iloc[0]}\n```"),
            "preview": preview(prompts, ["prompt_id", "label", "attributes", "prompt_text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "demo_ids": [dg.TableColumnDep(asset_key=seed_data.key, column_name="seed_id")],
                    "prompt_text": [dg.TableColumnDep(asset_key=seed_data.key, column_name="text")],
                }
            ),
        },
        data_version=frame_version(prompts, ["prompt_id"]),
    )
