"""`synth-assets run` through the Dagster instance's run queue.

`dagster.yaml` says what may run at once: runs of different specs, up to `max_concurrent_runs` (2 on
this 2-core machine), and one run per spec (`tag_concurrency_limits` on `dagster/partition` with
`applyLimitPerUniqueValue`: every run of a spec carries its name there, so two writers of one spec's
versions never interleave). Dagster's queue is served by its daemon (`make ui` runs one), which
launches a dequeued run in a code server's process: the CLI's live progress lines, its Ctrl-C
handling and its run summary would all be lost, and without a daemon nothing is dequeued at all. So
the CLI does what the daemon does, for its own run only, counting slots the way the daemon does:

1. `enqueue_run` records the run in the instance QUEUED, with the `RUN_ENQUEUED` event that
   `QueuedRunCoordinator.submit_run` writes (the UI shows it in the queue), tagged `QUEUE_TAG`;
   `dagster.yaml` gives that tag a concurrency limit of 0, so the daemon never dequeues it itself;
2. `wait_for_slot` waits until the run may start, by the daemon's own rules
   (`QueuedRunCoordinatorDaemon._get_runs_to_dequeue`): the runs queued ahead of it (other CLI runs;
   runs of the UI or the sensor only while a daemon is there to start them) start first unless a tag
   limit holds them back, each counted with the active runs (STARTING, STARTED, CANCELING) by
   Dagster's own `TagConcurrencyLimitsCounter`; the run may start when neither its spec's limit nor
   `max_concurrent_runs` is reached. It claims the slot with the `RUN_STARTING` event the daemon
   writes when it dequeues. Two CLI processes claim one at a time (a file lock in DAGSTER_HOME); the
   daemon takes no lock we can share, so a run it starts in the same instant is seen just after the
   claim, and this run goes back to the queue;
3. `execute_queued_run` runs it in this process (`dagster._core.execution.api.execute_run`, the
   function run workers call), with the same in-process executor `execute_in_process` uses.

`queue_blocker` is also the one sentence the CLI prints while it waits.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from synth_assets.paths import project_root
from synth_assets.run_control import exclusive_file_lock

if TYPE_CHECKING:
    import dagster as dg
    from dagster._core.definitions.job_base import IJob
    from dagster._core.execution.job_execution_result import JobExecutionResult
    from dagster._core.remote_origin import RemoteJobOrigin
    from dagster._utils.tags import TagConcurrencyLimitsCounter

QUEUE_TAG = "synth_assets/queued_by"  # dagster.yaml: tag_concurrency_limits {key: this, limit: 0}
# the tag that names a run's spec: Dagster sets it on every run of a partition (UI, sensor, schedule,
# backfill, CLI), and each spec is a partition; dagster.yaml limits it per unique value
SPEC_TAG = "dagster/partition"
_SLOT_LOCK = ".synth_assets_run_slot.lock"
POLL_S = 1.0
# the daemon beats every 30 s; a heartbeat older than this means no daemon dequeues UI runs now
DAEMON_ALIVE_S = 90.0
_QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
CODE_LOCATION = "synth_assets"  # workspace.yaml's location_name


class LeftQueueError(Exception):
    """The queued run left the queue without this process claiming it: `status` is its new status
    (CANCELED after a "Terminate" in the UI; anything else means a daemon dequeued it)."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} left the queue as {status}")
        self.run_id, self.status = run_id, status


@dataclass(frozen=True)
class QueuedRun:
    """A run recorded QUEUED in the instance and the in-process job that will execute it."""

    job: IJob
    run_id: str


def enqueue_run(
    instance: dg.DagsterInstance,
    job_def: dg.JobDefinition,
    partition_key: str,
    tags: Mapping[str, str],
    run_id: str,
) -> QueuedRun:
    """Record a run of `job_def` for `partition_key` as QUEUED, as `execute_in_process` would create it
    (ephemeral in-process job, the partition's tags and run config), plus `QUEUE_TAG`.
    Raises `DagsterUnknownPartitionError` for a partition the instance does not know."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.events import DagsterEvent
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.execute_in_process import merge_run_tags

    ephemeral = job_def.as_ephemeral_job(resource_defs={}, input_values={})
    with partition_loading_context(dynamic_partitions_store=instance) as context:
        ephemeral.validate_partition_key(partition_key, selected_asset_keys=None, context=context)
    run_config = (
        ephemeral.partitioned_config.get_run_config_for_partition_key(partition_key)
        if ephemeral.partitioned_config
        else {}
    )
    job = InMemoryJob(job_def=ephemeral)
    tags = {**tags, QUEUE_TAG: "synth-assets run"}
    run_tags = merge_run_tags(job_def, partition_key, tags, None, instance, run_config)
    plan = create_execution_plan(job, run_config=run_config, instance_ref=instance.get_ref())
    run = instance.create_run_for_job(
        job_def=ephemeral,
        remote_job_origin=_workspace_origin(job_def.name),  # a queued run must name its code location
        run_config=run_config,
        tags={**ephemeral.run_tags, **run_tags},
        run_id=run_id,
        execution_plan=plan,
    )
    instance.report_dagster_event(DagsterEvent.job_enqueue(run), run_id=run_id)
    return QueuedRun(job=job, run_id=run_id)


def _workspace_origin(job_name: str) -> RemoteJobOrigin:
    """Where the job lives in `workspace.yaml`'s code location (the UI links the run to it)."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name="synth_assets.definitions",
        attribute="defs",
        working_directory=str(project_root()),
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def _describe(run: dg.DagsterRun) -> str:
    spec = run.tags.get(SPEC_TAG)
    return f"run {run.run_id} of spec {spec}" if spec else f"run {run.run_id} ({run.job_name})"


def _daemon_dequeues(instance: dg.DagsterInstance) -> bool:
    """Whether a Dagster daemon is serving the queue now (it would start UI and sensor runs)."""
    beat = instance.get_daemon_heartbeats().get(_QUEUE_DAEMON)
    return beat is not None and time.time() - beat.timestamp < DAEMON_ALIVE_S


@dataclass(frozen=True)
class _Limits:
    """The instance's run queue limits as the CLI applies them to its own runs."""

    max_runs: int  # -1: no limit (Dagster's convention)
    tag_limits: list[dict[str, Any]]  # tag_concurrency_limits without the CLI's own QUEUE_TAG entry

    @classmethod
    def of(cls, instance: dg.DagsterInstance) -> _Limits:
        queue = instance.get_concurrency_config().run_queue_config
        if queue is None:  # an instance without a run queue: one run at a time, as before
            return cls(1, [])
        # QUEUE_TAG's limit of 0 keeps the daemon off CLI runs; the CLI starts them itself
        tags = [dict(limit) for limit in queue.tag_concurrency_limits or [] if limit.get("key") != QUEUE_TAG]
        return cls(queue.max_concurrent_runs, tags)

    def counter(self, runs: list[dg.DagsterRun]) -> TagConcurrencyLimitsCounter:
        """Dagster's own tag counter (the daemon's), with `runs` counted as in progress."""
        from dagster._utils.tags import TagConcurrencyLimitsCounter

        return TagConcurrencyLimitsCounter(self.tag_limits, runs)

    def full(self, runs: int) -> bool:
        return 0 <= self.max_runs <= runs


def _tag_blocker(limits: _Limits, run: dg.DagsterRun, others: list[dg.DagsterRun], state: str) -> str:
    """'<the first of `others` that counts against a tag limit of `run`> <state> (<which limit>)';
    `others` are the active runs ('is in progress') or the runs queued ahead."""
    for limit in limits.tag_limits:
        key, value = limit["key"], limit.get("value")
        for other in others:
            if key not in run.tags or key not in other.tags:
                continue
            if isinstance(value, str):
                shares = run.tags[key] == value == other.tags[key]
            else:
                per_value = bool(value and value.get("applyLimitPerUniqueValue"))
                shares = not per_value or run.tags[key] == other.tags[key]
            if shares:
                why = "one run per spec at a time" if key == SPEC_TAG else f"tag_concurrency_limits: {key}"
                return f"{_describe(other)} {state} ({why})"
    return f"a tag_concurrency_limits entry of dagster.yaml holds it back ({state})"


def _phrase(active: list[dg.DagsterRun], ahead: list[dg.DagsterRun]) -> str:
    """'run X of spec A is in progress', '... and run Y of spec B is queued ahead of this one'."""
    parts = []
    if active:
        verb = "is" if len(active) == 1 else "are"
        parts.append(f"{', '.join(_describe(r) for r in active)} {verb} in progress")
    if ahead:
        verb = "is" if len(ahead) == 1 else "are"
        parts.append(f"{', '.join(_describe(r) for r in ahead)} {verb} queued ahead of this one")
    return " and ".join(parts)


def queue_blocker(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the queued run `run_id` may not start now, or None when a slot is free for it: 'run X of
    spec Y is in progress (one run per spec at a time)' (its spec's limit), 'run X of spec Y is in
    progress' (with `max_concurrent_runs: 1`; above 1 every holder is named and the limit follows),
    or '... is queued ahead of this one'. Counted as the daemon counts (see the module docstring)."""
    import dagster as dg

    limits = _Limits.of(instance)
    active = [r for r in _active_runs(instance) if r.run_id != run_id]
    counter = limits.counter(active)
    queued = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), ascending=True)
    ahead: list[dg.DagsterRun] = []  # runs that would start before this one
    mine: dg.DagsterRun | None = None
    daemon: bool | None = None  # looked up once, only when a run of the UI or a sensor is ahead
    for record in _priority_sorted([r.dagster_run for r in queued]):
        if record.run_id == run_id:
            mine = record
            break
        if QUEUE_TAG not in record.tags:
            daemon = _daemon_dequeues(instance) if daemon is None else daemon
            if not daemon:
                continue  # nobody would start it: it does not hold this run back
        if counter.is_blocked(record):
            continue  # it waits for its own spec's run: it takes no slot before this one
        counter.update_counters_with_launched_item(record)
        ahead.append(record)
    mine = mine or instance.get_run_by_id(run_id)
    if mine is not None and counter.is_blocked(mine):
        blocker = limits.counter(active)
        if blocker.is_blocked(mine):
            return _tag_blocker(limits, mine, active, "is in progress")
        return _tag_blocker(limits, mine, ahead, "is queued ahead of this one")
    if not limits.full(len(active) + len(ahead)):
        return None
    if limits.max_runs == 1:  # the one holder, as before the limit was raised
        return _phrase(active[:1], [] if active else ahead[:1])
    return f"{_phrase(active, ahead)} (max_concurrent_runs: {limits.max_runs})"


def _active_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The runs that hold a slot (STARTING, STARTED, CANCELING: the daemon's count), oldest first."""
    import dagster as dg
    from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES

    return list(instance.get_runs(dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES), ascending=True))


def _priority_sorted(runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
    """The daemon's order: higher `dagster/priority` first, then oldest first (a stable sort)."""
    from dagster._core.storage.tags import PRIORITY_TAG

    def priority(run: dg.DagsterRun) -> int:
        try:
            return int(run.tags.get(PRIORITY_TAG, "0"))
        except ValueError:
            return 0

    return sorted(runs, key=priority, reverse=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def wait_for_slot(
    instance: dg.DagsterInstance, home: Path, run_id: str, on_wait: Callable[[str], None]
) -> None:
    """Block until the queued run `run_id` may start, then mark it STARTING (claimed). `on_wait` gets
    each new reason to wait, once. SIGINT and SIGTERM raise KeyboardInterrupt (the run is still
    QUEUED then: the caller cancels it). Raises `LeftQueueError` when the run leaves the queue
    some other way (canceled in the UI)."""
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType

    main = threading.current_thread() is threading.main_thread()  # only there may handlers change
    # both signals, as Dagster handles them once the run executes: a shell starts a background
    # `synth-assets run &` with SIGINT ignored, and a Ctrl-C or `kill -INT` must still stop it here
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, _raise_interrupt) for number in stops} if main else {}
    said = None
    try:
        while True:
            with exclusive_file_lock(home / _SLOT_LOCK):
                run = instance.get_run_by_id(run_id)
                if run is None or run.status != dg.DagsterRunStatus.QUEUED:
                    raise LeftQueueError(run_id, run.status.value if run else "deleted")
                reason = queue_blocker(instance, run_id)
                if reason is None:
                    starting = DagsterEvent(
                        event_type_value=DagsterEventType.RUN_STARTING.value, job_name=run.job_name
                    )
                    instance.report_dagster_event(starting, run_id=run_id)
            if reason is None:
                reason = _collision(instance, run_id)
                if reason is None:
                    return
                # a run the daemon started at the same instant: it keeps the slot, this one waits again
                instance.report_dagster_event(DagsterEvent.job_enqueue(run), run_id=run_id)
            if reason != said:
                on_wait(reason)
                said = reason
            time.sleep(POLL_S)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _collision(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """After a claim: whether the active runs now break a limit with this one among them (a run the
    daemon started in the same instant), and which run then keeps the slot."""
    limits = _Limits.of(instance)
    active = _active_runs(instance)
    mine = next((r for r in active if r.run_id == run_id), None)
    others = [r for r in active if r.run_id != run_id]
    if mine is not None and limits.counter(others).is_blocked(mine):
        return _tag_blocker(limits, mine, others, "is in progress")
    if not limits.full(len(others)):
        return None
    return _phrase(others[:1], [])


def execute_queued_run(instance: dg.DagsterInstance, queued: QueuedRun) -> JobExecutionResult:
    """Execute the claimed run in this process; the result carries every event of the run."""
    from dagster._core.execution.api import execute_run

    run = instance.get_run_by_id(queued.run_id)
    assert run is not None, queued.run_id
    return execute_run(queued.job, run, instance, raise_on_error=False)
