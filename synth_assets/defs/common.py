"""Pieces every stage's asset uses: the spec partitions, UI metadata helpers, the gate check."""

import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from synth_assets.columns import COLUMN_DESCRIPTIONS
from synth_assets.curation.pii import scan, scrub
from synth_assets.quality.gates import GateOutcome
from synth_assets.spec import GenerationSpec, content_hash
from synth_assets.storage import STAGE_COLUMNS, Stage, Warehouse

spec_partitions = dg.DynamicPartitionsDefinition(name="spec")

GROUP = "synthetic_data"
GATE_CHECK = "gx_gate"
OWNERS = ["team:synth-data"]


# previews in the UI: enough rows to judge a batch by eye, each cell long enough for a whole sample
PREVIEW_ROWS = 20
PREVIEW_CHARS = 2000


# definition metadata of `spec_inputs` (the observed spec and seed files), for its page in the UI
SPEC_INPUTS_METADATA: dict[str, Any] = {
    "observes": "the spec YAML (parsed: GenerationSpec.fingerprint) and its seed files (seed.path, "
    "seed.holdout_path)",
    "data_version": "content hash over all of them (synth_assets.seed.spec_inputs_digest): a touched but "
    "unchanged file keeps the version",
    "partition": "the spec's `name`",
    "observed_by": "the refresh job (every run) and spec_change_sensor (when a file changed)",
}


def column_schema(stage: str) -> dg.TableSchema:
    """The stage's DuckDB columns with their types and descriptions (the UI's Columns tab)."""
    descriptions = COLUMN_DESCRIPTIONS[stage]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind.lower(), description=descriptions.get(name))
            for name, kind in STAGE_COLUMNS[stage].items()
        ]
    )


def table_name(stage: str, database: str | Path) -> str:
    """`dagster/table_name` fully qualified as DuckDB names it: <file stem>.main.<stage>."""
    return f"{Path(database).stem}.main.{stage}"


def _cell(value: Any, limit: int) -> str | int | float | bool | None:
    """A preview cell: plain Python; text PII-scrubbed and, past `limit` characters, cut with an
    explicit ellipsis that says how long the whole text is (never a silent cut)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    text = str(value)
    hits = scan([text]).hits[0]
    text = scrub(text, hits) if hits else text
    return (
        text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more chars, {len(text)} total]"
    )


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    return "float" if pd.api.types.is_float_dtype(series) else "string"


def preview(
    frame: pd.DataFrame, columns: list[str], rows: int = PREVIEW_ROWS, chars: int = PREVIEW_CHARS
) -> dg.MetadataValue:
    """The first `rows` rows as a UI table (`MetadataValue.table`: text shown raw, never rendered as
    Markdown), PII-scrubbed with `curation.pii`; a cell longer than `chars` ends in an explicit
    ellipsis with its full length, and a last row says how many rows are not shown."""
    shown = frame[columns].head(rows)
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type(frame[c])) for c in columns])
    records = [
        dg.TableRecord({c: _cell(v, chars) for c, v in zip(columns, values, strict=True)})
        for values in shown.itertuples(index=False)
    ]
    if len(frame) > rows:
        first = columns[0]
        more = f"… {len(frame) - rows} more of {len(frame)} rows (all of them: synth-assets browse)"
        # an id column is text; the note goes into the first text column there is
        text_column = next((c for c in columns if _column_type(frame[c]) == "string"), first)
        records.append(dg.TableRecord({c: (more if c == text_column else None) for c in columns}))
    return dg.MetadataValue.table(records, schema=schema)


def _judged() -> dict[str, Any]:
    """Which partition (spec) and run the current asset step works on, for metadata a person reads
    in an asset's or a check's history; empty outside a run."""
    try:
        context = dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:  # no step running (a direct call in a test)
        return {}
    judged: dict[str, Any] = {"run_id": context.run.run_id}
    if context.has_partition_key:
        judged["partition"] = context.partition_key
    return judged


def stage_metadata(stage: str, frame: pd.DataFrame, spec: GenerationSpec) -> dict[str, Any]:
    """Materialization metadata every stage records: row count, column schema, spec and partition
    (the fully qualified `dagster/table_name` is definition metadata, see `definitions.py`)."""
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": column_schema(stage),
        "spec": spec.name,
        "spec_fingerprint": spec.fingerprint(),
        **_judged(),
    }


def frame_version(frame: pd.DataFrame, columns: list[str]) -> dg.DataVersion:
    """Content hash of what a stage produced, so downstream is stale only when content changed."""
    return dg.DataVersion(content_hash(frame[columns].astype(str).to_numpy().tolist()))


def gate_result(outcome: GateOutcome) -> dg.AssetCheckResult:
    """The blocking GX gate as a check result; its metadata names the spec (partition) and run it
    judged, so a check's history in the UI tells the specs apart."""
    failures = outcome.failures
    judged = _judged()
    metadata: dict[str, Any] = {
        **({"spec": judged["partition"]} if "partition" in judged else {}),
        **judged,
        "rows_validated": outcome.rows,
        "expectations_evaluated": len(outcome.results),
        "expectations_failed": len(failures),
        "failed_expectations": dg.MetadataValue.json([f.describe() for f in failures]),
        "results": dg.MetadataValue.md(pd.DataFrame(outcome.as_records()).to_markdown(index=False)),
    }
    if failures:
        metadata["failing_examples"] = dg.MetadataValue.json(
            {f.describe(): [_cell(str(e), 300) for e in f.examples[:3]] for f in failures}
        )
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.summary(),
        metadata=metadata,
    )


def gate_spec(asset: str, description: str, name: str = GATE_CHECK) -> dg.AssetCheckSpec:
    """A blocking gate on `asset`, partitioned by spec like the asset: each evaluation records the
    spec it judged as its partition, so the check's history lists the spec of every row and the
    asset's Overview shows each spec's own verdict, not the verdict of whichever spec ran last.
    (`partitions_def` on a check spec is a preview in Dagster 1.13; its warning is noise here.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, blocking=True, description=description, partitions_def=spec_partitions
        )


def read_upstream(warehouse: Warehouse, stage: str, spec: GenerationSpec) -> pd.DataFrame:
    frame = warehouse.read_current(stage, spec.name)
    if frame.empty and stage != Stage.REJECTED_SAMPLES:
        raise dg.Failure(
            f"{stage} has no promoted rows for spec '{spec.name}': materialize it first "
            "(or its last version failed its gate)"
        )
    return frame
