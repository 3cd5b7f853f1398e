"""How the graph refreshes: the refresh job, its daily schedule, the spec sensor, and declarative
automation on the downstream stages.

- `daily_refresh` (03:00) and `spec_change_sensor` run the whole chain for a spec in ONE run, so the
  blocking gates apply and the LLM cost is one predictable event.
- The four downstream stages also carry `downstream_condition()`: when a person materializes only part
  of the chain (e.g. `seed_data` in the UI), the rest follows through `synth_automation`. It never
  re-runs what a full run already did, never reacts to the spec observation (the sensor launches the
  full run for that), and never runs past a failed blocking check.

All three start RUNNING (Dagster's default is STOPPED) so `make ui` refreshes without a click.
"""

import json
from pathlib import Path

import dagster as dg

from synth_assets.defs.assets import seed_data, spec_partitions, stage_assets
from synth_assets.defs.resources import SPEC_PATH_TAG
from synth_assets.defs.seed_data import SPEC_INPUTS, spec_inputs
from synth_assets.paths import default_specs_dir
from synth_assets.seed import spec_inputs_digest
from synth_assets.spec import SpecError, load_spec

SPEC_DIGEST_TAG = "synth_assets/spec_digest"
DOWNSTREAM_STAGES = ["expanded_prompts", "generated_samples", "curated_set", "evaluation_report"]

# spec_inputs first: the run observes the spec's content hash, and every stage records the version it
# consumed, which is what later makes them "Unsynced" when the spec changes
synth_refresh_job = dg.define_asset_job(
    "synth_refresh_job",
    selection=dg.AssetSelection.assets(spec_inputs.key, *stage_assets),
    description="Observe the spec and its seed files, then materialize all five stages for one spec "
    "(one partition) in one run, so the blocking gates apply.",
)


def downstream_condition() -> dg.AutomationCondition:
    """`AutomationCondition.eager()` for a stage downstream of `seed_data`, plus passing gates.

    - `any_deps_updated` already ignores upstream updates made by a run that also targeted this stage,
      so the daily or sensor run of the whole chain triggers nothing afterwards (no surprise runs);
    - updates and absence of `spec_inputs` are ignored: a spec change launches the full run through
      `spec_change_sensor`, and re-running only the downstream half would read the old seed rows;
    - `all_deps_blocking_checks_passed`: never past a failed (or not yet run) blocking check.
    """
    inputs = dg.AssetSelection.assets(SPEC_INPUTS)
    deps_updated = dg.AutomationCondition.any_deps_updated().ignore(inputs)
    deps_missing = dg.AutomationCondition.any_deps_missing().ignore(inputs)
    return (
        (dg.AutomationCondition.newly_missing() | deps_updated).since_last_handled()
        & ~deps_missing
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("eager, past passing blocking checks only")


synth_automation = dg.AutomationConditionSensorDefinition(
    "synth_automation",
    target=dg.AssetSelection.assets(*DOWNSTREAM_STAGES),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Completes the chain after a partial materialization (e.g. seed_data alone); "
    "never past a failed blocking check.",
)


@dg.schedule(
    job=synth_refresh_job,
    cron_schedule="0 3 * * *",  # daily, 03:00 in the instance's timezone
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily refresh of every registered spec.",
)
def daily_refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"daily-{day}-{key}", partition_key=key)
        for key in context.instance.get_dynamic_partitions(spec_partitions.name)
    ]


def _latest_materialized_digest(instance: dg.DagsterInstance, partition: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=seed_data.key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("spec_digest")
    return str(value.value) if value is not None else None


def scan_specs(directory: Path) -> tuple[dict[str, tuple[str, Path]], list[str]]:
    """Loadable specs in a folder as {name: (digest, path)}, plus one-line problems of the rest."""
    found: dict[str, tuple[str, Path]] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        try:
            spec = load_spec(path)
            found[spec.name] = (spec_inputs_digest(spec), path)
        except SpecError as exc:
            problems.append(str(exc))
    return found, problems


@dg.sensor(
    job=synth_refresh_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new spec under specs/ and refreshes a spec whose file "
    "or seed files changed (by content hash: touching a file starts nothing).",
)
def spec_change_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    found, problems = scan_specs(default_specs_dir())
    for problem in problems:
        context.log.warning(f"skipping spec: {problem}")
    known = set(context.instance.get_dynamic_partitions(spec_partitions.name))
    new_partitions = sorted(set(found) - known)
    run_requests = []
    observations = []
    for name, (digest, path) in sorted(found.items()):
        if seen.get(name) == digest:
            continue
        # after `make run` the spec is already materialized with this content: nothing to redo
        if seen.get(name) is None and _latest_materialized_digest(context.instance, name) == digest:
            seen[name] = digest
            continue
        seen[name] = digest
        if name in known:
            # the new content hash, recorded now: the UI shows the stages Unsynced right away, and
            # still does if the run below fails at a gate
            observations.append(
                dg.AssetObservation(spec_inputs.key, partition=name, tags={"dagster/data_version": digest})
            )
        run_requests.append(
            dg.RunRequest(
                run_key=f"{name}-{digest}",
                partition_key=name,
                tags={SPEC_PATH_TAG: str(path), SPEC_DIGEST_TAG: digest},
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        asset_events=observations,
        dynamic_partitions_requests=[spec_partitions.build_add_request(new_partitions)]
        if new_partitions
        else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
