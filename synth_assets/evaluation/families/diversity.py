"""Diversity: distinct-n, self-BLEU, pairwise embedding distance, vocabulary and compression ratio of
the curated set, per label, against a size-matched real reference (`metrics.diversity`).

Reads the embedded seed sample (`EvaluationContext.embedded_train`): the real reference is only as
large as the synthetic set anyway."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, md_table, records

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport

SYNTHETIC = "synthetic (curated)"
REAL = "real train (size-matched)"
SCALARS = (
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "self_bleu",
    "embedding_distance",
    "vocab_size",
    "compression_ratio",
)


def size_matched(texts: list[str], vectors: np.ndarray, size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """A fixed random subset of the real rows as large as the synthetic set: distinct-n, vocabulary
    and compression ratio depend on corpus size, so the real reference must not be larger."""
    pick = m.subsample_indices(len(texts), size or len(texts), seed)  # no synthetic rows: all real ones
    return [texts[i] for i in pick], vectors[pick]


def label_mask(frame: pd.DataFrame, label: str) -> np.ndarray:
    """Rows of `frame` with `label`; every row for "all"."""
    return np.ones(len(frame), bool) if label == "all" else (frame["label"] == label).to_numpy()


def diversity_table(context: EvaluationContext) -> pd.DataFrame:
    """Rows (set, label, rows, distinct_1..3, self_bleu, embedding_distance, vocab_size,
    compression_ratio): curated and size-matched real per label ("all" first), and all generated."""
    spec, curated, samples = context.spec, context.inputs.curated, context.inputs.samples
    train, vectors = context.embedded_train, context.vectors
    settings = {"max_pairwise": spec.evaluation.max_pairwise_samples, "seed": spec.random_seed}
    rows: list[dict[str, Any]] = []
    for label in ["all", *spec.labels]:
        c_mask, t_mask = label_mask(curated, label), label_mask(train, label)
        c_texts = curated["text"][c_mask].tolist()
        rows.append(
            {"set": SYNTHETIC, "label": label, **m.diversity(c_texts, vectors["curated"][c_mask], **settings)}
        )
        real_texts, real_vectors = size_matched(
            train["text"][t_mask].tolist(), vectors["train"][t_mask], len(c_texts), spec.random_seed
        )
        rows.append({"set": REAL, "label": label, **m.diversity(real_texts, real_vectors, **settings)})
    rows.append(
        {
            "set": "generated (uncurated)",
            "label": "all",
            **m.diversity(samples["text"].tolist(), vectors["samples"], **settings),
        }
    )
    return pd.DataFrame(rows)


class Diversity:
    name = "diversity"
    decides_gate = False
    figures = (
        Figure("distinct_1", card=True),
        Figure("distinct_2", "distinct-2", 1, card=True),
        Figure("distinct_3"),
        Figure("self_bleu", "self-BLEU", -1, card=True),
        Figure("embedding_distance", "mean pairwise embedding distance", 1),
        Figure("vocab_size"),
        Figure("compression_ratio"),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        table = diversity_table(context)
        overall = table[table["label"] == "all"].set_index("set")
        metrics: dict[str, Any] = {}
        for key in SCALARS:
            metrics[key] = overall.loc[SYNTHETIC, key]
            metrics[f"seed_{key}"] = overall.loc[REAL, key]
        return FamilyResult(
            metrics=metrics, tables={"diversity": table}, details={"diversity": records(table)}
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        return [
            "## Diversity",
            "",
            "distinct-n: unique / all word n-grams; self-BLEU (sacrebleu): mean BLEU of each text against "
            "the others (lower = more diverse); embedding distance: mean pairwise cosine distance "
            "(MiniLM); compression ratio: bytes / gzip bytes (lower = more diverse). The real reference is "
            "a random subset of the training seed as large as the synthetic set (all of it when smaller), "
            "since these numbers depend on size.",
            "",
            md_table(report.diversity_table),
            "",
        ]


FAMILY = Diversity()
