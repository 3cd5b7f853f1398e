"""Run control for `synth-assets run`: one instance per home even when two runs start at once, dead
runs marked failed so the queue moves, and Ctrl-C / SIGTERM recorded as a cancellation.

How a stop works. Inside a step Dagster turns SIGINT (and SIGTERM, which it maps to SIGINT) into a
`DagsterExecutionInterruptedError` raised at the next Python bytecode of the main thread, so a stop
takes effect within about a second, even mid-batch: the batch in flight is dropped (its calls were
never written: every write is one transaction) and every batch finished before it is already in
`llm_cache`. What was wrong: Dagster's in-process execution records such a run as FAILURE ("interrupted
unexpectedly"), because nothing marks it CANCELING first. `StopWatcher` does: it learns of the signal
through `signal.set_wakeup_fd` (CPython writes the signal number there before any handler runs, so
Dagster's handlers stay in place) and reports the run CANCELING from a helper thread; Dagster then
closes it as CANCELED itself. `finish_stopped_run` is the fallback when the watcher could not see the
signal (e.g. an asyncio loop had the wakeup fd at that moment). A "Terminate" in the Dagster UI
marks the run CANCELING; the watcher sees that within a second and interrupts the run the same way.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

PID_TAG = "synth_assets/pid"
HOST_TAG = "synth_assets/host"
PROCESS_START_TAG = "synth_assets/process_start"  # /proc start time: a reused pid is another process
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_INIT_LOCK = ".synth_assets_instance.lock"
# how often a running CLI run looks for a "Terminate" from the UI
TERMINATE_POLL_S = 1.0


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), None when
    no such process exists (or /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Run tags that let a later process tell whether this one is still alive."""
    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        PROCESS_START_TAG: _process_start(os.getpid()) or "",
    }


@contextmanager
def exclusive_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block, waiting for any other
    process that holds it; released on exit, also when the process dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    # SQLite run storage creates its tables on first open; two processes doing it in the same second
    # on a new DAGSTER_HOME race, and one dies with "table runs already exists".
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(home / _INIT_LOCK):
        yield


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance of `home` (= DAGSTER_HOME), its storage created by one process at a time."""
    import dagster as dg

    with _home_lock(home):
        instance = dg.DagsterInstance.get()
        instance.get_runs_count()  # touch the run storage while the lock is held
    return instance


def add_partition(instance: dg.DagsterInstance, home: Path, partitions_def_name: str, key: str) -> None:
    """Add `key` to the dynamic partitions `partitions_def_name` of `instance` (= DAGSTER_HOME `home`)
    unless it is there. One process at a time: Dagster looks the key up, then inserts it, so two runs
    of a new spec starting together both insert it and the second dies on the unique index
    (IntegrityError; 46 of 80 adds failed with 4 threads x 20 new keys here, 0 under this lock)."""
    if instance.has_dynamic_partition(partitions_def_name, key):
        return
    with _home_lock(home):
        if not instance.has_dynamic_partition(partitions_def_name, key):
            instance.add_dynamic_partitions(partitions_def_name, [key])


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every run still STARTED/STARTING/CANCELING whose `synth-assets run` process on this
    host is gone (SIGKILL, the OOM killer, a lost laptop lid): such a run would hold its slot and its
    spec's turn forever (dagster.yaml's run limits), keeping later runs QUEUED. Such a run still QUEUED
    (its process died while waiting for a slot) is marked canceled: it would hold back later CLI runs.
    Returns the run ids
    marked. Runs of other hosts and runs without our tags (UI runs: Dagster's own run monitoring
    covers those) are left alone."""
    import dagster as dg

    host = socket.gethostname()
    statuses = [
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.QUEUED,
    ]
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=statuses)):
        tags = run.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        pid = int(tags[PID_TAG])
        if pid == os.getpid():
            continue
        started = _process_start(pid)
        if started is not None and started == tags.get(PROCESS_START_TAG, started):
            continue  # still running
        message = (
            f"process {pid} that ran this run is gone (killed, e.g. SIGKILL or out of memory); "
            "marked failed so queued runs can start. Finished LLM calls are in llm_cache: rerun to resume."
        )
        if run.status == dg.DagsterRunStatus.QUEUED:
            instance.report_run_canceled(run, message=f"process {pid} waiting for this run's slot is gone")
        elif run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=message)
        else:
            instance.report_run_failed(run, message=message)
        reaped.append(run.run_id)
    return reaped


class StopWatcher:
    """While active (main thread only), a SIGINT or SIGTERM marks `run_id` CANCELING in `instance`, so
    Dagster records the interrupted run as CANCELED. `signal_name` is the signal seen, if any."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self.instance, self.run_id = instance, run_id
        self.signal_name: str | None = None
        self._read_fd = self._write_fd = -1
        self._previous_fd = -1
        self._thread: threading.Thread | None = None
        self._closing = False
        self._started = False  # the run was seen STARTING or STARTED (out of the queue)

    def __enter__(self) -> StopWatcher:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="synth-assets-stop-watcher", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        last_poll = 0.0
        while not self._closing:
            ready, _, _ = select.select([self._read_fd], [], [], 0.2)
            if not ready:
                if time.monotonic() - last_poll >= TERMINATE_POLL_S:
                    last_poll = time.monotonic()
                    self._stop_if_terminated()
                continue
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            for number in data:
                if number in STOP_SIGNALS and self.signal_name is None:
                    self.signal_name = signal.Signals(number).name
                    self._mark_canceling()

    def _stop_if_terminated(self) -> None:
        """The UI's "Terminate" on a run of this process only marks it CANCELING (Dagster's launcher
        has no process of ours to signal): turn that into the SIGINT a terminal's Ctrl-C would send."""
        import dagster as dg

        try:
            run = self.instance.get_run_by_id(self.run_id)
        except Exception:  # the instance is busy: look again next time
            return
        if run is None:
            return
        if run.status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
            self._started = True
        # a run canceled while still QUEUED never started: the CLI's queue wait sees that itself
        stopping = run.status == dg.DagsterRunStatus.CANCELING or (
            run.status == dg.DagsterRunStatus.CANCELED and self._started
        )
        if stopping and self.signal_name is None:
            self.signal_name = "Dagster UI Terminate"
            os.kill(os.getpid(), signal.SIGINT)

    def _mark_canceling(self) -> None:
        import dagster as dg

        try:
            run = self.instance.get_run_by_id(self.run_id)
            if run is not None and run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
                self.instance.report_run_canceling(run, message=f"{self.signal_name} received: stopping")
        except Exception:  # the fallback in finish_stopped_run still records the cancellation
            pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        self._closing = True
        self._thread.join(timeout=2)
        os.close(self._read_fd)
        os.close(self._write_fd)


def was_interrupted(result: dg.JobExecutionResult | dg.ExecuteInProcessResult) -> bool:
    """Whether a step of the run failed because the process was asked to stop (SIGINT/SIGTERM)."""
    stopped = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}
    return any(
        event.is_step_failure
        and event.step_failure_data is not None
        and event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name in stopped
        for event in result.all_events
    )


def finish_stopped_run(instance: dg.DagsterInstance, run_id: str, why: str) -> str:
    """Make sure an interrupted run ends CANCELED (not FAILURE) in the instance; its final status."""
    import dagster as dg

    run = instance.get_run_by_id(run_id)
    if run is None:
        return "unknown"
    if run.status != dg.DagsterRunStatus.CANCELED:
        instance.report_run_canceled(run, message=f"stopped on request ({why})")
        run = instance.get_run_by_id(run_id) or run
    return run.status.value
