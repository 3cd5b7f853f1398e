"""The evaluation report without Dagster: metrics on small real frames with known values, the
usefulness comparison, the regression gate on a real regression, inputs read from a real DuckDB file.

The embedding model is the real one (offline, in a wheel); a session fixture (conftest.py) memoizes
it per text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families import FAMILIES, ui_metrics
from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure
from synth_assets.evaluation.gate import GATE_METRIC, usefulness_gate
from synth_assets.evaluation.inputs import (
    BaselineRun,
    EvaluationInputError,
    EvaluationInputs,
    last_good_run,
    load_inputs,
)
from synth_assets.evaluation.report import EvaluationReport, build_report, write_report
from synth_assets.evaluation.usefulness import (
    TrainingSet,
    _encode,
    evaluate_usefulness,
    scores,
    train_and_predict,
)
from synth_assets.seed import load_seed_data
from synth_assets.spec import EvaluationSpec, GenerationSpec, SpecError, load_spec
from synth_assets.storage import Warehouse, stage_columns

REPO = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO / "specs" / "product_reviews.yaml"
Embedder = Callable[[Sequence[str]], np.ndarray]


# ------------------------------------------------------------------------------ diversity, known values


def test_distinct_n_counts_unique_over_all_ngrams() -> None:
    texts = ["a b a b", "A, b!"]  # normalized: "a b a b", "a b"
    assert m.distinct_n(texts, 1) == pytest.approx(2 / 6)
    assert m.distinct_n(texts, 2) == pytest.approx(2 / 4)  # ab ba ab | ab
    assert m.distinct_n(texts, 3) == pytest.approx(2 / 2)  # aba bab
    assert m.distinct_n(["one"], 2) == 0.0
    assert m.vocabulary_size(texts) == 2


def test_self_bleu_and_compression_rank_repetitive_sets_higher() -> None:
    same = ["the battery lasts all week and charges fast"] * 4
    varied = [
        "the battery lasts all week",
        "zipper broke on day one",
        "coffee tastes burnt every time",
        "comfortable shoes for long runs",
    ]
    assert m.self_bleu(same) == pytest.approx(1.0)
    assert m.self_bleu(varied) < 0.1
    assert m.self_bleu(["alone"]) is None
    assert m.compression_ratio(same * 5) > m.compression_ratio(varied * 5) > 0
    assert m.compression_ratio([]) == 0.0


def test_pairwise_and_centroid_distance_on_unit_vectors() -> None:
    eye = np.eye(3, dtype=np.float32)
    assert m.mean_pairwise_distance(eye) == pytest.approx(1.0)  # orthogonal: cosine 0
    assert m.mean_pairwise_distance(np.repeat(eye[:1], 3, axis=0)) == pytest.approx(0.0)
    assert m.mean_pairwise_distance(eye[:1]) is None
    assert m.centroid_distance(eye[:1], eye[:1]) == pytest.approx(0.0)
    assert m.centroid_distance(eye[:1], eye[1:2]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------- fidelity, known values


def test_length_ks_statistic() -> None:
    short = ["a", "a b", "a b c"]
    long = ["a b c d", "a b c d e", "a b c d e f"]
    assert m.length_ks(short, long)[0] == pytest.approx(1.0)  # disjoint lengths: CDFs 1 apart
    assert m.length_ks(short, short)[0] == pytest.approx(0.0)
    assert m.length_ks(["a", "a b c d"], ["a b", "a b c d"])[0] == pytest.approx(0.5)
    assert m.length_ks([], long) is None


def test_mauve_on_real_embeddings_separates_same_from_different(embedder: Embedder) -> None:
    seed = load_seed_data(load_spec(DEMO_SPEC))
    real = embedder(seed["text"].tolist())
    rng = np.random.default_rng(0)
    same = m.mauve_score(real[::2], real[1::2], num_buckets="auto", min_samples=10, seed=1)
    noise = rng.normal(size=(40, real.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    different = m.mauve_score(real, noise, num_buckets="auto", min_samples=10, seed=1)
    assert same.num_buckets == 5  # auto: a tenth of the smaller side (52)
    assert same.score > 0.8 > 0.2 > different.score
    skipped = m.mauve_score(real, real[:5], num_buckets="auto", min_samples=10, seed=1)
    assert skipped.score is None and "at least 10" in skipped.note
    assert m.mauve_buckets(100, 40, 50) == 20  # a set number is capped at half the smaller side


# ------------------------------------------------------------------------------------------------ bias


def _spec(**changes: object) -> GenerationSpec:
    return load_spec(DEMO_SPEC).model_copy(update=changes)


def test_total_variation_distance() -> None:
    assert m.total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert m.total_variation({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert m.total_variation({"a": 0.25, "b": 0.75}, {"a": 0.25, "b": 0.75}) == 0.0


def test_label_and_attribute_balance_with_yield() -> None:
    spec = _spec(num_samples=6)
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(6)],
            "attributes": [
                json.dumps({"product_category": "laptop" if i < 4 else "novel", "length": "one sentence"})
                for i in range(6)
            ],
        }
    )
    samples = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(6)],
            "label": ["positive", "positive", "neutral", "neutral", "negative", "negative"],
        }
    )
    curated = samples.iloc[[0, 1, 2, 4]]  # lost one neutral (laptop) and one negative (novel)
    labels = m.label_balance(spec, samples, curated).set_index("label")
    assert labels.loc["positive", "requested"] == 2 and labels.loc["neutral", "yield"] == 0.5
    # requested 1/3 each, curated 1/2, 1/4, 1/4
    assert m.table_tvd(labels.reset_index()) == pytest.approx(0.5 * (1 / 6 + 1 / 12 + 1 / 12))
    tables = m.attribute_balance(spec, prompts, samples, curated)
    category = tables["product_category"].set_index("value")
    assert category.loc["laptop", "generated"] == 4 and category.loc["laptop", "yield"] == 0.75
    assert category.loc["novel", "yield"] == 0.5 and category.loc["blender", "generated"] == 0
    assert pd.isna(category.loc["blender", "yield"])  # never generated: no yield, not 0
    assert category.loc["laptop", "prompted_share"] == pytest.approx(4 / 6)
    length = tables["length"].set_index("value")
    # requested 2/7, 3/7, 2/7; curated all "one sentence"
    assert m.table_tvd(length.reset_index()) == pytest.approx(5 / 7)


# ------------------------------------------------------------------------------------------ usefulness


def test_vectorized_scores_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = np.array(["positive", "neutral", "negative", "other"], dtype=object)
    for _ in range(20):
        y_true = list(rng.choice(labels[:3], size=15))
        y_pred = list(rng.choice(labels, size=15))  # "other" never occurs in the holdout
        true, pred, k = _encode(y_true, y_pred)
        accuracy, macro_f1 = scores(true, pred, k)
        assert accuracy[0] == pytest.approx(accuracy_score(y_true, y_pred))
        expected = f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0)
        assert macro_f1[0] == pytest.approx(expected)


def test_degenerate_training_sets() -> None:
    test = ["great product", "awful product"]
    predicted, note = train_and_predict(["fine", "good"], ["positive", "positive"], test, seed=0)
    assert list(predicted) == ["positive", "positive"] and "one class only" in note
    assert train_and_predict([], [], test, seed=0) == (None, "no training rows")
    predicted, note = train_and_predict(["!!", "?"], ["positive", "negative"], test, seed=0)
    assert predicted is None and "cannot train" in note
    no_holdout = evaluate_usefulness(
        [TrainingSet("real", "real", ["a"], ["x"])], [], [], seed=0, bootstrap_samples=10
    )
    assert no_holdout.configs == [] and "holdout" in no_holdout.note


def _split_demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Demo seed rows split in two: 30 stay real training rows, 30 play a good synthetic set."""
    seed = load_seed_data(load_spec(DEMO_SPEC))
    train = seed[seed["split"] == "train"]
    pick = train.groupby("label").head(10)  # the demo seed has 20 rows per label
    real = pd.concat([train.drop(pick.index), seed[seed["split"] == "holdout"]], ignore_index=True)
    return real, pick.reset_index(drop=True)[["text", "label"]]


ROTATE = {"positive": "neutral", "neutral": "negative", "negative": "positive"}


def test_usefulness_is_deterministic_with_cis_around_the_estimate() -> None:
    real, synthetic = _split_demo()
    train, holdout = real[real["split"] == "train"], real[real["split"] == "holdout"]
    sets = [
        TrainingSet("real", "real", train["text"].tolist(), train["label"].tolist()),
        TrainingSet("synthetic", "synthetic", synthetic["text"].tolist(), synthetic["label"].tolist()),
    ]
    args = {"seed": 42, "bootstrap_samples": 500}
    first = evaluate_usefulness(sets, holdout["text"].tolist(), holdout["label"].tolist(), **args)
    again = evaluate_usefulness(sets, holdout["text"].tolist(), holdout["label"].tolist(), **args)
    assert first == again
    for config in first.configs:
        low, high = config.macro_f1_ci
        assert low <= config.macro_f1 <= high and high - low < 0.5
        assert 0.34 < config.macro_f1 <= 1.0  # better than chance on 3 balanced classes
    synthetic_result = first.by_name()["synthetic"]
    assert synthetic_result.delta_macro_f1 == pytest.approx(
        synthetic_result.macro_f1 - first.by_name()["real"].macro_f1
    )
    assert synthetic_result.delta_macro_f1_ci[0] <= synthetic_result.delta_macro_f1


# -------------------------------------------------------------------------------------------------- gate


def test_gate_verdicts() -> None:
    good = {GATE_METRIC: 0.80}
    assert usefulness_gate({GATE_METRIC: 0.70}, good, 0.05, "r1").passed is False
    assert usefulness_gate({GATE_METRIC: 0.75}, good, 0.05, "r1").passed  # exactly the tolerance
    assert usefulness_gate({GATE_METRIC: 0.90}, good, 0.05).passed
    first = usefulness_gate({GATE_METRIC: 0.10}, None, 0.05)
    assert first.passed and "first good run" in first.summary
    assert usefulness_gate({GATE_METRIC: None}, good, 0.05).passed  # no holdout: nothing to gate
    assert usefulness_gate({GATE_METRIC: 0.1}, {"yield": 1.0}, 0.05).passed  # old baseline
    failed = usefulness_gate({GATE_METRIC: 0.5}, good, 0.05, "r1")
    assert failed.drop == pytest.approx(0.3) and "0.800 to 0.500" in failed.summary and "r1" in failed.summary


def _inputs(
    seed_rows: pd.DataFrame, synthetic: pd.DataFrame, spec: GenerationSpec, run: str
) -> EvaluationInputs:
    """Stage frames as the pipeline writes them, for a synthetic set; its last 4 rows are rejected."""
    categories, lengths = spec.attributes[0].values, spec.attributes[1].values
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(len(synthetic))],
            "label": synthetic["label"],
            "attributes": [
                json.dumps({"product_category": categories[i % len(categories)], "length": lengths[i % 3]})
                for i in range(len(synthetic))
            ],
        }
    )
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}-{run}" for i in range(len(synthetic))],
            "prompt_id": prompts["prompt_id"],
            "label": synthetic["label"].to_numpy(),
            "text": synthetic["text"].to_numpy(),
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "finish_reason": ["length" if i % 5 == 0 else "stop" for i in range(len(synthetic))],
            "run_id": run,
        }
    )
    curated, rejected = samples.iloc[:-4], samples.iloc[-4:].assign(reasons='["too_short"]')
    return EvaluationInputs(seed_rows, prompts, samples, curated, rejected, run, run)


def test_report_covers_every_metric_family_and_writes_files(embedder: Embedder, tmp_path: Path) -> None:
    real, synthetic = _split_demo()
    # the evaluation defaults (the demo spec may pin its own minimums)
    spec = _spec(num_samples=len(synthetic), evaluation=EvaluationSpec())
    report = build_report(
        spec, run_id="run-1", inputs=_inputs(real, synthetic, spec, "run-1"), embed=embedder
    )
    metrics = report.metrics
    assert (
        metrics["curated"] == 26 and metrics["rejected"] == 4 and metrics["yield"] == pytest.approx(26 / 30)
    )
    assert metrics["truncated_share"] == pytest.approx(6 / 30)
    for key in (
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "self_bleu",
        "embedding_distance",
        "compression_ratio",
    ):
        assert metrics[key] > 0 and metrics[f"seed_{key}"] > 0, key
    assert metrics["vocab_size"] > 50
    # 26 synthetic rows are too few for any distribution score: no number, a "too few rows" verdict
    for key in ("mauve", "length_ks", "length_ks_pvalue", "centroid_distance"):
        assert metrics[key] is None, key
    assert metrics["mauve_status"].startswith("too few rows: MAUVE needs at least 1000")
    assert report.withheld_metrics() == {
        "mauve": metrics["mauve_status"],
        "length_ks": metrics["length_ks_status"],
        "length_ks_pvalue": metrics["length_ks_status"],
        "centroid_distance": metrics["centroid_distance_status"],
    }
    assert -1 <= metrics["relevance"] <= 1 and metrics["label_agreement"] > 0.6
    for config in ("real", "synthetic", "real_plus_curated", "real_plus_uncurated"):
        assert 0.3 < metrics[f"usefulness_{config}_macro_f1"] <= 1, config
        assert metrics[f"usefulness_{config}_macro_f1_ci_low"] <= metrics[f"usefulness_{config}_macro_f1"]
    assert 0 <= metrics["label_tvd"] <= 1 and metrics["attribute_tvd_max"] >= metrics["attribute_tvd_length"]
    assert metrics["completion_tokens"] == 900 and metrics["tokens_per_curated_sample"] == pytest.approx(
        900 / 26
    )
    assert metrics["generation_seconds"] is None
    assert any("generation seconds" in note for note in report.notes)
    json.dumps(metrics, allow_nan=False)  # valid JSON for the history table
    json.dumps(report.details, allow_nan=False)
    assert report.verdict.passed and report.baseline is None

    written = write_report(report, tmp_path / "reports" / spec.name, inline_plots=True)
    assert set(written.plots) == {
        "label_balance",
        "attribute_balance",
        "lengths",
        "embedding_map",
        "usefulness",
    }
    for name, path in written.plots.items():
        assert path.parent == written.path.parent and path.read_bytes()[:4] == b"\x89PNG", name
        assert f"]({path.name})" in written.markdown  # relative link next to the per-run report
    latest = (tmp_path / "reports" / spec.name / "report.md").read_text()
    assert latest.startswith("# Evaluation report") and "](run-1/usefulness.png)" in latest
    assert written.ui_markdown.count("](data:image/png;base64,") == 5
    assert f"| {metrics['mauve_status']} |" in written.markdown  # the fidelity table
    mauve_row = next(line for line in written.markdown.splitlines() if line.startswith("| MAUVE vs real"))
    assert mauve_row == "| MAUVE vs real | too few rows | n/a | — |"
    for section in (
        "Key figures",
        "Usefulness",
        "Diversity",
        "Fidelity",
        "Relevance",
        "Label balance",
        "Attribute balance",
        "Cost",
        "Rejections by reason",
    ):
        assert f"## {section}" in written.markdown, section


def test_distribution_scores_with_lowered_minimums_and_stale_baselines(
    embedder: Embedder, tmp_path: Path
) -> None:
    """With minimums a user lowered on purpose the scores are numbers again; a baseline scored on
    fewer rows than the current minimum (before the minimum existed) is not shown as a verdict."""
    real, synthetic = _split_demo()
    lowered = _spec(num_samples=len(synthetic))
    lowered = lowered.model_copy(
        update={"evaluation": EvaluationSpec(mauve_min_samples=10, distribution_min_rows=10)}
    )
    report = build_report(lowered, run_id="r", inputs=_inputs(real, synthetic, lowered, "r"), embed=embedder)
    metrics = report.metrics
    # the "synthetic" rows are real reviews from the same file: close to the real distribution
    assert metrics["mauve"] > 0.5 and metrics["mauve_buckets"] == 3 and metrics["mauve_status"] is None
    assert 0 <= metrics["length_ks"] < 0.5 and 0 < metrics["centroid_distance"] < 0.3
    assert report.withheld_metrics() == {}
    spec = _spec(num_samples=len(synthetic), evaluation=EvaluationSpec())
    stale = build_report(
        spec,
        run_id="s",
        inputs=_inputs(real, synthetic, spec, "s"),
        embed=embedder,
        baseline=BaselineRun("r", metrics),
    )
    markdown = write_report(stale, tmp_path, inline_plots=False).markdown
    mauve_row = next(line for line in markdown.splitlines() if line.startswith("| MAUVE vs real"))
    assert mauve_row == "| MAUVE vs real | too few rows | too few rows | — |"


def test_gate_fails_on_a_real_regression_and_passes_a_rerun(embedder: Embedder, tmp_path: Path) -> None:
    """A good run, then one whose synthetic labels are garbage (every label rotated: a template bug
    that asks for the wrong sentiment): usefulness of real + curated falls and the gate fails."""
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    good = build_report(spec, run_id="good", inputs=_inputs(real, synthetic, spec, "good"), embed=embedder)
    garbage = synthetic.assign(label=synthetic["label"].map(ROTATE))
    baseline = BaselineRun("good", good.metrics)
    bad = build_report(
        spec, run_id="bad", inputs=_inputs(real, garbage, spec, "bad"), embed=embedder, baseline=baseline
    )
    drop = good.metrics[GATE_METRIC] - bad.metrics[GATE_METRIC]
    assert drop > spec.evaluation.usefulness_tolerance
    assert not bad.verdict.passed and bad.verdict.baseline_run_id == "good"
    # rotated labels also make real + curated worse than real alone in the same run
    assert bad.verdict.failed_comparisons == ["same_run", "last_good"]
    assert good.verdict.same_run.outcome == "passed"  # real reviews as "synthetic" rows do not hurt
    assert bad.metrics["passed"] is False
    assert bad.metrics["label_agreement"] < good.metrics["label_agreement"]  # the judge sees it too
    markdown = write_report(bad, tmp_path, inline_plots=False).markdown
    assert "**FAILED**" in markdown and "Deltas against the last good run `good`" in markdown
    same_run_row = next(line for line in markdown.splitlines() if line.startswith("| same run: vs real only"))
    assert same_run_row.endswith("| harm ≤ 0.030 | **FAILED** |")
    assert f"{bad.verdict.same_run.delta:+.3f} [" in same_run_row
    gate_row = next(line for line in markdown.splitlines() if "real + curated (gate)" in line)
    assert gate_row.endswith(f"| {-drop:+.3f} ▼ |")
    curated_row = next(line for line in markdown.splitlines() if line.startswith("| curated rows"))
    assert curated_row == "| curated rows | 26 | 26 | = |"
    # the same data again is no regression; the key figures show zero deltas against the good run
    again = build_report(
        spec,
        run_id="again",
        inputs=_inputs(real, synthetic, spec, "again"),
        embed=embedder,
        baseline=baseline,
    )
    assert again.verdict.passed and again.metrics[GATE_METRIC] == good.metrics[GATE_METRIC]


def test_spec_without_holdout_skips_usefulness_with_a_note(embedder: Embedder, tmp_path: Path) -> None:
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    train_only = real[real["split"] == "train"]
    report = build_report(spec, run_id="r", inputs=_inputs(train_only, synthetic, spec, "r"), embed=embedder)
    assert report.metrics[GATE_METRIC] is None and report.metrics["label_judge_holdout_accuracy"] is None
    assert report.verdict.passed and "not measured" in report.verdict.summary
    assert any("usefulness skipped" in note and "holdout" in note for note in report.notes)
    written = write_report(report, tmp_path, inline_plots=False)
    assert "Skipped: no real holdout rows" in written.markdown and "usefulness" not in written.plots
    # the seed cross-validation was measured; 30 seed rows are too few to judge by default (40), and
    # these prompts have no recorded lineage, so no fold trained on their rows
    assert report.metrics["seed_cv_method"] == "leave-one-out" and report.metrics["seed_cv_rows"] == 30
    assert report.metrics["seed_cv_unknown_lineage_rows"] == len(synthetic) - 4
    assert report.metrics["seed_cv_delta_macro_f1"] == 0.0
    assert "too few seed rows to judge (30 < 40" in report.verdict.summary
    assert "## Usefulness from the seed alone (cross-validation)" in written.markdown


def test_without_holdout_the_seed_cross_validation_fails_harmful_data(
    embedder: Embedder, tmp_path: Path
) -> None:
    """No holdout: rotated labels on the synthetic rows, zero-shot prompts (they showed no seed row, so
    every fold may train on every row); the seed cross-validation decides the same-run side."""
    real, synthetic = _split_demo()
    train_only = real[real["split"] == "train"]
    rotated = synthetic.assign(label=synthetic["label"].map(ROTATE))
    spec = _spec(num_samples=len(rotated))
    spec = spec.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"harm_min_holdout_rows": 30})}
    )
    inputs = _inputs(train_only, rotated, spec, "r")
    inputs.shown_seed_ids = {str(pid): [] for pid in inputs.prompts["prompt_id"]}
    report = build_report(spec, run_id="r", inputs=inputs, embed=embedder)
    metrics = report.metrics
    assert metrics[GATE_METRIC] is None  # no holdout
    assert metrics["seed_cv_kept_share"] == 1.0 and metrics["seed_cv_unknown_lineage_rows"] == 0
    assert metrics["seed_cv_delta_macro_f1"] < -spec.evaluation.harm_tolerance
    verdict = report.verdict
    assert not verdict.passed and verdict.same_run.basis == "seed_cv"
    assert verdict.summary.startswith("FAILED: same run, by seed cross-validation (leave-one-out over 30")
    written = write_report(report, tmp_path, inline_plots=False)
    assert "| same run: vs real only (seed cross-validation over 30 seed rows) |" in written.markdown
    assert "**FAILED**" in written.markdown and "Method: leave-one-out (30 folds" in written.markdown


def test_one_label_synthetic_set_is_reported_not_crashed(embedder: Embedder) -> None:
    real, synthetic = _split_demo()
    one_label = synthetic[synthetic["label"] == "positive"].reset_index(drop=True)
    spec = _spec(num_samples=len(one_label))
    report = build_report(spec, run_id="r", inputs=_inputs(real, one_label, spec, "r"), embed=embedder)
    synthetic_only = report.usefulness.by_name()["synthetic"]
    assert "one class only" in synthetic_only.note
    assert synthetic_only.macro_f1 == pytest.approx(1 / 6)  # positive F1 0.5, the two others 0
    # 10 samples requested as 4/3/3 (largest remainder), all curated rows positive
    assert report.metrics["label_tvd"] == pytest.approx(0.5 * (0.6 + 0.3 + 0.3))


# --------------------------------------------------------------------------------- inputs from DuckDB


def _frame(stage: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    """A stage frame with every column the layout asks for (unknown ones empty)."""
    return pd.DataFrame(rows).reindex(columns=stage_columns(stage))


def _write_run(store: Warehouse, run: str, texts: list[str], *, curated_passes: bool) -> None:
    prompts = [{"prompt_id": f"p{i}", "label": "positive", "attributes": "{}"} for i in range(len(texts))]
    samples = [
        {
            "sample_id": f"{run}-s{i}",
            "prompt_id": f"p{i}",
            "label": "positive",
            "text": t,
            "completion_tokens": 5,
        }
        for i, t in enumerate(texts)
    ]
    store.write_version("expanded_prompts", "demo", run, _frame("expanded_prompts", prompts), promote=True)
    store.write_version("generated_samples", "demo", run, _frame("generated_samples", samples), promote=True)
    store.write_versions(
        {
            "curated_set": _frame("curated_set", samples[:-1]),
            "rejected_samples": _frame("rejected_samples", [{**samples[-1], "reasons": '["too_short"]'}]),
        },
        "demo",
        run,
        promote=curated_passes,
    )
    store.record_gate(
        "demo", run, "curated_set", "gx_gate", curated_passes, "ok" if curated_passes else "too few"
    )


def test_inputs_fall_back_to_the_last_good_curated_set(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    with pytest.raises(EvaluationInputError, match="no staged rows"):
        load_inputs(store, "demo")
    seed = [{"seed_id": "x", "split": "train", "text": "seed text", "label": "positive", "source_row": 1}]
    store.write_version("seed_data", "demo", "run1", _frame("seed_data", seed), promote=True)
    _write_run(store, "run1", ["good one", "good two", "good three"], curated_passes=True)
    clean = load_inputs(store, "demo")
    assert clean.curated_run_id == "run1" and not clean.fell_back and clean.notes == []
    _write_run(store, "run2", ["bad one", "bad two"], curated_passes=False)
    inputs = load_inputs(store, "demo")
    assert inputs.fell_back and inputs.curated_run_id == "run1"
    assert "run2" in inputs.notes[0] and "failed its gate" in inputs.notes[0]
    assert inputs.curated["text"].tolist() == ["good one", "good two"]
    # run2's samples were promoted, but the evaluated curated set was cut from run1's
    assert inputs.samples["run_id"].unique().tolist() == ["run1"]
    assert inputs.rejected["text"].tolist() == ["good three"]


def test_inputs_say_which_seed_rows_each_curated_prompt_showed(tmp_path: Path) -> None:
    """demo_ids of the curated rows' prompts: from the same run's prompts, else from an earlier version
    of the prompt (its id hashes its demo_ids); unreadable or unknown prompts are left out."""
    store = Warehouse(tmp_path / "w.duckdb")
    seed = [{"seed_id": "train-1", "split": "train", "text": "seed text", "label": "positive"}]
    store.write_version("seed_data", "demo", "run1", _frame("seed_data", seed), promote=True)
    older = [
        {"prompt_id": "p0", "label": "positive", "demo_ids": '["train-1", "train-2"]'},
        {"prompt_id": "p1", "label": "positive", "demo_ids": '["train-9"]'},
    ]
    store.write_version("expanded_prompts", "demo", "run1", _frame("expanded_prompts", older), promote=True)
    newer = [
        {"prompt_id": "p1", "label": "positive", "demo_ids": '["train-3"]'},
        {"prompt_id": "p2", "label": "positive", "demo_ids": "not json"},
        {"prompt_id": "p3", "label": "positive", "demo_ids": "[]"},
    ]
    store.write_version("expanded_prompts", "demo", "run2", _frame("expanded_prompts", newer), promote=True)
    samples = [
        {
            "sample_id": f"s{i}",
            "prompt_id": pid,
            "label": "positive",
            "text": f"text {i}",
            "completion_tokens": 1,
        }
        for i, pid in enumerate(["p0", "p1", "p2", "p3", "p9"])
    ]
    store.write_version(
        "generated_samples", "demo", "run2", _frame("generated_samples", samples), promote=True
    )
    store.write_versions(
        {"curated_set": _frame("curated_set", samples), "rejected_samples": _frame("rejected_samples", [])},
        "demo",
        "run2",
        promote=False,
    )
    store.record_gate("demo", "run2", "curated_set", "gx_gate", True, "ok")
    inputs = load_inputs(store, "demo")
    assert inputs.curated_run_id == "run2"
    # p1 from run2's own prompts (not run1's), p0 from history, p3 showed nothing; p2, p9: unknown
    assert inputs.shown_seed_ids == {"p0": ["train-1", "train-2"], "p1": ["train-3"], "p3": []}


def test_last_good_run_skips_failed_reports(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    for run, passed in (("run1", True), ("run2", False)):
        row = _frame("evaluation_report", [{"metrics": json.dumps({GATE_METRIC: 0.8}), "passed": passed}])
        store.write_version("evaluation_report", "demo", run, row, promote=passed)
    assert last_good_run(store, "demo", exclude_run_id="run3").run_id == "run1"
    assert last_good_run(store, "demo", exclude_run_id="run1") is None
    assert last_good_run(store, "other") is None
    assert store.read_current("evaluation_report", "demo")["run_id"].tolist() == ["run1"]


def test_generation_seconds_from_recorded_calls(tmp_path: Path) -> None:
    """The seconds of the LLM calls behind the samples (their cache keys: `cache_key` and each call
    in `steps`), summed from llm_cache. Moved with the computation to generation, which records it
    with the version (issue 13 item 5): evaluation no longer reads steps itself."""
    from synth_assets.generation.cost import call_keys

    steps = [
        json.dumps({"calls": [{"cache_key": "k1"}, {"cache_key": "k2"}]}),
        json.dumps({"calls": [{}]}),
        None,
    ]
    samples = pd.DataFrame({"cache_key": ["k2", None, "k3"], "steps": steps})
    assert call_keys(samples) == ["k2", "k3", "k1"]
    assert call_keys(pd.DataFrame({"text": ["x"]})) == []
    store = Warehouse(tmp_path / "w.duckdb")
    calls = pd.DataFrame({"cache_key": ["k1", "k2", "k3"], "seconds": [0.5, 0.25, None]})
    store.store_calls(calls)
    assert store.call_seconds(call_keys(samples)) == pytest.approx(0.75)
    assert store.call_seconds(["k3"]) is None and store.call_seconds([]) is None


# ------------------------------------------------------------------------------------------------- spec


def test_evaluation_spec_defaults_and_yaml(tmp_path: Path) -> None:
    assert EvaluationSpec().usefulness_tolerance == 0.05 and EvaluationSpec().mauve_num_buckets == "auto"
    with pytest.raises(ValueError, match="at least 2"):
        EvaluationSpec(mauve_num_buckets=1)
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw["evaluation"] = {"usefulness_tolerance": 0.1, "mauve_num_buckets": 4}
    (tmp_path / "data").symlink_to(REPO / "specs" / "data")
    path = tmp_path / "product_reviews.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    assert spec.evaluation.usefulness_tolerance == 0.1 and spec.evaluation.mauve_num_buckets == 4
    assert spec.evaluation.bootstrap_samples == 1000  # the rest keeps its defaults
    raw["evaluation"]["usefulness_tolerance"] = 2
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"evaluation\.usefulness_tolerance"):
        load_spec(path)
    del raw["evaluation"]
    path.write_text(yaml.safe_dump(raw))
    assert load_spec(path).evaluation == EvaluationSpec()  # the section is optional


def test_per_cell_requested_shares_come_from_the_planned_cells() -> None:
    """per_cell over label x length, n=2: 9 cells of 2 rows. Requested is 1/3 per label and per
    length (the cells), not num_samples split by label_weights [2, 1, 1] and length weights [2, 3, 2]."""
    from synth_assets.generation.prompts import cells_of
    from synth_assets.spec import PerCellSpec

    spec = _spec(
        num_samples=10, label_weights=[2, 1, 1], per_cell=PerCellSpec(attributes=["label", "length"], n=2)
    )
    cells = cells_of(spec) * 2  # exactly n accepted rows per cell
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(len(cells))],
            "attributes": [json.dumps({"length": c["length"], "product_category": "novel"}) for c in cells],
        }
    )
    samples = pd.DataFrame({"prompt_id": prompts["prompt_id"], "label": [c["label"] for c in cells]})
    labels = m.label_balance(spec, samples, samples).set_index("label")
    assert labels["requested"].tolist() == [6, 6, 6]
    assert labels["requested_share"].tolist() == pytest.approx([1 / 3] * 3)
    assert m.table_tvd(labels.reset_index()) == pytest.approx(0.0)
    tables = m.attribute_balance(spec, prompts, samples, samples)
    length = tables["length"].set_index("value")
    assert length["requested_share"].tolist() == pytest.approx([1 / 3] * 3)
    assert m.table_tvd(length.reset_index()) == pytest.approx(0.0)
    # an attribute outside the cells is still sampled with its weights
    category = tables["product_category"].set_index("value")
    assert category.loc["laptop", "requested_share"] == pytest.approx(2 / 15)
    # the curated_set gate's label balance asks for the same shares
    from synth_assets.quality.gates import label_balance_frame

    assert label_balance_frame(samples, spec)["abs_diff"].tolist() == [0.0, 0.0, 0.0]


def test_chinese_near_copies_score_as_similar() -> None:
    """Scripts without spaces: per-character tokens, so a near-copy pair is not 'all distinct'."""
    pair = ["这个电热水壶烧水非常快，把手一点也不烫。", "这个电热水壶烧水非常快，把手一点都不烫。"]
    assert m.distinct_n(pair, 1) < 0.6 and m.distinct_n(pair, 2) < 0.6
    assert m.self_bleu(pair) > 0.7 and m.bleu_tokenizer(pair) == "zh"
    japanese = ["この電気ケトルはすぐに沸きます。", "この電気ケトルはすぐに沸きました。"]
    assert m.distinct_n(japanese, 2) < 0.7 and m.self_bleu(japanese) > 0.5
    thai = ["กาต้มน้ำนี้ต้มน้ำได้เร็วมาก", "กาต้มน้ำนี้ต้มน้ำได้เร็วมากๆ"]
    assert m.bleu_tokenizer(thai) == "char" and m.self_bleu(thai) > 0.5
    assert m.bleu_tokenizer(["an English corpus", "stays on 13a"]) == "13a"


def test_invisible_characters_do_not_count_as_new_words() -> None:
    assert m.distinct_n(["the kettle", "the ket\u200btle"], 1) == pytest.approx(2 / 4)
    assert m.vocabulary_size(["soft\u00adware", "software"]) == 1


# ------------------------------------------------------------------------- metric families as units


class _MeanChars:
    """A real family added the way a maintainer would: mean characters per curated row."""

    name = "mean_chars"
    decides_gate = False
    figures = (Figure("mean_chars", "mean characters per curated row", 0),)

    def compute(self, context: EvaluationContext) -> FamilyResult:
        lengths = context.inputs.curated["text"].str.len()
        return FamilyResult(metrics={"mean_chars": float(lengths.mean())}, notes=["mean_chars: measured"])

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        return ["## Mean length", "", f"{report.metrics['mean_chars']:.1f} characters per curated row.", ""]


def test_a_new_family_is_one_unit_the_report_ui_and_sections_follow(
    embedder: Embedder, tmp_path: Path
) -> None:
    """Registered families decide the sections (in order), the key figures and the UI keys; an added
    family shows up in each without touching the report."""
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    families = (*FAMILIES, _MeanChars())
    built = build_report(
        spec, run_id="r", inputs=_inputs(real, synthetic, spec, "r"), embed=embedder, families=families
    )
    expected = float(synthetic["text"].iloc[:-4].str.len().mean())
    assert built.metrics["mean_chars"] == pytest.approx(expected)
    assert "mean_chars: measured" in built.notes
    assert built.numeric_metrics(ui_metrics(families))["mean_chars"] == pytest.approx(expected, abs=1e-4)
    markdown = write_report(built, tmp_path, inline_plots=False).markdown
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    # the header's key figures, then every family's own sections in registry order, then the preview
    assert headings[0] == "## Key figures" and headings[-1] == "## Curated samples (first 5)"
    family_headings = headings[1:-1]
    assert family_headings[0] == "## Rows per stage" and family_headings[-1] == "## Mean length"
    order = [
        "## Rows per stage",
        "## Usefulness (train on synthetic, test on real)",
        "## Usefulness from the seed alone (cross-validation)",
        "## Diversity",
        "## Vendi score",
        "## Fidelity to the real seed",
        "## Relevance and label faithfulness",
        "## Label balance (requested vs curated)",
        "## Attribute balance and yield per condition",
        "## Cost",
        "## Rejections by reason",
        "## Mean length",
    ]
    assert family_headings == order
    row = next(line for line in markdown.splitlines() if line.startswith("| mean characters per curated row"))
    assert row == f"| mean characters per curated row | {expected:.3f} | n/a | — |"
    # the default registry knows nothing of it
    assert (
        "mean_chars"
        not in build_report(
            spec, run_id="d", inputs=_inputs(real, synthetic, spec, "d"), embed=embedder
        ).metrics
    )


def test_two_families_writing_the_same_metric_key_is_an_error(embedder: Embedder) -> None:
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))

    class Recount(_MeanChars):
        name = "recount"
        figures = ()

        def compute(self, context: EvaluationContext) -> FamilyResult:
            return FamilyResult(metrics={"yield": 1.0})

    with pytest.raises(ValueError, match=r"'recount' writes metrics already written: \['yield'\]"):
        build_report(
            spec,
            run_id="r",
            inputs=_inputs(real, synthetic, spec, "r"),
            embed=embedder,
            families=(*FAMILIES, Recount()),
        )


def test_vendi_score_of_the_curated_set_reads_against_the_real_seed(
    embedder: Embedder, tmp_path: Path
) -> None:
    """Real reviews as the synthetic set score like the size-matched real reference; one review
    copied 30 times scores 1 (one distinct sample), whatever the row count."""
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    varied = build_report(spec, run_id="v", inputs=_inputs(real, synthetic, spec, "v"), embed=embedder)
    metrics = varied.metrics
    assert 1.0 < metrics["vendi_score"] <= 26 and 1.0 < metrics["seed_vendi_score"] <= 26
    assert abs(metrics["vendi_score"] - metrics["seed_vendi_score"]) < 0.25 * metrics["seed_vendi_score"]
    assert metrics["vendi_score_uncurated"] >= metrics["vendi_score"]  # 4 more rows, none a copy
    copies = synthetic.assign(text=synthetic["text"].iloc[0])
    same = build_report(spec, run_id="c", inputs=_inputs(real, copies, spec, "c"), embed=embedder)
    assert same.metrics["vendi_score"] == pytest.approx(1.0, abs=1e-3)
    table = varied.tables["vendi"].set_index("set")
    assert (
        table.loc["synthetic (curated)", "rows"] == 26
        and table.loc["real train (size-matched)", "rows"] == 26
    )
    markdown = write_report(varied, tmp_path, inline_plots=False).markdown
    assert "## Vendi score" in markdown and "Friedman & Dieng 2023" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| Vendi score (effective"))
    assert row.startswith(
        f"| Vendi score (effective number of distinct samples) | {metrics['vendi_score']:.3f} |"
    )


def test_relevance_and_label_agreement_are_curations_own(embedder: Embedder) -> None:
    """The report's relevance is the mean of curation's relevance score under the spec's own
    `curation.relevance_text`, and label agreement is curation's seed classifier's verdict."""
    from synth_assets.curation.label_check import SeedLabelClassifier
    from synth_assets.curation.relevance import condition_texts, relevance_scores

    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    text = "A {{ label }} customer review of a {{ product_category }}."
    spec = spec.model_copy(update={"curation": spec.curation.model_copy(update={"relevance_text": text})})
    inputs = _inputs(real, synthetic, spec, "r")
    built = build_report(spec, run_id="r", inputs=inputs, embed=embedder)
    curated = inputs.curated
    conditions = condition_texts(inputs.prompts, spec.task, spec.labels, text)
    assert conditions["p0"].startswith("A ") and "customer review of a" in conditions["p0"]
    scores = relevance_scores(
        embedder(curated["text"].tolist()), curated["prompt_id"].tolist(), conditions, embedder
    )
    assert built.metrics["relevance"] == pytest.approx(float(scores.mean()), abs=1e-6)
    train = real[real["split"] == "train"]
    classifier = SeedLabelClassifier.fit(
        embedder(train["text"].tolist()), train["label"].tolist(), spec.random_seed
    )
    predicted = classifier.check(embedder(curated["text"].tolist()), curated["label"].tolist(), 0.0).predicted
    agreement = float(np.mean(np.asarray(predicted) == curated["label"].to_numpy()))
    assert built.metrics["label_agreement"] == pytest.approx(agreement)


def test_evaluation_embeds_a_bounded_seed_sample_and_trains_usefulness_on_every_row(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed rows are embedded as curation embeds them: a label-stratified sample of at most
    MAX_SEED_ROWS_EMBEDDED (lowered here to 12 of the 30 train rows); usefulness, the seed
    cross-validation and the row counts still see every row."""
    import synth_assets.evaluation.report as report_module

    monkeypatch.setattr(report_module, "MAX_SEED_ROWS_EMBEDDED", 12)
    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    seen: list[str] = []

    def recording(texts: Sequence[str]) -> np.ndarray:
        seen.extend(texts)
        return embedder(texts)

    built = build_report(spec, run_id="r", inputs=_inputs(real, synthetic, spec, "r"), embed=recording)
    train = real[real["split"] == "train"]
    embedded_train = set(seen) & set(train["text"])
    assert len(embedded_train) == 12  # 4 per label: each label keeps its share
    assert train[train["text"].isin(embedded_train)]["label"].value_counts().tolist() == [4, 4, 4]
    assert built.metrics["seed_train_rows"] == 30 and built.metrics["seed_cv_rows"] == 30
    assert built.usefulness.by_name()["real"].train_rows == 30


def test_a_report_from_some_families_has_only_their_sections_and_plots(
    embedder: Embedder, tmp_path: Path
) -> None:
    from synth_assets.evaluation.families import counts, vendi

    real, synthetic = _split_demo()
    spec = _spec(num_samples=len(synthetic))
    built = build_report(
        spec,
        run_id="r",
        inputs=_inputs(real, synthetic, spec, "r"),
        embed=embedder,
        families=(counts.FAMILY, vendi.FAMILY),
    )
    assert built.metrics["curated"] == 26 and built.metrics["vendi_score"] > 1
    assert GATE_METRIC not in built.metrics and "mauve" not in built.metrics
    written = write_report(built, tmp_path, inline_plots=False)
    headings = [line for line in written.markdown.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Key figures",
        "## Rows per stage",
        "## Vendi score",
        "## Curated samples (first 5)",
    ]
    assert written.plots == {}
    key_figures_section = written.markdown.split("## Key figures")[1].split("## Rows per stage")[0]
    key_rows = [line for line in key_figures_section.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in key_rows[1:]] == [
        "| curated rows",
        "| yield (curated / generated)",
        "| Vendi score (effective number of distinct samples)",
    ]
