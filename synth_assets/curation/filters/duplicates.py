"""Duplicate filters (phase 5): exact, near (MinHash), semantic (embeddings) inside the batch, then copies
of reference rows (the seed, earlier curated versions). Rows that passed everything else are a group's
representative whenever one exists (`dedup.priority_order`); each filter skips rows an earlier one
already matched, so the strongest match is the one reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synth_assets.curation import reasons as R
from synth_assets.curation.dedup import (
    MinHasher,
    exact_duplicates,
    near_duplicates,
    near_matches_in,
    priority_order,
    semantic_duplicates,
    semantic_matches_in,
)
from synth_assets.curation.filters.base import (
    EMBEDDINGS,
    PREVIOUS,
    SEED_ROWS,
    CurationFilter,
    CurationRows,
    DedupState,
    Embed,
    Phase,
)
from synth_assets.curation.seed_sample import LEXICAL_CANDIDATES, MAX_SEED_ROWS_EMBEDDED, lexical_candidates
from synth_assets.curation.text import hash_many, normalize_many

if TYPE_CHECKING:
    from synth_assets.spec import CurationSpec


def _record(rows: CurationRows, kind: str, match: np.ndarray, similarity: np.ndarray | float) -> None:
    """Rows of the `duplicates` table (sample_id, kind, duplicate_of, similarity) for every match."""
    for i in np.flatnonzero(match >= 0).tolist():
        value = similarity if isinstance(similarity, float) else similarity[i]
        rows.duplicate_rows.append(
            {"sample_id": rows.ids[i], "kind": kind, "duplicate_of": rows.ids[match[i]], "similarity": value}
        )


class ExactDuplicates(CurationFilter):
    """The same normalized text as another sample of the batch; sets up `rows.dedup`."""

    name = "dedup_exact"
    phase = Phase.DUPLICATES
    reasons = (R.EXACT_DUPLICATE,)

    def run(self, rows: CurationRows) -> None:
        n, ids = rows.n, rows.ids
        order = priority_order(rows.findings.any())
        hashes = hash_many(rows.normalized)
        blank = np.asarray([not text for text in rows.normalized], dtype=bool)
        exact_of = exact_duplicates(hashes, order, skip=blank)
        rows.dedup = DedupState(
            order=order,
            hashes=hashes,
            blank=blank,
            exact_of=exact_of,
            near_of=np.full(n, -1),
            hasher=MinHasher(num_perm=rows.rules.minhash_num_perm, shingle_size=rows.rules.shingle_size),
        )
        rows.findings.add(
            R.EXACT_DUPLICATE, exact_of >= 0, lambda i: f"same normalized text as {ids[exact_of[i]]}"
        )
        _record(rows, R.EXACT_DUPLICATE, exact_of, 1.0)


class NearDuplicates(CurationFilter):
    """curation.near_duplicate_threshold: MinHash-estimated Jaccard of character shingles."""

    name = "dedup_near"
    phase = Phase.DUPLICATES
    reasons = (R.NEAR_DUPLICATE,)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.near_duplicate_threshold is not None

    def run(self, rows: CurationRows) -> None:
        state, ids, threshold = rows.dedup, rows.ids, rows.rules.near_duplicate_threshold
        assert state is not None and threshold is not None
        state.signatures = state.hasher.signatures(rows.normalized)
        near_of, jaccard = near_duplicates(
            state.signatures, state.order, threshold, skip=state.blank | (state.exact_of >= 0)
        )
        state.near_of = near_of
        rows.findings.add(
            R.NEAR_DUPLICATE, near_of >= 0, lambda i: f"Jaccard ~{jaccard[i]:.2f} with {ids[near_of[i]]}"
        )
        _record(rows, R.NEAR_DUPLICATE, near_of, jaccard)


class SemanticDuplicates(CurationFilter):
    """curation.semantic_duplicate_threshold: embedding cosine to another sample. Whenever embeddings
    were computed (for any filter), every row gets its nearest cosine (score nearest_similarity)."""

    name = "dedup_semantic"
    phase = Phase.DUPLICATES
    reasons = (R.SEMANTIC_DUPLICATE,)
    scores = ("nearest_similarity",)

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({EMBEDDINGS}) if rules.semantic_duplicate_threshold is not None else frozenset()

    def run(self, rows: CurationRows) -> None:
        state, ids = rows.dedup, rows.ids
        if rows.embeddings is None or state is None:
            return
        configured = rows.rules.semantic_duplicate_threshold
        threshold = configured if configured is not None else 2.0  # > any cosine: nearest only
        skip = state.blank | (state.exact_of >= 0) | (state.near_of >= 0)
        semantic_of, cosine, nearest = semantic_duplicates(rows.embeddings, state.order, threshold, skip)
        rows.scores["nearest_similarity"] = nearest
        rows.findings.add(
            R.SEMANTIC_DUPLICATE,
            semantic_of >= 0,
            lambda i: f"cosine {cosine[i]:.3f} with {ids[semantic_of[i]]}",
        )
        _record(rows, R.SEMANTIC_DUPLICATE, semantic_of, cosine)


class ReferenceDuplicates(CurationFilter):
    """Copies of rows outside the batch: curation.dedup_against_seed (every seed row, holdout too) and
    curation.dedup_against_previous_versions (rows of earlier curated versions); exact, else near,
    else semantic, with the thresholds of the in-batch filters."""

    name = "dedup_references"
    phase = Phase.DUPLICATES
    reasons = (R.COPIES_SEED, R.SEEN_IN_PREVIOUS_VERSION)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.dedup_against_seed or rules.dedup_against_previous_versions

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset(
            ({SEED_ROWS} if rules.dedup_against_seed else set())
            | ({PREVIOUS} if rules.dedup_against_previous_versions else set())
        )

    def run(self, rows: CurationRows) -> None:
        rules, context = rows.rules, rows.context
        references: list[tuple[str, pd.DataFrame | None, str]] = []
        if rules.dedup_against_seed:
            references.append((R.COPIES_SEED, seed_reference(context.seed_rows), "seed row"))
        if rules.dedup_against_previous_versions:
            references.append(
                (R.SEEN_IN_PREVIOUS_VERSION, previous_reference(context.previous, rows.ids), "curated row")
            )
        for reason, reference, noun in references:
            if reference is not None and not reference.empty:
                match_reference(rows, reason, noun, reference, context.embed)


def seed_reference(seed_rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """ref_id, text of every seed row. Holdout rows too: a sample copying one would leak the
    evaluation set into training data."""
    if seed_rows is None or seed_rows.empty:
        return None
    ids = seed_rows["seed_id"] if "seed_id" in seed_rows.columns else seed_rows.index.astype(str)
    return pd.DataFrame({"ref_id": ids.astype(str).tolist(), "text": seed_rows["text"].astype(str).tolist()})


def previous_reference(previous: pd.DataFrame | None, current_ids: list[str]) -> pd.DataFrame | None:
    """ref_id, text of earlier curated rows. The same sample re-curated (same id: same prompt, model,
    parameters and seed) is not a duplicate of itself; otherwise a re-materialization would reject
    its own rows."""
    if previous is None or previous.empty:
        return None
    fresh = previous[~previous["sample_id"].astype(str).isin(set(current_ids))]
    fresh = fresh.drop_duplicates(subset=["text"])
    run = (
        fresh["run_id"].astype(str)
        if "run_id" in fresh.columns
        else pd.Series([""] * len(fresh), index=fresh.index)
    )
    return pd.DataFrame(
        {
            "ref_id": [
                f"{sid} (run {r[:8]})" if r else sid for sid, r in zip(fresh["sample_id"], run, strict=True)
            ],
            "text": fresh["text"].astype(str).tolist(),
        }
    )


def match_reference(
    rows: CurationRows, reason: str, noun: str, reference: pd.DataFrame, embed: Embed | None
) -> None:
    """Flag rows that duplicate any reference row: exact, else near, else semantic (strongest wins)."""
    state, rules = rows.dedup, rows.rules
    assert state is not None
    blank = state.blank
    ref_ids = reference["ref_id"].tolist()
    ref_normalized = normalize_many(reference["text"].tolist())
    by_hash: dict[str, int] = {}
    for i, digest in enumerate(hash_many(ref_normalized)):
        if ref_normalized[i]:
            by_hash.setdefault(digest, i)
    exact = np.asarray(
        [-1 if blank[i] else by_hash.get(h, -1) for i, h in enumerate(state.hashes)], dtype=np.int64
    )
    details: dict[int, str] = {i: f"same text as {noun} {ref_ids[j]}" for i, j in enumerate(exact) if j >= 0}
    found = exact >= 0
    if state.signatures is not None and rules.near_duplicate_threshold is not None:
        match, jaccard = near_matches_in(
            state.signatures,
            state.hasher.signatures(ref_normalized),
            rules.near_duplicate_threshold,
            skip=blank | found,
        )
        details |= {
            i: f"Jaccard ~{jaccard[i]:.2f} with {noun} {ref_ids[j]}" for i, j in enumerate(match) if j >= 0
        }
        found |= match >= 0
    if rows.embeddings is not None and embed is not None and rules.semantic_duplicate_threshold is not None:
        ref_texts = reference["text"].tolist()
        candidates = (
            lexical_candidates(rows.normalized, ref_normalized, LEXICAL_CANDIDATES)
            if len(ref_texts) > MAX_SEED_ROWS_EMBEDDED
            else np.arange(len(ref_texts))
        )
        match, cosine = semantic_matches_in(
            rows.embeddings,
            embed([ref_texts[j] for j in candidates]),
            rules.semantic_duplicate_threshold,
            skip=blank | found,
        )
        match = np.where(match >= 0, candidates[np.maximum(match, 0)], -1)
        details |= {
            i: f"cosine {cosine[i]:.3f} with {noun} {ref_ids[j]}" for i, j in enumerate(match) if j >= 0
        }
        found |= match >= 0
    rows.findings.add(reason, found, lambda i: details[i])
