"""Fidelity to the real seed: MAUVE, length KS and embedding centroid distance between the real rows
(train + holdout) and the curated set; the length plot and the embedding map.

MAUVE and the centroid read the embedded seed sample (a distribution estimate: a stratified 2000
rows is plenty); word counts and the length KS test read every real row (they cost nothing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, fmt, image

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


def embedding_map(groups: dict[str, tuple[np.ndarray, list[str]]], seed: int) -> pd.DataFrame:
    """2-D PCA of all embeddings together (a fixed linear map: runs stay comparable, unlike t-SNE)."""
    frames = [(name, v, labels) for name, (v, labels) in groups.items() if len(v)]
    if sum(len(v) for _, v, _ in frames) < 3:
        return pd.DataFrame(columns=["x", "y", "group", "label"])
    from sklearn.decomposition import PCA

    stacked = np.concatenate([v for _, v, _ in frames])
    xy = PCA(n_components=2, random_state=seed).fit_transform(stacked)
    return pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "group": [name for name, v, _ in frames for _ in range(len(v))],
            "label": [label for _, _, labels in frames for label in labels],
        }
    )


class Fidelity:
    name = "fidelity"
    decides_gate = False
    figures = (
        Figure("mauve", "MAUVE vs real", 1, card=True, status="mauve_status"),
        Figure("length_ks", "length KS statistic vs real", -1, status="length_ks_status"),
        Figure("length_ks_pvalue", ui=False, status="length_ks_status"),
        Figure(
            "centroid_distance", "embedding centroid distance vs real", -1, status="centroid_distance_status"
        ),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        spec, inputs, vectors = context.spec, context.inputs, context.vectors
        curated, rejected = inputs.curated, inputs.rejected
        real = pd.concat([context.train, context.holdout], ignore_index=True)
        real_vectors = np.concatenate([vectors["train"], vectors["holdout"]])
        mauve = m.mauve_score(
            real_vectors,
            vectors["curated"],
            num_buckets=spec.evaluation.mauve_num_buckets,
            min_samples=spec.evaluation.mauve_min_samples,
            seed=context.seed,
        )
        # texts: every real row (word counts cost nothing); vectors: the embedded sample
        distribution = m.distribution_scores(
            real["text"].tolist(),
            curated["text"].tolist(),
            real_vectors,
            vectors["curated"],
            min_rows=spec.evaluation.distribution_min_rows,
        )
        notes = [
            note
            for note in (
                mauve.note,
                distribution["length_ks_status"],
                distribution["centroid_distance_status"],
            )
            if note
        ]
        real_words, curated_words = m.word_counts(real["text"]), m.word_counts(curated["text"])
        train, holdout = context.embedded_train, context.embedded_holdout
        return FamilyResult(
            metrics={
                "mauve": mauve.score,
                "mauve_buckets": mauve.num_buckets,
                "mauve_status": mauve.note,
                **distribution,
                "real_mean_words": float(real_words.mean()) if len(real_words) else None,
                "synthetic_mean_words": float(curated_words.mean()) if len(curated_words) else None,
            },
            notes=notes,
            plot_data={
                "lengths": {
                    "real": real_words,
                    "curated": curated_words,
                    "rejected": m.word_counts(rejected["text"]),
                },
                "embedding_map": embedding_map(
                    {
                        "real train": (vectors["train"], train["label"].tolist()),
                        "real holdout": (vectors["holdout"], holdout["label"].tolist()),
                        "synthetic curated": (vectors["curated"], curated["label"].tolist()),
                        "synthetic rejected": (vectors["rejected"], rejected["label"].tolist()),
                    },
                    context.seed,
                ),
            },
            size_minimums={
                "mauve": spec.evaluation.mauve_min_samples,
                "length_ks": spec.evaluation.distribution_min_rows,
                "length_ks_pvalue": spec.evaluation.distribution_min_rows,
                "centroid_distance": spec.evaluation.distribution_min_rows,
            },
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        metrics = report.metrics
        length_ks = metrics.get("length_ks_status") or (
            f"{fmt(metrics['length_ks'])} (p = {fmt(metrics['length_ks_pvalue'])})"
        )
        return [
            "## Fidelity to the real seed",
            "",
            "| metric | value |",
            "|---|---|",
            f"| MAUVE (mauve-text on MiniLM embeddings, {fmt(metrics['mauve_buckets'])} buckets; 1 = same "
            f"distribution) | {metrics.get('mauve_status') or fmt(metrics['mauve'])} |",
            f"| length KS statistic (scipy; words; 0 = same distribution) | {length_ks} |",
            f"| mean words: real / synthetic | {fmt(metrics['real_mean_words'], 1)} / "
            f"{fmt(metrics['synthetic_mean_words'], 1)} |",
            "| embedding centroid distance (cosine; 0 = same centre) | "
            f"{metrics.get('centroid_distance_status') or fmt(metrics['centroid_distance'])} |",
            "",
            "Real = training seed + holdout; synthetic = the curated set. A distribution score computed on "
            "too few rows is not a verdict (it cannot tell a one-label set from the real mix), so below "
            "`evaluation.mauve_min_samples` / `evaluation.distribution_min_rows` rows per side it says "
            '"too few rows" instead of a number.',
            "",
            *image("lengths", images),
            *image("embedding_map", images),
        ]


FAMILY = Fidelity()
