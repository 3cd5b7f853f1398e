"""Label fidelity: does a sample fit its intended label better than the other labels, as well as real rows do?

Two scorers give every (text, label) pair a *margin*: the score of the intended label minus the best
score of any other label (> 0: the intended label wins).
- `classifier`: probabilities of the seed classifier (all-MiniLM-L6-v2 embeddings + logistic
  regression, `label_check.SeedLabelClassifier`).
- `likelihood`: the generating model's log-likelihood of the text after the spec's own prompt rendered
  for each label without demos, log p(text | prompt(label)), as in SuperGen (Meng et al. 2022,
  "Generating Training Data with Language Models"), which keeps generations whose label-conditioned
  likelihood is high; the margin compares labels, so a text that any label explains equally well
  (generic, off-task) scores near 0.

Thresholds come from the real seed rows only: the same margin is computed for every seed row (out of
fold for the classifier, by stratified k-fold cross-validation), and a label's threshold is the
(1 - recall) quantile of its real rows' margins, so the filter would keep `recall` of genuine rows of
that label. Per-label thresholds absorb label bias (a label the scorer favours gets a higher bar).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from synth_assets.spec import GenerationSpec

# Scores[i, j]: the scorer's score of text i under label j (log-probabilities or probabilities)
ScoreMatrix = np.ndarray


@dataclass(frozen=True)
class FidelityVerdict:
    """Per sample: margin of its intended label, the threshold it was held to, and whether it failed."""

    margin: np.ndarray  # float, shape (n,)
    threshold: np.ndarray  # float, shape (n,): the intended label's threshold (nan: not judged)
    low: np.ndarray  # bool, shape (n,)
    thresholds_by_label: dict[str, float]


def margins(scores: ScoreMatrix, labels: Sequence[str], intended: Sequence[str]) -> np.ndarray:
    """score(intended) - max score(other labels) per row; nan where the intended label is unknown."""
    column = {label: j for j, label in enumerate(labels)}
    result = np.full(len(intended), np.nan)
    if scores.shape[1] < 2:
        return result
    for i, label in enumerate(intended):
        j = column.get(label)
        if j is None:
            continue
        others = np.delete(scores[i], j)
        result[i] = scores[i, j] - others.max()
    return result


def thresholds_from_seed(
    seed_margins: np.ndarray, seed_labels: Sequence[str], recall: float
) -> dict[str, float]:
    """Per label, the (1 - recall) quantile of the real rows' margins (nan margins ignored).

    Raises ValueError when `recall` is outside (0, 1]."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    found: dict[str, float] = {}
    labels = np.asarray(seed_labels, dtype=object)
    for label in dict.fromkeys(seed_labels):
        values = seed_margins[(labels == label) & ~np.isnan(seed_margins)]
        if len(values):
            found[str(label)] = float(np.quantile(values, 1.0 - recall, method="lower"))
    return found


def judge(
    sample_margins: np.ndarray, intended: Sequence[str], thresholds: dict[str, float]
) -> FidelityVerdict:
    """Low fidelity: a margin below its intended label's threshold (labels without one are kept)."""
    threshold = np.asarray([thresholds.get(label, np.nan) for label in intended], dtype=float)
    low = ~np.isnan(threshold) & ~np.isnan(sample_margins) & (sample_margins < threshold)
    return FidelityVerdict(sample_margins, threshold, low, thresholds)


def out_of_fold_probabilities(
    embeddings: np.ndarray, labels: Sequence[str], random_state: int, folds: int = 5
) -> tuple[np.ndarray, list[str]] | None:
    """Probabilities of each seed row under a classifier that never saw it (stratified k-fold), with
    the label order of the columns; None when a label has fewer rows than 2 (no fold can hold it out)."""
    from sklearn.model_selection import StratifiedKFold

    from synth_assets.curation.label_check import SeedLabelClassifier

    labels_array = np.asarray(labels, dtype=object)
    classes, counts = np.unique(labels_array, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return None
    splitter = StratifiedKFold(
        n_splits=min(folds, int(counts.min())), shuffle=True, random_state=random_state
    )
    probabilities = np.zeros((len(labels_array), len(classes)))
    order = [str(c) for c in classes]
    for train_index, test_index in splitter.split(embeddings, labels_array):
        classifier = SeedLabelClassifier.fit(embeddings[train_index], labels_array[train_index], random_state)
        if classifier is None:
            return None
        fold = classifier.model.predict_proba(embeddings[test_index])  # type: ignore[attr-defined]
        for j, label in enumerate(classifier.labels):
            probabilities[test_index, order.index(label)] = fold[:, j]
    return probabilities, order


def classifier_fidelity(
    seed_embeddings: np.ndarray,
    seed_labels: Sequence[str],
    sample_embeddings: np.ndarray,
    intended: Sequence[str],
    recall: float,
    random_state: int,
) -> FidelityVerdict | None:
    """Seed-classifier margins of the samples, held to thresholds from out-of-fold seed margins.

    None when the seed cannot support the cross-validation (a label with fewer than 2 rows)."""
    from synth_assets.curation.label_check import SeedLabelClassifier

    oof = out_of_fold_probabilities(seed_embeddings, seed_labels, random_state)
    classifier = SeedLabelClassifier.fit(seed_embeddings, seed_labels, random_state)
    if oof is None or classifier is None:
        return None
    seed_probabilities, order = oof
    thresholds = thresholds_from_seed(margins(seed_probabilities, order, seed_labels), seed_labels, recall)
    sample_probabilities = classifier.model.predict_proba(sample_embeddings)  # type: ignore[attr-defined]
    return judge(margins(sample_probabilities, classifier.labels, intended), intended, thresholds)


# (texts, label) -> log p(text | prompt rendered for label), one float per text
LabelLikelihood = Callable[[Sequence[str], str], np.ndarray]


class LikelihoodModel(Protocol):
    """A causal LM that scores text (the local model: `LocalChatModel`)."""

    def log_likelihood(
        self, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 32
    ) -> list[float]: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...


def label_likelihood(spec: GenerationSpec, model: LikelihoodModel) -> LabelLikelihood:
    """log p(text | the spec's prompt for `label`, without demos), in the spec's own mode: the raw
    rendered template continued after it (continuation), or the chat-rendered user turn followed by
    the answer (chat). Attributes take their most likely value, so the label is all that varies."""
    from synth_assets.generation.prompts import prompt_messages, render_prompt

    attributes = {a.name: a.values[int(np.argmax(a.normalized_weights()))] for a in spec.attributes}
    continuation = spec.generation.mode == "continuation"

    def score(texts: Sequence[str], label: str) -> np.ndarray:
        rendered = render_prompt(spec, label, attributes, [])
        if continuation:
            prefix, answers = rendered, [" " + text.strip() for text in texts]
        else:
            prefix = model.render_chat(prompt_messages(spec.generation.system_prompt or "", rendered))
            answers = [text.strip() for text in texts]
        return np.asarray(model.log_likelihood([prefix] * len(answers), answers), dtype=float)

    return score


def likelihood_fidelity(
    log_likelihood: LabelLikelihood,
    labels: Sequence[str],
    seed_texts: Sequence[str],
    seed_labels: Sequence[str],
    sample_texts: Sequence[str],
    intended: Sequence[str],
    recall: float,
) -> FidelityVerdict:
    """Likelihood margins (SuperGen-style) of the samples, held to thresholds from the seed rows'
    margins. The label prompts carry no demos, so a seed row is scored without seeing itself."""
    texts = [*seed_texts, *sample_texts]
    scores = (
        np.column_stack([log_likelihood(texts, label) for label in labels]) if texts else np.zeros((0, 0))
    )
    seed_scores, sample_scores = scores[: len(seed_texts)], scores[len(seed_texts) :]
    thresholds = thresholds_from_seed(margins(seed_scores, labels, seed_labels), seed_labels, recall)
    return judge(margins(sample_scores, labels, intended), intended, thresholds)
