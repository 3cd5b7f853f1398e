"""Pieces every stage's asset uses: the spec partitions, UI metadata helpers, the gate check."""

from typing import Any

import dagster as dg
import pandas as pd

from synth_assets.quality.gates import GateOutcome
from synth_assets.spec import GenerationSpec, content_hash
from synth_assets.storage import STAGE_COLUMNS, Warehouse

spec_partitions = dg.DynamicPartitionsDefinition(name="spec")

GROUP = "synthetic_data"
GATE_CHECK = "gx_gate"
OWNERS = ["team:synth-data"]


def column_schema(stage: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind.lower()) for name, kind in STAGE_COLUMNS[stage].items()]
    )


def preview(frame: pd.DataFrame, columns: list[str], rows: int = 5) -> dg.MetadataValue:
    shown = frame[columns].head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].astype(str).str.replace("\n", " ").str.slice(0, 120)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_no rows_")


def stage_metadata(stage: str, frame: pd.DataFrame, spec: GenerationSpec) -> dict[str, Any]:
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": column_schema(stage),
        "dagster/table_name": stage,
        "spec": spec.name,
        "spec_fingerprint": spec.fingerprint(),
    }


def frame_version(frame: pd.DataFrame, columns: list[str]) -> dg.DataVersion:
    """Content hash of what a stage produced, so downstream is stale only when content changed."""
    return dg.DataVersion(content_hash(frame[columns].astype(str).to_numpy().tolist()))


def gate_result(outcome: GateOutcome) -> dg.AssetCheckResult:
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


def gate_spec(asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(GATE_CHECK, asset=asset, blocking=True, description=description)


def read_upstream(warehouse: Warehouse, stage: str, spec: GenerationSpec) -> pd.DataFrame:
    frame = warehouse.read_current(stage, spec.name)
    if frame.empty and stage != "rejected_samples":
        raise dg.Failure(
            f"{stage} has no promoted rows for spec '{spec.name}': materialize it first "
            "(or its last version failed its gate)"
        )
    return frame
