"""Every demo spec under `specs/` end to end: the real graph and the real model materialize all five
stages at a tiny size, each stage's rows are stored and every gate's verdict is recorded.

The spec is copied unchanged except for its size (`num_samples`, `per_cell.n`) and the gates'
absolute row minimums, which are written for the demo's size; its seed paths are made absolute.
Whether a tiny run passes a share-based gate (label balance, yield) depends on four or five answers of a
135M model on this CPU, so the test checks that each verdict is recorded and obeyed (a failed gate
blocks what is downstream of it), not which way it went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from conftest import REPO_ROOT, graph_env

from synth_assets.evaluation.gate import GATE_CHECK
from synth_assets.seed import load_seed_data
from synth_assets.spec import load_spec

DEMO_SPECS = sorted((REPO_ROOT / "specs").glob("*.yaml"))
TINY_SAMPLES = 4


def tiny_copy(spec_path: Path, folder: Path) -> Path:
    """The demo spec at `spec_path` rewritten into `folder` (same file name, so the same spec name) at
    TINY_SAMPLES samples (at least one per label), seed paths absolute."""
    spec: dict[str, Any] = yaml.safe_load(spec_path.read_text())
    spec["num_samples"] = max(TINY_SAMPLES, len(spec["labels"]))
    if spec.get("per_cell"):
        spec["per_cell"]["n"] = 1
    for key in ("path", "holdout_path"):
        if spec["seed"].get(key):
            spec["seed"][key] = str((spec_path.parent / spec["seed"][key]).resolve())
    if "curated_min_rows" in spec.get("gates", {}):
        spec["gates"]["curated_min_rows"] = 1
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / spec_path.name
    copy.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return copy


def test_the_demo_specs_are_the_four_of_the_seed_guide() -> None:
    names = [path.stem for path in DEMO_SPECS]
    expected = ["backpack_descriptions", "product_reviews", "smartphone_reviews", "support_conversations"]
    assert names == expected


@pytest.mark.slow
@pytest.mark.parametrize("demo", DEMO_SPECS, ids=[path.stem for path in DEMO_SPECS])
def test_every_demo_spec_runs_end_to_end_at_a_tiny_size(demo: Path, tmp_path: Path) -> None:
    spec_path = tiny_copy(demo, tmp_path / "specs")
    spec = load_spec(spec_path)
    with graph_env(tmp_path, partition=spec.name) as env:
        result = env.run()
        run_id = result.run_id

        def rows(stage: str) -> int:
            return len(env.store.read_version(stage, spec.name, run_id))

        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        # seed and prompts have no gate: they are always written, and in full
        ungated = {"seed_data", "expanded_prompts", "generated_samples"}
        assert ungated <= materialized, result.get_failed_step_keys()
        assert rows("seed_data") == len(load_seed_data(spec))
        assert rows("expanded_prompts") == spec.num_samples
        assert rows("generated_samples") == spec.num_samples

        # every blocking GX gate that ran left its verdict in gate_results and in the Dagster run
        checks = {
            e.asset_key.to_user_string(): e.passed
            for e in result.get_asset_check_evaluations()
            if e.check_name != GATE_CHECK
        }
        recorded = env.store.query(
            "SELECT asset, passed FROM gate_results WHERE spec_name = ? AND run_id = ?", [spec.name, run_id]
        )
        assert dict(zip(recorded["asset"], recorded["passed"].astype(bool), strict=True)) == checks
        assert "generated_samples" in checks

        if not checks["generated_samples"]:  # a failed gate stops everything below it
            assert materialized.isdisjoint({"curated_set", "evaluation_report"})
            return
        assert "curated_set" in checks and "curated_set" in materialized
        assert rows("curated_set") + rows("rejected_samples") == spec.num_samples
        if not checks["curated_set"]:
            assert "evaluation_report" not in materialized
            assert env.store.read_current("curated_set", spec.name).empty  # never published
            return

        # the report is written with the usefulness gate's verdict, in the run and in the warehouse
        assert "evaluation_report" in materialized
        (usefulness,) = [e for e in result.get_asset_check_evaluations() if e.check_name == GATE_CHECK]
        report = env.store.read_version("evaluation_report", spec.name, run_id)
        assert len(report) == 1 and bool(report["passed"].iloc[0]) == usefulness.passed
        published = env.store.read_current("curated_set", spec.name)
        assert set(published["run_id"]) == ({run_id} if usefulness.passed else set())
        record = env.instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=1).records[0]
        assert record.partition_key == spec.name and record.run_id == run_id
