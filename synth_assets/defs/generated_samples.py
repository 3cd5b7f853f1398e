"""The `generated_samples` asset: one LLM completion per prompt, gated by GX."""

import time

import dagster as dg

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
from synth_assets.defs.resources import LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.generation.engine import generate_samples
from synth_assets.generation.local_llm import ProgressUpdate
from synth_assets.quality.gates import validate_generated_samples


@dg.asset(
    partitions_def=spec_partitions,
    deps=[expanded_prompts],
    group_name=GROUP,
    kinds={"duckdb", "pytorch"},
    owners=OWNERS,
    code_version="1",
    check_specs=[
        gate_spec(
            "generated_samples",
            "GX suite: schema, non-null text, unique ids, labels in the spec, lengths mostly in bounds",
        )
    ],
    metadata={"dagster/column_schema": column_schema("generated_samples")},
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
    prompts = read_upstream(store, "expanded_prompts", spec)
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
    store.record_gate(
        spec.name, context.run.run_id, "generated_samples", GATE_CHECK, outcome.passed, outcome.summary()
    )
    tokens = int(samples["completion_tokens"].sum())
    return dg.MaterializeResult(
        metadata={
            **stage_metadata("generated_samples", samples, spec),
            "model": spec.generation.model,
            "model_fingerprint": model.fingerprint,
            "model_load_seconds": round(model.load_seconds, 2),
            "generation_seconds": round(seconds, 2),
            "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
            "truncated_share": float((samples["finish_reason"] == "length").mean()),
            "promoted": outcome.passed,
            "preview": preview(samples, ["sample_id", "label", "text"]),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "prompt_id": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="prompt_id")],
                    "label": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="label")],
                    "text": [dg.TableColumnDep(asset_key=expanded_prompts.key, column_name="prompt_text")],
                }
            ),
        },
        check_results=[gate_result(outcome)],
        data_version=frame_version(samples, ["sample_id", "text"]),
    )
