"""Duplicates without a model: exact after normalisation, MinHash LSH near duplicates, copies of seed
rows and of rows curated in earlier versions. MinHash sketches must equal datasketch's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import rejection_reasons
from datasketch import MinHash

from synth_assets.curation.dedup import (
    MinHasher,
    exact_duplicates,
    near_duplicates,
    near_matches_in,
    priority_order,
    shingle_hashes,
    signatures_from_hashes,
)
from synth_assets.curation.pipeline import CurationContext, curate
from synth_assets.curation.text import normalize_many
from synth_assets.spec import CurationSpec

RULES = CurationSpec(semantic_duplicate_threshold=None, label_check="off", min_relevance=None)
REVIEW = "The kettle boils a full litre in three minutes and the handle never gets hot."
NEAR = "The kettle boils a full litre in three minutes and the handle never gets warm."
OTHER = "Our vacuum cleaner lost suction after a month and the filter is impossible to clean."


def _samples(texts: list[str], ids: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ids or [f"s{i}" for i in range(len(texts))],
            "prompt_id": "p",
            "label": "positive",
            "text": texts,
        }
    )


def test_signatures_are_bit_identical_to_datasketch() -> None:
    texts = normalize_many([REVIEW, NEAR, "ok", "", "Crème brûlée, 2-in-1 🙂"])
    rows, hashes = shingle_hashes(texts, 5)
    signatures = signatures_from_hashes(rows, hashes, len(texts), num_perm=64, seed=1)
    for row in range(len(texts)):
        reference = MinHash(num_perm=64, seed=1, hashfunc=lambda value: value)
        values = hashes[rows == row]
        if len(values):
            reference.update_batch([int(v) for v in values])
        assert (reference.hashvalues == signatures[row]).all(), texts[row]
    assert (signatures[3] == np.uint32(0xFFFFFFFF)).all()  # empty text: empty sketch


def test_minhash_estimates_jaccard() -> None:
    hasher = MinHasher(num_perm=256)
    signatures = hasher.signatures(normalize_many([REVIEW, NEAR, OTHER]))
    estimate = (signatures[:, None, :] == signatures[None, :, :]).mean(axis=2)
    assert estimate[0, 1] > 0.75 and estimate[0, 2] < 0.2


def test_exact_duplicates_follow_priority_order() -> None:
    keys = ["a", "b", "a", "a", ""]
    # row 0 failed another filter: row 2 (the first clean copy) becomes the representative
    order = priority_order(np.asarray([True, False, False, False, False]))
    dup_of = exact_duplicates(keys, order, skip=np.asarray([False, False, False, False, True]))
    assert dup_of.tolist() == [2, -1, -1, 2, -1]


def test_near_duplicates_greedy_and_reference_matches() -> None:
    texts = normalize_many([REVIEW, OTHER, NEAR, "completely different words about a tent and rain"])
    signatures = MinHasher().signatures(texts)
    skip = np.zeros(4, dtype=bool)
    dup_of, similarity = near_duplicates(signatures, np.arange(4), 0.7, skip)
    assert dup_of.tolist() == [-1, -1, 0, -1] and similarity[2] >= 0.7
    match, score = near_matches_in(
        signatures[[2, 1]], MinHasher().signatures(texts[:1]), 0.7, np.zeros(2, bool)
    )
    assert match.tolist() == [0, -1] and score[0] >= 0.7


def test_pipeline_near_duplicate_is_rejected_and_distinct_reviews_kept() -> None:
    outcome = curate(_samples([REVIEW, OTHER, NEAR]), pd.DataFrame(), RULES)
    assert outcome.curated["sample_id"].tolist() == ["s0", "s1"]
    assert rejection_reasons(outcome) == {"s2": ["near_duplicate"]}
    assert outcome.duplicates[["sample_id", "kind", "duplicate_of"]].values.tolist() == [
        ["s2", "near_duplicate", "s0"]
    ]
    assert outcome.duplicate_rate == 1 / 3
    # switched off: both kept
    off = curate(
        _samples([REVIEW, OTHER, NEAR]),
        pd.DataFrame(),
        RULES.model_copy(update={"near_duplicate_threshold": None}),
    )
    assert off.rejected.empty


def test_copies_of_seed_rows_are_not_new_data() -> None:
    seed = pd.DataFrame(
        {
            "seed_id": ["seed-1", "seed-2"],
            "split": ["train", "holdout"],
            "text": [REVIEW, OTHER],
            "label": ["positive", "negative"],
        }
    )
    texts = [REVIEW.upper(), NEAR, OTHER.replace("month", "week"), "A tent that kept us dry through a storm."]
    outcome = curate(_samples(texts), pd.DataFrame(), RULES, CurationContext(seed_rows=seed))
    reasons = rejection_reasons(outcome)
    # s1 is also a near duplicate of s0 in the batch; s2 copies a holdout row (evaluation leak)
    assert reasons == {"s0": ["copies_seed"], "s1": ["near_duplicate", "copies_seed"], "s2": ["copies_seed"]}
    details = json.loads(outcome.rejected.set_index("sample_id").loc["s0", "details"])
    assert details["copies_seed"] == "same text as seed row seed-1"
    assert outcome.curated["sample_id"].tolist() == ["s3"]
    assert not curate(_samples(texts), pd.DataFrame(), RULES.model_copy(update={"dedup_against_seed": False}),
                      CurationContext(seed_rows=seed)).reason_counts()["copies_seed"]  # fmt: skip


def test_cross_version_dedup_ignores_the_same_sample_re_curated() -> None:
    previous = pd.DataFrame(
        {"sample_id": ["old-1", "s0"], "text": [OTHER, REVIEW], "run_id": ["run-aaaaaaaa", "run-bbbbbbbb"]}
    )
    texts = [REVIEW, OTHER.replace("month", "week"), "A tent that kept us dry through a storm."]
    outcome = curate(_samples(texts), pd.DataFrame(), RULES, CurationContext(previous=previous))
    # s0 is the very same sample as in the earlier run (same id): a re-run must keep it
    assert rejection_reasons(outcome) == {"s1": ["seen_in_previous_version"]}
    details = json.loads(outcome.rejected["details"].iloc[0])
    assert "curated row old-1 (run run-aaaa)" in details["seen_in_previous_version"]


def test_invisible_format_characters_do_not_hide_duplicates() -> None:
    """A zero-width space (U+200B) or soft hyphen (U+00AD) inside a word is removed before folding."""
    assert normalize_many(["ket\u200btle", "ket\u00adtle", "\ufeffkettle\u2060"]) == ["kettle"] * 3
    exact = "The ket\u200btle boils a full li\u00adtre in three minutes and the handle never gets hot."
    near = "The ket\u200btle boils a full litre in three minutes and the han\u00addle never gets warm."
    outcome = curate(_samples([REVIEW, exact, near, OTHER]), pd.DataFrame(), RULES)
    assert outcome.curated["sample_id"].tolist() == ["s0", "s3"]
    assert rejection_reasons(outcome) == {"s1": ["exact_duplicate"], "s2": ["near_duplicate"]}


def test_invisible_copy_of_a_seed_row_is_not_new_data() -> None:
    seed = pd.DataFrame({"seed_id": ["seed-1"], "text": [REVIEW], "label": ["positive"], "split": ["train"]})
    copy = REVIEW.replace("kettle", "ket\u200btle").replace("minutes", "min\u00adutes")
    outcome = curate(_samples([copy, OTHER]), pd.DataFrame(), RULES, CurationContext(seed_rows=seed))
    assert rejection_reasons(outcome) == {"s0": ["copies_seed"]}


def test_chinese_near_copy_is_a_near_duplicate_and_tokens_are_characters() -> None:
    first = "这个电热水壶烧水非常快，把手一点也不烫，我很满意。"
    copy = "这个电热水壶烧水非常快，把手一点都不烫，我很满意。"
    other = "我的背包拉链第一天就坏了，质量太差，不推荐购买。"
    assert normalize_many(["水壶很快。"]) == ["水 壶 很 快"]
    outcome = curate(
        _samples([first, copy, other]), pd.DataFrame(), RULES.model_copy(update={"min_chars": 10})
    )
    assert outcome.curated["sample_id"].tolist() == ["s0", "s2"]
    assert rejection_reasons(outcome) == {"s1": ["near_duplicate"]}
