"""The `evaluation_report` asset: how good the curated set is, with history across runs."""

import json

import dagster as dg
import pandas as pd

from synth_assets.defs.common import GROUP, OWNERS, read_upstream, spec_partitions
from synth_assets.defs.curated_set import curated_set
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.evaluation.report import build_report
from synth_assets.spec import content_hash


@dg.asset(
    partitions_def=spec_partitions,
    deps=[curated_set],
    group_name=GROUP,
    kinds={"duckdb", "markdown"},
    owners=OWNERS,
    code_version="1",
)
def evaluation_report(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Rows per stage, yield, distinct-n, label balance requested vs realized, rejections by reason;
    as a DuckDB table with history, a Markdown file next to the database, and UI metadata."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    curated = read_upstream(store, "curated_set", spec)
    report = build_report(
        spec,
        run_id=context.run.run_id,
        seed_rows=read_upstream(store, "seed_data", spec),
        prompts=read_upstream(store, "expanded_prompts", spec),
        samples=read_upstream(store, "generated_samples", spec),
        curated=curated,
        rejected=store.read_current("rejected_samples", spec.name),
    )
    report_path = store.path.parent / "reports" / spec.name / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.markdown, encoding="utf-8")
    row = pd.DataFrame(
        [
            {
                "metrics": json.dumps(report.metrics, sort_keys=True),
                "markdown": report.markdown,
                "report_path": str(report_path),
            }
        ]
    )
    store.write_version("evaluation_report", spec.name, context.run.run_id, row, promote=True)
    numeric = {
        key: float(value)
        for key, value in report.metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return dg.MaterializeResult(
        metadata={
            **numeric,
            "report": dg.MetadataValue.md(report.markdown),
            "report_path": dg.MetadataValue.path(str(report_path)),
            "spec": spec.name,
        },
        data_version=dg.DataVersion(content_hash(report.metrics)),
    )
