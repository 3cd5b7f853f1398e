"""The five stages as software-defined assets, one partition per spec.

Assets are thin: read the spec and upstream tables, call the pure modules, write one version
through `Warehouse`, and return metadata a person wants to read in the UI. Upstream tables are read
from DuckDB (not passed through an IO manager), so a run that selects only a downstream asset
reads the last promoted version, never one that failed its gate.
"""


import json
import time
from typing import Any

import dagster as dg
import pandas as pd

from synth_assets.curation.rules import curate
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.evaluation.report import build_report
from synth_assets.generation.engine import generate_samples
from synth_assets.generation.local_llm import ProgressUpdate
from synth_assets.generation.prompts import expand_prompts
from synth_assets.quality.gates import GateOutcome, validate_curated_set, validate_generated_samples
from synth_assets.seed import load_seed_data, spec_inputs_digest
from synth_assets.spec import GenerationSpec, content_hash
from synth_assets.storage import STAGE_COLUMNS, Warehouse

spec_partitions = dg.DynamicPartitionsDefinition(name="spec")

GROUP = "synthetic_data"
GATE_CHECK = "gx_gate"
OWNERS = ["team:synth-data"]


def _column_schema(stage: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind.lower()) for name, kind in STAGE_COLUMNS[stage].items()]
    )


def _preview(frame: pd.DataFrame, columns: list[str], rows: int = 5) -> dg.MetadataValue:
    shown = frame[columns].head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].astype(str).str.replace("\n", " ").str.slice(0, 120)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_no rows_")


def _stage_metadata(stage: str, frame: pd.DataFrame, spec: GenerationSpec) -> dict[str, Any]:
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": _column_schema(stage),
        "dagster/table_name": stage,
        "spec": spec.name,
        "spec_fingerprint": spec.fingerprint(),
    }


def _frame_version(frame: pd.DataFrame, columns: list[str]) -> dg.DataVersion:
    """Content hash of what a stage produced, so downstream is stale only when content changed."""
    return dg.DataVersion(content_hash(frame[columns].astype(str).to_numpy().tolist()))


def _gate_result(outcome: GateOutcome) -> dg.AssetCheckResult:
    failures = outcome.failures
    metadata: dict[str, Any] = {
        "rows_validated": outcome.rows,
        "expectations_evaluated": len(outcome.results),
        "expectations_failed": len(failures),
        "failed_expectations": dg.MetadataValue.json([f.describe() for f in failures]),
        "results": dg.MetadataValue.md(pd.DataFrame(outcome.as_records()).to_markdown(index=False)),
    }
    if failures:
        metadata["failing_examples"] = dg.MetadataValue.json(
            {f.describe(): [str(e)[:120] for e in f.examples[:3]] for f in failures}
        )
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.summary(),
        metadata=metadata,
    )


def _gate_spec(asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(GATE_CHECK, asset=asset, blocking=True, description=description)


def _read_upstream(warehouse: Warehouse, stage: str, spec: GenerationSpec) -> pd.DataFrame:
    frame = warehouse.read_current(stage, spec.name)
    if frame.empty and stage != "rejected_samples":
        raise dg.Failure(
            f"{stage} has no promoted rows for spec '{spec.name}': materialize it first "
            "(or its last version failed its gate)"
        )
    return frame


@dg.asset(
    partitions_def=spec_partitions,
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="1",
    metadata={"dagster/column_schema": _column_schema("seed_data")},
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
            **_stage_metadata("seed_data", rows, spec),
            "seed_file": dg.MetadataValue.path(str(spec.seed_path)),
            "spec_digest": spec_inputs_digest(spec),
            "rows_per_split_and_label": dg.MetadataValue.md(per_split_label.to_markdown()),
            "preview": _preview(rows, ["seed_id", "split", "label", "text"]),
        },
        data_version=_frame_version(rows, ["seed_id", "split", "text", "label"]),
    )


@dg.asset(
    partitions_def=spec_partitions,
    deps=[seed_data],
    group_name=GROUP,
    kinds={"duckdb", "jinja"},
    owners=OWNERS,
    code_version="1",
    metadata={"dagster/column_schema": _column_schema("expanded_prompts")},
)
def expanded_prompts(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Prompts from the spec: labels and attributes sampled with weights, few-shot demos drawn from
    the seed's training split, rendered through the spec's sandboxed Jinja2 template."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    prompts = expand_prompts(spec, _read_upstream(store, "seed_data", spec))
    store.write_version("expanded_prompts", spec.name, context.run.run_id, prompts, promote=True)
    attribute_counts = {
        name: pd.Series([json.loads(a)[name] for a in prompts["attributes"]]).value_counts().to_dict()
        for name in (a.name for a in spec.attributes)
    }
    return dg.MaterializeResult(
        metadata={
            **_stage_metadata("expanded_prompts", prompts, spec),
            "labels_requested": dg.MetadataValue.json(prompts["label"].value_counts().to_dict()),
            "attributes_sampled": dg.MetadataValue.json(attribute_counts),
            "example_prompt": dg.MetadataValue.md(f"```\n{prompts['prompt_text'].iloc[0]}\n```"),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "demo_ids": [dg.TableColumnDep(asset_key=seed_data.key, column_name="seed_id")],
                    "prompt_text": [dg.TableColumnDep(asset_key=seed_data.key, column_name="text")],
                }
            ),
        },
        data_version=_frame_version(prompts, ["prompt_id"]),
    )


@dg.asset(
    partitions_def=spec_partitions,
    deps=[expanded_prompts],
    group_name=GROUP,
    kinds={"duckdb", "pytorch"},
    owners=OWNERS,
    code_version="1",
    check_specs=[
        _gate_spec(
            "generated_samples",
            "GX suite: schema, non-null text, unique ids, labels in the spec, lengths mostly in bounds",
        )
    ],
    metadata={"dagster/column_schema": _column_schema("generated_samples")},
)
def generated_samples(
    context: dg.AssetExecutionContext,
    specs: SpecCatalog,
    warehouse: WarehouseResource,
    llm: LocalModelResource,
) -> dg.MaterializeResult:
    """One completion per prompt from the spec's model (local SmolLM2-135M-Instruct by default),
    batched and seeded. Gated by a blocking Great Expectations check: a failing batch is kept in
    history but never becomes the version that curation reads."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    prompts = _read_upstream(store, "expanded_prompts", spec)
    model = llm.model()
    context.log.info(
        f"model {spec.generation.model} ready in {model.load_seconds:.1f}s "
        f"({'from weight cache' if model.loaded_from_cache else 'dequantized from GGUF'})"
    )

    def log_progress(update: ProgressUpdate) -> None:
        context.log.info(
            f"generated {update.done}/{update.total} prompts, "
            f"{update.completion_tokens} tokens, {update.tokens_per_s:.1f} tok/s"
        )

    started = time.perf_counter()
    samples = generate_samples(spec, prompts, model, on_progress=log_progress)
    seconds = time.perf_counter() - started
    outcome = validate_generated_samples(samples, spec)
    store.write_version("generated_samples", spec.name, context.run.run_id, samples, promote=outcome.passed)
    store.record_gate(spec.name, context.run.run_id, "generated_samples", GATE_CHECK, outcome.passed, outcome.summary())
    tokens = int(samples["completion_tokens"].sum())
    return dg.MaterializeResult(
        metadata={
            **_stage_metadata("generated_samples", samples, spec),
            "model": spec.generation.model,
            "model_fingerprint": model.fingerprint,
            "model_load_seconds": round(model.load_seconds, 2),
            "generation_seconds": round(seconds, 2),
            "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
            "truncated_share": float((samples["finish_reason"] == "length").mean()),
            "promoted": outcome.passed,
            "preview": _preview(samples, ["sample_id", "label", "text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "prompt_id": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="prompt_id")],
                    "label": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="label")],
                    "text": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="prompt_text")],
                }
            ),
        },
        check_results=[_gate_result(outcome)],
        data_version=_frame_version(samples, ["sample_id", "text"]),
    )


@dg.asset(
    partitions_def=spec_partitions,
    deps=[generated_samples],
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="1",
    check_specs=[
        _gate_spec(
            "curated_set",
            "GX suite: unique ids and texts, non-empty text, labels in the spec, minimum row count",
        )
    ],
    metadata={"dagster/column_schema": _column_schema("curated_set")},
)
def curated_set(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Generated samples minus exact duplicates, out-of-bounds lengths and prompt echoes; every
    removed row goes to `rejected_samples` with its reasons. Promoted only if its GX gate passes."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    samples = _read_upstream(store, "generated_samples", spec)
    prompts = _read_upstream(store, "expanded_prompts", spec)
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
            **_stage_metadata("curated_set", outcome.curated, spec),
            "generated": len(samples),
            "rejected": len(outcome.rejected),
            "yield": round(len(outcome.curated) / len(samples), 4) if len(samples) else 0.0,
            "rejections_by_reason": dg.MetadataValue.json(outcome.reason_counts()),
            "promoted": gate.passed,
            "preview": _preview(outcome.curated, ["sample_id", "label", "text"]),
            "rejected_preview": _preview(outcome.rejected, ["sample_id", "reasons", "text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    column: [dg.TableColumnDep(asset_key=generated_samples.key, column_name=column)]
                    for column in ("sample_id", "prompt_id", "label", "text")
                }
            ),
        },
        check_results=[_gate_result(gate)],
        data_version=_frame_version(outcome.curated, ["sample_id"]),
    )


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
    curated = _read_upstream(store, "curated_set", spec)
    report = build_report(
        spec,
        run_id=context.run.run_id,
        seed_rows=_read_upstream(store, "seed_data", spec),
        prompts=_read_upstream(store, "expanded_prompts", spec),
        samples=_read_upstream(store, "generated_samples", spec),
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


stage_assets = [seed_data, expanded_prompts, generated_samples, curated_set, evaluation_report]
