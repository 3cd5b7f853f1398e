"""Filters that need the embedding model (all-MiniLM-L6-v2, real and offline): relevance, label
consistency against a classifier trained on the real seed reviews, and semantic duplicates."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rejection_reasons

from synth_assets.curation.pipeline import CurationContext, CurationOutcome, curate
from synth_assets.curation.relevance import condition_texts
from synth_assets.spec import CurationSpec

Embed = Callable[[Sequence[str]], np.ndarray]
SEED_CSV = Path(__file__).parent.parent / "specs" / "data" / "product_reviews_seed.csv"
TASK = "You write realistic customer reviews for an online shop."
LABELS = ("positive", "neutral", "negative")
# only the filter under test is on in each test
BASE = CurationSpec(
    near_duplicate_threshold=None,
    semantic_duplicate_threshold=None,
    label_check="off",
    min_relevance=None,
    dedup_against_seed=False,
)


@pytest.fixture(scope="session")
def embedder() -> Embed:
    from synth_assets.embeddings import embed

    embed(["warm up"])  # loads the model once for the whole session
    return embed


@pytest.fixture(scope="module")
def seed_rows() -> pd.DataFrame:
    raw = pd.read_csv(SEED_CSV)
    return pd.DataFrame(
        {
            "seed_id": [f"seed-{i}" for i in range(len(raw))],
            "split": "train",
            "text": raw["review"],
            "label": raw["sentiment"],
        }
    )


def _run(
    texts: list[str],
    rules: CurationSpec,
    embedder: Embed,
    *,
    labels: list[str] | None = None,
    products: list[str] | None = None,
    **context: object,
) -> CurationOutcome:
    products = products or ["kettle"] * len(texts)
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "prompt_id": [f"p{i}" for i in range(len(texts))],
            "label": labels or ["positive"] * len(texts),
            "text": texts,
        }
    )
    prompts = pd.DataFrame(
        {
            "prompt_id": samples["prompt_id"],
            "label": samples["label"],
            "attributes": [json.dumps({"product": p}) for p in products],
            "prompt_text": "Write one review.",
        }
    )
    ctx = CurationContext(task=TASK, labels=LABELS, embed=embedder, random_seed=42, **context)  # type: ignore[arg-type]
    return curate(samples, prompts, rules, ctx)


def test_relevance_rejects_off_topic_text_and_keeps_reviews(embedder: Embed) -> None:
    rules = BASE.model_copy(
        update={"min_relevance": 0.2, "relevance_text": "A customer review of a {{ product }}."}
    )
    outcome = _run(
        [
            "The kettle boils fast and the handle stays cool; it looks great on the counter.",
            "Photosynthesis converts light energy into chemical energy stored in glucose.",
            "def add(x, y):\n    return x + y",
            "My new desk chair is comfortable, but the armrests wobble a little.",
        ],
        rules,
        embedder,
        products=["kettle", "kettle", "kettle", "desk chair"],
    )
    assert rejection_reasons(outcome) == {"s1": ["irrelevant"], "s2": ["irrelevant"]}
    kept = outcome.curated.set_index("sample_id")
    assert (kept["relevance"] >= 0.2).all()
    detail = json.loads(outcome.rejected["details"].iloc[0])["irrelevant"]
    assert "< 0.2" in detail and "A customer review of a kettle." in detail


def test_default_condition_text_is_task_label_and_attributes() -> None:
    prompts = pd.DataFrame({"prompt_id": ["p"], "label": ["negative"], "attributes": ['{"product": "tent"}']})
    assert condition_texts(prompts, TASK, LABELS, None) == {"p": f"{TASK} negative: tent"}
    templated = condition_texts(prompts, TASK, LABELS, "A {{ label }} review of a {{ product }}.")
    assert templated == {"p": "A negative review of a tent."}


MIXED = "It's okay. Does the job, nothing special, some good points and some bad ones."
HAPPY = "Love this kettle, it boils in two minutes and looks beautiful. Best purchase this year!"


@pytest.mark.parametrize("mode", ["drop", "flag", "relabel"])
def test_label_check_modes(mode: str, embedder: Embed, seed_rows: pd.DataFrame) -> None:
    rules = BASE.model_copy(update={"label_check": mode, "label_min_confidence": 0.8})
    outcome = _run([MIXED, HAPPY], rules, embedder, labels=["positive", "positive"], seed_rows=seed_rows)
    if mode == "drop":
        assert rejection_reasons(outcome) == {"s0": ["label_mismatch"]}
        detail = json.loads(outcome.rejected["details"].iloc[0])["label_mismatch"]
        assert "classifier says 'neutral'" in detail and "asked for 'positive'" in detail
        assert outcome.curated["sample_id"].tolist() == ["s1"]
        return
    assert outcome.rejected.empty
    kept = outcome.curated.set_index("sample_id")
    assert kept.loc["s0", "predicted_label"] == "neutral"
    assert kept.loc["s0", "intended_label"] == "positive"
    if mode == "flag":
        assert json.loads(kept.loc["s0", "flags"]) == ["label_doubt"]
        assert kept.loc["s0", "label"] == "positive" and kept.loc["s0", "label_confidence"] < 0.2
    else:
        assert json.loads(kept.loc["s0", "flags"]) == ["relabeled"]
        assert kept.loc["s0", "label"] == "neutral" and kept.loc["s0", "label_confidence"] >= 0.8
    assert kept.loc["s1", "flags"] == "[]" and kept.loc["s1", "label"] == "positive"


def test_an_unsure_classifier_does_not_overrule_the_prompt(embedder: Embed, seed_rows: pd.DataFrame) -> None:
    # the seed classifier leans "neutral" here, but not confidently: the row is kept unflagged
    text = "Absolutely love it! Works perfectly and I use it every single day."
    rules = BASE.model_copy(update={"label_check": "drop", "label_min_confidence": 0.8})
    outcome = _run([text], rules, embedder, seed_rows=seed_rows)
    assert outcome.rejected.empty and outcome.curated["flags"].iloc[0] == "[]"


def test_label_check_is_skipped_with_a_note_when_the_seed_is_too_small(embedder: Embed) -> None:
    tiny = pd.DataFrame(
        {"split": ["train", "train"], "text": ["Great.", "Bad."], "label": ["positive", "negative"]}
    )
    outcome = _run([MIXED], BASE.model_copy(update={"label_check": "drop"}), embedder, seed_rows=tiny)
    assert outcome.rejected.empty
    assert any("label check skipped" in note for note in outcome.notes)
    assert outcome.curated["predicted_label"].isna().all()


PARAPHRASE_A = "Great headphones, the battery lasts a week."
PARAPHRASE_B = "These headphones are great and the battery lasts all week."
DIFFERENT = "Great speaker, but the bass distorts at high volume."


def test_semantic_duplicates_in_batch_and_against_seed_and_earlier_versions(
    embedder: Embed, seed_rows: pd.DataFrame
) -> None:
    rules = BASE.model_copy(update={"semantic_duplicate_threshold": 0.9, "dedup_against_seed": True})
    seed_paraphrase = "Great grip, even in hot yoga. And no chemical smell at all."
    previous = pd.DataFrame({"sample_id": ["old"], "text": [DIFFERENT], "run_id": ["r1"]})
    outcome = _run(
        [
            PARAPHRASE_A,
            PARAPHRASE_B,
            seed_paraphrase,
            "Great speaker, but the bass distorts at a high volume!",
            HAPPY,
        ],
        rules,
        embedder,
        seed_rows=seed_rows,
        previous=previous,
    )
    reasons = rejection_reasons(outcome)
    assert reasons == {
        "s1": ["semantic_duplicate"],
        "s2": ["copies_seed"],
        "s3": ["seen_in_previous_version"],
    }
    details = {
        sid: json.loads(d)
        for sid, d in zip(outcome.rejected["sample_id"], outcome.rejected["details"], strict=True)
    }
    assert "with s0" in details["s1"]["semantic_duplicate"]
    assert "with seed row seed-0" in details["s2"]["copies_seed"]
    kept = outcome.curated.set_index("sample_id")
    assert kept.loc["s0", "nearest_similarity"] >= 0.9  # its paraphrase was rejected, the score stays
    assert kept.loc["s4", "nearest_similarity"] < 0.9


ANGRY = "Broke after two days, support never answered and the refund took a month. Avoid."


def test_label_fidelity_by_the_seed_classifier_rejects_what_fits_another_label_with_its_margin(
    embedder: Embed, seed_rows: pd.DataFrame
) -> None:
    rules = BASE.model_copy(update={"label_fidelity": "classifier", "label_fidelity_recall": 0.9})
    outcome = _run([ANGRY, HAPPY], rules, embedder, labels=["positive", "positive"], seed_rows=seed_rows)
    assert rejection_reasons(outcome) == {"s0": ["low_label_fidelity"]}
    detail = json.loads(outcome.rejected["details"].iloc[0])["low_label_fidelity"]
    assert detail.startswith("classifier margin -")  # the intended label loses to another one
    assert outcome.curated["sample_id"].tolist() == ["s1"]


def test_label_fidelity_by_likelihood_uses_the_scorer_and_says_when_it_has_none(
    embedder: Embed, seed_rows: pd.DataFrame
) -> None:
    # recall 0.5: the threshold is the median margin of the real rows of the label
    rules = BASE.model_copy(update={"label_fidelity": "likelihood", "label_fidelity_recall": 0.5})
    skipped = _run([ANGRY], rules, embedder, seed_rows=seed_rows)
    assert skipped.rejected.empty and any("no local model" in note for note in skipped.notes)

    complaint_words = ("broke", "never", "avoid", "stopped", "refund", "waste")

    def likelihood(texts: Sequence[str], label: str) -> np.ndarray:
        # a stand-in scorer: a complaint is likelier under the negative prompt than the positive one
        complaint = np.array([any(w in t.lower() for w in complaint_words) for t in texts], dtype=float)
        return {"positive": -3 * complaint, "negative": -3 * (1 - complaint)}.get(label, -1.5 + 0 * complaint)

    outcome = _run([ANGRY, HAPPY], rules, embedder, seed_rows=seed_rows, label_likelihood=likelihood)
    assert rejection_reasons(outcome) == {"s0": ["low_label_fidelity"]}
    assert "likelihood margin" in json.loads(outcome.rejected["details"].iloc[0])["low_label_fidelity"]


def test_seed_length_range_rejects_samples_outside_the_seeds_word_counts(
    embedder: Embed, seed_rows: pd.DataFrame
) -> None:
    rules = BASE.model_copy(update={"seed_length_range": (0.0, 1.0)})
    longest = max(len(t.split()) for t in seed_rows["text"])
    rambling = " ".join(f"word{i}" for i in range(longest + 5))
    outcome = _run([HAPPY, rambling], rules, embedder, seed_rows=seed_rows)
    assert rejection_reasons(outcome) == {"s1": ["off_seed_length"]}
    assert "seed range" in json.loads(outcome.rejected["details"].iloc[0])["off_seed_length"]
