"""The `evaluation_report` asset: every metric of a run, deltas against the last good run, and a
blocking usefulness gate that keeps a regressed run from becoming the next baseline."""

import json

import dagster as dg
import pandas as pd

from synth_assets.defs.common import GROUP, OWNERS, spec_partitions
from synth_assets.defs.curated_set import curated_set
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.embeddings import embed
from synth_assets.evaluation.gate import GATE_CHECK, GATE_METRIC, GateVerdict
from synth_assets.evaluation.inputs import EvaluationInputError, EvaluationInputs, last_good_run, load_inputs
from synth_assets.evaluation.report import UI_METRICS, build_report, write_report


def _gate_check(verdict: GateVerdict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.summary,
        metadata={
            "metric": verdict.metric,
            "current": verdict.current if verdict.current is not None else "n/a",
            "last_good": verdict.baseline if verdict.baseline is not None else "n/a",
            "last_good_run": verdict.baseline_run_id or "none",
            "tolerance": verdict.tolerance,
        },
    )


def _generation_seconds_from_dagster(
    context: dg.AssetExecutionContext, inputs: EvaluationInputs, partition: str
) -> None:
    """generated_samples has no time column: use the `generation_seconds` its materialization
    recorded, but only when that materialization wrote the very samples evaluated here."""
    if inputs.generation_seconds is not None or not inputs.samples_run_id:
        return
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("generated_samples"), asset_partitions=[partition]),
        limit=5,
    ).records
    for record in records:
        if record.run_id != inputs.samples_run_id:
            continue
        value = (
            record.asset_materialization.metadata.get("generation_seconds")
            if record.asset_materialization
            else None
        )
        if value is not None and isinstance(value.value, int | float):
            inputs.generation_seconds = float(value.value)
            inputs.generation_seconds_source = (
                f"`generation_seconds` of the generated_samples materialization in run {record.run_id}"
            )
        return


@dg.asset(
    partitions_def=spec_partitions,
    deps=[curated_set],
    group_name=GROUP,
    kinds={"duckdb", "markdown", "scikitlearn"},
    owners=OWNERS,
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="evaluation_report",
            blocking=True,
            description=f"{GATE_METRIC} may not drop more than the spec's evaluation.usefulness_tolerance "
            "below the last good run; a failing report is kept in evaluation_history but not promoted",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Diversity, fidelity to the real seed (MAUVE, length KS, centroid distance), relevance and
    label faithfulness, usefulness (train on synthetic, test on real, four ways, bootstrap CIs),
    bias (requested vs realized labels and attributes, yield per condition) and cost; a Markdown
    report with PNG plots next to the DuckDB file, a row in `evaluation_history`, UI metadata."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    run_id = context.run.run_id
    try:
        inputs = load_inputs(store, spec.name)
    except EvaluationInputError as exc:
        raise dg.Failure(str(exc)) from exc
    for note in inputs.notes:
        context.log.warning(note)
    _generation_seconds_from_dagster(context, inputs, spec.name)
    baseline = last_good_run(store, spec.name, exclude_run_id=run_id)
    report = build_report(spec, run_id=run_id, inputs=inputs, embed=embed, baseline=baseline)
    written = write_report(
        report, store.path.parent / "reports" / spec.name, inline_plots=spec.evaluation.embed_plots_in_ui
    )
    verdict = report.verdict
    row = pd.DataFrame(
        [
            {
                "metrics": json.dumps(report.metrics, sort_keys=True),
                "markdown": written.markdown,
                "report_path": str(written.path),
                "details": json.dumps(report.details, sort_keys=True),
                "passed": verdict.passed,
                "gate_summary": verdict.summary,
                "curated_run_id": inputs.curated_run_id,
                "baseline_run_id": baseline.run_id if baseline else None,
            }
        ]
    )
    # a failed gate keeps the row in evaluation_history only: it never becomes the "last good run"
    store.write_version("evaluation_report", spec.name, run_id, row, promote=verdict.passed)
    if verdict.passed:
        context.log.info(f"usefulness gate passed: {verdict.summary}")
    else:
        context.log.error(f"usefulness gate FAILED, report not promoted: {verdict.summary}")
    return dg.MaterializeResult(
        metadata={
            **report.numeric_metrics(UI_METRICS),
            "dagster/row_count": 1,
            "dagster/table_name": "evaluation_report",
            "metrics": dg.MetadataValue.json(report.metrics),
            "report": dg.MetadataValue.md(written.ui_markdown),
            "report_path": dg.MetadataValue.path(str(written.path)),
            "latest_report_path": dg.MetadataValue.path(str(written.latest_path)),
            **{f"plot_{name}": dg.MetadataValue.path(str(path)) for name, path in written.plots.items()},
            "promoted": verdict.passed,
            "gate": verdict.summary,
            "curated_run_id": inputs.curated_run_id or "",
            "fell_back_to_last_good_curated_set": inputs.fell_back,
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "_none_"),
            "baseline_run_id": baseline.run_id if baseline else "none",
            "spec": spec.name,
        },
        check_results=[_gate_check(verdict)],
        data_version=dg.DataVersion(report.data_version()),
    )
