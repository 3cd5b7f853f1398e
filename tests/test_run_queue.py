"""`synth-assets run` goes through the instance's run queue (issue 12, section 3; issue 11): runs of
different specs run at once up to `max_concurrent_runs` (2), runs of one spec take turns (a tag limit
per spec); while a run may not start, a CLI run waits QUEUED, says why in one line, then claims its
slot and runs, counting slots exactly as Dagster's daemon does; a stop while it waits cancels it; the
daemon never dequeues it. Real Dagster instances, real subprocesses holding the slot, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import (
    LoopbackHandler,
    LoopbackServer,
    completion_payload,
    start_cli_run,
    write_openai_spec,
    write_tiny_spec,
)

from synth_assets.run_queue import (
    QUEUE_TAG,
    SPEC_TAG,
    enqueue_run,
    execute_queued_run,
    queue_blocker,
    wait_for_slot,
)
from synth_assets.storage import ROW_STAGES, Stage, Warehouse

ROOT = Path(__file__).resolve().parent.parent

# a run that holds the slot (as a UI or sensor run would) until the file argv[2] appears
HOLDING_RUN = """
    import sys, time
    from pathlib import Path
    import dagster as dg

    @dg.op
    def hold() -> None:
        print("STARTED", flush=True)
        while not Path(sys.argv[2]).exists():
            time.sleep(0.1)

    @dg.job
    def holder() -> None:
        hold()

    holder.execute_in_process(instance=dg.DagsterInstance.get(), run_id=sys.argv[1])
"""
HOLDER_ID = "0b7d5b2e-0000-4000-8000-00000000beef"


def _home(tmp_path: Path, max_concurrent_runs: int | None = None, queue_tag: bool = True) -> Path:
    """A Dagster home with the repo's own instance config (two runs at once, one per spec, the CLI's
    queue tag), or with another `max_concurrent_runs`, or without the queue tag's entry."""
    home = tmp_path / "home"
    home.mkdir()
    if max_concurrent_runs is None and queue_tag:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        return home
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    runs = config["concurrency"]["runs"]
    if max_concurrent_runs is not None:
        runs["max_concurrent_runs"] = max_concurrent_runs
    if not queue_tag:
        runs["tag_concurrency_limits"] = [e for e in runs["tag_concurrency_limits"] if e["key"] != QUEUE_TAG]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def _env(home: Path, database: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "SYNTH_ASSETS_DB": str(database)}


@pytest.fixture
def holding_run(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(home, release file): a real process whose run is STARTED in `home` until the file exists; the
    home takes one run at a time (`max_concurrent_runs: 1`), so the holder holds the machine's slot."""
    home = _home(tmp_path, max_concurrent_runs=1)
    release = tmp_path / "release"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDING_RUN), HOLDER_ID, str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(home, tmp_path / "unused.duckdb"),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "STARTED"
        yield home, release
    finally:
        release.touch()
        process.wait(timeout=60)


specs = dg.DynamicPartitionsDefinition(name="specs")


@dg.asset(partitions_def=specs)
def tiny_stage() -> None:
    """One partitioned asset: a stand-in for the five stages."""


tiny_job = dg.Definitions(
    assets=[tiny_stage], jobs=[dg.define_asset_job("tiny_job", selection=[tiny_stage])]
).resolve_job_def("tiny_job")


def test_the_instance_config_runs_two_specs_at_once_one_run_per_spec_and_keeps_the_daemon_off_cli_runs() -> (
    None
):
    runs = yaml.safe_load((ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 2  # was 1 while the warehouse took one writer at a time
    per_spec = {"key": SPEC_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert per_spec in runs["tag_concurrency_limits"]
    assert {"key": QUEUE_TAG, "limit": 0} in runs["tag_concurrency_limits"]


def test_a_queued_run_waits_for_the_slot_then_claims_it_and_the_next_waits_behind_it(
    holding_run: tuple[Path, Path],
) -> None:
    home, release = holding_run
    first, second = "0b7d5b2e-0000-4000-8000-000000000001", "0b7d5b2e-0000-4000-8000-000000000002"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("specs", ["alpha", "beta"])
        queued = enqueue_run(instance, tiny_job, "alpha", {}, first)
        enqueue_run(instance, tiny_job, "beta", {}, second)
        run = instance.get_run_by_id(first)
        assert run.status == dg.DagsterRunStatus.QUEUED  # what the UI shows
        assert run.tags["dagster/partition"] == "alpha" and run.tags[QUEUE_TAG]
        assert queue_blocker(instance, first) == f"run {HOLDER_ID} (holder) is in progress"

        reasons: list[str] = []
        waiter = threading.Thread(target=wait_for_slot, args=(instance, home, first, reasons.append))
        waiter.start()
        time.sleep(3)
        assert waiter.is_alive()  # the holder still has the slot
        assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.QUEUED
        assert reasons == [f"run {HOLDER_ID} (holder) is in progress"]

        release.touch()
        waiter.join(timeout=60)
        assert not waiter.is_alive()
        assert instance.get_run_by_id(HOLDER_ID).status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.STARTING  # claimed
        assert queue_blocker(instance, second) == f"run {first} of spec alpha is in progress"

        result = execute_queued_run(instance, queued)
        assert result.success
        assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.SUCCESS
        assert queue_blocker(instance, second) is None


def _ids(*names: str) -> dict[str, str]:
    return {name: f"0b7d5b2e-0000-4000-8000-{index:012d}" for index, name in enumerate(names, start=100)}


def test_runs_of_different_specs_start_together_and_a_run_of_the_same_spec_waits(tmp_path: Path) -> None:
    """The repo's config: two runs at once, one per spec. alpha and beta start together; a second run
    of alpha waits for the first (its spec's limit), gamma for a free slot (the machine's limit)."""
    home = _home(tmp_path)
    ids = _ids("alpha", "beta", "alpha2", "gamma")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("specs", ["alpha", "beta", "gamma"])
        queued = {
            name: enqueue_run(instance, tiny_job, name.rstrip("2"), {}, run_id)
            for name, run_id in ids.items()
        }
        per_spec = " (one run per spec at a time)"
        slots = " (max_concurrent_runs: 2)"
        alpha, beta = f"run {ids['alpha']} of spec alpha", f"run {ids['beta']} of spec beta"
        assert queue_blocker(instance, ids["alpha"]) is None
        assert queue_blocker(instance, ids["beta"]) is None  # a different spec: no wait for alpha
        assert queue_blocker(instance, ids["alpha2"]) == f"{alpha} is queued ahead of this one{per_spec}"
        # alpha2 waits for alpha and so takes no slot; alpha and beta take both
        assert queue_blocker(instance, ids["gamma"]) == f"{alpha}, {beta} are queued ahead of this one{slots}"

        for name in ("alpha", "beta"):  # both claim at once, no wait
            wait_for_slot(instance, home, ids[name], lambda reason: pytest.fail(reason))
            assert instance.get_run_by_id(ids[name]).status == dg.DagsterRunStatus.STARTING
        assert queue_blocker(instance, ids["alpha2"]) == f"{alpha} is in progress{per_spec}"
        assert queue_blocker(instance, ids["gamma"]) == f"{alpha}, {beta} are in progress{slots}"

        assert execute_queued_run(instance, queued["alpha"]).success
        assert queue_blocker(instance, ids["alpha2"]) is None  # alpha is done: its spec's turn is free
        alpha2 = f"run {ids['alpha2']} of spec alpha"
        assert (
            queue_blocker(instance, ids["gamma"])
            == f"{beta} is in progress and {alpha2} is queued ahead of this one{slots}"
        )


def test_the_cli_counts_slots_as_the_dagster_daemon_does(tmp_path: Path) -> None:
    """The runs the CLI would start now are exactly the runs Dagster's own queue daemon would dequeue
    now from the same queue (its `_get_runs_to_dequeue`, with the repo's limits; the queue tag's entry
    is left out of the daemon's config, as it exists only to keep the daemon off CLI runs)."""
    from dagster._core.storage.tags import PRIORITY_TAG
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    home = _home(tmp_path, queue_tag=False)
    names = ["alpha", "alpha2", "beta", "gamma", "delta"]
    ids = _ids(*names)
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("specs", sorted({n.rstrip("2") for n in names}))

        def agree() -> set[str]:
            config = instance.get_concurrency_config()
            dequeued = {run.run_id for run in daemon._get_runs_to_dequeue(instance, config, None)}
            waiting = [
                i for i in ids.values() if instance.get_run_by_id(i).status == dg.DagsterRunStatus.QUEUED
            ]
            free = {run_id for run_id in waiting if queue_blocker(instance, run_id) is None}
            assert free == dequeued
            return free

        for name, run_id in ids.items():
            tags = {PRIORITY_TAG: "5"} if name == "delta" else {}  # the daemon's priority order too
            enqueue_run(instance, tiny_job, name.rstrip("2"), tags, run_id)
        assert agree() == {ids["delta"], ids["alpha"]}  # delta jumps the queue
        wait_for_slot(instance, home, ids["alpha"], lambda reason: pytest.fail(reason))
        assert agree() == {ids["delta"]}  # one slot left; alpha2 waits for alpha
        wait_for_slot(instance, home, ids["delta"], lambda reason: pytest.fail(reason))
        assert agree() == set()  # both slots taken
        instance.report_run_canceled(instance.get_run_by_id(ids["delta"]))
        assert agree() == {ids["beta"]}  # alpha2 still waits for alpha; beta is next
        instance.report_run_canceled(instance.get_run_by_id(ids["alpha"]))
        assert agree() == {ids["alpha2"], ids["beta"]}
        daemon.__exit__(None, None, None)


def test_a_cli_run_queued_behind_another_is_ahead_of_a_later_one(tmp_path: Path) -> None:
    """Order: the second CLI run of a spec waits for the first even while no run is active yet."""
    home = _home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("specs", ["alpha"])
        enqueue_run(instance, tiny_job, "alpha", {}, "0b7d5b2e-0000-4000-8000-000000000011")
        enqueue_run(instance, tiny_job, "alpha", {}, "0b7d5b2e-0000-4000-8000-000000000012")
        assert queue_blocker(instance, "0b7d5b2e-0000-4000-8000-000000000011") is None
        assert (
            queue_blocker(instance, "0b7d5b2e-0000-4000-8000-000000000012")
            == "run 0b7d5b2e-0000-4000-8000-000000000011 of spec alpha is queued ahead of this one"
            " (one run per spec at a time)"  # the reason since one spec's runs take turns by their own limit
        )


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "Dagster UI Terminate"])
def test_the_cli_says_why_it_waits_and_a_stop_while_queued_cancels_the_run(
    holding_run: tuple[Path, Path], tmp_path: Path, stop: str
) -> None:
    home, _ = holding_run
    spec_path = write_openai_spec(tmp_path / "specs", "http://127.0.0.1:9/v1")  # never called
    process = start_cli_run(spec_path, _env(home, tmp_path / "w.duckdb"))
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("waiting:"):
            break
    assert seen[-1] == f"waiting: run {HOLDER_ID} (holder) is in progress\n", "".join(seen)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(tags={QUEUE_TAG: "synth-assets run"}))
        assert run.status == dg.DagsterRunStatus.QUEUED
        assert run.tags["dagster/partition"] == "tiny_reviews"
        if stop.startswith("SIG"):
            process.send_signal(getattr(signal, stop))
        else:  # what the UI's Terminate button calls for a queued run
            assert instance.run_coordinator.cancel_run(run.run_id)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 130, rest
        assert (
            f"error: stopped by {stop} while waiting in the run queue: run {run.run_id} recorded as CANCELED"
            in rest
        )
        assert "Traceback" not in rest
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED


def _slow_answers(handler: LoopbackHandler, body: dict, number: int) -> None:
    """A distinct review per prompt, slowly: the first run holds the slot for a while."""
    time.sleep(0.5)
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:10]
    handler.send(200, completion_payload(f"This product number {digest} works well, I would buy it again."))


class ReadLoop(threading.Thread):
    """A reader during the runs, as the UI or `synth-assets lineage` would be: named reads through
    `Warehouse` in a bounded loop (every 0.2 s, at most `limit` rounds) until `stop`; every exception is
    a failed read."""

    def __init__(self, store: Warehouse, specs: list[str], limit: int = 1000) -> None:
        super().__init__(daemon=True)
        self.store, self.specs, self.limit = store, specs, limit
        self.reads = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        for _ in range(self.limit):
            for spec in self.specs:
                try:
                    self.store.row_count(Stage.GENERATED_SAMPLES, spec, read_only=True)
                    self.store.versions(Stage.SEED_DATA, spec, read_only=True)
                    self.reads += 1
                except Exception as exc:  # what a reader would have shown as an error
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            if self.done.wait(0.2):
                return

    def stop(self) -> ReadLoop:
        self.done.set()
        self.join(timeout=60)
        return self


@pytest.mark.slow  # three full CLI runs against a loopback server (curation and evaluation included)
def test_two_specs_run_at_once_a_second_run_of_one_spec_waits_and_readers_never_fail(
    tmp_path: Path, loopback: Callable[..., LoopbackServer]
) -> None:
    """Issue 11, with real processes: two `synth-assets run` of two specs at once on one Dagster home
    and warehouse both finish, at the same time, without a lock error; a second run of one of them
    waits for the first and then runs (one writer per spec); a reader loop meanwhile fails no read.
    The loopback server's answer is a function of the prompt, so every run of these two specs writes
    the same rows: the second run of tiny_reviews, which starts after the first has ended, is the
    one-after-the-other reference the concurrent runs must equal."""
    server = loopback(_slow_answers)
    spec_path = write_openai_spec(tmp_path / "specs", server.url, num_samples=8)
    other_spec = write_openai_spec(
        tmp_path / "specs_b", server.url, num_samples=8, replacements={"name: tiny_reviews": "name: tiny_b"}
    )
    home, database = _home(tmp_path), tmp_path / "w.duckdb"
    env = {**_env(home, database), "PYTHONUNBUFFERED": "1"}
    first = start_cli_run(spec_path, env)
    other = start_cli_run(other_spec, env)  # another spec, at the same time
    reader = ReadLoop(Warehouse(database), ["tiny_reviews", "tiny_b"])
    assert first.stdout is not None
    for line in first.stdout:  # the first run holds its spec's slot
        if line.startswith("materializing") and not reader.is_alive():
            reader.start()  # the warehouse file and its tables exist from here on
        if "generated" in line:
            break
    second = start_cli_run(spec_path, env)
    out_second, _ = second.communicate(timeout=900)
    out_other, _ = other.communicate(timeout=900)
    out_first, _ = first.communicate(timeout=900)
    reader.stop()
    assert first.returncode == 0, out_first[-3000:]
    assert second.returncode == 0, out_second[-3000:]
    assert other.returncode == 0, out_other[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = sorted(instance.get_run_records(), key=lambda record: record.create_timestamp)
        older, newer = [r for r in records if r.dagster_run.tags[SPEC_TAG] == "tiny_reviews"]
        (alongside,) = [r for r in records if r.dagster_run.tags[SPEC_TAG] == "tiny_b"]
        assert f"waiting: run {older.dagster_run.run_id} of spec tiny_reviews is in progress" in out_second
        assert older.end_time is not None and newer.start_time is not None
        assert newer.start_time >= older.end_time  # never two at once of one spec
        assert alongside.start_time is not None and alongside.end_time is not None
        # the other spec ran while the first run did, and never waited
        assert alongside.start_time < older.end_time and older.start_time < alongside.end_time
        assert "waiting:" not in out_other and "waiting:" not in out_first
    for output in (out_first, out_second, out_other):
        assert "lock" not in output.lower() and "Traceback" not in output
    store = Warehouse(database)
    versions = {  # (spec, run id) of each run's versions; the last one ran alone after its spec's first
        "concurrent": ("tiny_reviews", older.dagster_run.run_id),
        "alongside": ("tiny_b", alongside.dagster_run.run_id),
        "after": ("tiny_reviews", newer.dagster_run.run_id),
    }
    for stage in ROW_STAGES:
        counts = {
            name: store.row_count(stage, *version, read_only=True) for name, version in versions.items()
        }
        assert len(set(counts.values())) == 1, (stage, counts)
    texts = [
        sorted(store.read_version(Stage.GENERATED_SAMPLES, *version, read_only=True)["text"])
        for version in versions.values()
    ]
    assert len(texts[0]) == 8 and texts[0] == texts[1] == texts[2]  # nothing lost, nothing mixed in
    assert reader.failures == [] and reader.reads >= 20, (reader.reads, reader.failures[:3])


def test_a_backfill_of_the_specs_makes_one_run_per_spec_each_carrying_its_spec_tag() -> None:
    # what Dagster's asset backfill daemon (and declarative automation) requests for the five stages
    # over two specs: one run per spec with `dagster/partition`, which the per-spec limit counts; any
    # backfill_policy (single_run, even multi_run(1)) would make range runs without that tag instead
    from dagster._core.definitions.automation_tick_evaluation_context import (
        build_run_requests_with_backfill_policies,
    )
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG

    from synth_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    stages = [key for key in graph.materializable_asset_keys if graph.get(key).partitions_def is not None]
    five = ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report")
    assert {dg.AssetKey(stage) for stage in five} <= set(stages)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spec", ["alpha", "beta"])
        wanted = [AssetKeyPartitionKey(key, spec) for key in stages for spec in ("alpha", "beta")]
        requests = build_run_requests_with_backfill_policies(wanted, graph, instance)
    assert sorted(request.partition_key for request in requests) == ["alpha", "beta"]
    for request in requests:
        assert ASSET_PARTITION_RANGE_START_TAG not in request.tags
        assert set(request.asset_selection or []) == set(stages)


@pytest.mark.parametrize("specs", [["tiny_reviews"], ["tiny_reviews", "tiny_b"]])
def test_a_run_over_a_range_of_specs_is_refused_before_it_writes(tmp_path: Path, specs: list[str]) -> None:
    # a run tagged with a partition range (single-run backfill, `dagster asset materialize
    # --partition-range`) has no dagster/partition, so the one-run-per-spec limit cannot hold it back:
    # the first stage refuses it in one line and nothing reaches the warehouse
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from synth_assets.definitions import build_definitions

    spec_dir = tmp_path / "specs"
    write_tiny_spec(spec_dir)
    database = tmp_path / "w.ducklake"
    definitions = build_definitions(database=str(database), specs_dir=str(spec_dir))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spec", ["tiny_reviews", "tiny_b"])
        result = definitions.resolve_job_def("synth_refresh_job").execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: specs[0], ASSET_PARTITION_RANGE_END_TAG: specs[-1]},
            asset_selection=[dg.AssetKey("seed_data")],
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = [event for event in result.all_events if event.is_step_failure]
        message = failure.step_failure_data.error.message.strip()
        assert message == (
            f"dagster._core.definitions.events.Failure: run {result.run_id} covers the spec range "
            f"{specs[0]}...{specs[-1]}: each spec materializes in a run of its own (dagster/partition), so "
            "that one run per spec holds; launch one run per spec (a backfill of these assets does)"
        )
    assert not database.exists() or Warehouse(database).versions(Stage.SEED_DATA, "tiny_reviews") == []
