"""Integration: the evaluation_report asset in the real graph (real model, temp DuckDB and instance).

A good run sets the baseline and publishes its curated set; then a curated set of garbage (the seed
reviews with every label rotated, i.e. the wrong sentiment, which the structural GX gate cannot see)
is staged and only `evaluation_report` is re-materialized: its blocking usefulness gate must fail on
both comparisons (worse than real only in the same run, and than the last good run), the failed
report must not become the last good one, and the garbage must not be published. Finally a failed
curated_set attempt makes the report fall back to the newest staged version and say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import GraphEnv, graph_env, write_tiny_spec

from synth_assets.cli import main as cli_main
from synth_assets.evaluation.gate import GATE_CHECK, GATE_METRIC
from synth_assets.storage import stage_columns

pytestmark = pytest.mark.slow
SPEC = "tiny_reviews"
REPO = Path(__file__).resolve().parent.parent
ROTATE = {"positive": "neutral", "neutral": "negative", "negative": "positive"}


def _stage_curated(env: GraphEnv, run_id: str, frame: pd.DataFrame, *, passed: bool = True) -> None:
    """A curated_set version as the curated_set asset writes it: history only, with its GX
    verdict (passed: staged; publication is the evaluation's decision)."""
    rejected = pd.DataFrame(columns=stage_columns("rejected_samples"))
    env.store.write_versions(
        # columns another stage's version has that this frame lacks stay empty
        {
            "curated_set": frame.reindex(columns=stage_columns("curated_set")),
            "rejected_samples": rejected,
        },
        SPEC,
        run_id,
        promote=False,
    )
    env.store.record_gate(SPEC, run_id, "curated_set", "gx_gate", passed, "injected by the test")


def _history(env: GraphEnv) -> pd.DataFrame:
    return env.store.query("SELECT * FROM evaluation_history ORDER BY materialized_at")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphEnv]:
    root = tmp_path_factory.mktemp("evaluation")
    specs_dir = root / "specs"
    data = REPO / "specs" / "data"
    # the tiny spec, but with the demo's 60 real reviews and 45 held-out ones, so usefulness means something
    write_tiny_spec(
        specs_dir,
        replacements={
            "path: data/tiny_seed.csv": f"path: {data / 'product_reviews_seed.csv'}",
            "holdout_path: data/tiny_holdout.csv": f"holdout_path: {data / 'product_reviews_holdout.csv'}",
            # 6 short model answers next to 60 real rows may move macro-F1 by a row or two; the harm
            # side is tested with data built to hurt (test_publication_pipeline.py): here it must only
            # catch the garbage below
            "gates:\n": "evaluation:\n  harm_tolerance: 0.2\ngates:\n",
        },
    )
    with graph_env(root) as environment:
        first = environment.run()
        assert first.success, first.get_failed_step_keys()
        gate = [c for c in first.get_asset_check_evaluations() if c.check_name == GATE_CHECK]
        assert len(gate) == 1 and gate[0].passed and "first good run" in (gate[0].description or "")
        environment.first_run_id = first.run_id
        yield environment


def _latest_metadata(env: GraphEnv) -> dict[str, dg.MetadataValue]:
    record = env.instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=1).records[0]
    return record.asset_materialization.metadata


def test_good_run_reports_every_family_with_plots_and_passes_the_gate(env: GraphEnv) -> None:
    history = _history(env)
    assert len(history) == 1 and bool(history["passed"].iloc[0])
    metrics = json.loads(history["metrics"].iloc[0])
    assert metrics["seed_train_rows"] == 60 and metrics["seed_holdout_rows"] == 45
    assert 0.3 < metrics[GATE_METRIC] <= 1.0
    for key in (
        "distinct_2",
        "self_bleu",
        "length_ks",
        "relevance",
        "label_agreement",
        "label_tvd",
        "tokens_per_curated_sample",
        "usefulness_synthetic_macro_f1",
    ):
        assert key in metrics, key
    # the cost section reads what generated_samples recorded with its version (issue 13 item 5)
    record = env.store.generation_record(SPEC, env.first_run_id)
    assert record is not None and record.samples > 0 and record.calls_made > 0
    assert record.call_seconds and metrics["generation_seconds"] == pytest.approx(record.call_seconds)
    metadata = _latest_metadata(env)
    # top-level numbers, which the UI charts across runs (rounded; full precision in `metrics`)
    assert metadata[GATE_METRIC].value == pytest.approx(metrics[GATE_METRIC], abs=1e-4)
    assert metadata["metrics"].value[GATE_METRIC] == metrics[GATE_METRIC]
    assert "data:image/png;base64," in metadata["report"].value
    report_path = Path(history["report_path"].iloc[0])
    assert report_path.parent.parent == env.store.path.parent / "reports" / SPEC
    for plot in ("label_balance", "attribute_balance", "lengths", "embedding_map", "usefulness"):
        assert (report_path.parent / f"{plot}.png").is_file(), plot
        assert f"]({plot}.png)" in report_path.read_text()
    assert (report_path.parent.parent / "report.md").is_file()

    # usefulness from the seed alone: leave-one-out over the 60 train rows, the curated rows whose
    # prompt showed the held-out row (2 stratified demos each) left out of its fold
    assert metrics["seed_cv_method"] == "leave-one-out" and metrics["seed_cv_rows"] == 60
    for key in (
        "seed_cv_real_macro_f1",
        "seed_cv_real_plus_curated_macro_f1",
        "seed_cv_delta_macro_f1",
        "seed_cv_delta_macro_f1_ci_low",
        "seed_cv_delta_macro_f1_ci_high",
        "seed_cv_kept_share",
    ):
        assert isinstance(metrics[key], float), key
        assert metadata[key].value == pytest.approx(metrics[key], abs=1e-4), key  # charted in the UI
    assert metrics["seed_cv_delta_macro_f1"] == pytest.approx(
        metrics["seed_cv_real_plus_curated_macro_f1"] - metrics["seed_cv_real_macro_f1"]
    )
    assert metrics["seed_cv_delta_macro_f1_ci_low"] <= metrics["seed_cv_delta_macro_f1_ci_high"]
    assert metrics["seed_cv_unknown_lineage_rows"] == 0  # every curated row's prompt was found
    assert 0.9 < metrics["seed_cv_kept_share"] < 1.0
    assert metadata["seed_cv_method"].value == "leave-one-out"
    assert "## Usefulness from the seed alone (cross-validation)" in report_path.read_text()
    # 45 holdout rows: the holdout decides the same-run side, the seed cross-validation is shown
    gate = json.loads(history["details"].iloc[0])["gate"]
    assert gate["same_run"]["basis"] == "holdout" and gate["seed_cv"]["outcome"] == "not judged"


def test_garbage_curated_set_fails_the_blocking_gate_and_is_not_promoted(
    env: GraphEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = env.store.read_current("seed_data", SPEC)
    prompts = env.store.read_current("expanded_prompts", SPEC)["prompt_id"].tolist()
    train = seed[seed["split"] == "train"].reset_index(drop=True)
    garbage = pd.DataFrame(
        {
            "sample_id": [f"garbage-{i}" for i in range(len(train))],
            "prompt_id": [prompts[i % len(prompts)] for i in range(len(train))],
            "label": train["label"].map(ROTATE),
            "text": train["text"],
            "normalized_hash": [f"h{i}" for i in range(len(train))],
        }
    )
    _stage_curated(env, "garbage-curation", garbage)

    published = env.store.read_current("curated_set", SPEC)
    assert set(published["run_id"]) == {env.first_run_id}
    result = env.run(stages=["evaluation_report"])
    assert not result.success
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == GATE_CHECK]
    assert not check.passed and "more than the tolerance" in (check.description or "")
    # both comparisons fail: worse than real only in the same run, and than the last good run
    assert check.metadata["failed_comparisons"].value == "same_run, last_good"
    assert (check.description or "").startswith(
        "FAILED: same run: the curated data makes the classifier worse"
    )
    assert check.metadata["same_run_delta"].value < -0.2 and check.metadata["harm_tolerance"].value == 0.2
    history = _history(env)
    assert history["run_id"].tolist() == [env.first_run_id, result.run_id]
    assert history["passed"].tolist() == [True, False]
    assert history["curated_run_id"].iloc[1] == "garbage-curation"
    assert history["baseline_run_id"].iloc[1] == env.first_run_id
    assert env.store.read_current("evaluation_report", SPEC)["run_id"].tolist() == [env.first_run_id]
    metadata = _latest_metadata(env)
    assert metadata["promoted"].value is False and "**FAILED**" in metadata["report"].value
    # the garbage was evaluated (staged) but is not published: readers and export keep the first run's
    assert env.store.read_current("curated_set", SPEC).equals(published)
    assert metadata["evaluated_curated_version"].value == "garbage-curation"
    assert metadata["published_curated_version"].value == env.first_run_id
    assert metadata["publication"].value.startswith("held back: curated_set run garbage-curation failed")
    assert "| same run: vs real only" in metadata["report"].value  # both comparisons in the report

    assert cli_main(["--db", str(env.store.path), "report", "--spec", SPEC]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Evaluation report") and "FAILED its usefulness gate" in printed
    assert cli_main(["--db", str(env.store.path), "report", "--spec", SPEC, "--good"]) == 0
    assert f"Run `{env.first_run_id}`" in capsys.readouterr().out


def test_failed_curated_attempt_falls_back_and_the_failed_report_is_no_baseline(env: GraphEnv) -> None:
    good = env.store.read_version("curated_set", SPEC, env.first_run_id)
    _stage_curated(env, "restored-curation", good)
    _stage_curated(env, "failed-curation", good.head(1), passed=False)

    result = env.run(stages=["evaluation_report"])
    assert result.success
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == GATE_CHECK]
    assert check.passed
    history = _history(env)
    last = history.iloc[-1]
    # the garbage run in between failed its gate: the comparison is with the first, good run
    assert last["baseline_run_id"] == env.first_run_id and bool(last["passed"])
    assert last["curated_run_id"] == "restored-curation"
    metrics = json.loads(last["metrics"])
    assert metrics[GATE_METRIC] == json.loads(history["metrics"].iloc[0])[GATE_METRIC]
    metadata = _latest_metadata(env)
    assert metadata["fell_back_to_last_good_curated_set"].value is True
    assert "failed-curation" in metadata["notes"].value and "failed its gate" in metadata["notes"].value
    assert env.store.read_current("evaluation_report", SPEC)["run_id"].tolist() == [result.run_id]
    # the staged version passed: it is published now, in place of the first run's
    assert set(env.store.read_current("curated_set", SPEC)["run_id"]) == {"restored-curation"}
    assert metadata["published_curated_version"].value == "restored-curation"
    decisions = env.store.publications(SPEC)
    assert decisions["version_run_id"].tolist()[:2] == ["restored-curation", "garbage-curation"]
    assert decisions["published"].tolist()[:2] == [True, False]
