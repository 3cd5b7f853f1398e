"""Bounded use of the seed rows: how many are embedded or scored, and which reference rows are worth
embedding, so curation does not grow with the seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from synth_assets.curation.pipeline import CurationContext

# Seed rows embedded for the label classifier and label fidelity: at most this many, a seeded sample
# stratified by label (all rows of a smaller seed, so small seeds behave as before). Why: embedding
# every seed row made curation grow with the seed. benchmarks/seed_scaling.py (48 samples, AMD EPYC,
# 2 cores, float32): curated_set 29.9 s at 1k seed rows, 150.1 s at 10k, nearly all of it
# all-MiniLM-L6-v2 over the seed; a logistic regression on 384-d embeddings gains little past a few
# hundred rows per label.
MAX_SEED_ROWS_EMBEDDED = 2000
# Semantic copies of a reference row (seed, earlier versions): past MAX_SEED_ROWS_EMBEDDED reference
# rows, only the rows lexically closest to each sample (TF-IDF cosine, this many per sample) are
# embedded; exact and MinHash near copies are still checked against every row.
LEXICAL_CANDIDATES = 32


def bounded_sample(rows: pd.DataFrame, limit: int, random_seed: int, by: str = "label") -> pd.DataFrame:
    """At most about `limit` of `rows` (all of them when there are no more), drawn with `random_seed`,
    each value of column `by` keeping its share and at least 2 rows (a classifier needs 2 per label).
    Rows keep their original order."""
    if len(rows) <= limit:
        return rows
    share = limit / len(rows)
    parts = [
        group.sample(n=min(len(group), max(2, round(len(group) * share))), random_state=random_seed)
        for _, group in rows.groupby(rows[by].astype(str), sort=True)
    ]
    return pd.concat(parts).sort_index()


def lexical_candidates(queries: Sequence[str], reference: Sequence[str], per_query: int) -> np.ndarray:
    """Sorted indices of the reference texts among the `per_query` closest to any query by TF-IDF
    cosine (scikit-learn), so only those need embedding. All indices when TF-IDF finds no words."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(reference) <= per_query:
        return np.arange(len(reference))
    try:
        vectorizer = TfidfVectorizer(sublinear_tf=True).fit(reference)
    except ValueError:  # no word in any reference text: nothing lexical to rank by
        return np.arange(len(reference))
    scores = (vectorizer.transform(queries) @ vectorizer.transform(reference).T).toarray()
    top = np.argpartition(-scores, per_query - 1, axis=1)[:, :per_query]
    return np.unique(top)


def seed_train(context: CurationContext) -> pd.DataFrame | None:
    """The seed's train split (all seed rows when there is no `split` column); None without seed rows."""
    seed = context.seed_rows
    if seed is None or seed.empty:
        return None
    return seed[seed["split"] == "train"] if "split" in seed.columns else seed
