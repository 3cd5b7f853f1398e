"""The `curated_set` asset: bad samples removed with reasons, promoted only past its GX gate."""

import dagster as dg

from synth_assets.curation.rules import curate
from synth_assets.defs.common import (
    GATE_CHECK,
    GROUP,
    OWNERS,
    column_schema,
    frame_version,
    gate_result,
    gate_spec,
    preview,
    read_upstream,
    spec_partitions,
    stage_metadata,
)
from synth_assets.defs.generated_samples import generated_samples
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.quality.gates import validate_curated_set


@dg.asset(
    partitions_def=spec_partitions,
    deps=[generated_samples],
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="1",
    check_specs=[
        gate_spec(
            "curated_set",
            "GX suite: unique ids and texts, non-empty text, labels in the spec, minimum row count",
        )
    ],
    metadata={"dagster/column_schema": column_schema("curated_set")},
)
def curated_set(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Generated samples minus exact duplicates, out-of-bounds lengths and prompt echoes; every
    removed row goes to `rejected_samples` with its reasons. Promoted only if its GX gate passes."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    samples = read_upstream(store, "generated_samples", spec)
    prompts = read_upstream(store, "expanded_prompts", spec)
    outcome = curate(samples, prompts, spec.curation)
    gate = validate_curated_set(outcome.curated, spec)
    store.write_versions(
        {"curated_set": outcome.curated, "rejected_samples": outcome.rejected},
        spec.name,
        context.run.run_id,
        promote=gate.passed,
    )
    store.record_gate(spec.name, context.run.run_id, "curated_set", GATE_CHECK, gate.passed, gate.summary())
    if not gate.passed:
        context.log.warning(f"curated_set for {spec.name} not promoted: {gate.summary()}")
    return dg.MaterializeResult(
        metadata={
            **stage_metadata("curated_set", outcome.curated, spec),
            "generated": len(samples),
            "rejected": len(outcome.rejected),
            "yield": round(len(outcome.curated) / len(samples), 4) if len(samples) else 0.0,
            "rejections_by_reason": dg.MetadataValue.json(outcome.reason_counts()),
            "promoted": gate.passed,
            "preview": preview(outcome.curated, ["sample_id", "label", "text"]),
            "rejectedpreview": preview(outcome.rejected, ["sample_id", "reasons", "text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    column: [dg.TableColumnDep(asset_key=generated_samples.key, column_name=column)]
                    for column in ("sample_id", "prompt_id", "label", "text")
                }
            ),
        },
        check_results=[gate_result(gate)],
        data_version=frame_version(outcome.curated, ["sample_id"]),
    )
