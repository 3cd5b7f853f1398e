"""Filters that need the seed rows, embeddings or a model (phase 4): seed length, relevance, label
check, label fidelity, the LLM judge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synth_assets.curation import reasons as R
from synth_assets.curation.filters.base import (
    EMBEDDINGS,
    JUDGE_MODEL,
    LOCAL_MODEL,
    SEED_ROWS,
    CurationFilter,
    CurationRows,
    Phase,
)
from synth_assets.curation.label_check import SeedLabelClassifier
from synth_assets.curation.label_fidelity import classifier_fidelity, likelihood_fidelity
from synth_assets.curation.relevance import condition_texts, relevance_scores
from synth_assets.curation.seed_sample import MAX_SEED_ROWS_EMBEDDED, bounded_sample, seed_train

if TYPE_CHECKING:
    from synth_assets.spec import CurationSpec


class SeedLength(CurationFilter):
    """curation.seed_length_range: word counts outside the given quantiles of the seed rows' counts."""

    name = "seed_length"
    phase = Phase.MODELS
    reasons = (R.OFF_SEED_LENGTH,)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.seed_length_range is not None

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({SEED_ROWS})

    def run(self, rows: CurationRows) -> None:
        train = seed_train(rows.context)
        if train is None:
            rows.notes.append("seed_length_range skipped: no seed rows given")
            return
        assert rows.rules.seed_length_range is not None
        seed_words = np.asarray([len(str(t).split()) for t in train["text"]], dtype=float)
        low, high = (float(np.quantile(seed_words, q)) for q in rows.rules.seed_length_range)
        words = np.asarray([len(t.split()) for t in rows.texts], dtype=float)
        rows.findings.add(
            R.OFF_SEED_LENGTH,
            (words < low) | (words > high),
            lambda i: f"{words[i]:.0f} words, seed range {low:.0f}-{high:.0f}",
        )


class Relevance(CurationFilter):
    """curation.min_relevance: cosine between a sample and its task/conditions text. Score: relevance."""

    name = "relevance"
    phase = Phase.MODELS
    reasons = (R.IRRELEVANT,)
    scores = ("relevance",)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.min_relevance is not None

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({EMBEDDINGS})

    def run(self, rows: CurationRows) -> None:
        prompts, context = rows.prompts, rows.context
        if rows.embeddings is None or context.embed is None or prompts is None or not len(prompts):
            return
        conditions = condition_texts(prompts, context.task, context.labels, rows.rules.relevance_text)
        sample_prompts = rows.samples["prompt_id"].tolist()
        relevance = relevance_scores(rows.embeddings, sample_prompts, conditions, context.embed)
        rows.scores["relevance"] = relevance
        threshold = rows.rules.min_relevance
        assert threshold is not None
        rows.findings.add(
            R.IRRELEVANT,
            np.nan_to_num(relevance, nan=1.0) < threshold,
            lambda i: (
                f"cosine {relevance[i]:.2f} < {threshold} to '{conditions.get(sample_prompts[i], '')[:60]}'"
            ),
        )


class LabelCheck(CurationFilter):
    """curation.label_check: a classifier trained on the seed's embeddings (`SeedLabelClassifier`)
    confidently predicts another label: flag, drop or relabel. Scores: predicted_label,
    label_confidence (probability of the final label)."""

    name = "label_check"
    phase = Phase.MODELS
    reasons = (R.LABEL_MISMATCH,)
    flags = (R.FLAG_LABEL_DOUBT, R.FLAG_RELABELED)
    scores = ("predicted_label", "label_confidence")

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.label_check != "off"

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({EMBEDDINGS, SEED_ROWS})

    def run(self, rows: CurationRows) -> None:
        if rows.embeddings is None:
            return
        classifier = self._classifier(rows)
        if classifier is None:
            return
        mode, intended = rows.rules.label_check, rows.intended
        check = classifier.check(rows.embeddings, intended, rows.rules.label_min_confidence)
        rows.scores["predicted_label"] = np.asarray(check.predicted, dtype=object)
        confidence = check.intended_probability.copy()
        if mode == "drop":
            rows.findings.add(
                R.LABEL_MISMATCH,
                check.mismatch,
                lambda i: (
                    f"classifier says '{check.predicted[i]}' ({check.confidence[i]:.2f}), "
                    f"asked for '{intended[i]}'"
                ),
            )
        mismatched = np.flatnonzero(check.mismatch).tolist()
        if mode == "flag":
            rows.flag(mismatched, R.FLAG_LABEL_DOUBT)
        elif mode == "relabel":
            for row in mismatched:
                rows.final_label[row] = check.predicted[row]
                confidence[row] = check.confidence[row]
            rows.flag(mismatched, R.FLAG_RELABELED)
        rows.scores["label_confidence"] = confidence

    @staticmethod
    def _classifier(rows: CurationRows) -> SeedLabelClassifier | None:
        context = rows.context
        if context.seed_rows is None or context.seed_rows.empty or context.embed is None:
            rows.notes.append("label check skipped: no seed rows given")
            return None
        train = bounded_sample(seed_train(context), MAX_SEED_ROWS_EMBEDDED, context.random_seed)
        classifier = SeedLabelClassifier.fit(
            context.embed(train["text"].astype(str).tolist()),
            train["label"].astype(str).tolist(),
            context.random_seed,
        )
        if classifier is None:
            rows.notes.append("label check skipped: the seed train split needs 2+ labels with 2+ rows each")
        return classifier


class LabelFidelity(CurationFilter):
    """curation.label_fidelity: the seed classifier's and/or the local model's label margins, held to
    per-label thresholds from the seed rows (`curation.label_fidelity`)."""

    name = "label_fidelity"
    phase = Phase.MODELS
    reasons = (R.LOW_LABEL_FIDELITY,)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.label_fidelity != "off"

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        mode = rules.label_fidelity
        return frozenset(
            {SEED_ROWS}
            | ({EMBEDDINGS} if mode in ("classifier", "both") else set())
            | ({LOCAL_MODEL} if mode in ("likelihood", "both") else set())
        )

    def run(self, rows: CurationRows) -> None:
        train = seed_train(rows.context)
        if not rows.n:
            return
        if train is None:
            rows.notes.append("label fidelity skipped: no seed rows given")
            return
        if rows.rules.label_fidelity in ("classifier", "both"):
            self._classifier(rows, train)
        if rows.rules.label_fidelity in ("likelihood", "both"):
            self._likelihood(rows, train)

    @staticmethod
    def _classifier(rows: CurationRows, train: pd.DataFrame) -> None:
        context = rows.context
        verdict = None
        if rows.embeddings is not None and context.embed is not None:
            embedded = bounded_sample(train, MAX_SEED_ROWS_EMBEDDED, context.random_seed)
            verdict = classifier_fidelity(
                context.embed(embedded["text"].astype(str).tolist()),
                embedded["label"].astype(str).tolist(),
                rows.embeddings,
                rows.intended,
                rows.rules.label_fidelity_recall,
                context.random_seed,
            )
        if verdict is None:
            rows.notes.append(
                "label fidelity (classifier) skipped: needs embeddings and 2+ seed rows per label"
            )
            return
        rows.findings.add(
            R.LOW_LABEL_FIDELITY,
            verdict.low,
            lambda i: f"classifier margin {verdict.margin[i]:+.2f} < {verdict.threshold[i]:+.2f}",
        )

    @staticmethod
    def _likelihood(rows: CurationRows, train: pd.DataFrame) -> None:
        context = rows.context
        if context.label_likelihood is None:
            rows.notes.append("label fidelity (likelihood) skipped: no local model given")
            return
        seed_texts = train["text"].astype(str).tolist()
        seed_labels = train["label"].astype(str).tolist()
        labels = list(context.labels) or sorted(set(seed_labels))
        verdict = likelihood_fidelity(
            context.label_likelihood,
            labels,
            seed_texts,
            seed_labels,
            rows.texts,
            rows.intended,
            rows.rules.label_fidelity_recall,
        )
        rows.findings.add(
            R.LOW_LABEL_FIDELITY,
            verdict.low,
            lambda i: f"likelihood margin {verdict.margin[i]:+.1f} nats < {verdict.threshold[i]:+.1f}",
        )


class Judge(CurationFilter):
    """curation.judge: the spec's (or judge_model's) chat model scores each sample 1-5 on the rubric;
    curation.judge_min_score rejects below. Score: judge_score (NaN: no parseable score)."""

    name = "judge"
    phase = Phase.MODELS
    reasons = (R.LOW_JUDGE_SCORE,)
    scores = ("judge_score",)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.judge

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({JUDGE_MODEL})

    def run(self, rows: CurationRows) -> None:
        context, n = rows.context, rows.n
        if context.judge_model is None:
            rows.notes.append("judge skipped: no chat model given")
            return
        if not n:
            return
        from synth_assets.curation.judge import judge_samples

        score, _ = judge_samples(
            context.judge_model,
            rows.texts,
            rows.final_label,
            task=context.task,
            rubric=rows.rules.judge_rubric,
        )
        rows.scores["judge_score"] = score
        unscored = int(np.isnan(score).sum())
        if unscored:
            rows.notes.append(f"judge gave no parseable score for {unscored} of {n} samples (kept unscored)")
        minimum = rows.rules.judge_min_score
        if minimum is not None:
            rows.findings.add(
                R.LOW_JUDGE_SCORE,
                np.nan_to_num(score, nan=5.0) < minimum,
                lambda i: f"judge score {score[i]:.0f} < {minimum}",
            )
