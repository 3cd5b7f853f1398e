"""The `curated_set` asset: bad samples removed with reasons; a version that passes its GX gate is
*staged*, and `evaluation_report` publishes it only if its usefulness gate passes too."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from synth_assets.curation.filters.base import LOCAL_MODEL
from synth_assets.curation.judge import judge_for_spec
from synth_assets.curation.pipeline import CurationContext, CurationOutcome, cap_per_cell, curate, needs
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
from synth_assets.defs.expanded_prompts import expanded_prompts
from synth_assets.defs.generated_samples import generated_samples
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.defs.seed_data import seed_data
from synth_assets.embeddings import embed
from synth_assets.quality.gates import curation_metrics, validate_curated_set
from synth_assets.storage import GateRecord, Stage, Warehouse


@dg.asset(
    partitions_def=spec_partitions,
    # seed rows are read for the label classifier and for "copies a seed row" dedup
    deps=[generated_samples, expanded_prompts, seed_data],
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    owners=OWNERS,
    code_version="2",
    check_specs=[
        gate_spec(
            "curated_set",
            "GX suites: schema, unique ids and texts, labels in the spec, scores within the curation "
            "rules and their distributions, zero PII left, yield and duplicate rate within bounds, "
            "label balance within tolerance, minimum row count",
        )
    ],
    metadata={"dagster/column_schema": column_schema(Stage.CURATED_SET)},
)
def curated_set(
    context: dg.AssetExecutionContext,
    specs: SpecCatalog,
    warehouse: WarehouseResource,
    llm: LocalModelResource,
) -> dg.MaterializeResult:
    """Generated samples minus what heuristics, dedup (in the batch, against the seed and against
    earlier versions), the label classifier, relevance, PII and the optional LLM judge reject; every
    removed row goes to `rejected_samples` with all its reasons, every kept row keeps its scores.
    Both go to history only: a version that passes its GX gate is staged, and becomes the current
    (published) `curated_set` only when evaluation_report's usefulness gate passes for it; until then,
    or if it fails either gate, the previously published version stays what export and readers see."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    run_id = context.run.run_id
    samples = read_upstream(store, Stage.GENERATED_SAMPLES, spec)
    prompts = read_upstream(store, Stage.EXPANDED_PROMPTS, spec)
    seed_rows = read_upstream(store, Stage.SEED_DATA, spec)
    previous = (
        _earlier_versions(store, spec.name, run_id) if spec.curation.dedup_against_previous_versions else None
    )
    judge_model = (
        judge_for_spec(spec, store, run_id, Path(llm.cache_dir) if llm.cache_dir else None)
        if spec.curation.judge
        else None
    )
    # label_fidelity's likelihood half and perplexity score with the local model, whatever the backend
    likelihood_model = llm.model() if LOCAL_MODEL in needs(spec.curation) else None
    outcome = curate(
        samples,
        prompts,
        spec.curation,
        CurationContext.for_spec(
            spec,
            seed_rows=seed_rows,
            previous=previous,
            embed=embed,
            judge_model=judge_model,
            likelihood_model=likelihood_model,
        ),
    )
    if spec.per_cell is not None:
        outcome = cap_per_cell(outcome, prompts, spec.per_cell.n)
    for note in outcome.notes:
        context.log.info(f"curation: {note}")
    gate = validate_curated_set(outcome.curated, spec, rejected=outcome.rejected)
    published = store.published_run(Stage.CURATED_SET, spec.name)
    # never promoted here: publication waits for the evaluation (staged -> published). The passing
    # verdict is what makes this version "staged" (Warehouse.staged_runs), so it commits with it.
    snapshot = store.write_versions(
        {Stage.CURATED_SET: outcome.curated, Stage.REJECTED_SAMPLES: outcome.rejected},
        spec.name,
        run_id,
        promote=False,
        gate=GateRecord(Stage.CURATED_SET, GATE_CHECK, gate.passed, gate.summary()),
    )
    publication = _publication_note(gate.passed, spec.name, published)
    if gate.passed:
        context.log.info(publication)
    else:
        context.log.warning(f"{publication}. Gate: {gate.summary()}")
    context.log.info(
        f"curated {len(outcome.curated)} of {len(samples)}; rejected by reason: "
        f"{ {k: v for k, v in outcome.reason_counts().items() if v} }"
    )
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(Stage.CURATED_SET, outcome.curated, spec),
            "snapshot_id": snapshot,
            **_curation_metadata(outcome, len(samples)),
            "staged": gate.passed,
            "publication": publication,
            "published_curated_version": published or "none",
            "preview": preview(outcome.curated, ["sample_id", "label", "relevance", "flags", "text"]),
            "rejected_preview": preview(outcome.rejected, ["sample_id", "reasons", "text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    column: [dg.TableColumnDep(asset_key=generated_samples.key, column_name=column)]
                    for column in ("sample_id", "prompt_id", "label", "text")
                }
            ),
        },
        check_results=[gate_result(gate)],
        data_version=frame_version(outcome.curated, ["sample_id", "label", "text"]),
    )


def _earlier_versions(store: Warehouse, spec_name: str, run_id: str) -> pd.DataFrame:
    """Rows of every earlier curated version of this spec that passed its GX gate and was not held
    back by the usefulness gate (published, or not yet evaluated), this run excluded. A version that
    failed either gate never reached anyone, so it does not make new samples redundant."""
    staged = [run for run in store.good_versions(Stage.CURATED_SET, spec_name) if run != run_id]
    if not staged:
        return pd.DataFrame(columns=["sample_id", "text", "run_id"])
    decisions = store.publications(spec_name)
    # the newest decision on a version counts (a held-back version may pass a later re-evaluation)
    latest = decisions.drop_duplicates("version_run_id")  # newest first
    held_back = set(latest.loc[~latest["published"].astype(bool), "version_run_id"])
    keep = [run for run in staged if run not in held_back]
    if not keep:
        return pd.DataFrame(columns=["sample_id", "text", "run_id"])
    return store.read_versions(Stage.CURATED_SET, spec_name, keep)[["sample_id", "text", "run_id"]]


def _publication_note(passed: bool, spec_name: str, published: str | None) -> str:
    stays = (
        f"curated_set run {published} stays published (what export writes) until then"
        if published
        else "no version is published yet"
    )
    if passed:
        return (
            f"staged: curated_set for {spec_name} passed its GX gate; it is published only if "
            f"evaluation_report's usefulness gate passes for it; {stays}"
        )
    if published:
        return (
            f"NOT staged (GX gate failed): curated_set for {spec_name} kept in curated_set_history only; "
            f"readers and export keep the published version, from run {published}"
        )
    return (
        f"NOT staged (GX gate failed): curated_set for {spec_name} kept in curated_set_history only; "
        "no version is published yet, so export has nothing to write"
    )


def _mean(frame: pd.DataFrame, column: str) -> float:
    values = frame[column].dropna()
    return round(float(values.mean()), 4) if len(values) else float("nan")


def _curation_metadata(outcome: CurationOutcome, generated: int) -> dict[str, object]:
    metrics = curation_metrics(outcome.curated, outcome.rejected, generated)
    means = {
        f"mean_{column}": _mean(outcome.curated, column)
        for column in ("relevance", "label_confidence", "judge_score", "nearest_similarity")
    }
    return {
        "generated": generated,
        "rejected": len(outcome.rejected),
        "yield": round(metrics["yield"], 4),
        "duplicate_rate": round(metrics["duplicate_rate"], 4),
        "rejections_by_reason": dg.MetadataValue.json(
            {reason: count for reason, count in outcome.reason_counts().items() if count}
        ),
        "flags_on_kept_rows": dg.MetadataValue.json(outcome.flag_counts()),
        "pii_found_by_type": dg.MetadataValue.json(outcome.pii_by_type),
        "pii_hits_total": int(sum(outcome.pii_by_type.values())),
        **{key: value for key, value in means.items() if np.isfinite(value)},
        "curation_notes": dg.MetadataValue.json(outcome.notes),
    }
