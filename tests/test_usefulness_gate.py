"""The usefulness gate's pure logic (no Dagster, no DuckDB): the same-run harm comparison, the
regression comparison, the publication decision, and distribution scores withheld on too few rows."""

from __future__ import annotations

import numpy as np
import pytest

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families import seed_cv as seed_cv_family
from synth_assets.evaluation.families import usefulness as usefulness_family
from synth_assets.evaluation.gate import (
    DEFAULT_HARM_MIN_HOLDOUT_ROWS,
    DEFAULT_HARM_TOLERANCE,
    DELTA_METRIC,
    GATE_METRIC,
    REAL_METRIC,
    SEED_CV_DELTA_METRIC,
    SEED_CV_METRIC,
    SEED_CV_REAL_METRIC,
    publication_decision,
    usefulness_gate,
)
from synth_assets.evaluation.seed_cv import seed_cross_validation
from synth_assets.evaluation.usefulness import CONFIGS, TrainingSet, evaluate_usefulness
from synth_assets.spec import EvaluationSpec


def run_metrics(
    with_synthetic: float | None,
    real: float | None,
    holdout: int = 45,
    ci: tuple[float, float] | None = None,
) -> dict[str, object]:
    """The flat metrics `build_report` writes, as far as the gate reads them."""
    out: dict[str, object] = {GATE_METRIC: with_synthetic, REAL_METRIC: real, "seed_holdout_rows": holdout}
    if ci:
        out[f"{DELTA_METRIC}_ci_low"], out[f"{DELTA_METRIC}_ci_high"] = ci
    return out


# ------------------------------------------------------------------------------------ same run (harm)


def test_first_run_whose_synthetic_data_hurts_fails() -> None:
    # the demo of issue 9: real only 0.819, real + curated 0.778, 45 holdout rows, no earlier run
    verdict = usefulness_gate(run_metrics(0.778, 0.819, ci=(-0.12, 0.03)), None, 0.05)
    assert not verdict.passed
    assert verdict.failed_comparisons == ["same_run"]
    assert verdict.same_run.outcome == "failed" and verdict.last_good.outcome == "not judged"
    assert verdict.same_run.delta == pytest.approx(-0.041)
    # the summary names the failed comparison first, with its numbers
    assert verdict.summary.startswith("FAILED: same run: the curated data makes the classifier worse")
    for part in (
        "0.778",
        "0.819",
        "-0.041",
        "[-0.120, +0.030]",
        "harm tolerance 0.030",
        "no earlier good run",
    ):
        assert part in verdict.summary, part


def test_harm_within_the_tolerance_passes_and_the_boundary_is_inclusive() -> None:
    assert usefulness_gate(run_metrics(0.80, 0.819), None, 0.05).passed  # -0.019
    assert usefulness_gate(run_metrics(0.79, 0.82), None, 0.05, harm_tolerance=0.03).passed  # exactly
    assert not usefulness_gate(run_metrics(0.789, 0.82), None, 0.05, harm_tolerance=0.03).passed
    helped = usefulness_gate(run_metrics(0.90, 0.82), None, 0.05)
    assert helped.passed and helped.same_run.outcome == "passed" and "+0.080" in helped.summary


def test_the_point_estimate_decides_not_the_confidence_interval() -> None:
    # a significant but tolerable loss passes; an insignificant loss beyond the tolerance fails
    assert usefulness_gate(run_metrics(0.80, 0.82, holdout=2000, ci=(-0.03, -0.01)), None, 0.05).passed
    assert not usefulness_gate(run_metrics(0.70, 0.82, ci=(-0.30, 0.05)), None, 0.05).passed


def test_too_small_or_missing_holdout_is_not_judged() -> None:
    tiny = usefulness_gate(run_metrics(0.33, 1.0, holdout=3), None, 0.05)
    assert tiny.passed and tiny.same_run.outcome == "not judged"
    assert "too few holdout rows to judge (3 < 40" in tiny.summary
    # the minimum is a setting: the same numbers on 3 rows fail when the user accepts 3 rows
    assert not usefulness_gate(run_metrics(0.33, 1.0, holdout=3), None, 0.05, harm_min_holdout_rows=3).passed
    for metrics in (run_metrics(None, None, holdout=0), run_metrics(0.8, None), {GATE_METRIC: 0.8}):
        verdict = usefulness_gate(metrics, None, 0.05)
        assert verdict.passed and verdict.same_run.outcome == "not judged", metrics


# --------------------------------------------------------------------------- regression vs last good


def test_regression_side_still_fails_on_its_own() -> None:
    good = {GATE_METRIC: 0.80}
    verdict = usefulness_gate(run_metrics(0.70, 0.69), good, 0.05, "r1")
    assert not verdict.passed and verdict.failed_comparisons == ["last_good"]
    assert verdict.summary.startswith("FAILED: vs last good run: macro-F1 (real + curated) fell from 0.800")
    assert "r1" in verdict.summary and "same run:" in verdict.summary  # the passing side is shown too
    assert verdict.drop == pytest.approx(0.10) and verdict.baseline_run_id == "r1"


def test_both_comparisons_can_fail_and_both_are_named() -> None:
    verdict = usefulness_gate(run_metrics(0.50, 0.80), {GATE_METRIC: 0.80}, 0.05, "r1")
    assert verdict.failed_comparisons == ["same_run", "last_good"]
    assert verdict.summary.count("FAILED") == 1 and "same run:" in verdict.summary
    assert "fell from 0.800 to 0.500" in verdict.summary
    as_dict = verdict.as_dict()
    assert as_dict["same_run"]["outcome"] == "failed" and as_dict["last_good"]["passed"] is False


def test_defaults_are_the_spec_defaults() -> None:
    spec = EvaluationSpec()
    assert spec.harm_tolerance == DEFAULT_HARM_TOLERANCE
    assert spec.harm_min_holdout_rows == DEFAULT_HARM_MIN_HOLDOUT_ROWS
    # a single holdout row (about 1/n of macro-F1) must not decide at the minimum size
    assert 1 / spec.harm_min_holdout_rows < spec.harm_tolerance


def test_usefulness_measurement_feeds_the_gate() -> None:
    """Train for real: synthetic rows whose labels contradict the real ones fail the first run."""
    sports = ["football match in the stadium", "the striker scored a goal", "the team won the league"]
    cooking = ["pasta simmered in garlic sauce", "bake the bread in the oven", "chop onions for the soup"]
    train_texts, train_labels = sports + cooking, ["sports"] * 3 + ["cooking"] * 3
    holdout = [f"{text} today" for text in sports * 7] + [f"{text} today" for text in cooking * 7]
    holdout_labels = ["sports"] * 21 + ["cooking"] * 21
    inverted = [f"{text} again" for text in cooking * 3] + [f"{text} again" for text in sports * 3]
    inverted_labels = ["sports"] * 9 + ["cooking"] * 9
    sets = {
        "real": (train_texts, train_labels),
        "synthetic": (inverted, inverted_labels),
        "real_plus_curated": (train_texts + inverted, train_labels + inverted_labels),
        "real_plus_uncurated": (train_texts + inverted, train_labels + inverted_labels),
    }
    result = evaluate_usefulness(
        [TrainingSet(name, description, *sets[name]) for name, description in CONFIGS],
        holdout,
        holdout_labels,
        seed=0,
        bootstrap_samples=200,
    )
    metrics = {**usefulness_family.usefulness_metrics(result), "seed_holdout_rows": len(holdout)}
    assert metrics[REAL_METRIC] == pytest.approx(1.0)
    low, high = metrics[f"{DELTA_METRIC}_ci_low"], metrics[f"{DELTA_METRIC}_ci_high"]
    assert low is not None and high is not None and low <= metrics[DELTA_METRIC] <= high
    verdict = usefulness_gate(metrics, None, 0.05)
    assert not verdict.passed and verdict.same_run.delta == pytest.approx(metrics[DELTA_METRIC])
    assert verdict.same_run.delta_ci == (low, high)


# ------------------------------------------------------------------ same run by seed cross-validation


def seed_cv_metrics(
    with_synthetic: float, real: float, rows: int = 48, ci: tuple[float, float] | None = None
) -> dict[str, object]:
    """The seed cross-validation keys `build_report` writes, as far as the gate reads them."""
    out: dict[str, object] = {
        SEED_CV_METRIC: with_synthetic,
        SEED_CV_REAL_METRIC: real,
        "seed_cv_rows": rows,
        "seed_cv_method": "leave-one-out",
    }
    if ci:
        out[f"{SEED_CV_DELTA_METRIC}_ci_low"], out[f"{SEED_CV_DELTA_METRIC}_ci_high"] = ci
    return out


def test_without_a_holdout_the_seed_cross_validation_judges_the_same_run() -> None:
    no_holdout = run_metrics(None, None, holdout=0)
    hurt = usefulness_gate({**no_holdout, **seed_cv_metrics(0.60, 0.65, ci=(-0.12, 0.02))}, None, 0.05)
    assert not hurt.passed and hurt.failed_comparisons == ["same_run"]
    assert hurt.same_run.basis == "seed_cv" and hurt.same_run.outcome == "failed"
    assert hurt.seed_cv is hurt.same_run and hurt.same_run.seed_cv_rows == 48
    assert hurt.same_run.delta == pytest.approx(-0.05) and hurt.same_run.delta_ci == (-0.12, 0.02)
    assert hurt.summary.startswith(
        "FAILED: same run, by seed cross-validation (leave-one-out over 48 seed rows, as the holdout "
        "cannot judge: no holdout usefulness measured): the curated data makes the classifier worse"
    )
    for part in ("0.600", "0.650", "-0.050", "[-0.120, +0.020]", "harm tolerance 0.030"):
        assert part in hurt.summary, part
    assert (
        hurt.as_dict()["same_run"]["basis"] == "seed_cv" and hurt.as_dict()["seed_cv"]["outcome"] == "failed"
    )
    helped = usefulness_gate({**no_holdout, **seed_cv_metrics(0.70, 0.65)}, None, 0.05)
    assert helped.passed and helped.same_run.outcome == "passed" and helped.same_run.basis == "seed_cv"
    assert "within the harm tolerance" in helped.summary and "+0.050" in helped.summary
    # the same rule: exactly the tolerance passes, beyond it fails
    assert usefulness_gate({**no_holdout, **seed_cv_metrics(0.62, 0.65)}, None, 0.05).passed
    assert not usefulness_gate({**no_holdout, **seed_cv_metrics(0.619, 0.65)}, None, 0.05).passed


def test_a_too_small_holdout_hands_the_verdict_to_the_seed_cross_validation() -> None:
    # the holdout would pass (+0.1 on 3 rows) but cannot judge; 48 seed rows say the data hurts
    verdict = usefulness_gate({**run_metrics(0.9, 0.8, holdout=3), **seed_cv_metrics(0.5, 0.6)}, None, 0.05)
    assert not verdict.passed and verdict.same_run.basis == "seed_cv"
    assert "as the holdout cannot judge: only 3 holdout rows, fewer than 40" in verdict.summary
    assert verdict.same_run.holdout_rows == 3


def test_with_a_usable_holdout_the_holdout_decides_and_the_seed_cv_is_shown() -> None:
    # a harmful seed cross-validation does not fail a run whose holdout says the data helps
    verdict = usefulness_gate({**run_metrics(0.90, 0.80), **seed_cv_metrics(0.40, 0.60)}, None, 0.05)
    assert verdict.passed and verdict.same_run.basis == "holdout" and verdict.same_run.outcome == "passed"
    assert verdict.seed_cv is not None and verdict.seed_cv.outcome == "not judged"
    assert verdict.seed_cv.delta == pytest.approx(-0.20)
    assert "shown only, the holdout decides" in verdict.seed_cv.summary
    assert "seed cross-validation" not in verdict.summary
    # and the other way round: the holdout fails it, whatever the seed cross-validation says
    assert not usefulness_gate({**run_metrics(0.70, 0.80), **seed_cv_metrics(0.90, 0.60)}, None, 0.05).passed


def test_seed_cross_validation_on_too_few_seed_rows_does_not_judge() -> None:
    metrics = {**run_metrics(None, None, holdout=0), **seed_cv_metrics(0.3, 0.9, rows=20)}
    verdict = usefulness_gate(metrics, None, 0.05)
    assert verdict.passed and verdict.same_run.outcome == "not judged" and verdict.same_run.basis == "holdout"
    assert "too few seed rows to judge (20 < 40" in verdict.summary
    assert verdict.seed_cv is not None and verdict.seed_cv.outcome == "not judged"
    # the minimum is harm_min_holdout_rows: a user who accepts 20 rows gets a verdict
    assert not usefulness_gate(metrics, None, 0.05, harm_min_holdout_rows=20).passed
    # not measured at all (self-instruct, or a report from before): said so
    nothing = usefulness_gate(run_metrics(None, None, holdout=0), None, 0.05)
    assert nothing.passed and nothing.seed_cv is None
    assert "no seed cross-validation to judge by either" in nothing.summary


def test_seed_cross_validation_measurement_feeds_the_gate() -> None:
    """Train for real, without a holdout: synthetic rows whose labels contradict the seed fail the run."""
    rng = np.random.default_rng(0)
    sports = ["football", "goal", "striker", "stadium", "league", "referee", "match", "team"]
    cooking = ["pasta", "garlic", "oven", "sauce", "kitchen", "onions", "bread", "soup"]
    filler = ["the", "a", "today", "again", "was", "is", "our", "new"]

    def sentence(topic: list[str]) -> str:
        return " ".join([*rng.choice(topic, 2, replace=False), *rng.choice(filler, 3, replace=False)])

    labels = ["sports", "cooking"] * 24
    texts = [sentence(sports if label == "sports" else cooking) for label in labels]
    ids = [f"train-{i}" for i in range(48)]
    # a template bug: sports sentences labeled cooking and the other way round, 4 per seed row
    swapped = {"sports": "cooking", "cooking": "sports"}
    syn_texts = [sentence(sports if label == "sports" else cooking) for label in labels for _ in range(4)]
    syn_labels = [swapped[label] for label in labels for _ in range(4)]
    shown = [[ids[i], ids[(i + 1) % 48]] for i in range(48) for _ in range(4)]
    result = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, shown, seed=0, bootstrap_samples=200
    )
    metrics = {**run_metrics(None, None, holdout=0), **seed_cv_family.seed_cv_metrics(result)}
    assert metrics[SEED_CV_REAL_METRIC] > 0.9 and metrics[SEED_CV_DELTA_METRIC] < -0.3
    verdict = usefulness_gate(metrics, None, 0.05)
    assert not verdict.passed and verdict.same_run.basis == "seed_cv"
    assert verdict.same_run.delta == pytest.approx(metrics[SEED_CV_DELTA_METRIC])
    assert verdict.same_run.delta_ci == (
        metrics[f"{SEED_CV_DELTA_METRIC}_ci_low"],
        metrics[f"{SEED_CV_DELTA_METRIC}_ci_high"],
    )


# ------------------------------------------------------------------------------------- publication


def test_publication_follows_the_gate() -> None:
    good = usefulness_gate(run_metrics(0.85, 0.82), None, 0.05)
    bad = usefulness_gate(run_metrics(0.70, 0.82), None, 0.05)
    first = publication_decision(good, "r2", None)
    assert first.publish and first.published_run_id == "r2" and first.note.startswith("published: ")
    replaced = publication_decision(good, "r2", "r1")
    assert replaced.publish and "replaces run r1" in replaced.note
    held = publication_decision(bad, "r2", "r1")
    assert not held.publish and held.published_run_id == "r1" and held.status == "held back"
    assert held.note.startswith("held back: curated_set run r2 failed the usefulness gate (same run:")
    assert "run r1 stays the published version" in held.note
    nothing = publication_decision(bad, "r2", None)
    assert nothing.published_run_id is None and "export has nothing to write" in nothing.note
    # an already published version that fails a re-evaluation is not silently unpublished
    again = publication_decision(bad, "r1", "r1")
    assert not again.publish and again.published_run_id == "r1" and "stays published" in again.note
    assert not publication_decision(good, None, "r1").publish  # nothing was evaluated


# ----------------------------------------------------------------------------- distribution scores


def test_distribution_scores_say_too_few_rows_instead_of_a_number() -> None:
    rng = np.random.default_rng(0)
    real, synthetic = rng.normal(size=(105, 8)), rng.normal(size=(27, 8))
    mauve = m.mauve_score(real, synthetic, num_buckets="auto", min_samples=1000, seed=0)
    assert mauve.score is None and mauve.num_buckets is None
    assert mauve.note == (
        "too few rows: MAUVE needs at least 1000 real and 1000 synthetic rows (have 105 and 27)"
    )
    texts_real, texts_synthetic = ["a b c"] * 105, ["a b"] * 27
    small = m.distribution_scores(texts_real, texts_synthetic, real, synthetic, min_rows=100)
    assert small["length_ks"] is None and small["length_ks_pvalue"] is None
    assert small["centroid_distance"] is None
    assert small["length_ks_status"].startswith("too few rows: length KS needs at least 100")
    assert small["centroid_distance_status"].startswith("too few rows: centroid distance")
    enough = m.distribution_scores(texts_real, texts_synthetic, real, synthetic, min_rows=20)
    assert enough["length_ks"] == pytest.approx(1.0) and enough["length_ks_status"] is None
    assert enough["centroid_distance"] is not None and enough["centroid_distance_status"] is None
    assert m.too_few_rows("x", 5, 5, 5) is None
