"""The `curated_set` asset on a real DuckDB file and Dagster instance, without the LLM: upstream
tables are written directly, with planted personal data, duplicates and broken answers. The
embedding model and Great Expectations are real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import GraphEnv, graph_env, write_tiny_spec

from synth_assets.defs.common import spec_partitions
from synth_assets.defs.curated_set import curated_set
from synth_assets.defs.resources import SPEC_PATH_TAG, LocalModelResource, SpecCatalog, WarehouseResource
from synth_assets.generation.prompts import expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import load_spec
from synth_assets.storage import stage_columns

SPEC = "tiny_reviews"
PLANTED = ["jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"]
GOOD = [
    "These headphones have deep bass and the battery easily lasts a whole week.",
    "The blender crushes ice in seconds, although it is louder than I expected.",
    "The backpack zipper jammed on day two and the straps started fraying soon after.",
]


class Env:
    """The shared graph harness, where only `curated_set` runs and its upstream is written directly."""

    def __init__(self, graph: GraphEnv) -> None:
        self.root = graph.root
        self.instance = graph.instance
        self.store = graph.store
        self.spec_path = write_tiny_spec(graph.specs_dir, num_samples=24)
        spec = load_spec(self.spec_path)
        seed = load_seed_data(spec)
        self.prompts = expand_prompts(spec, seed)
        for stage, frame in (("seed_data", seed), ("expanded_prompts", self.prompts)):
            self.store.write_version(stage, SPEC, "setup", frame[stage_columns(stage)], promote=True)
        self.instance.add_dynamic_partitions(spec_partitions.name, [SPEC])

    def generate(self, run: str, texts: list[tuple[str, str]]) -> None:
        """Promote a generated_samples version: each (product, text) answers a prompt about it."""
        unused = list(self.prompts.itertuples())
        rows = []
        for i, (product, text) in enumerate(texts):
            prompt = next(p for p in unused if json.loads(p.attributes)["product"] == product)
            unused.remove(prompt)
            rows.append(
                {
                    "sample_id": f"s-{run}-{i}",
                    "prompt_id": prompt.prompt_id,
                    "label": prompt.label,
                    "text": text,
                    "finish_reason": "stop",
                }
            )
        frame = pd.DataFrame(rows).reindex(columns=stage_columns("generated_samples"))
        self.store.write_version("generated_samples", SPEC, run, frame, promote=True)

    def curate(self, spec_path: Path | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [curated_set],
            instance=self.instance,
            partition_key=SPEC,
            resources={
                "specs": SpecCatalog(specs_dir=str(self.spec_path.parent)),
                "warehouse": WarehouseResource(database=str(self.store.path)),
                "llm": LocalModelResource(),
            },
            tags={SPEC_PATH_TAG: str(spec_path or self.spec_path)},
            raise_on_error=False,
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("curation_asset")
    with graph_env(root) as graph:
        yield Env(graph)


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    event = result.get_asset_materialization_events()[0]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_planted_pii_never_reaches_curated_set_and_rejections_keep_reasons(env: Env) -> None:
    texts = [
        ("headphones", f"{GOOD[0]} Questions? Write to {PLANTED[0]} or call {PLANTED[1]}."),
        ("blender", f"{GOOD[1]} I paid with {PLANTED[2]}, refund to {PLANTED[3]}."),
        ("backpack", GOOD[2]),
        ("headphones", GOOD[2].upper()),  # exact duplicate (and about the wrong product)
        ("headphones", "Sure! Here is a positive review: the headphones are nice."),
        ("headphones", "I'm sorry, but I can't write a review of these headphones."),
    ]
    env.generate("gen1", texts)
    result = env.curate()
    assert result.success
    # curated_set alone stages its version; only a passing evaluation_report publishes it
    assert env.store.read_current("curated_set", SPEC).empty
    curated = env.store.read_version("curated_set", SPEC, result.run_id)
    rejected = env.store.read_version("rejected_samples", SPEC, result.run_id)
    stored = " ".join(curated["text"]) + " ".join(rejected["text"])
    for value in PLANTED:
        assert value not in stored
    assert len(curated) == 3 and curated["pii_hits"].tolist() == [2, 2, 0]
    rejected = rejected.set_index("sample_id")
    reasons = {sid: json.loads(r) for sid, r in rejected["reasons"].items()}
    # the copy also answers a prompt about another product, so it may be "irrelevant" as well
    assert set(reasons) == {"s-gen1-3", "s-gen1-4", "s-gen1-5"}
    assert "exact_duplicate" in reasons["s-gen1-3"]
    assert reasons["s-gen1-4"] == ["assistant_talk"] and reasons["s-gen1-5"] == ["refusal"]
    assert "same normalized text as s-gen1-2" in rejected.loc["s-gen1-3", "details"]
    metadata = _metadata(result)
    assert metadata["staged"] is True and str(metadata["publication"]).startswith("staged")
    assert metadata["published_curated_version"] == "none"
    assert metadata["pii_found_by_type"]["EMAIL"] == 1 and metadata["pii_hits_total"] == 4  # type: ignore[index]
    by_reason = metadata["rejections_by_reason"]
    assert by_reason["exact_duplicate"] == by_reason["assistant_talk"] == by_reason["refusal"] == 1  # type: ignore[index]
    check = result.get_asset_check_evaluations()[0]
    assert check.passed
    # scores are stored with every row
    assert curated["relevance"].notna().all() and curated["nearest_similarity"].notna().all()


def test_new_samples_duplicating_earlier_versions_are_rejected(env: Env) -> None:
    env.generate(
        "gen2",
        [
            ("backpack", GOOD[2].replace("day two", "day three")),
            ("blender", "A sturdy blender: the jug is thick glass and it is easy to clean."),
        ],
    )
    result = env.curate()
    assert result.success
    # gen1's version is staged (never evaluated, so not held back): its rows count as seen
    rejected = env.store.read_version("rejected_samples", SPEC, result.run_id)
    assert json.loads(rejected["reasons"].iloc[0]) == ["seen_in_previous_version"]
    assert "(run " in json.loads(rejected["details"].iloc[0])["seen_in_previous_version"]
    assert env.store.read_version("curated_set", SPEC, result.run_id)["sample_id"].tolist() == ["s-gen2-1"]


def test_a_failing_gate_keeps_the_last_good_version_and_says_so(env: Env) -> None:
    good_run = env.store.staged_runs(SPEC)[0]
    strict = write_tiny_spec(
        env.root / "strict", num_samples=60, replacements={"curated_min_rows: 1": "curated_min_rows: 50"}
    )
    env.generate("gen3", [("blender", "A lovely blender that purees soup fast and pours without dripping.")])
    result = env.curate(strict)
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed
    assert any(
        "expect_table_row_count_to_be_between" in f for f in check.metadata["failed_expectations"].value
    )
    metadata = _metadata(result)
    assert metadata["staged"] is False and metadata["published_curated_version"] == "none"
    assert str(metadata["publication"]).startswith("NOT staged (GX gate failed)")
    assert "no version is published yet" in str(metadata["publication"])
    # the failed version is no candidate for publication: the newest staged one is still the last good
    assert env.store.staged_runs(SPEC)[0] == good_run and env.store.read_current("curated_set", SPEC).empty
    history = env.store.query(
        "SELECT count(*) AS n FROM curated_set_history WHERE run_id = ?", [result.run_id]
    )
    assert history["n"].iloc[0] == 1
    warnings = [entry.user_message for entry in env.instance.all_logs(result.run_id)]
    assert any("NOT staged" in message and "curated_set_history only" in message for message in warnings)


def test_rows_of_a_version_that_failed_its_gate_do_not_count_as_seen(env: Env) -> None:
    # the previous test's version (gen3) failed its gate: its text was never published
    env.generate("gen4", [("blender", "A lovely blender that purees soup fast and pours without dripping!")])
    result = env.curate()
    assert result.success
    assert env.store.read_version("curated_set", SPEC, result.run_id)["sample_id"].tolist() == ["s-gen4-0"]
