"""Vendi score: the effective number of distinct samples (Friedman & Dieng 2023, "The Vendi Score: A
Diversity Evaluation Metric for Machine Learning", TMLR).

VS = exp(-Σ λ_i log λ_i), λ_i the eigenvalues of K/n, K the n x n similarity matrix of the rows: here
cosine over the MiniLM embeddings the evaluation already computed (unit rows, so K = X Xᵀ, K_ii = 1
and the λ_i sum to 1). It runs from 1 (every row the same) to n (all rows orthogonal). Unlike mean
pairwise distance it counts clusters: ten near-copies of one text weigh as about one sample.
A few lines of numpy: K/n = X Xᵀ/n has the same non-zero eigenvalues as the d x d matrix Xᵀ X/n,
so the cost is O(n d²) (d = 384), never an n x n matrix.

Shown for the curated set and, as the reference it reads against, the same size-matched random subset
of the real training seed the Diversity section uses (the score grows with n).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, md_table, records
from synth_assets.evaluation.families.diversity import size_matched

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


def vendi_score(embeddings: np.ndarray) -> float | None:
    """Vendi score (order 1) of the rows of `embeddings` (shape (n, d), L2-normalized) under the
    cosine kernel; None for no rows. Rows are normalized again here, so K_ii = 1 holds exactly."""
    n = len(embeddings)
    if n == 0:
        return None
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    gram = x @ x.T if n <= x.shape[1] else x.T @ x  # same non-zero eigenvalues; the smaller one
    eigenvalues = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


class Vendi:
    name = "vendi"
    decides_gate = False
    figures = (
        Figure("vendi_score", "Vendi score (effective number of distinct samples)", 1),
        Figure("seed_vendi_score"),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        curated = context.inputs.curated
        vectors, train = context.vectors, context.embedded_train
        _, real = size_matched(train["text"].tolist(), vectors["train"], len(curated), context.seed)
        sets = (
            ("synthetic (curated)", vectors["curated"]),
            ("real train (size-matched)", real),
            ("generated (uncurated)", vectors["samples"]),
        )
        rows = []
        for name, embeddings in sets:
            score = vendi_score(embeddings)
            share = score / len(embeddings) if score is not None else None
            rows.append({"set": name, "rows": len(embeddings), "vendi_score": score, "share_of_rows": share})
        table = pd.DataFrame(rows)
        return FamilyResult(
            metrics={
                "vendi_score": rows[0]["vendi_score"],
                "seed_vendi_score": rows[1]["vendi_score"],
                "vendi_score_uncurated": rows[2]["vendi_score"],
            },
            details={"vendi": records(table)},
            tables={"vendi": table},
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        return [
            "## Vendi score",
            "",
            "The effective number of distinct samples (Friedman & Dieng 2023): exp of the Shannon entropy "
            "of the eigenvalues of K/n, K the cosine similarities of the MiniLM embeddings; 1 = all rows "
            "alike, n = all rows unrelated, so near-copies count as about one. It grows with the number of "
            "rows: the real reference is the size-matched subset of the training seed used for Diversity, "
            "and share of rows = score / rows.",
            "",
            md_table(report.tables["vendi"]),
            "",
        ]


FAMILY = Vendi()
