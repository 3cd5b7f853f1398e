"""Personal data: each kind is found (with checksums where they exist), ordinary text is left alone,
and neither `curated_set` nor `rejected_samples` ever holds a planted value."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from synth_assets.curation.pii import detect, iban_valid, luhn_valid, scan, scrub, scrub_text
from synth_assets.curation.pipeline import curate
from synth_assets.spec import CurationSpec

RULES = CurationSpec(semantic_duplicate_threshold=None, label_check="off", min_relevance=None)
PLANTED = {
    "EMAIL": "jane.doe@example.com",
    "PHONE": "+44 20 7946 0958",
    "CARD": "4111 1111 1111 1111",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "ADDRESS": "221B Baker Street",
    "NAME": "Sarah Connor",
}


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Write to jane.doe@example.com for a refund.", "EMAIL", "jane.doe@example.com"),
        ("Call me on +44 20 7946 0958 after six.", "PHONE", "+44 20 7946 0958"),
        ("Support line (555) 123-4567 never answers.", "PHONE", "(555) 123-4567"),
        ("I paid with 4111 1111 1111 1111 and got charged twice.", "CARD", "4111 1111 1111 1111"),
        ("Refund to GB82 WEST 1234 5698 7654 32 please.", "IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("Deliver to 42 Maple Avenue, Apt 4B tomorrow.", "ADDRESS", "42 Maple Avenue, Apt 4B"),
        ("It arrived at Hauptstraße 5 in Berlin.", "ADDRESS", "Hauptstraße 5"),
        ("Hi, my name is Sarah Connor and I love this kettle.", "NAME", "Sarah Connor"),
        ("Dr. Watson recommended this mattress.", "NAME", "Watson"),
        ("John Smith from the shop set it up for me.", "NAME", "John Smith"),
        # international numbers, validated against each country's numbering plan (phonenumbers)
        ("Call the Tokyo office on +81 3-1234-5678 please.", "PHONE", "+81 3-1234-5678"),
        ("Text me at +33 6 12 34 56 78 when it ships.", "PHONE", "+33 6 12 34 56 78"),
        ("The Sydney store is on +61 2 1234 5678.", "PHONE", "+61 2 1234 5678"),
        ("Ring 020 7946 0958 for the London shop.", "PHONE", "020 7946 0958"),
        # names with capitals outside ASCII are taken whole, not cut at the first such letter
        ("Hi, my name is Bjørn Ødegård and the tent is great.", "NAME", "Bjørn Ødegård"),
        ("Dr. Łukasz Żółć recommended this mattress.", "NAME", "Łukasz Żółć"),
    ],
)
def test_each_kind_is_detected(text: str, kind: str, value: str) -> None:
    hits = detect(text)
    assert [(h.kind, h.value) for h in hits] == [(kind, value)]
    assert value not in scrub(text, hits) and f"[{kind}]" in scrub(text, hits)


@pytest.mark.parametrize(
    "text",
    [
        "Order 12345678 cost $1,299.99 on 2024-01-15 and arrived on 15.01.2024.",
        "The 4111 1111 1111 1112 on the box is a batch number, not a card.",  # fails Luhn
        "DE89 3704 0044 0532 0130 01 is printed on the label.",  # fails mod 97
        "The Samsung Galaxy has 128GB, the Bose QuietComfort is great.",
        "Will Definitely buy again. This is Great. Call me Crazy, but I like it.",
        "Version 2.0.1 fixed the 3 4 5 button layout; 10 out of 10.",
        "I walked 5 Great Miles with these shoes.",
        # order numbers, serials and timestamps are not phone numbers
        "Order #2024-11-30-8812 arrived broken.",
        "The serial 12345 67890 is printed under the base.",
        "Logged at 2026-11-30 14:24:08.742425 by the shop.",
        "Invoice 2024-118830 and tracking 1Z 999 AA1 01 2345 6784.",
    ],
)
def test_ordinary_text_has_no_hits(text: str) -> None:
    assert detect(text) == []


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")


def test_scan_counts_by_type_and_scrubbed_text_is_clean() -> None:
    texts = [f"Contact {PLANTED['NAME']} at {PLANTED['EMAIL']} or {PLANTED['PHONE']}.", "Nothing here."]
    result = scan(texts)
    assert result.counts.tolist() == [3, 0]
    assert result.by_type() == {"EMAIL": 1, "IBAN": 0, "CARD": 0, "PHONE": 1, "ADDRESS": 0, "NAME": 1}
    cleaned = scrub(texts[0], result.hits[0])
    assert cleaned == "Contact [NAME] at [EMAIL] or [PHONE]."
    assert scan([cleaned]).counts.tolist() == [0]  # placeholders are not PII themselves


def _samples() -> pd.DataFrame:
    texts = [
        f"Great kettle. Questions? Mail {PLANTED['EMAIL']} or call {PLANTED['PHONE']} any time.",
        f"Paid with {PLANTED['CARD']}, refund to {PLANTED['IBAN']}, it boils fast and looks nice.",
        f"Shipped to {PLANTED['ADDRESS']} in two days; my name is {PLANTED['NAME']} and I am happy.",
        "The kettle boils fast, the handle stays cool and it looks great on the counter.",
    ]
    return pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(4)], "prompt_id": "p", "label": "positive", "text": texts}
    )


def test_scrub_mode_keeps_rows_without_any_planted_value() -> None:
    outcome = curate(_samples(), pd.DataFrame(), RULES)
    assert len(outcome.curated) == 4 and outcome.rejected.empty
    stored = " ".join(outcome.curated["text"])
    for value in PLANTED.values():
        assert value not in stored
    assert outcome.curated["pii_hits"].tolist() == [2, 2, 2, 0]
    assert outcome.pii_by_type == {"EMAIL": 1, "IBAN": 1, "CARD": 1, "PHONE": 1, "ADDRESS": 1, "NAME": 1}
    assert json.loads(outcome.curated["flags"].iloc[0]) == ["pii_scrubbed"]
    assert "[EMAIL]" in outcome.curated["text"].iloc[0]


def test_drop_mode_rejects_with_types_and_stores_scrubbed_text() -> None:
    outcome = curate(_samples(), pd.DataFrame(), RULES.model_copy(update={"pii": "drop"}))
    assert outcome.curated["sample_id"].tolist() == ["s3"]
    rejected = outcome.rejected.set_index("sample_id")
    assert all(json.loads(r) == ["pii"] for r in rejected["reasons"])
    assert json.loads(json.loads(rejected.loc["s1", "details"])["pii"]) == {"CARD": 1, "IBAN": 1}
    stored = " ".join(rejected["text"])
    for value in PLANTED.values():
        assert value not in stored


def test_only_the_configured_types_are_scrubbed() -> None:
    rules = RULES.model_copy(update={"pii_types": ["EMAIL"]})
    outcome = curate(_samples(), pd.DataFrame(), rules)
    first = outcome.curated["text"].iloc[0]
    assert "[EMAIL]" in first and PLANTED["PHONE"] in first


def test_scrub_text_is_the_one_call_scrubber() -> None:
    text = "Call +81 3-1234-5678 or mail jane.doe@example.com; order #2024-11-30-8812."
    assert scrub_text(text) == "Call [PHONE] or mail [EMAIL]; order #2024-11-30-8812."
    assert scrub_text(text, ["EMAIL"]) == "Call +81 3-1234-5678 or mail [EMAIL]; order #2024-11-30-8812."
    assert scrub_text("Nothing personal here.") == "Nothing personal here." and scrub_text("") == ""


def test_international_phones_never_reach_the_curated_set() -> None:
    phones = ["+81 3-1234-5678", "+33 6 12 34 56 78", "+61 2 1234 5678"]
    products = ["kettle boils fast", "backpack zips smoothly", "blender crushes ice"]
    texts = [f"The {p}. Questions? Call {phone} any time." for p, phone in zip(products, phones, strict=True)]
    samples = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "prompt_id": "p", "label": "positive", "text": texts}
    )
    outcome = curate(samples, pd.DataFrame(), RULES)
    assert len(outcome.curated) == 3 and outcome.pii_by_type["PHONE"] == 3
    assert not any(phone in " ".join(outcome.curated["text"]) for phone in phones)
    assert scan(texts).by_type()["PHONE"] == 3  # what the no-PII gate re-scans with


def test_invisible_characters_do_not_hide_personal_data() -> None:
    text = "Call +81 3\u200b-1234-5678 or mail ja\u00adne.doe@example.com today."
    hits = detect(text)
    assert [(h.kind, h.value) for h in hits] == [
        ("PHONE", "+81 3\u200b-1234-5678"),
        ("EMAIL", "ja\u00adne.doe@example.com"),
    ]
    assert scrub_text(text) == "Call [PHONE] or mail [EMAIL] today."
    assert scan([text]).counts.tolist() == [2]
