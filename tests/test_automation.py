"""Declarative automation and staleness on the real wiring (`definitions._wire_stage`, the real
`spec_inputs` observation) with stand-in stage bodies, so no model runs:

- a full run of the chain triggers nothing afterwards (no surprise runs);
- a partial materialization (seed_data alone) completes the chain in one tick;
- never past a failed blocking check;
- a changed spec makes all five stages stale, an unchanged one none, and the spec observation itself
  triggers no automation (the spec sensor launches the full run instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from conftest import free_port, write_tiny_spec
from dagster._utils.test.data_versions import get_stale_status_resolver

from synth_assets.definitions import _wire_stage
from synth_assets.defs.automation import (
    DOWNSTREAM_STAGES,
    auto_runs,
    daily_refresh,
    spec_change_sensor,
)
from synth_assets.defs.common import spec_partitions
from synth_assets.defs.resources import SPEC_PATH_TAG, SpecCatalog, WarehouseResource, scan_specs
from synth_assets.defs.seed_data import spec_inputs
from synth_assets.seed import load_seed_data, spec_inputs_digest
from synth_assets.spec import load_spec
from synth_assets.storage import Warehouse

SPEC = "tiny_reviews"
STAGES = ["seed_data", *DOWNSTREAM_STAGES]
GATES = {"generated_samples", "curated_set"}
gate_verdicts = {"generated_samples": True, "curated_set": True}


def _stand_in(name: str, upstream: str | None) -> dg.AssetsDefinition:
    """A stage with the real key, partitions, dependency and blocking gate, but a trivial body."""
    checks = [dg.AssetCheckSpec("gx_gate", asset=name, blocking=True)] if name in GATES else []

    # seed_data declares spec_inputs itself, as the real one does; the others get it from _wire_stage
    @dg.asset(
        name=name,
        partitions_def=spec_partitions,
        deps=[upstream] if upstream else [spec_inputs],
        check_specs=checks,
        code_version="1",
    )
    def stage() -> dg.MaterializeResult:
        results = [dg.AssetCheckResult(check_name="gx_gate", passed=gate_verdicts[name])] if checks else []
        return dg.MaterializeResult(check_results=results, data_version=dg.DataVersion(f"{name}-v1"))

    return stage


@dataclass
class Env:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    spec_path: Path
    cursor: object = None

    def run(self, *stages: str, observe: bool = True) -> dg.ExecuteInProcessResult:
        keys = [dg.AssetKey(s) for s in stages] + ([spec_inputs.key] if observe else [])
        job = dg.define_asset_job("stages", selection=dg.AssetSelection.assets(*keys))
        defs = dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job]))
        return defs.resolve_job_def("stages").execute_in_process(
            instance=self.instance, partition_key=SPEC, raise_on_error=False
        )

    def tick(self) -> dict[str, bool]:
        """One automation tick: which stages it would request for the spec's partition."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {
            stage: SPEC in result.get_requested_partitions(dg.AssetKey(stage))
            for stage in DOWNSTREAM_STAGES
            if result.get_num_requested(dg.AssetKey(stage))
        }

    def stale(self) -> dict[str, str]:
        assets = [spec_inputs, *self.defs.assets]  # type: ignore[list-item]
        resolver = get_stale_status_resolver(self.instance, assets)
        return {stage: resolver.get_status(dg.AssetKey(stage), SPEC).value for stage in STAGES}

    def observe_spec(self, digest: str) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetObservation(spec_inputs.key, partition=SPEC, tags={"dagster/data_version": digest})
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    spec_path = write_tiny_spec(tmp_path / "specs")
    stages = [_wire_stage(_stand_in(name, up)) for name, up in zip(STAGES, [None, *STAGES[:-1]], strict=True)]
    defs = dg.Definitions(
        assets=[spec_inputs, *stages],
        resources={"specs": SpecCatalog(specs_dir=str(spec_path.parent))},
        executor=dg.in_process_executor,
    )
    gate_verdicts.update(generated_samples=True, curated_set=True)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(spec_partitions.name, [SPEC])
        environment = Env(instance, defs, spec_path)
        assert environment.tick() == {}  # the first tick only records the starting point
        yield environment


def test_full_run_triggers_nothing_afterwards(env: Env) -> None:
    assert env.run(*STAGES).success
    assert env.tick() == {}
    assert env.tick() == {}
    assert set(env.stale().values()) == {"FRESH"}


def test_partial_materialization_completes_the_chain_in_one_tick(env: Env) -> None:
    assert env.run(*STAGES).success
    env.tick()
    assert env.run("seed_data", observe=False).success
    assert env.tick() == dict.fromkeys(DOWNSTREAM_STAGES, True)


def test_never_past_a_failed_blocking_check(env: Env) -> None:
    assert env.run(*STAGES).success
    env.tick()
    gate_verdicts["generated_samples"] = False
    failed = env.run("generated_samples", observe=False)
    assert not failed.success  # the blocking check failed inside the run
    assert env.tick() == {}  # curated_set and evaluation_report stay where they were
    gate_verdicts["generated_samples"] = True
    assert env.run("generated_samples", observe=False).success
    assert env.tick() == {"curated_set": True, "evaluation_report": True}


def test_spec_change_makes_every_stage_stale_and_triggers_no_automation(env: Env) -> None:
    assert env.run(*STAGES).success
    env.tick()
    observed = env.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=spec_inputs.key, asset_partitions=[SPEC]), limit=1
    ).records[0]
    digest = observed.asset_observation.tags["dagster/data_version"]
    env.observe_spec(digest)  # the same content observed again: nothing is stale
    assert set(env.stale().values()) == {"FRESH"}
    env.observe_spec("a-new-digest")  # what spec_change_sensor records when the file changed
    assert set(env.stale().values()) == {"STALE"}
    assert env.tick() == {}  # the sensor's full run handles a spec change, not automation
    assert env.run(*STAGES).success  # the refresh observes the file as it is now (unchanged here)...
    assert set(env.stale().values()) == {"FRESH"}  # ...and every stage consumed that version


def test_sensor_records_the_new_digest_for_known_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path = write_tiny_spec(tmp_path / "specs")
    monkeypatch.setenv("SYNTH_ASSETS_SPECS_DIR", str(spec_path.parent))
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        first = sensor.tick()
        assert first.asset_events == []  # a new spec: its partition is added, its run observes it
        instance.add_dynamic_partitions(spec_partitions.name, [SPEC])
        spec_path.write_text(spec_path.read_text().replace("random_seed: 7", "random_seed: 8"))
        second = sensor.tick()
        assert [r.partition_key for r in second.run_requests] == [SPEC]
        [observation] = second.asset_events
        assert observation.asset_key == spec_inputs.key and observation.partition == SPEC
        assert observation.tags["dagster/data_version"] == json.loads(second.cursor)["digests"][SPEC]


# --- what starts when (issue 12): opening the UI starts nothing; hosted backends opt in ---------------

NOON = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _schedule_context(instance: dg.DagsterInstance) -> dg.ScheduleEvaluationContext:
    """The daily schedule's tick at noon, with the specs folder of SYNTH_ASSETS_SPECS_DIR (use it in a
    `with`: a context with resources holds the instance's state storage until it is closed)."""
    return dg.build_schedule_context(
        instance=instance, scheduled_execution_time=NOON, resources={"specs": SpecCatalog()}
    )


HOSTED = {"generation:\n": "generation:\n  backend: openai\n  base_url: http://127.0.0.1:9/v1\n"}


@dataclass
class SpecSensor:
    """`spec_change_sensor` evaluated tick after tick on a real instance, cursor carried over."""

    instance: dg.DagsterInstance
    database: Path
    cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        # SpecCatalog(): the specs folder of SYNTH_ASSETS_SPECS_DIR, as the tests set it
        resources = {"warehouse": WarehouseResource(database=str(self.database)), "specs": SpecCatalog()}
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=resources)
        result = spec_change_sensor(context)
        self.cursor = result.cursor
        if result.dynamic_partitions_requests:  # what the daemon does with the request
            self.instance.add_dynamic_partitions(
                spec_partitions.name, list(result.dynamic_partitions_requests[0].partition_keys)
            )
        return result

    def requested(self) -> list[str]:
        return [r.partition_key for r in self.tick().run_requests]


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def _store_seed_rows(database: Path, spec_path: Path) -> None:
    """The spec's seed_data in the warehouse, as a run from another Dagster instance left it."""
    spec = load_spec(spec_path)
    Warehouse(database).write_version(
        "seed_data", spec.name, "earlier-run", load_seed_data(spec), promote=True
    )


@pytest.fixture
def specs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    monkeypatch.setenv("SYNTH_ASSETS_SPECS_DIR", str(folder))
    return folder


def test_first_tick_only_records_and_later_changes_run(specs_dir: Path, tmp_path: Path) -> None:
    spec_path = write_tiny_spec(specs_dir)
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        first = sensor.tick()
        assert first.run_requests == []  # opening the UI on a fresh instance starts nothing
        assert instance.get_dynamic_partitions(spec_partitions.name) == [SPEC]
        assert sensor.requested() == []
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        assert sensor.requested() == [SPEC]


def test_a_spec_the_warehouse_holds_is_not_rerun_on_a_fresh_instance(specs_dir: Path, tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, database)
        assert sensor.tick().run_requests == []  # first tick, empty folder
        spec_path = write_tiny_spec(specs_dir)
        _store_seed_rows(database, spec_path)
        assert sensor.requested() == []  # the warehouse says it is materialized: nothing to spend
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        assert sensor.requested() == [SPEC]  # its next change runs


def test_a_spec_new_to_the_warehouse_runs_when_added_later(specs_dir: Path, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        assert sensor.tick().run_requests == []
        write_tiny_spec(specs_dir)
        assert sensor.requested() == [SPEC]


def test_reverting_a_spec_reruns_it(specs_dir: Path, tmp_path: Path) -> None:
    spec_path = write_tiny_spec(specs_dir)
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        sensor.tick()  # content A recorded
        keys = []
        for old, new in [("random_seed: 7", "random_seed: 8"), ("random_seed: 8", "random_seed: 7")] * 2:
            _edit(spec_path, old, new)  # A -> B -> A -> B -> A
            [request] = sensor.tick().run_requests
            keys.append(request.run_key)
        # Dagster skips a run request whose run key it has seen: every change needs a new one
        assert len(set(keys)) == 4
        # ...also after the sensor is reset (a fresh cursor)
        fresh = SpecSensor(instance, tmp_path / "w.duckdb")
        time.sleep(1.1)
        fresh.tick()
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        [request] = fresh.tick().run_requests
        assert request.run_key not in keys


def test_an_older_flat_cursor_is_read(specs_dir: Path, tmp_path: Path) -> None:
    spec_path = write_tiny_spec(specs_dir)
    digest = spec_inputs_digest(load_spec(spec_path))
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb", cursor=json.dumps({SPEC: digest}))
        assert sensor.requested() == []
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        assert sensor.requested() == [SPEC]


def test_two_spec_files_with_the_same_name_are_an_error(specs_dir: Path, tmp_path: Path) -> None:
    spec_path = write_tiny_spec(specs_dir)
    (specs_dir / "copy.yaml").write_text(spec_path.read_text())
    found, problems = scan_specs(specs_dir)
    assert found == {}
    [problem] = problems
    assert "\n" not in problem
    assert str(specs_dir / "copy.yaml") in problem and str(spec_path) in problem
    assert f"name: '{SPEC}' is declared by 2 spec files" in problem
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        sensor.tick()
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        assert sensor.requested() == []  # neither is run
        (specs_dir / "copy.yaml").unlink()
        assert sensor.requested() == [SPEC]  # once the name is unique, its change runs


def test_hosted_backend_runs_automatically_only_when_the_spec_opts_in(
    specs_dir: Path, tmp_path: Path
) -> None:
    spec_path = write_tiny_spec(specs_dir, replacements=HOSTED)
    spec = load_spec(spec_path)
    assert not auto_runs(spec) and auto_runs(load_spec(write_tiny_spec(tmp_path / "local")))
    with dg.instance_for_test() as instance:
        sensor = SpecSensor(instance, tmp_path / "w.duckdb")
        sensor.tick()
        _edit(spec_path, "random_seed: 7", "random_seed: 8")
        assert sensor.requested() == []  # changed, but a hosted API spends money: no run by itself
        with _schedule_context(instance) as context:
            scheduled = daily_refresh(context)
        assert scheduled == []
        _edit(spec_path, "random_seed: 8", "random_seed: 9\nautomation:\n  auto_run: true")
        assert load_spec(spec_path).fingerprint() != spec.fingerprint()  # (random_seed changed)
        assert sensor.requested() == [SPEC]
        with _schedule_context(instance) as context:
            [request] = daily_refresh(context)
        assert request.partition_key == SPEC and request.tags[SPEC_PATH_TAG] == str(spec_path)


def test_auto_run_is_not_part_of_the_spec_fingerprint(tmp_path: Path) -> None:
    plain = load_spec(write_tiny_spec(tmp_path / "a"))
    opted = load_spec(
        write_tiny_spec(
            tmp_path / "b", replacements={"random_seed: 7": "random_seed: 7\nautomation:\n  auto_run: false"}
        )
    )
    assert opted.automation.auto_run is False and not auto_runs(opted)
    assert plain.fingerprint() == opted.fingerprint()  # switching automation makes nothing stale


def _sensor_ticks(instance: dg.DagsterInstance) -> dict[str, int]:
    """Ticks the daemon has recorded per sensor name."""
    return {
        state.instigator_name: len(instance.get_ticks(state.instigator_origin_id, state.selector_id))
        for state in instance.all_instigator_state()
    }


@pytest.mark.slow
def test_starting_the_ui_launches_nothing_for_specs_already_in_the_warehouse(tmp_path: Path) -> None:
    """`dagster dev` (webserver + daemon, as `make ui` starts it) on a fresh DAGSTER_HOME, with a local
    spec whose rows the warehouse already holds: two ticks of the spec sensor later, no run exists."""
    root = Path(__file__).parent.parent
    spec_path = write_tiny_spec(tmp_path / "specs")
    database = tmp_path / "w.duckdb"
    _store_seed_rows(database, spec_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((root / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SYNTH_ASSETS_DB": str(database),
        "SYNTH_ASSETS_SPECS_DIR": str(spec_path.parent),
        "PYTHONPATH": str(root),
    }
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops the daemon and servers
        )
    try:
        deadline = time.monotonic() + 420
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while _sensor_ticks(instance).get("spec_change_sensor", 0) < 2:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(2)
            assert instance.get_dynamic_partitions(spec_partitions.name) == [SPEC]
            assert _sensor_ticks(instance).get("synth_automation", 0) >= 1
            assert instance.get_runs() == []  # nothing queued, nothing launched
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_the_in_process_llama_cpp_backend_runs_automatically_like_the_local_one(tmp_path: Path) -> None:
    # llama.cpp in this process costs nothing per call: only a hosted or server backend needs opting in
    in_process = {"generation:\n": "generation:\n  backend: llama_cpp\n"}
    llama_cpp = load_spec(write_tiny_spec(tmp_path / "l", replacements=in_process))
    assert llama_cpp.generation.backend == "llama_cpp" and llama_cpp.generation.runs_in_process
    assert auto_runs(llama_cpp)
    hosted = load_spec(write_tiny_spec(tmp_path / "h", replacements=HOSTED))
    assert not hosted.generation.runs_in_process and not auto_runs(hosted)
