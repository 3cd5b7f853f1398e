"""The refresh job, its daily schedule, and the sensor that reacts to new or changed specs.

Both start RUNNING (Dagster's default is STOPPED) so `make ui` refreshes without a click.
"""

import json
from pathlib import Path

import dagster as dg

from synth_assets.defs.assets import seed_data, spec_partitions, stage_assets
from synth_assets.defs.resources import SPEC_PATH_TAG
from synth_assets.paths import default_specs_dir
from synth_assets.seed import spec_inputs_digest
from synth_assets.spec import SpecError, load_spec

SPEC_DIGEST_TAG = "synth_assets/spec_digest"

synth_refresh_job = dg.define_asset_job(
    "synth_refresh_job",
    selection=dg.AssetSelection.assets(*stage_assets),
    partitions_def=spec_partitions,
    description="Materialize all five stages for one spec (one partition).",
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
    for name, (digest, path) in sorted(found.items()):
        if seen.get(name) == digest:
            continue
        # after `make run` the spec is already materialized with this content: nothing to redo
        if seen.get(name) is None and _latest_materialized_digest(context.instance, name) == digest:
            seen[name] = digest
            continue
        seen[name] = digest
        run_requests.append(
            dg.RunRequest(
                run_key=f"{name}-{digest}",
                partition_key=name,
                tags={SPEC_PATH_TAG: str(path), SPEC_DIGEST_TAG: digest},
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[spec_partitions.build_add_request(new_partitions)]
        if new_partitions
        else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
