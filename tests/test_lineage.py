"""Row lineage on a temp DuckDB (no model, no Dagster run): demos -> prompt -> calls -> decisions -> runs,
plus the Dagster run lookup against a real temporary instance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from synth_assets.lineage.chain import LineageError, format_chain, trace
from synth_assets.lineage.dagster_runs import DagsterRunDirectory
from synth_assets.storage import Warehouse, stage_columns

SPEC = "demo"
PARAMS = {"max_new_tokens": 24, "temperature": 0.8, "top_p": 0.95}


def frame(stage: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows for a stage table; columns the test does not care about are filled with None."""
    columns = stage_columns(stage)
    return pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)


def seed_rows() -> pd.DataFrame:
    return frame(
        "seed_data",
        [
            {
                "seed_id": f"seed-{i}",
                "split": "train",
                "text": f"real review {i}",
                "label": label,
                "source_file": "/data/seed.csv",
                "source_row": i,
            }
            for i, label in enumerate(["positive", "negative", "neutral"], start=1)
        ],
    )


def prompt_rows() -> pd.DataFrame:
    return frame(
        "expanded_prompts",
        [
            {
                "prompt_id": f"p-{i}",
                "prompt_index": i,
                "label": "positive",
                "attributes": json.dumps({"product": "blender"}),
                "demo_ids": json.dumps(["seed-1", "seed-2"]),
                "system_prompt": "",
                "prompt_text": f"Write review {i}.\nReview (positive): real review 1",
                "generation_seed": 100 + i,
            }
            for i in (1, 2)
        ],
    )


def generated_rows(run_id: str) -> pd.DataFrame:
    rows = []
    for i in (1, 2):
        call = {
            "step": "answer",
            "attempt": 0,
            "cache_key": f"c-{i}",
            "completion_tokens": 12,
            "prompt_tokens": 40,
            "finish_reason": "stop",
            "run_id": "run-1",
            "text": f"answer {i}",
        }
        rows.append(
            {
                "sample_id": f"s-{i}abc",
                "prompt_id": f"p-{i}",
                "label": "positive",
                "text": f"answer {i}",
                "model": "tiny",
                "model_fingerprint": "tiny-fp",
                "backend": "local",
                "generation_params": json.dumps(PARAMS),
                "generation_seed": 100 + i,
                "prompt_tokens": 40,
                "completion_tokens": 12,
                "finish_reason": "stop",
                "cache_key": f"c-{i}",
                "generated_in_run": "run-1",
                "steps": json.dumps({"calls": [call]}),
            }
        )
    return frame("generated_samples", rows)


@pytest.fixture
def store(tmp_path: Path) -> Warehouse:
    """Two runs of one spec: in run-1 both samples are curated; in run-2 (same generations, from the
    cache) s-2 is rejected by a stricter filter and run-2's curated_set is promoted."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    for run in ("run-1", "run-2"):
        warehouse.write_versions(
            {
                "seed_data": seed_rows(),
                "expanded_prompts": prompt_rows(),
                "generated_samples": generated_rows(run),
            },
            SPEC,
            run,
            promote=True,
        )
        warehouse.record_gate(SPEC, run, "generated_samples", "gx_gate", True, "ok")
    samples = generated_rows("run-1")
    warehouse.write_versions(
        {
            "curated_set": frame("curated_set", samples.to_dict("records")),
            "rejected_samples": frame("rejected_samples", []),
        },
        SPEC,
        "run-1",
        promote=True,
    )
    warehouse.record_gate(SPEC, "run-1", "curated_set", "gx_gate", True, "ok")
    rejected = {
        **samples.iloc[1].to_dict(),
        "reasons": json.dumps(["too_short"]),
        "details": json.dumps({"too_short": "8 chars < 40"}),
    }
    warehouse.write_versions(
        {
            "curated_set": frame("curated_set", [samples.iloc[0].to_dict()]),
            "rejected_samples": frame("rejected_samples", [rejected]),
        },
        SPEC,
        "run-2",
        promote=True,
    )
    warehouse.record_gate(SPEC, "run-2", "curated_set", "gx_gate", True, "ok")
    with warehouse.connect() as connection:  # the LLM cache knows each call's seed and seconds
        connection.execute(
            "CREATE TABLE IF NOT EXISTS llm_cache (cache_key VARCHAR, backend VARCHAR, seed BIGINT, "
            "seconds DOUBLE, run_id VARCHAR)"
        )
        connection.execute(
            "INSERT INTO llm_cache (cache_key, backend, seed, seconds, run_id) "
            "VALUES ('c-2', 'local', 102, 1.5, 'run-1')"
        )
    return warehouse


class FakeRuns:
    def __init__(self, known: dict[str, dict[str, Any]]) -> None:
        self.known = known

    def describe(self, run_id: str, partition: str) -> dict[str, Any] | None:
        return self.known.get(run_id)


def test_curated_row_walks_back_to_seed_rows(store: Warehouse) -> None:
    chain = trace(store, "s-1")
    assert chain.sample_id == "s-1abc" and chain.spec_name == SPEC
    assert [d["seed_id"] for d in chain.demos] == ["seed-1", "seed-2"]
    assert chain.demos[0]["source_row"] == 1 and chain.demos[0]["source_file"] == "/data/seed.csv"
    assert chain.prompt["attributes"] == {"product": "blender"}
    assert chain.prompt["runs"] == ["run-1", "run-2"]
    assert [d["decision"] for d in chain.decisions] == ["curated", "curated"]
    assert (
        chain.decisions[-1]["in_promoted_curated_set"] and not chain.decisions[0]["in_promoted_curated_set"]
    )
    assert chain.status.startswith("curated: in the published curated_set (run run-2)")
    # one LLM call, made in run-1 and reused (cache) by run-2
    assert len(chain.calls) == 1 and chain.calls[0]["run_id"] == "run-1"
    assert chain.calls[0]["generation_params"] == PARAMS and chain.calls[0]["seed"] == 101
    assert [r["run_id"] for r in chain.runs] == ["run-1", "run-2"]
    assert all(r["generated"] and r["generated_samples_gate_passed"] for r in chain.runs)


def test_rejected_row_shows_reasons_and_cache_facts(store: Warehouse) -> None:
    chain = trace(store, "s-2abc")
    assert [(d["run_id"], d["decision"]) for d in chain.decisions] == [
        ("run-1", "curated"),
        ("run-2", "rejected"),
    ]
    assert chain.decisions[-1]["reasons"] == ["too_short"]
    assert chain.decisions[-1]["details"] == {"too_short": "8 chars < 40"}
    assert chain.calls[0]["seconds"] == 1.5
    assert chain.status == "rejected in the latest run that judged it (run-2)"
    text = format_chain(chain)
    for part in (
        "seed demos: 2 real row(s)",
        "row 1 of /data/seed.csv",
        "prompt p-2",
        "attributes: product=blender",
        "| Write review 2.",
        "step answer: tiny via local (fingerprint tiny-fp)",
        '"temperature": 0.8',
        "seed 102",
        "made in run run-1",
        "run run-2: REJECTED (gate passed)",
        "reason too_short: 8 chars < 40",
        "present in runs:",
    ):
        assert part in text, part


def test_unknown_and_ambiguous_ids(store: Warehouse) -> None:
    with pytest.raises(LineageError, match="no generated sample with id 's-9'"):
        trace(store, "s-9")
    with pytest.raises(LineageError, match="ambiguous: 2 samples"):
        trace(store, "s-")


def test_dagster_annotations_and_graceful_degradation(store: Warehouse) -> None:
    run_1 = {
        "run_id": "run-1",
        "status": "SUCCESS",
        "job_name": "synth_refresh_job",
        "materializations": {
            "generated_samples": {
                "partition": SPEC,
                "storage_id": 42,
                "timestamp": "t",
                "data_version": "abc",
            },
            "curated_set": {"partition": SPEC, "storage_id": 43, "timestamp": "t", "data_version": "def"},
        },
    }
    chain = trace(store, "s-1", runs=FakeRuns({"run-1": run_1}))
    assert chain.dagster["run-1"] == run_1 and chain.dagster["run-2"] is None
    text = format_chain(chain)
    assert "generated_samples[demo] materialized t, data version abc" in text
    assert "curated_set[demo] materialized t, data version def" in text
    assert "no record of this run in the Dagster instance" in text
    empty = trace(store, "s-1", runs=FakeRuns({}))
    assert empty.dagster_note == "the Dagster instance has no record of these runs"

    class Broken:
        def describe(self, run_id: str, partition: str) -> dict[str, Any] | None:
            raise RuntimeError("database is locked")

    broken = trace(store, "s-1", runs=Broken())
    assert "database is locked" in broken.dagster_note and broken.decisions  # lineage still complete


def test_dagster_run_directory_reads_a_real_instance() -> None:
    partitions = dg.DynamicPartitionsDefinition(name="spec")

    @dg.asset(partitions_def=partitions, name="generated_samples")
    def generated() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"spec_fingerprint": "fp1"}, data_version=dg.DataVersion("v1"))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spec", [SPEC])
        result = dg.materialize([generated], instance=instance, partition_key=SPEC)
        runs = DagsterRunDirectory(instance)
        info = runs.describe(result.run_id, SPEC)
        assert info is not None and info["status"] == "SUCCESS"
        materialization = info["materializations"]["generated_samples"]
        assert materialization["partition"] == SPEC and materialization["data_version"] == "v1"
        assert materialization["spec_fingerprint"] == "fp1" and materialization["storage_id"] > 0
        assert runs.describe("not-a-run", SPEC) is None
        assert runs.latest_metadata("generated_samples", SPEC)["spec_fingerprint"] == "fp1"
