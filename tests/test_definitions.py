"""Shape of the Dagster definitions: the five assets in one graph fed by the observed spec, blocking
gates, schedule/sensors/automation on."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import write_tiny_spec

from synth_assets.columns import COLUMN_DESCRIPTIONS
from synth_assets.definitions import build_definitions, defs
from synth_assets.defs.automation import spec_change_sensor
from synth_assets.defs.common import (
    PREVIEW_CHARS,
    PREVIEW_ROWS,
    gate_result,
    gate_spec,
    preview,
    spec_partitions,
)
from synth_assets.defs.resources import SpecCatalog, WarehouseResource, scan_specs
from synth_assets.quality.gates import GateOutcome
from synth_assets.seed import spec_inputs_digest
from synth_assets.spec import SpecError, load_spec
from synth_assets.storage import STAGE_COLUMNS

STAGES = ["seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report"]


def test_five_assets_in_one_chain_fed_by_the_spec() -> None:
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == sorted([*STAGES, "spec_inputs"])
    for upstream, downstream in itertools.pairwise(STAGES):
        parents = graph.get(dg.AssetKey(downstream)).parent_keys
        assert dg.AssetKey(upstream) in parents
    for key in STAGES:
        node = graph.get(dg.AssetKey(key))
        assert node.partitions_def is not None and node.partitions_def.name == "spec"
        assert node.group_name == "synthetic_data"
        assert node.code_version is not None
        assert node.metadata.get("dagster/column_schema") is not None  # the UI's Columns tab
        # every stage reads the spec: a changed spec makes each of them stale, not just seed_data
        assert dg.AssetKey("spec_inputs") in node.parent_keys
    source = graph.get(dg.AssetKey("spec_inputs"))
    assert source.is_observable and source.partitions_def.name == "spec"


def test_gates_are_blocking_checks_on_generated_and_curated() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("generated_samples", "gx_gate"), ("curated_set", "gx_gate")} <= checks
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking


def test_schedule_sensors_and_automation_start_running() -> None:
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_sensor_def("spec_change_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    automation = defs.resolve_sensor_def("synth_automation")
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("seed_data")).automation_condition is None  # roots refresh on schedule
    for key in STAGES[1:]:
        condition = graph.get(dg.AssetKey(key)).automation_condition
        assert condition is not None and "all_deps_blocking_checks_passed" in str(condition.get_snapshot())


def test_refresh_job_observes_the_spec_then_runs_all_five() -> None:
    job = defs.resolve_job_def("synth_refresh_job")
    keys = {
        k.to_user_string()
        for k in job.asset_layer.executable_asset_keys | job.asset_layer.selected_asset_keys
    }
    assert {*STAGES, "spec_inputs"} <= keys
    assert job.partitions_def is not None and job.partitions_def.name == "spec"


def test_spec_inputs_version_is_the_content_hash_of_spec_and_seed(tmp_path: Path) -> None:
    spec_path = write_tiny_spec(tmp_path / "specs")
    observe = dg.define_asset_job("observe", selection=dg.AssetSelection.assets("spec_inputs"))
    definitions = dg.Definitions.merge(
        build_definitions(database=str(tmp_path / "w.duckdb"), specs_dir=str(spec_path.parent)),
        dg.Definitions(jobs=[observe]),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spec", ["tiny_reviews"])
        job = definitions.resolve_job_def("observe")
        assert job.execute_in_process(instance=instance, partition_key="tiny_reviews").success
        record = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("spec_inputs"), asset_partitions=["tiny_reviews"]),
            limit=1,
        ).records[0]
        expected = spec_inputs_digest(load_spec(spec_path))
        assert record.asset_observation.tags["dagster/data_version"] == expected


def test_workspace_and_instance_files() -> None:
    root = Path(__file__).parent.parent
    assert "synth_assets.definitions" in (root / "workspace.yaml").read_text()
    assert "max_concurrent_runs: 2" in (root / "dagster.yaml").read_text()  # two specs at once (issue 11)


def test_sensor_adds_partitions_and_skips_unchanged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs_dir = tmp_path / "specs"
    spec_path = write_tiny_spec(specs_dir)
    (specs_dir / "broken.yaml").write_text("name: [oops\n")
    monkeypatch.setenv("SYNTH_ASSETS_SPECS_DIR", str(specs_dir))
    found, problems = scan_specs(specs_dir)
    assert list(found) == ["tiny_reviews"]
    assert len(problems) == 1 and "broken.yaml" in problems[0]

    resources = {"warehouse": WarehouseResource(database=str(tmp_path / "w.duckdb")), "specs": SpecCatalog()}
    with dg.instance_for_test() as instance:
        first = spec_change_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        # changed on purpose (issue 12): the first tick records what exists and starts no run
        assert first.run_requests == []
        assert first.dynamic_partitions_requests[0].partition_keys == ["tiny_reviews"]
        cursor = first.cursor
        spec_path.touch()  # a touched but unchanged file starts nothing
        second = spec_change_sensor(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        )
        assert second.run_requests == []
        spec_path.write_text(spec_path.read_text().replace("random_seed: 7", "random_seed: 9"))
        third = spec_change_sensor(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        )
        assert [r.partition_key for r in third.run_requests] == ["tiny_reviews"]
        assert (
            json.loads(third.cursor)["digests"]["tiny_reviews"]
            != json.loads(cursor)["digests"]["tiny_reviews"]
        )


def test_previews_are_raw_tables_of_20_rows_scrubbed_and_never_cut_silently() -> None:
    long_text = "x" * 2500
    frame = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(30)],
            "score": [0.5] * 30,
            "text": ["**kept raw** mail me at jane.doe@example.com\nsecond line", long_text]
            + [f"sample {i}" for i in range(28)],
        }
    )
    value = preview(frame, ["sample_id", "score", "text"])
    assert isinstance(value, dg.TableMetadataValue)  # shown as a table, never rendered as Markdown
    assert [c.type for c in value.schema.columns] == ["string", "float", "string"]
    records = [r.data for r in value.records]
    assert len(records) == PREVIEW_ROWS + 1 and PREVIEW_ROWS > 5
    assert records[0]["text"] == "**kept raw** mail me at [EMAIL]\nsecond line"  # PII scrubbed
    cut = records[1]["text"]
    assert cut == "x" * PREVIEW_CHARS + f"… [{2500 - PREVIEW_CHARS} more chars, 2500 total]"
    assert (
        records[-1]["sample_id"]
        == f"… {30 - PREVIEW_ROWS} more of 30 rows (all of them: synth-assets browse)"
    )
    assert records[2]["score"] == 0.5 and isinstance(records[2]["score"], float)
    small = preview(frame.head(3), ["sample_id", "text"])
    assert len(small.records) == 3  # no note when everything is shown


def test_columns_have_descriptions_and_tables_are_fully_qualified(tmp_path: Path) -> None:
    assert set(COLUMN_DESCRIPTIONS) == set(STAGE_COLUMNS)
    for stage, columns in STAGE_COLUMNS.items():
        assert set(COLUMN_DESCRIPTIONS[stage]) == set(columns), stage
    graph = build_definitions(database=str(tmp_path / "lake.duckdb")).resolve_asset_graph()
    for stage in STAGES:
        node = graph.get(dg.AssetKey(stage))
        assert node.metadata["dagster/table_name"] == f"lake.main.{stage}"
        schema = node.metadata["dagster/column_schema"]
        assert all(column.description for column in schema.columns), stage
    inputs = graph.get(dg.AssetKey("spec_inputs")).metadata
    assert {"observes", "data_version", "partition"} <= set(inputs)


def test_gate_check_metadata_names_the_spec_and_run_it_judged() -> None:
    outcome = GateOutcome(suite="generated_samples_gate", rows=3, results=[])

    @dg.asset(
        name="checked",
        partitions_def=spec_partitions,
        check_specs=[dg.AssetCheckSpec("gx_gate", asset="checked", blocking=True)],
    )
    def checked() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[gate_result(outcome)])

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(spec_partitions.name, ["tiny_reviews", "other_spec"])
        for partition in ["tiny_reviews", "other_spec"]:
            result = dg.materialize([checked], instance=instance, partition_key=partition)
            [evaluation] = result.get_asset_check_evaluations()
            assert evaluation.metadata["spec"].value == partition
            assert evaluation.metadata["partition"].value == partition
            assert evaluation.metadata["run_id"].value == result.run_id


@dg.asset(name="checked", partitions_def=spec_partitions, check_specs=[gate_spec("checked", "a gate")])
def gated_stage() -> dg.MaterializeResult:
    """A stage with the real gate spec, whose gate fails for the spec 'other_spec' only."""
    gate = gate_result(GateOutcome(suite="s", rows=3, results=[]))
    passed = dg.AssetExecutionContext.get().partition_key != "other_spec"
    verdict = dg.AssetCheckResult(check_name=gate.check_name, passed=passed, metadata=gate.metadata)
    return dg.MaterializeResult(check_results=[verdict])


def test_every_gate_is_partitioned_by_spec_so_its_history_names_the_spec_of_each_row() -> None:
    """Issue 12 §3: a check's history listed four "Passed" rows with no spec; the asset Overview
    showed the verdict of whichever spec ran last. Each gate now records the spec as its partition."""
    graph = defs.resolve_asset_graph()
    assert len(graph.asset_check_keys) == 3
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).partitions_def == spec_partitions, key

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(spec_partitions.name, ["tiny_reviews", "other_spec"])
        for partition in ["tiny_reviews", "other_spec", "tiny_reviews"]:
            dg.materialize([gated_stage], instance=instance, partition_key=partition, raise_on_error=False)
        key = dg.AssetCheckKey(dg.AssetKey("checked"), "gx_gate")
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert [row.partition for row in history] == ["tiny_reviews", "other_spec", "tiny_reviews"]
        assert [row.status.value for row in history] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]


def _check_defs(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).parent.parent
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_a_dg_project_whose_definitions_load(tmp_path: Path) -> None:
    """`[tool.dg.project]` in pyproject names the definitions; `dagster definitions validate` without
    -w loads them from there, and `dg check defs` passes where dagster-dg-cli is installed."""
    root = Path(__file__).parent.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project = pyproject["tool"]["dg"]["project"]
    assert pyproject["tool"]["dg"]["directory_type"] == "project"
    assert project["code_location_target_module"] == "synth_assets.definitions"
    # declared dependencies nothing imports are gone
    assert not [d for d in pyproject["project"]["dependencies"] if d.startswith("dagster-duckdb")]
    bin_dir = Path(sys.executable).parent
    validated = _check_defs([str(bin_dir / "dagster"), "definitions", "validate"], tmp_path)
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert "Validation successful for code location synth_assets" in validated.stdout + validated.stderr
    if (bin_dir / "dg").exists():
        checked = _check_defs([str(bin_dir / "dg"), "check", "defs"], tmp_path)
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_spec_catalog_find_is_where_the_assets_the_sensor_and_the_cli_look_for_a_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 5: one `SpecCatalog.find` answers "where is the spec file of NAME"."""
    spec_path = write_tiny_spec(tmp_path / "specs")
    elsewhere = write_tiny_spec(tmp_path / "elsewhere", replacements={"random_seed: 7": "random_seed: 8"})
    catalog = SpecCatalog(specs_dir=str(tmp_path / "specs"))
    assert catalog.find("tiny_reviews").source_path.resolve() == spec_path.resolve()
    # a run's spec-path tag (or a file the user names) is the only candidate: it wins, errors and all
    assert catalog.find("tiny_reviews", elsewhere).source_path.resolve() == elsewhere.resolve()
    with pytest.raises(SpecError, match=r"tiny_reviews\.yaml: name: 'tiny_reviews' is not the spec 'other'"):
        catalog.find("other", spec_path)
    with pytest.raises(SpecError, match=r"other\.yaml: spec file not found"):
        catalog.find("other")
    # a spec once run from outside the folder is found again where seed_data recorded it
    empty = SpecCatalog(specs_dir=str(tmp_path / "empty"))
    with dg.instance_for_test() as instance:
        with pytest.raises(SpecError, match="spec file not found"):
            empty.find("tiny_reviews", instance=instance)
        recorded = dg.AssetMaterialization(
            "seed_data",
            partition="tiny_reviews",
            metadata={"spec_path": dg.MetadataValue.path(str(elsewhere))},
        )
        instance.report_runless_asset_event(recorded)
        assert empty.find("tiny_reviews", instance=instance).source_path.resolve() == elsewhere.resolve()
        # the sensor scans the catalog's folder (not whatever SYNTH_ASSETS_SPECS_DIR says)
        monkeypatch.setenv("SYNTH_ASSETS_SPECS_DIR", str(tmp_path / "empty"))
        resources = {"warehouse": WarehouseResource(database=str(tmp_path / "w.duckdb")), "specs": catalog}
        first = spec_change_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert first.dynamic_partitions_requests[0].partition_keys == ["tiny_reviews"]


PACKAGE = Path(__file__).resolve().parent.parent / "synth_assets"


def test_definitions_are_autoloaded_from_the_defs_folder() -> None:
    """Issue 12 §3: every asset, job, schedule and sensor comes from a module under `defs/`
    (`dg.load_from_defs_folder`); `definitions.py` only wires them and adds resources."""
    found = dg.load_from_defs_folder(path_within_project=PACKAGE)
    assert {a.key for a in found.assets or []} == set(defs.resolve_asset_graph().get_all_asset_keys())
    assert {s.name for s in found.sensors or []} == {s.name for s in defs.sensors or []}
    assert {s.name for s in found.schedules or []} == {"daily_refresh"}
    assert {j.name for j in found.jobs or []} == {"synth_refresh_job"}
    assert "dead_run_reaper" in {s.name for s in defs.sensors or []}
    assert "@dg." not in (PACKAGE / "definitions.py").read_text()
