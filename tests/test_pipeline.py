"""Integration: the real graph, the real model, a temporary DuckDB file and Dagster instance.

A tiny spec (6 prompts, 24 new tokens) keeps each run to seconds once the model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import CliRun, GraphEnv, graph_env, run_cli, write_tiny_spec

from synth_assets.lineage.chain import format_chain, trace
from synth_assets.storage import Warehouse

pytestmark = pytest.mark.slow
SPEC = "tiny_reviews"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphEnv]:
    root = tmp_path_factory.mktemp("pipeline")
    write_tiny_spec(root / "specs")
    with graph_env(root) as environment:
        first = environment.run()
        assert first.success, first.get_failed_step_keys()
        environment.first_run_id = first.run_id
        yield environment


def test_all_five_assets_materialize_with_passing_gates(env: GraphEnv) -> None:
    records = env.instance.fetch_materializations(dg.AssetKey("curated_set"), limit=1).records
    assert records and records[0].partition_key == SPEC
    for stage in ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report"):
        assert env.instance.fetch_materializations(dg.AssetKey(stage), limit=1).records, stage
    assert env.count("seed_data") == 12  # 9 train + 3 holdout
    assert env.count("expanded_prompts") == 6
    assert env.count("generated_samples") == 6
    assert env.count("curated_set") + env.count("rejected_samples") == 6
    checks = env.store.query("SELECT asset, passed FROM gate_results")
    assert set(checks["asset"]) == {"generated_samples", "curated_set"} and checks["passed"].all()


def test_generated_rows_carry_lineage_ids(env: GraphEnv) -> None:
    samples = env.store.read_current("generated_samples", SPEC)
    prompts = env.store.read_current("expanded_prompts", SPEC)
    assert set(samples["prompt_id"]) == set(prompts["prompt_id"])
    assert samples["sample_id"].is_unique
    assert (samples["completion_tokens"] > 0).all() and (samples["completion_tokens"] <= 24).all()
    assert (samples["text"].str.len() > 0).all()
    assert set(samples["run_id"]) == {env.first_run_id}
    params = json.loads(samples["generation_params"].iloc[0])
    assert params["max_new_tokens"] == 24 and params["temperature"] == 0.8


def test_report_is_stored_written_and_shown_in_metadata(env: GraphEnv) -> None:
    report = env.store.read_current("evaluation_report", SPEC)
    metrics = json.loads(report["metrics"].iloc[0])
    assert metrics["generated"] == 6 and metrics["prompts"] == 6
    assert 0.0 < metrics["distinct_2"] <= 1.0
    assert Path(report["report_path"].iloc[0]).read_text().startswith("# Evaluation report")
    record = env.instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert "Label balance" in metadata["report"].value
    assert metadata["generated"].value == 6


def test_every_materialization_records_the_snapshot_it_wrote(env: GraphEnv) -> None:
    written: dict[str, tuple[str, int]] = {}
    for stage in ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report"):
        record = env.instance.fetch_materializations(dg.AssetKey(stage), limit=1).records[0]
        run_id, snapshot = record.run_id, record.asset_materialization.metadata["snapshot_id"].value
        assert env.store.version_snapshot(stage, run_id, SPEC) == snapshot, stage
        written[stage] = (run_id, snapshot)
    # time travel: at its own snapshot the curated version reads as written; before it, not at all
    run_id, snapshot = written["curated_set"]
    at = env.store.read_version("curated_set", SPEC, run_id, snapshot=snapshot)
    assert at.equals(env.store.read_version("curated_set", SPEC, run_id))
    assert env.store.read_version("curated_set", SPEC, run_id, snapshot=written["seed_data"][1]).empty


def test_lineage_walks_from_curated_row_to_seed_demos(env: GraphEnv) -> None:
    curated = env.store.read_current("curated_set", SPEC)
    sample_id = str(curated["sample_id"].iloc[0])
    chain = trace(env.store, sample_id[:10])
    assert chain.sample_id == sample_id
    assert len(chain.demos) == 2 and all(d["split"] == "train" for d in chain.demos)
    assert chain.prompt["prompt_id"] == chain.generation["prompt_id"]
    assert chain.decisions[-1]["decision"] == "curated"
    text = format_chain(chain)
    for part in ("seed demos:", chain.demos[0]["seed_id"], chain.prompt["prompt_id"], "curation decisions:"):
        assert part in text


def test_rematerializing_keeps_history_and_is_reproducible(env: GraphEnv) -> None:
    before = env.store.read_current("generated_samples", SPEC)
    second = env.run()
    assert second.success
    after = env.store.read_current("generated_samples", SPEC)
    # same spec and seed: the same prompts, ids and (local backend) the same texts
    assert before["sample_id"].tolist() == after["sample_id"].tolist()
    assert before["text"].tolist() == after["text"].tolist()
    runs = env.store.query("SELECT DISTINCT run_id FROM curated_set_history")["run_id"]
    assert set(runs) == {env.first_run_id, second.run_id}
    assert set(env.store.read_current("curated_set", SPEC)["run_id"]) == {second.run_id}
    chain = trace(env.store, str(after["sample_id"].iloc[0]))
    assert {d["run_id"] for d in chain.decisions} == {env.first_run_id, second.run_id}


def test_failing_gate_blocks_downstream_and_keeps_the_good_version(env: GraphEnv) -> None:
    good_curated = env.store.read_current("curated_set", SPEC)
    good_report = env.store.read_current("evaluation_report", SPEC)
    bad_spec = write_tiny_spec(
        env.root / "bad_specs", replacements={"min_chars: 10": "min_chars: 500"}
    )  # 24-token answers can never reach 500 characters: the generated_samples gate must fail
    result = env.run(spec_path=bad_spec)
    assert not result.success
    evaluations = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    assert not evaluations["generated_samples"].passed
    failed = evaluations["generated_samples"].metadata["failed_expectations"].value
    assert any("expect_column_value_lengths_to_be_between" in f for f in failed)
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "curated_set" not in materialized and "evaluation_report" not in materialized
    assert env.store.read_current("curated_set", SPEC).equals(good_curated)
    assert env.store.read_current("evaluation_report", SPEC).equals(good_report)
    # the failed version is kept for inspection, but not promoted
    history = env.store.query(
        "SELECT count(*) AS n FROM generated_samples_history WHERE run_id = ?", [result.run_id]
    )
    assert history["n"].iloc[0] == 6
    assert result.run_id not in set(env.store.read_current("generated_samples", SPEC)["run_id"])


def test_cli_run_lineage_report_and_bad_input(tiny_cli_run: CliRun, tmp_path: Path) -> None:
    ran, env_vars = tiny_cli_run.result, tiny_cli_run.env
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "rows: seed_data=12 expanded_prompts=6 generated_samples=6" in ran.stdout
    assert f"DuckDB: {tiny_cli_run.database}" in ran.stdout
    curated = Warehouse(tiny_cli_run.database).read_only_query("SELECT sample_id FROM curated_set")
    lineage = run_cli("lineage", str(curated["sample_id"].iloc[0]), env=env_vars)
    assert lineage.returncode == 0 and "seed demos:" in lineage.stdout
    report = run_cli("report", "--spec", SPEC, env=env_vars)
    assert report.returncode == 0 and "# Evaluation report" in report.stdout
    # the run is in the instance the UI reads
    with dg.DagsterInstance.from_config(str(tiny_cli_run.home)) as instance:
        assert instance.get_runs_count() == 1
    # the closing summary says what was made and promoted, and where to look
    assert "made in this run, and what became current:" in ran.stdout
    assert "  curated_set: " in ran.stdout and f"see them: synth-assets report --spec {SPEC}" in ran.stdout
    # an export folder under a regular file: one line, no traceback
    (tmp_path / "a_file").write_text("x")
    under_file = run_cli("export", "--spec", SPEC, "--out", str(tmp_path / "a_file" / "out"), env=env_vars)
    lines = under_file.stderr.strip().splitlines()
    assert under_file.returncode == 2 and len(lines) == 1, under_file.stderr
    assert str(tmp_path / "a_file") in lines[0] and "Not a directory" in lines[0]

    spec_path = write_tiny_spec(tmp_path / "specs")  # the shared run's spec folder stays as it ran
    bad = tmp_path / "specs" / "bad.yaml"
    bad.write_text(spec_path.read_text().replace("label_column: sentiment", "label_column: mood"))
    for args, expected in (
        (("run", "--spec", str(bad)), "seed.label_column 'mood' is not a column"),
        (("run", "--spec", str(tmp_path / "missing.yaml")), "spec file not found"),
        (("lineage", "s-doesnotexist"), "no generated sample with id 's-doesnotexist'"),
    ):
        result = run_cli(*args, env=env_vars)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
