"""Work that does not grow with the seed (issue 14): curation embeds a bounded, seeded, stratified sample
of the seed rows for the label classifier, and looks for semantic copies of seed rows only among the
rows lexically closest to each sample; exact and near copies are still checked against every row.
Small seeds behave exactly as before. The embedding model is the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synth_assets.curation import reasons as R
from synth_assets.curation.pipeline import (
    LEXICAL_CANDIDATES,
    MAX_SEED_ROWS_EMBEDDED,
    CurationContext,
    CurationOutcome,
    bounded_sample,
    curate,
    lexical_candidates,
)
from synth_assets.spec import CurationSpec

Embed = Callable[[Sequence[str]], np.ndarray]
SEED_CSV = Path(__file__).parent.parent / "specs" / "data" / "product_reviews_seed.csv"
PRODUCTS = ("kettle", "lamp", "tent", "drill", "mixer", "sofa", "scooter", "router", "camera", "stove")


def _seed(rows: int) -> pd.DataFrame:
    """`rows` seed rows grown from the demo seed: each copy names another product and an order number."""
    raw = pd.read_csv(SEED_CSV)
    picks = [i % len(raw) for i in range(rows)]
    texts = [
        f"{raw['review'][j]} My {PRODUCTS[(i // len(raw)) % len(PRODUCTS)]} came with order {i // len(raw)}."
        for i, j in enumerate(picks)
    ]
    return pd.DataFrame(
        {
            "seed_id": [f"seed-{i}" for i in range(rows)],
            "split": "train",
            "text": texts,
            "label": raw["sentiment"].iloc[picks].tolist(),
        }
    )


@pytest.fixture(scope="module")
def counting_embedder() -> tuple[Embed, list[int]]:
    """The real embedder, counting the texts it is given."""
    from synth_assets.embeddings import embed

    embed(["warm up"])
    counted: list[int] = []

    def counting(texts: Sequence[str]) -> np.ndarray:
        counted.append(len(texts))
        return embed(texts)

    return counting, counted


def test_a_small_seed_is_used_whole_and_a_big_one_is_sampled_by_label() -> None:
    small = _seed(60)
    assert bounded_sample(small, MAX_SEED_ROWS_EMBEDDED, 7) is small  # unchanged: every row, same order
    big = pd.DataFrame(
        {"text": [f"t{i}" for i in range(10_000)], "label": ["a"] * 7000 + ["b"] * 2997 + ["rare"] * 3}
    )
    sample = bounded_sample(big, 2000, 7)
    counts = sample["label"].value_counts().to_dict()
    assert counts == {"a": 1400, "b": 599, "rare": 2}  # shares kept; a rare label keeps 2 rows
    assert sample.index.is_monotonic_increasing
    assert sample.equals(bounded_sample(big, 2000, 7))  # seeded: the same rows every run
    assert not sample.index.equals(bounded_sample(big, 2000, 8).index)


def test_the_seed_row_a_sample_paraphrases_is_among_its_lexical_candidates() -> None:
    reference = _seed(5000)["text"].tolist()
    source = 1234
    query = reference[source].replace("My ", "Our ").replace("came with", "arrived in")
    found = lexical_candidates([query, "an unrelated sentence about weather"], reference, 32)
    assert source in found.tolist() and len(found) <= 64
    assert lexical_candidates([query], reference[:10], 32).tolist() == list(range(10))  # few: all
    assert lexical_candidates(["x"], ["!!", "??", "..", "--"], 2).tolist() == [0, 1, 2, 3]  # no words


def _curate(texts: list[str], seed_rows: pd.DataFrame, embed: Embed) -> CurationOutcome:
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "prompt_id": [f"p{i}" for i in range(len(texts))],
            "label": ["positive"] * len(texts),
            "text": texts,
        }
    )
    prompts = pd.DataFrame(
        {
            "prompt_id": samples["prompt_id"],
            "label": samples["label"],
            "attributes": [json.dumps({"product": "kettle"})] * len(texts),
            "prompt_text": "Write one review.",
        }
    )
    rules = CurationSpec(
        near_duplicate_threshold=None,
        semantic_duplicate_threshold=0.9,
        label_check="flag",
        min_relevance=None,
        dedup_against_seed=True,
    )
    context = CurationContext(
        task="Reviews.", labels=("positive", "neutral", "negative"), embed=embed, random_seed=42,
        seed_rows=seed_rows,
    )  # fmt: skip
    return curate(samples, prompts, rules, context)


def _rejected_for(outcome: CurationOutcome, reason: str) -> list[str]:
    reasons = dict(
        zip(outcome.rejected["sample_id"], outcome.rejected["reasons"].map(json.loads), strict=True)
    )
    return sorted(sid for sid, found in reasons.items() if reason in found)


def test_a_big_seed_embeds_a_bounded_sample_and_still_finds_semantic_copies(
    counting_embedder: tuple[Embed, list[int]],
) -> None:
    embed, counted = counting_embedder
    seed_rows = _seed(6000)
    copy = seed_rows["text"][4321].replace("My ", "Our ").replace("came with", "arrived in")
    texts = [copy, "A sturdy kettle that boils water quickly and looks nice on the counter."]
    counted.clear()
    outcome = _curate(texts, seed_rows, embed)
    assert _rejected_for(outcome, R.COPIES_SEED) == ["s0"]
    # the classifier's sample, the lexical candidates and the samples, not 6,000 seed rows
    assert sum(counted) <= MAX_SEED_ROWS_EMBEDDED + len(texts) * LEXICAL_CANDIDATES + len(texts) + 3


def test_a_small_seed_embeds_every_row_as_before(counting_embedder: tuple[Embed, list[int]]) -> None:
    embed, counted = counting_embedder
    seed_rows = _seed(300)
    copy = seed_rows["text"][123].replace("My ", "Our ").replace("came with", "arrived in")
    counted.clear()
    outcome = _curate([copy, "A sturdy kettle that boils water quickly."], seed_rows, embed)
    assert _rejected_for(outcome, R.COPIES_SEED) == ["s0"]
    assert sum(counted) >= 300  # every seed row embedded (once: the classifier and the copy check share it)
