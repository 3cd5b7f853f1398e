"""Integration: staged -> published with the real graph, the real model, a temporary DuckDB file and
Dagster instance.

The test writes its own seed and holdout: two topics (sports, cooking) with disjoint vocabulary, so a
classifier trained on the 10 real rows gets the 40 held-out rows right. Two specs share one name:
- `helpful`: asks the model for a sentence about the label's own topic;
- `harmful`: a template bug that asks, for label sports, for a sentence about cooking pasta, and the
  other way round (with the label check and the relevance filter off, curation keeps them). Those
  rows teach the classifier that pasta means sports, so real + curated does worse than real alone.

Three runs of one spec name, in order: harmful first (the first run fails its usefulness gate and
nothing is published, so export has nothing to write); helpful (passes and is published: export writes
it); harmful again (held back: the helpful version stays published and is what export writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from synth_assets import cli
from synth_assets.definitions import build_definitions
from synth_assets.defs.assets import spec_partitions
from synth_assets.defs.resources import SPEC_PATH_TAG
from synth_assets.evaluation.gate import GATE_CHECK, REAL_METRIC
from synth_assets.export import ExportError, load_export_data, write_export
from synth_assets.storage import Warehouse

pytestmark = pytest.mark.slow
SPEC = "topics"

SPORTS_TRAIN = [
    "The football match ended with three late goals.",
    "Fans filled the stadium for the league final.",
    "The striker scored twice in the second half.",
    "Our team trained hard before the big match.",
    "The referee stopped the football game after a foul.",
]
COOKING_TRAIN = [
    "I cooked pasta with garlic and fresh basil.",
    "The kitchen smelled of onions frying in butter.",
    "Bake the bread in a hot oven for twenty minutes.",
    "This recipe needs a rich tomato sauce.",
    "We spent the evening cooking soup in the kitchen.",
]
SPORTS_SUBJECTS = (
    "The football team",
    "The striker",
    "Our league side",
    "The crowd in the stadium",
    "The referee",
)
COOKING_SUBJECTS = (
    "The chef in the kitchen",
    "My grandmother",
    "Our cooking class",
    "The pasta recipe",
    "The oven",
)
SPORTS_HOLDOUT = [
    f"{subject} {predicate}."
    for subject in SPORTS_SUBJECTS
    for predicate in (
        "celebrated the winning goal",
        "waited for the match to start",
        "argued about the penalty in the football game",
        "cheered after the second goal of the match",
    )
]
COOKING_HOLDOUT = [
    f"{subject} {predicate}."
    for subject in COOKING_SUBJECTS
    for predicate in (
        "needed more garlic and salt",
        "made the sauce taste rich",
        "turned the pasta soft and warm",
        "filled the kitchen with the smell of onions and garlic",
    )
]
TOPIC = {
    "sports": "a football match with goals in the stadium",
    "cooking": "cooking pasta with garlic in the kitchen",
}
SPEC_YAML = """
name: topics
description: publication tests ({kind})
seed:
  path: {data}/seed.csv
  text_column: text
  label_column: topic
  holdout_path: {data}/holdout.csv
labels: [sports, cooking]
task: Write one short sentence for a topic classifier.
attributes:
  - name: mood
    values: [happy, calm, surprised, excited]
few_shot:
  k: 0
template: |
  {{% set topic = "{sports_topic}" if label == "sports" else "{cooking_topic}" %}}
  Write one short, {{{{ mood }}}} sentence about {{{{ topic }}}}.
  Reply with the sentence only.
num_samples: 16
random_seed: 3
generation:
  max_new_tokens: 32
  temperature: 0.7
  batch_size: 8
curation:
  min_chars: 10
  truncated: keep
  label_check: "off"
  min_relevance: null
  semantic_duplicate_threshold: null
gates:
  curated_min_rows: 1
"""


def write_topic_specs(folder: Path) -> dict[str, Path]:
    """The seed and holdout CSVs, and the two specs (same name, one folder each) that read them."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    seed = {"text": SPORTS_TRAIN + COOKING_TRAIN, "topic": ["sports"] * 5 + ["cooking"] * 5}
    pd.DataFrame(seed).to_csv(data / "seed.csv", index=False)
    holdout = {"text": SPORTS_HOLDOUT + COOKING_HOLDOUT, "topic": ["sports"] * 20 + ["cooking"] * 20}
    pd.DataFrame(holdout).to_csv(data / "holdout.csv", index=False)
    paths = {}
    for kind, (sports, cooking) in {
        "helpful": (TOPIC["sports"], TOPIC["cooking"]),
        "harmful": (TOPIC["cooking"], TOPIC["sports"]),  # the template bug: topics swapped
    }.items():
        (folder / kind).mkdir(exist_ok=True)
        paths[kind] = folder / kind / f"{SPEC}.yaml"
        text = SPEC_YAML.format(kind=kind, data=data, sports_topic=sports, cooking_topic=cooking)
        paths[kind].write_text(text)
    return paths


@dataclass
class Env:
    root: Path
    specs: dict[str, Path]
    store: Warehouse
    instance: dg.DagsterInstance
    runs: dict[str, dg.ExecuteInProcessResult] = field(default_factory=dict)

    def run(self, kind: str) -> dg.ExecuteInProcessResult:
        specs_dir = str(self.specs[kind].parent)
        definitions = build_definitions(database=str(self.store.path), specs_dir=specs_dir)
        if not self.instance.has_dynamic_partition(spec_partitions.name, SPEC):
            self.instance.add_dynamic_partitions(spec_partitions.name, [SPEC])
        return definitions.resolve_job_def("synth_refresh_job").execute_in_process(
            instance=self.instance,
            partition_key=SPEC,
            tags={SPEC_PATH_TAG: str(self.specs[kind])},
            raise_on_error=False,
        )

    def gate(self, result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == GATE_CHECK]
        return check

    def report_metadata(self, run_id: str) -> dict[str, object]:
        records = self.instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=10).records
        record = next(r for r in records if r.run_id == run_id)
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    def curated_observation(self, run_id: str) -> dict[str, object]:
        records = self.instance.fetch_observations(dg.AssetKey("curated_set"), limit=10).records
        record = next(r for r in records if r.run_id == run_id)
        return {k: v.value for k, v in record.asset_observation.metadata.items()}

    def published(self) -> pd.DataFrame:
        return self.store.read_current("curated_set", SPEC)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("publication")
    specs = write_topic_specs(root / "specs")
    (root / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
        environment = Env(root, specs, Warehouse(root / "warehouse.duckdb"), instance)
        # each test reads the runs made before it; the order below is the story of the module
        environment.runs["harmful_first"] = environment.run("harmful")
        yield environment


def _diagnose(env: Env, run_id: str) -> str:
    """What the model wrote and the gate said, for a failing assertion."""
    curated = env.store.read_version("curated_set", SPEC, run_id)
    history = env.store.query("SELECT gate_summary FROM evaluation_history WHERE run_id = ?", [run_id])
    return json.dumps(
        {"curated": curated[["label", "text"]].values.tolist(), "gate": history["gate_summary"].tolist()},
        indent=1,
    )


def test_a_first_run_whose_data_hurts_fails_and_is_not_published(env: Env, tmp_path: Path) -> None:
    result = env.runs["harmful_first"]
    assert not result.success, _diagnose(env, result.run_id)  # the blocking usefulness gate failed the run
    check = env.gate(result)
    assert not check.passed, _diagnose(env, result.run_id)
    # the first run: no last good run to compare with, the same-run comparison fails it
    metadata = check.metadata
    assert metadata["failed_comparisons"].value == "same_run", _diagnose(env, result.run_id)
    assert metadata["last_good_verdict"].value == "not judged"
    assert metadata["same_run_delta"].value < -metadata["harm_tolerance"].value
    assert metadata["holdout_rows"].value == 40
    assert (check.description or "").startswith(
        "FAILED: same run: the curated data makes the classifier worse"
    )

    # staged (passed its GX gate) but held back: nothing is published
    assert env.store.staged_runs(SPEC) == [result.run_id]
    assert env.published().empty and env.store.read_current("rejected_samples", SPEC).empty
    assert len(env.store.read_version("curated_set", SPEC, result.run_id)) > 0
    (decision,) = env.store.publications(SPEC).to_dict("records")
    assert decision["version_run_id"] == result.run_id and not decision["published"]
    assert decision["reason"].startswith("FAILED: same run:")

    # the UI: the report and the curated_set page both say it was held back and why
    report = env.report_metadata(result.run_id)
    assert report["published_curated_version"] == "none" and report["promoted"] is False
    assert str(report["publication"]).startswith(f"held back: curated_set run {result.run_id} failed")
    observation = env.curated_observation(result.run_id)
    assert observation["publication"] == report["publication"]
    curated_records = env.instance.fetch_materializations(dg.AssetKey("curated_set"), limit=1).records
    curated_meta = curated_records[0].asset_materialization.metadata
    assert curated_meta["staged"].value is True and str(curated_meta["publication"].value).startswith(
        "staged"
    )

    # export writes nothing, and says why
    with pytest.raises(ExportError, match=r"no published curated_set to export .*was held back: FAILED"):
        load_export_data(env.store, SPEC)


def test_a_passing_run_is_published_and_exported(env: Env, tmp_path: Path) -> None:
    result = env.runs["helpful"] = env.run("helpful")
    assert result.success, _diagnose(env, result.run_id)
    check = env.gate(result)
    assert check.passed and check.metadata["same_run_verdict"].value == "passed"
    # the earlier run failed its gate, so it is no baseline
    assert check.metadata["last_good_verdict"].value == "not judged"
    published = env.published()
    assert set(published["run_id"]) == {result.run_id}
    assert (
        published["sample_id"].tolist()
        == env.store.read_version("curated_set", SPEC, result.run_id)["sample_id"].tolist()
    )
    assert set(env.store.read_current("rejected_samples", SPEC)["run_id"]) <= {result.run_id}
    report = env.report_metadata(result.run_id)
    assert report["published_curated_version"] == result.run_id
    assert str(report["publication"]).startswith(f"published: curated_set run {result.run_id} is the first")
    assert report["evaluated_curated_version"] == result.run_id

    data = load_export_data(env.store, SPEC)
    assert data.curated_run_id == result.run_id
    written = write_export(data, "jsonl", tmp_path / "export")
    exported = pd.read_json(written[0], lines=True)
    assert sorted(exported["sample_id"]) == sorted(published["sample_id"])
    assert "Publication: published by the evaluation in run" in written[-1].read_text()


def test_a_later_harmful_run_is_held_back_and_the_published_version_stays(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = env.runs["helpful"].run_id
    before = env.published()
    result = env.runs["harmful_again"] = env.run("harmful")
    assert not result.success
    check = env.gate(result)
    assert "same_run" in check.metadata["failed_comparisons"].value, _diagnose(env, result.run_id)
    assert check.metadata["last_good_run"].value == good
    # the evaluation judged this run's staged version, not the published one
    history = env.store.query(
        "SELECT curated_run_id, passed FROM evaluation_history WHERE run_id = ?", [result.run_id]
    )
    assert history["curated_run_id"].tolist() == [result.run_id] and history["passed"].tolist() == [False]
    assert env.published().equals(before)
    report = env.report_metadata(result.run_id)
    assert report["published_curated_version"] == good
    assert f"curated_set run {good} stays the published version" in str(report["publication"])

    data = load_export_data(env.store, SPEC)
    assert data.curated_run_id == good
    assert any(result.run_id in note and "held back" in note for note in data.notes)
    # the CLI's run summary says the same
    line, held = cli.publication_summary(env.store, SPEC, result.run_id)
    assert line.startswith("publication: this run's version HELD BACK (not published): FAILED: same run")
    assert f"published curated_set: run {good}" in line and held is not None
    line, held = cli.publication_summary(env.store, SPEC, good)
    assert line.startswith("publication: this run's version PUBLISHED") and held is None
    # a real-only score was measured in every run (the comparison had something to judge)
    for run in (good, result.run_id):
        metrics = json.loads(
            env.store.query("SELECT metrics FROM evaluation_history WHERE run_id = ?", [run])["metrics"].iloc[
                0
            ]
        )
        assert metrics[REAL_METRIC] is not None
