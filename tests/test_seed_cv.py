"""The seed cross-validation (`evaluation/seed_cv.py`): usefulness from the seed rows alone, with the
lineage filter that keeps a synthetic copy of a held-out row out of that row's fold."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from synth_assets.evaluation.seed_cv import cv_folds, seed_cross_validation, use_loo
from synth_assets.evaluation.usefulness import _encode, scores, train_and_predict

SPORTS = ["football", "goal", "striker", "stadium", "league", "referee", "match", "team", "coach", "fans"]
COOKING = ["pasta", "garlic", "oven", "sauce", "kitchen", "onions", "bread", "soup", "recipe", "butter"]
FILLER = ["the", "a", "today", "again", "really", "very", "was", "is", "we", "our", "new", "old"]


def _sentence(rng: random.Random, topic: list[str], other: list[str]) -> str:
    words = rng.sample(topic, 2) + rng.sample(FILLER, 3) + ([rng.choice(other)] if rng.random() < 0.4 else [])
    rng.shuffle(words)
    return " ".join(words)


def topic_corpus(
    rows: int, synthetic_per_row: int, seed: int = 0
) -> tuple[list[str], list[str], list[str], list[str], list[str], list[list[str]]]:
    """Two noisy topics; each synthetic row comes from a prompt that showed its source row and two
    other random seed rows (as few-shot demos do)."""
    rng = random.Random(seed)
    labels = ["sports" if i % 2 else "cooking" for i in range(rows)]
    texts = [
        _sentence(rng, SPORTS if label == "sports" else COOKING, COOKING if label == "sports" else SPORTS)
        for label in labels
    ]
    ids = [f"train-{i}" for i in range(rows)]
    syn_texts, syn_labels, shown = [], [], []
    for i, label in enumerate(labels):
        for _ in range(synthetic_per_row):
            topic, other = (SPORTS, COOKING) if label == "sports" else (COOKING, SPORTS)
            syn_texts.append(_sentence(rng, topic, other))
            syn_labels.append(label)
            shown.append([ids[i], *rng.sample(ids, 2)])
    return ids, texts, labels, syn_texts, syn_labels, shown


def copycat_corpus(
    rows: int = 40,
) -> tuple[list[str], list[str], list[str], list[str], list[str], list[list[str]]]:
    """Seed rows with no shared vocabulary and labels that vocabulary cannot predict; the synthetic
    rows are near-copies of one seed row each (same label), from a prompt that showed that row.

    A classifier can then get a held-out row right only by training on its copies: exactly the leak."""
    rng = random.Random(1)
    ids = [f"train-{i}" for i in range(rows)]
    texts = [" ".join(f"w{i}x{j}" for j in range(5)) for i in range(rows)]
    labels = ["a" if i % 2 else "b" for i in range(rows)]
    syn_texts, syn_labels, shown = [], [], []
    for i in range(rows):
        for copy in range(3):
            syn_texts.append(f"{texts[i]} copy{copy}")  # a paraphrase of seed row i
            syn_labels.append(labels[i])
            shown.append([ids[i], *rng.sample(ids, 2)])
    return ids, texts, labels, syn_texts, syn_labels, shown


def test_a_synthetic_copy_of_the_held_out_row_never_trains_its_fold() -> None:
    ids, texts, labels, syn_texts, syn_labels, shown = copycat_corpus()
    filtered = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, shown, seed=0, bootstrap_samples=200
    )
    # the same rows with the lineage ignored (no prompt showed anything): what a naive LOO measures
    leaky = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, [[] for _ in shown], seed=0, bootstrap_samples=200
    )
    assert filtered.method == leaky.method == "leave-one-out" and filtered.folds == 40
    # nothing in the other rows predicts a held-out row: real only is no better than a constant guess
    assert filtered.real_macro_f1 == leaky.real_macro_f1 and filtered.real_macro_f1 <= 0.5
    # unfiltered, the held-out row's own copies teach the answer: a perfect, fake, gain
    assert leaky.real_plus_synthetic_macro_f1 == pytest.approx(1.0)
    assert leaky.delta_macro_f1 > 0.4
    # filtered, its copies are out of its fold: no gain is claimed
    assert filtered.real_plus_synthetic_macro_f1 <= 0.5
    assert filtered.delta_macro_f1 == pytest.approx(0.0, abs=0.1)
    # each prompt showed 3 of 40 rows: a fold drops the rows whose prompt showed its held-out row
    assert leaky.kept_share == 1.0
    assert filtered.kept_share is not None and 0.85 < filtered.kept_share < 0.97
    # any position in demo_ids counts (anchor first, then demos): showing it third leaks as well
    third = [[s[1], s[2], s[0]] for s in shown]
    assert seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, third, seed=0, bootstrap_samples=0
    ).delta_macro_f1 == pytest.approx(filtered.delta_macro_f1)


def test_the_k_fold_fallback_filters_every_held_out_row_of_the_fold() -> None:
    ids, texts, labels, syn_texts, syn_labels, shown = copycat_corpus()
    folded = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, shown, seed=0, bootstrap_samples=0, loo_max_work=0
    )
    leaky = seed_cross_validation(
        ids,
        texts,
        labels,
        syn_texts,
        syn_labels,
        [[] for _ in shown],
        seed=0,
        bootstrap_samples=0,
        loo_max_work=0,
    )
    assert folded.method == "stratified 10-fold" and folded.folds == 10
    assert leaky.delta_macro_f1 > 0.4
    assert folded.delta_macro_f1 == pytest.approx(0.0, abs=0.1)
    # 4 rows held out per fold: a prompt showing 3 of 40 rows survives less often than under LOO
    loo = seed_cross_validation(ids, texts, labels, syn_texts, syn_labels, shown, seed=0, bootstrap_samples=0)
    assert folded.kept_share is not None and loo.kept_share is not None
    assert 0.5 < folded.kept_share < loo.kept_share


def test_each_fold_trains_the_model_train_and_predict_would() -> None:
    """Counting words once and recomputing IDF per fold gives exactly the naive loop's predictions
    (a vocabulary fitted on all texts would not: unseen n-grams would shrink the held-out row)."""
    ids, texts, labels, syn_texts, syn_labels, shown = topic_corpus(24, 4)
    for loo_max_work in (10**9, 0):
        result = seed_cross_validation(
            ids,
            texts,
            labels,
            syn_texts,
            syn_labels,
            shown,
            seed=5,
            bootstrap_samples=0,
            loo_max_work=loo_max_work,
        )
        folds = cv_folds(labels, 5, loo=loo_max_work > 0)
        real_pred, mixed_pred = np.empty(24, dtype=object), np.empty(24, dtype=object)
        for test in folds:
            out = {ids[i] for i in test}
            rest = [i for i in range(24) if i not in set(test)]
            keep = [j for j, s in enumerate(shown) if not out & set(s)]
            test_texts = [texts[i] for i in test]
            real_pred[test] = train_and_predict(
                [texts[i] for i in rest], [labels[i] for i in rest], test_texts, 5
            )[0]
            mixed_pred[test] = train_and_predict(
                [texts[i] for i in rest] + [syn_texts[j] for j in keep],
                [labels[i] for i in rest] + [syn_labels[j] for j in keep],
                test_texts,
                5,
            )[0]
        for predicted, measured in (
            (real_pred, result.real_macro_f1),
            (mixed_pred, result.real_plus_synthetic_macro_f1),
        ):
            true, pred, k = _encode(labels, list(predicted))
            assert measured == pytest.approx(float(scores(true, pred, k)[1][0]), abs=1e-12)


def test_bootstrap_interval_is_paired_deterministic_and_optional() -> None:
    ids, texts, labels, syn_texts, syn_labels, shown = topic_corpus(30, 3)
    args = (ids, texts, labels, syn_texts, syn_labels, shown)
    result = seed_cross_validation(*args, seed=3, bootstrap_samples=300)
    assert result.seed_rows == 30 and result.synthetic_rows == 90 and result.unknown_lineage_rows == 0
    for value, interval in (
        (result.real_macro_f1, result.real_macro_f1_ci),
        (result.real_plus_synthetic_macro_f1, result.real_plus_synthetic_macro_f1_ci),
        (result.delta_macro_f1, result.delta_macro_f1_ci),
    ):
        assert value is not None and interval is not None
        low, high = interval
        assert isinstance(low, float) and isinstance(high, float) and low <= value <= high
    assert result.delta_macro_f1 == pytest.approx(result.real_plus_synthetic_macro_f1 - result.real_macro_f1)
    assert -1.0 <= result.delta_macro_f1_ci[0] <= result.delta_macro_f1_ci[1] <= 1.0
    # paired: when both arms predict the same (no synthetic row has a known prompt), every resample
    # scores them the same, so the difference's interval is exactly 0 (independent resamples: not)
    same = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, [None] * len(shown), seed=3, bootstrap_samples=300
    )
    assert same.real_macro_f1_ci is not None and same.real_macro_f1_ci[0] < same.real_macro_f1_ci[1]
    assert same.delta_macro_f1 == 0.0 and same.delta_macro_f1_ci == (0.0, 0.0)
    again = seed_cross_validation(*args, seed=3, bootstrap_samples=300)
    assert again.delta_macro_f1_ci == result.delta_macro_f1_ci
    none = seed_cross_validation(*args, seed=3, bootstrap_samples=0)
    assert none.delta_macro_f1 == result.delta_macro_f1 and none.delta_macro_f1_ci is None
    assert none.real_macro_f1_ci is None and none.real_plus_synthetic_macro_f1_ci is None


def test_rows_of_unknown_prompts_train_no_fold_and_degenerate_seeds_say_why() -> None:
    ids, texts, labels, syn_texts, syn_labels, shown = copycat_corpus(20)
    unknown = seed_cross_validation(
        ids, texts, labels, syn_texts, syn_labels, [None] * len(shown), seed=0, bootstrap_samples=0
    )
    assert unknown.unknown_lineage_rows == len(shown) and unknown.kept_share is None
    assert unknown.real_plus_synthetic_macro_f1 == unknown.real_macro_f1  # nothing synthetic trained
    one_label = seed_cross_validation(ids, texts, ["a"] * 20, [], [], [], seed=0, bootstrap_samples=0)
    assert one_label.method is None and one_label.real_macro_f1 is None
    assert one_label.note == "needs at least 2 seed rows with 2 different labels"
    blank = seed_cross_validation(
        ["s1", "s2"], ["!", "?"], ["a", "b"], [], [], [], seed=0, bootstrap_samples=0
    )
    assert blank.real_macro_f1 is None and (blank.note or "").startswith("cannot train")
    with pytest.raises(ValueError, match="equal lengths"):
        seed_cross_validation(ids, texts, labels, ["x"], ["a"], [], seed=0, bootstrap_samples=0)


def test_folds_cover_every_row_once_and_stratify() -> None:
    labels = ["a"] * 150 + ["b"] * 90 + ["c"] * 60
    loo = cv_folds(labels, 0, loo=True)
    assert len(loo) == 300 and all(len(f) == 1 for f in loo)
    folds = cv_folds(labels, 0, loo=False)
    assert len(folds) == 10
    assert sorted(np.concatenate(folds).tolist()) == list(range(300))
    for fold in folds:  # each fold holds about a tenth of every label
        counts = Counter(labels[i] for i in fold)
        assert (counts["a"], counts["b"], counts["c"]) == (15, 9, 6)
    # every label rarer than k: plain (shuffled) k-fold instead of scikit-learn's refusal
    rare = cv_folds(["a"] * 6 + ["b"] * 6, 0, loo=False)
    assert len(rare) == 10 and sorted(np.concatenate(rare).tolist()) == list(range(12))
    # the cost rule: LOO for a demo-sized seed, k-fold once n * (n + m) is large
    assert use_loo(50, 500) and use_loo(50, 1150) and not use_loo(96, 900) and not use_loo(300, 0)
