"""Label consistency: does a classifier trained on the real seed rows agree with the intended label?

Sentence embeddings (all-MiniLM-L6-v2) + a logistic regression fitted on the seed TRAIN split with a
fixed seed. A sample is a mismatch only when the classifier *confidently* predicts another label
(probability of its top label >= `label_min_confidence`): with tens of seed rows the classifier is
weak, and an unsure classifier should not overrule the prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_ROWS_PER_LABEL = 2


@dataclass(frozen=True)
class LabelCheck:
    predicted: list[str]  # classifier's top label per sample
    confidence: np.ndarray  # probability of the top label
    intended_probability: np.ndarray  # probability of the intended label (0 if unknown to the seed)
    mismatch: np.ndarray  # confidently predicted another label


@dataclass(frozen=True)
class SeedLabelClassifier:
    """Logistic regression over embeddings of the seed train rows."""

    labels: list[str]
    model: object

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, labels: Sequence[str], random_state: int
    ) -> SeedLabelClassifier | None:
        """None (with no model) when the seed cannot support a classifier: fewer than two labels with
        at least `MIN_ROWS_PER_LABEL` rows each."""
        counts = Counter(labels)
        usable = sorted(label for label, count in counts.items() if count >= MIN_ROWS_PER_LABEL)
        if len(usable) < 2:
            return None
        from sklearn.linear_model import LogisticRegression

        keep = np.asarray([label in usable for label in labels])
        # C=10: embeddings are unit vectors and the seed is small; the default C=1 leaves every
        # probability near 1/k, so nothing would ever be "confident"
        model = LogisticRegression(C=10.0, max_iter=2000, random_state=random_state)
        model.fit(embeddings[keep], np.asarray(labels, dtype=object)[keep])
        return cls(labels=[str(label) for label in model.classes_], model=model)

    def check(self, embeddings: np.ndarray, intended: Sequence[str], min_confidence: float) -> LabelCheck:
        probabilities = self.model.predict_proba(embeddings)  # type: ignore[attr-defined]
        top = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(top)), top]
        predicted = [self.labels[i] for i in top]
        column = {label: i for i, label in enumerate(self.labels)}
        intended_probability = np.asarray(
            [
                probabilities[row, column[label]] if label in column else 0.0
                for row, label in enumerate(intended)
            ]
        )
        mismatch = np.asarray(
            [p != want for p, want in zip(predicted, intended, strict=True)], dtype=bool
        ) & (confidence >= min_confidence)
        return LabelCheck(predicted, confidence, intended_probability, mismatch)
