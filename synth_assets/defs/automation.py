"""How the graph refreshes: the refresh job, its daily schedule, the spec sensor, and declarative
automation on the downstream stages.

- `daily_refresh` (03:00) and `spec_change_sensor` run the whole chain for a spec in ONE run, so the
  blocking gates apply and the LLM cost is one predictable event.
- The four downstream stages also carry `downstream_condition()`: when a person materializes only part
  of the chain (e.g. `seed_data` in the UI), the rest follows through `synth_automation`. It never
  re-runs what a full run already did, never reacts to the spec observation (the sensor launches the
  full run for that), and never runs past a failed blocking check.

All three start RUNNING (Dagster's default is STOPPED), but opening the UI never starts work by itself:
the sensor's first tick only records the specs as they are (adds their partitions, marks changed ones
Unsynced), and a spec whose name the warehouse already holds counts as materialized even on a fresh
DAGSTER_HOME. Runs start on later changes of a spec's content, and by the schedule, only for specs
that may run automatically: the local backend by default, any other backend (a hosted API spends
money) only with `automation: {auto_run: true}` in the spec.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import dagster as dg

from synth_assets.defs.assets import seed_data, spec_partitions, stage_assets
from synth_assets.defs.resources import SPEC_PATH_TAG, SpecCatalog, WarehouseResource
from synth_assets.defs.seed_data import SPEC_INPUTS, spec_for_observation, spec_inputs
from synth_assets.spec import GenerationSpec
from synth_assets.storage import WAREHOUSE_ERRORS, Stage, Warehouse

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


def auto_runs(spec: GenerationSpec) -> bool:
    """Whether the sensor and the schedule may start runs of this spec by themselves: the spec's
    `automation.auto_run`, by default only for the in-process backends, local and llama_cpp (a hosted
    API spends money)."""
    if spec.automation.auto_run is not None:
        return spec.automation.auto_run
    return spec.generation.runs_in_process


def _not_auto_run(spec: GenerationSpec) -> str:
    return (
        f"spec '{spec.name}' (backend {spec.generation.backend}) is not run automatically: materialize it "
        "from the UI or with `synth-assets run`, or set `automation: {auto_run: true}` in the spec"
    )


@dg.schedule(
    job=synth_refresh_job,
    cron_schedule="0 3 * * *",  # daily, 03:00 in the instance's timezone
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily refresh of every registered spec that may run automatically (local backend, or "
    "automation.auto_run: true).",
)
def daily_refresh(context: dg.ScheduleEvaluationContext, specs: SpecCatalog) -> list[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests = []
    for key in context.instance.get_dynamic_partitions(spec_partitions.name):
        spec = spec_for_observation(context.instance, specs, key, {})
        if spec is None:
            context.log.warning(f"no loadable spec named '{key}' found: not refreshed")
        elif not auto_runs(spec):
            context.log.info(_not_auto_run(spec))
        else:
            tags = {SPEC_PATH_TAG: str(spec.source_path)}
            requests.append(dg.RunRequest(run_key=f"daily-{day}-{key}", partition_key=key, tags=tags))
    return requests


def _latest_materialized_digest(instance: dg.DagsterInstance, partition: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=seed_data.key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("spec_digest")
    return str(value.value) if value is not None else None


def in_warehouse(store: Warehouse, spec_name: str) -> bool:
    """Whether the warehouse holds a promoted `seed_data` for the spec (it was materialized, maybe
    from another Dagster instance). A DuckDB file that is missing, busy or older counts as no."""
    try:
        return store.row_count(Stage.SEED_DATA, spec_name, read_only=True) > 0
    except WAREHOUSE_ERRORS:
        return False


@dataclass
class SensorCursor:
    """What `spec_change_sensor` has seen: each spec's digest, and a count of the runs it requested
    (in the run key, with the cursor's creation time: A -> B -> A gets a new key, so Dagster does
    not skip the run back to A as a duplicate, and a reset cursor never reuses an old key)."""

    digests: dict[str, str] = field(default_factory=dict)
    requested: int = 0
    since: int = 0

    @classmethod
    def parse(cls, cursor: str | None) -> SensorCursor | None:
        """None on the first tick; the older flat {name: digest} cursor is read as digests."""
        if not cursor:
            return None
        value = json.loads(cursor)
        if "digests" not in value:
            return cls(digests=value)
        return cls(value["digests"], int(value["requested"]), int(value["since"]))

    def dump(self) -> str:
        return json.dumps(
            {"digests": self.digests, "requested": self.requested, "since": self.since}, sort_keys=True
        )


@dg.sensor(
    job=synth_refresh_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each spec under specs/. Its first tick only records what exists; "
    "later it refreshes a spec whose file or seed files changed (by content hash: touching a file "
    "starts nothing), if the spec may run automatically (local backend, or automation.auto_run).",
)
def spec_change_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, specs: SpecCatalog
) -> dg.SensorResult:
    previous = SensorCursor.parse(context.cursor)
    first_tick = previous is None
    state = previous or SensorCursor(since=int(time.time()))
    found, problems = specs.scan()
    for problem in problems:
        context.log.error(f"spec not used: {problem}")
    known = set(context.instance.get_dynamic_partitions(spec_partitions.name))
    new_partitions = sorted(set(found) - known)
    store = warehouse.warehouse()
    run_requests = []
    observations = []
    for name, (digest, path, spec) in sorted(found.items()):
        seen = state.digests.get(name)
        if seen == digest:
            continue
        state.digests[name] = digest
        materialized = _latest_materialized_digest(context.instance, name)
        if seen is None and materialized == digest:
            continue  # after `make run` the spec is already materialized with this content
        if name in known:
            # the new content hash, recorded now: the UI shows the stages Unsynced right away, and
            # still does if the run below fails at a gate or never starts
            observations.append(
                dg.AssetObservation(spec_inputs.key, partition=name, tags={"dagster/data_version": digest})
            )
        if first_tick:
            # opening the UI starts nothing: what exists now is the starting point
            context.log.info(f"spec '{name}': recorded; runs start on its next change")
            continue
        if seen is None and materialized is None and in_warehouse(store, name):
            context.log.info(f"spec '{name}': already in {store.path}; runs start on its next change")
            continue
        if not auto_runs(spec):
            context.log.info(_not_auto_run(spec))
            continue
        state.requested += 1
        run_requests.append(
            dg.RunRequest(
                run_key=f"{name}-{state.since}-{state.requested}-{digest}",
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
        cursor=state.dump(),
    )


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_reaper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Marks failed the `synth-assets run` runs whose process is gone (SIGKILL, out of memory): such a
    run would hold its slot, and its spec's turn, forever (dagster.yaml's run limits). Runs launched
    by the UI are watched by Dagster's own run monitoring (dagster.yaml)."""
    from synth_assets.run_control import reap_dead_runs

    reaped = reap_dead_runs(context.instance)
    return dg.SkipReason(f"marked failed: {', '.join(reaped)}" if reaped else "no dead runs")
