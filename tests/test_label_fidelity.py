"""Label fidelity: margins against the other labels, thresholds from the real seed rows only."""

from __future__ import annotations

import numpy as np
import pytest

from synth_assets.curation.label_fidelity import (
    classifier_fidelity,
    judge,
    likelihood_fidelity,
    margins,
    thresholds_from_seed,
)


def test_margin_is_the_intended_score_minus_the_best_other() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    result = margins(scores, ["a", "b", "c"], ["a", "c", "x"])
    assert result[0] == pytest.approx(0.5)
    assert result[1] == pytest.approx(-0.1)
    assert np.isnan(result[2])  # a label the scorer does not know is not judged


def test_thresholds_keep_the_requested_share_of_real_rows_per_label() -> None:
    seed_margins = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, -5.0, -4.0])
    labels = ["a"] * 10 + ["b"] * 2
    thresholds = thresholds_from_seed(seed_margins, labels, recall=0.9)
    assert thresholds["a"] == pytest.approx(0.1)  # 9 of the 10 real 'a' rows are at or above it
    assert thresholds["b"] == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="recall"):
        thresholds_from_seed(seed_margins, labels, recall=0.0)


def test_judge_rejects_only_margins_below_their_labels_threshold() -> None:
    verdict = judge(np.array([0.05, 0.5, -1.0, np.nan]), ["a", "a", "z", "a"], {"a": 0.1})
    assert verdict.low.tolist() == [True, False, False, False]


def test_classifier_fidelity_rejects_samples_that_look_like_another_label() -> None:
    rng = np.random.default_rng(0)
    centers = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0])}

    def points(label: str, count: int) -> np.ndarray:
        raw = centers[label] + rng.normal(0, 0.15, size=(count, 3))
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    seed = np.vstack([points("a", 16), points("b", 16)])
    seed_labels = ["a"] * 16 + ["b"] * 16
    samples = np.vstack([points("a", 5), points("b", 5)])
    # the last five ask for 'a' but sit in 'b''s cluster
    verdict = classifier_fidelity(seed, seed_labels, samples, ["a"] * 10, recall=0.9, random_state=0)
    assert verdict is not None
    assert verdict.low.tolist() == [False] * 5 + [True] * 5
    assert classifier_fidelity(seed[:17], seed_labels[:17], samples, ["a"] * 10, 0.9, 0) is None


def test_likelihood_fidelity_uses_the_seed_rows_scores_for_its_thresholds() -> None:
    # a toy "model": a text's log-likelihood under a label is high when it contains the label's word
    def log_likelihood(texts, label):  # type: ignore[no-untyped-def]
        return np.array([-1.0 if label in text else -6.0 for text in texts])

    verdict = likelihood_fidelity(
        log_likelihood,
        ["good", "bad"],
        seed_texts=["good film", "good cast", "bad plot", "bad acting"],
        seed_labels=["good", "good", "bad", "bad"],
        sample_texts=["good music", "a film", "bad good"],
        intended=["good", "good", "good"],
        recall=1.0,
    )
    assert verdict.thresholds_by_label == {"good": 5.0, "bad": 5.0}
    assert verdict.low.tolist() == [False, True, True]


@pytest.mark.slow
def test_the_local_model_scores_a_fitting_continuation_higher_and_independently_of_its_batch() -> None:
    from synth_assets.generation.local_llm import get_local_model

    model = get_local_model()
    prefix = "The capital of France is"
    alone = model.log_likelihood([prefix], [" Paris."])
    batched = model.log_likelihood(
        [prefix, prefix, "A longer prefix with more words in it:"], [" Paris.", " banana.", " x"]
    )
    assert batched[0] == pytest.approx(alone[0], abs=1e-3)  # right padding does not leak into the score
    assert batched[0] > batched[1]
