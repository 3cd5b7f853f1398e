"""Shape of the Dagster definitions: the five assets in one graph, blocking gates, automation on."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import dagster as dg
import pytest
from conftest import write_tiny_spec

from synth_assets.definitions import defs
from synth_assets.defs.automation import scan_specs, spec_change_sensor

STAGES = ["seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report"]


def test_five_assets_in_one_chain() -> None:
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == sorted(STAGES)
    for upstream, downstream in itertools.pairwise(STAGES):
        parents = graph.get(dg.AssetKey(downstream)).parent_keys
        assert dg.AssetKey(upstream) in parents
    for key in STAGES:
        node = graph.get(dg.AssetKey(key))
        assert node.partitions_def is not None and node.partitions_def.name == "spec"
        assert node.group_name == "synthetic_data"
        assert node.code_version is not None


def test_gates_are_blocking_checks_on_generated_and_curated() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {("generated_samples", "gx_gate"), ("curated_set", "gx_gate")}
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking


def test_schedule_and_sensor_start_running() -> None:
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_sensor_def("spec_change_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_workspace_and_instance_files() -> None:
    root = Path(__file__).parent.parent
    assert "synth_assets.definitions" in (root / "workspace.yaml").read_text()
    assert "max_concurrent_runs: 1" in (root / "dagster.yaml").read_text()


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

    with dg.instance_for_test() as instance:
        first = spec_change_sensor(dg.build_sensor_context(instance=instance))
        assert [r.partition_key for r in first.run_requests] == ["tiny_reviews"]
        assert first.dynamic_partitions_requests[0].partition_keys == ["tiny_reviews"]
        cursor = first.cursor
        spec_path.touch()  # a touched but unchanged file starts nothing
        second = spec_change_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        assert second.run_requests == []
        spec_path.write_text(spec_path.read_text().replace("random_seed: 7", "random_seed: 9"))
        third = spec_change_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        assert [r.partition_key for r in third.run_requests] == ["tiny_reviews"]
        assert json.loads(third.cursor)["tiny_reviews"] != json.loads(cursor)["tiny_reviews"]
