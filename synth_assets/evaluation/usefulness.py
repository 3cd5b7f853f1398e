"""Usefulness: train on synthetic (and real) data, test on real held-out rows generation never saw.

One classifier family, TF-IDF + logistic regression (scikit-learn, fixed seed), trained four ways:
(1) the real training seed only, (2) the curated synthetic set only, (3) real + curated synthetic,
(4) real + every generated sample (uncurated). Comparing (3) with (1) says whether the synthetic data
helps; (3) with (4) whether curation helps. Accuracy and macro-F1 get percentile bootstrap CIs over
the holdout rows; the differences to (1) get paired bootstrap CIs (same resamples for both models).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CONFIGS: tuple[tuple[str, str], ...] = (
    ("real", "real train seed only"),
    ("synthetic", "curated synthetic only"),
    ("real_plus_curated", "real + curated synthetic"),
    ("real_plus_uncurated", "real + uncurated synthetic (all generated)"),
)


@dataclass(frozen=True)
class TrainingSet:
    name: str
    description: str
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class ConfigResult:
    name: str
    description: str
    train_rows: int
    accuracy: float | None = None
    macro_f1: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    macro_f1_ci: tuple[float, float] | None = None
    delta_macro_f1: float | None = None  # versus (1) real only
    delta_macro_f1_ci: tuple[float, float] | None = None
    note: str | None = None


@dataclass(frozen=True)
class UsefulnessResult:
    holdout_rows: int
    configs: list[ConfigResult] = field(default_factory=list)
    note: str | None = None  # why nothing was measured (no holdout...)

    def by_name(self) -> dict[str, ConfigResult]:
        return {config.name: config for config in self.configs}


# The classifier, in one place: the holdout usefulness (`train_and_predict`) and the seed
# cross-validation (`seed_cv.py`) build exactly these, so their numbers are about the same model.
# Tokenization of TfidfVectorizer(**TOKENIZER_OPTIONS, sublinear_tf=True) (smooth IDF, l2 norm).
TOKENIZER_OPTIONS: dict[str, Any] = {"ngram_range": (1, 2), "strip_accents": "unicode"}


def logistic_regression(seed: int, **options: Any) -> Any:
    """The logistic regression of every usefulness measurement (scikit-learn defaults: L2, C=1, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    # balanced: a synthetic set with a skewed label mix should not win by predicting the majority
    return LogisticRegression(max_iter=2000, random_state=seed, class_weight="balanced", **options)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run scikit-learn/numpy on one thread (OpenMP and BLAS pools).

    Measured on this 2-core box while another process used the CPU: one lbfgs fit on 935 x 6968
    TF-IDF rows took 3.0 s of CPU with the default 2 OpenMP threads and 0.22 s with one thread
    (identical coefficients): at these sizes the threads spend their time synchronizing (DESIGN.md,
    "OpenMP spin-wait collapse")."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def train_and_predict(
    train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str], seed: int
) -> tuple[np.ndarray | None, str | None]:
    """Predictions of TF-IDF (word 1-2 grams) + logistic regression, or (None, why) when no model
    can be trained. One training class only: the model degenerates to predicting that class."""
    if not train_texts:
        return None, "no training rows"
    classes = sorted(set(train_labels))
    if len(classes) == 1:
        return np.array([classes[0]] * len(test_texts), dtype=object), (
            f"one class only ('{classes[0]}'): predicts it for every row"
        )
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(**TOKENIZER_OPTIONS, sublinear_tf=True), logistic_regression(seed))
    try:
        with single_threaded():
            model.fit(list(train_texts), list(train_labels))
            predicted = model.predict(list(test_texts))
    except ValueError as exc:  # e.g. "empty vocabulary": every text is blank or punctuation
        return None, f"cannot train: {exc}"
    return np.asarray(predicted, dtype=object), None


def _encode(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes over the classes present in the holdout; a predicted class absent from the
    holdout becomes -1 (a miss for the true class, no false positive for any scored class)."""
    classes = sorted(set(y_true))
    index = {label: i for i, label in enumerate(classes)}
    true = np.array([index[label] for label in y_true], dtype=int)
    pred = np.array([index.get(label, -1) for label in y_pred], dtype=int)
    return true, pred, len(classes)


def scores(true: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 for each row of (resamples x rows) code matrices, vectorized.

    Macro-F1 averages per-class F1 = 2tp / (2tp + fp + fn) over the holdout's classes, 0 when a class
    has no tp, fp or fn: sklearn's f1_score(average='macro', labels=holdout classes, zero_division=0)."""
    true, pred = np.atleast_2d(true), np.atleast_2d(pred)
    accuracy = (true == pred).mean(axis=1)
    f1 = np.zeros((true.shape[0], n_classes))
    for c in range(n_classes):
        is_true, is_pred = true == c, pred == c
        tp = (is_true & is_pred).sum(axis=1)
        denominator = 2 * tp + (is_pred & ~is_true).sum(axis=1) + (is_true & ~is_pred).sum(axis=1)
        f1[:, c] = np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    return accuracy, f1.mean(axis=1)


def _interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def evaluate_usefulness(
    training_sets: Sequence[TrainingSet],
    holdout_texts: Sequence[str],
    holdout_labels: Sequence[str],
    *,
    seed: int,
    bootstrap_samples: int,
) -> UsefulnessResult:
    """Train each set's classifier, score it on the holdout, bootstrap CIs with one fixed seed."""
    if not len(holdout_texts):
        return UsefulnessResult(0, note="no real holdout rows: usefulness needs seed.holdout_path")
    rng = np.random.default_rng(seed)
    n = len(holdout_texts)
    # one set of resamples shared by every config: CIs of differences are paired
    resamples = rng.integers(0, n, size=(bootstrap_samples, n)) if bootstrap_samples else None
    predictions: dict[str, np.ndarray] = {}
    results: list[ConfigResult] = []
    boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for training in training_sets:
        predicted, note = train_and_predict(training.texts, training.labels, holdout_texts, seed)
        if predicted is None:
            results.append(ConfigResult(training.name, training.description, len(training.texts), note=note))
            continue
        predictions[training.name] = predicted
        true, pred, k = _encode(holdout_labels, list(predicted))
        accuracy, macro_f1 = scores(true, pred, k)
        accuracy_ci = macro_f1_ci = None
        if resamples is not None:
            boot[training.name] = scores(true[resamples], pred[resamples], k)
            accuracy_ci, macro_f1_ci = _interval(boot[training.name][0]), _interval(boot[training.name][1])
        results.append(
            ConfigResult(
                training.name,
                training.description,
                len(training.texts),
                accuracy=float(accuracy[0]),
                macro_f1=float(macro_f1[0]),
                accuracy_ci=accuracy_ci,
                macro_f1_ci=macro_f1_ci,
                note=note,
            )
        )
    baseline = next((r for r in results if r.name == "real" and r.macro_f1 is not None), None)
    if baseline is None:
        return UsefulnessResult(n, results)
    with_deltas = []
    for result in results:
        if result.macro_f1 is None or result.name == "real":
            with_deltas.append(result)
            continue
        delta_ci = None
        if result.name in boot and "real" in boot:
            delta_ci = _interval(boot[result.name][1] - boot["real"][1])
        with_deltas.append(
            replace(result, delta_macro_f1=result.macro_f1 - baseline.macro_f1, delta_macro_f1_ci=delta_ci)
        )
    return UsefulnessResult(n, with_deltas)
