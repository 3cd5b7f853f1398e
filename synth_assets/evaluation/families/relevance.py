"""Relevance and label faithfulness, with curation's own definitions: relevance is the cosine between
a sample and its prompt's condition text (`curation.relevance`: `curation.relevance_text`, else task,
label and attribute values), label agreement is the share of samples the seed classifier
(`curation.label_check.SeedLabelClassifier`, fitted on the embedded seed sample) predicts as their
intended label. So the report measures what curation filtered on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from synth_assets.curation.label_check import SeedLabelClassifier
from synth_assets.curation.relevance import condition_texts, default_condition, relevance_scores
from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, fmt, md_table

if TYPE_CHECKING:
    import pandas as pd

    from synth_assets.evaluation.report import EvaluationReport


def _mean(values: np.ndarray) -> float | None:
    """Mean over the scored rows (NaN: a sample whose prompt is unknown), None when none is scored."""
    scored = values[~np.isnan(values)] if len(values) else values
    return float(scored.mean()) if len(scored) else None


def task_label_relevance(
    context: EvaluationContext, vectors: np.ndarray, labels: Sequence[str]
) -> np.ndarray:
    """Cosine of each row with its label's condition text without attributes (real rows have none)."""
    conditions = {str(label): default_condition(context.spec.task, str(label), {}) for label in set(labels)}
    return relevance_scores(vectors, [str(label) for label in labels], conditions, context.embed)


def _agreement(classifier: SeedLabelClassifier, vectors: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """Per row: does the seed classifier's top label equal the row's label."""
    if not len(frame):
        return np.zeros(0, bool)
    labels = frame["label"].astype(str).tolist()
    predicted = classifier.check(vectors, labels, min_confidence=0.0).predicted
    return np.asarray(predicted, dtype=object) == np.asarray(labels, dtype=object)


class Relevance:
    name = "relevance"
    decides_gate = False
    figures = (
        Figure("relevance", "relevance to task and conditions", 1, card=True),
        Figure("label_agreement", "label agreement (real-seed classifier)", 1, card=True),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        spec, inputs, vectors = context.spec, context.inputs, context.vectors
        curated, train = inputs.curated, context.embedded_train
        conditions = condition_texts(inputs.prompts, spec.task, spec.labels, spec.curation.relevance_text)
        relevance = relevance_scores(
            vectors["curated"], curated["prompt_id"].astype(str).tolist(), conditions, context.embed
        )
        metrics: dict[str, Any] = {
            "relevance": _mean(relevance),
            "seed_relevance": _mean(task_label_relevance(context, vectors["train"], train["label"].tolist())),
            # real rows have no attribute values: compare them with synthetic rows on task + label alone
            "relevance_task_label": _mean(
                task_label_relevance(context, vectors["curated"], curated["label"].tolist())
            ),
        }
        classifier = SeedLabelClassifier.fit(
            vectors["train"], train["label"].astype(str).tolist(), context.seed
        )
        if classifier is None:
            metrics |= {
                "label_agreement": None,
                "label_agreement_uncurated": None,
                "label_judge_holdout_accuracy": None,
            }
            note = "label agreement skipped: the real training seed has fewer than two labels with 2+ rows"
            return FamilyResult(metrics=metrics, notes=[note], details={"faithfulness_per_label": []})
        agrees = _agreement(classifier, vectors["curated"], curated)
        metrics |= {
            "label_agreement": _mean(agrees.astype(float)),
            "label_agreement_uncurated": _mean(
                _agreement(classifier, vectors["samples"], inputs.samples).astype(float)
            ),
            "label_judge_holdout_accuracy": _mean(
                _agreement(classifier, vectors["holdout"], context.embedded_holdout).astype(float)
            ),
        }
        per_label = []
        for label in spec.labels:
            mask = (curated["label"] == label).to_numpy()
            per_label.append(
                {
                    "label": label,
                    "curated": int(mask.sum()),
                    "relevance": _mean(relevance[mask]),
                    "label_agreement": _mean(agrees[mask].astype(float)),
                }
            )
        return FamilyResult(metrics=metrics, details={"faithfulness_per_label": per_label})

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        import pandas as pd

        metrics = report.metrics
        lines = [
            "## Relevance and label faithfulness",
            "",
            "Relevance: cosine (MiniLM) between a sample and the text of its conditions, as curation "
            "scores it (`curation.relevance_text`, else the task, label and attribute values). MiniLM "
            "encodes topic more than sentiment, so it tells on-topic from off-topic, and a score far above "
            "the real rows' hints at samples that repeat the instructions. Label agreement: share of "
            "samples whose label curation's seed classifier (a logistic regression on MiniLM embeddings, "
            "trained on the real training seed) predicts as the intended one.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| relevance, curated | {fmt(metrics['relevance'])} |",
            f"| relevance, curated, to task + label only | {fmt(metrics['relevance_task_label'])} |",
            f"| relevance, real train rows to task + label (reference) | {fmt(metrics['seed_relevance'])} |",
            f"| label agreement, curated | {fmt(metrics['label_agreement'])} |",
            f"| label agreement, all generated | {fmt(metrics['label_agreement_uncurated'])} |",
            f"| the classifier's accuracy on the real holdout (how far to trust it) | "
            f"{fmt(metrics['label_judge_holdout_accuracy'])} |",
            "",
        ]
        faithfulness = report.details.get("faithfulness_per_label") or []
        if faithfulness:
            lines += [md_table(pd.DataFrame(faithfulness)), ""]
        return lines


FAMILY = Relevance()
