"""The `generated_samples` asset: one LLM completion per prompt, gated by GX."""

import json
import time
from dataclasses import replace

import dagster as dg
import pandas as pd

from synth_assets.curation.pipeline import cheap_acceptance
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
from synth_assets.generation.backends import LocalBackend, build_backend, control_tokens_in
from synth_assets.generation.cost import generation_record
from synth_assets.generation.engine import GenerationOutcome, generate_samples
from synth_assets.generation.local_llm import ProgressUpdate
from synth_assets.quality.gates import ExpectationOutcome, GateOutcome, validate_generated_samples
from synth_assets.spec import GenerationSpec
from synth_assets.storage import GateRecord, Stage


def refuse_control_tokens(
    prompts: pd.DataFrame, spec: GenerationSpec, seed_rows: pd.DataFrame | None = None
) -> None:
    """Raise a one-line ValueError when a prompt holds chat control tokens (`<|im_end|>`...), before any
    call: an OpenAI-compatible server applies its own chat template and would read them as markup
    (issue 15). The seed row that brought one in is named when `seed_rows` are given, else the prompt.
    The local engine needs no such check: it never parses content for control tokens."""
    if seed_rows is not None and len(seed_rows):
        used = {seed_id for ids in prompts["demo_ids"] for seed_id in json.loads(ids or "[]")}
        for row in seed_rows[seed_rows["seed_id"].isin(used)].itertuples(index=False):
            found = control_tokens_in(str(row.text))
            if found:
                raise ValueError(
                    f"{row.source_file}: row {row.source_row}: {spec.seed.text_column}: contains the chat "
                    f"control token {found[0]!r}, which the server behind generation.base_url would read "
                    "as chat markup: remove it from the seed file"
                )
    for row in prompts.itertuples(index=False):
        found = control_tokens_in(str(row.prompt_text))
        if found:
            raise ValueError(
                f"{spec.source_path}: prompt {row.prompt_id} (demos: seed rows {row.demo_ids}, attributes "
                f"{row.attributes}) contains the chat control token {found[0]!r}; the server behind "
                "generation.base_url would read it as chat markup: remove it from the seed file or the spec"
            )


def failed_prompt_share(generation: GenerationOutcome) -> float:
    """Share of the prompts tried that ended without a sample (0.0 when none were tried)."""
    tried = generation.stats.prompts
    return len(generation.failures) / tried if tried else 0.0


def with_failed_share(
    outcome: GateOutcome, generation: GenerationOutcome, spec: GenerationSpec
) -> GateOutcome:
    """The GX outcome plus the failed-prompt gate: at most `gates.max_failed_share` of the prompts may
    end without a sample (a server outage must not pass with every check green, issue 14)."""
    share, limit = failed_prompt_share(generation), spec.gates.max_failed_share
    failed = ExpectationOutcome(
        expectation="failed_prompt_share_at_most",
        column=None,
        success=share <= limit,
        unexpected_count=len(generation.failures),
        unexpected_percent=100 * share,
        observed_value=round(share, 4),
        examples=generation.failures["error"].head(3).tolist(),
        description=f"prompts left without a sample after retries; gates.max_failed_share {limit:g}",
    )
    return replace(outcome, results=[*outcome.results, failed])


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
    metadata={"dagster/column_schema": column_schema(Stage.GENERATED_SAMPLES)},
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
    prompts = read_upstream(store, Stage.EXPANDED_PROMPTS, spec)
    backend = build_backend(spec.generation, llm.cache_dir or None, spec.local_model_path)
    if not isinstance(backend, LocalBackend):
        refuse_control_tokens(prompts, spec, read_upstream(store, Stage.SEED_DATA, spec))
    if isinstance(backend, LocalBackend):
        context.log.info(
            f"model {spec.generation.model} ready in {backend.model.load_seconds:.1f}s "
            f"({'from weight cache' if backend.model.loaded_from_cache else 'dequantized from GGUF'})"
        )

    def log_progress(update: ProgressUpdate) -> None:
        context.log.info(
            f"generated {update.done}/{update.total} calls, "
            f"{update.completion_tokens} tokens, {update.tokens_per_s:.1f} tok/s"
        )

    started = time.perf_counter()
    generation = generate_samples(
        spec,
        prompts,
        backend,
        store,
        context.run.run_id,
        log=context.log.info,
        on_progress=log_progress,
        accept=lambda samples: cheap_acceptance(samples, prompts, spec),
        seed_rows=read_upstream(store, Stage.SEED_DATA, spec) if spec.self_instruct else None,
    )
    seconds = time.perf_counter() - started
    samples = generation.samples
    if len(generation.failures):
        context.log.warning(
            f"{len(generation.failures)} prompts failed and will be retried on the next materialization: "
            + "; ".join(generation.failures["error"].head(3))
        )
    outcome = with_failed_share(validate_generated_samples(samples, spec), generation, spec)
    failed_share = failed_prompt_share(generation)
    # the version, its gate verdict and what it cost commit together
    snapshot = store.write_version(
        Stage.GENERATED_SAMPLES,
        spec.name,
        context.run.run_id,
        samples,
        promote=outcome.passed,
        gate=GateRecord(Stage.GENERATED_SAMPLES, GATE_CHECK, outcome.passed, outcome.summary()),
        generation=generation_record(generation, seconds, store),
    )
    tokens = int(samples["completion_tokens"].sum())
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(Stage.GENERATED_SAMPLES, samples, spec),
            "snapshot_id": snapshot,
            "model": spec.generation.model,
            "backend": backend.name,
            "model_fingerprint": backend.fingerprint,
            "generation_seconds": round(seconds, 2),
            "completion_tokens": tokens,
            **generation.stats.as_metadata(),
            "failed_prompts": len(generation.failures),
            "failed_prompt_share": round(failed_share, 4),
            "max_failed_share": spec.gates.max_failed_share,
            "truncated_share": float((samples["finish_reason"] == "length").mean()) if len(samples) else 0.0,
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
