"""Curation heuristics on real-looking samples: what must be rejected (with reasons) and what must be kept.

No model here: the embedding filters are switched off (or skipped for want of an embedder); they have
their own module, test_curation_semantic.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rejection_reasons

from synth_assets.curation.heuristics import (
    echo_share,
    run_heuristics,
    template_line_patterns,
    trim_to_last_sentence,
)
from synth_assets.curation.pipeline import CurationContext, CurationOutcome, curate
from synth_assets.curation.reasons import REASON_CODES, REASONS, Findings
from synth_assets.curation.text import normalize_many, normalize_text, tokenize
from synth_assets.spec import CurationSpec
from synth_assets.storage import stage_columns

PROMPT = (
    "Write a short product review.\nReview (positive): These headphones sound amazing and the battery "
    "lasts all week.\nWrite one new positive review of headphones. Reply with the review text only."
)
TEMPLATE = (
    "{{ task }}\n{% for demo in demos %}\nReview ({{ demo.label }}): {{ demo.text }}\n{% endfor %}\n"
    "Write one new {{ label }} review of {{ product }}. Reply with the review text only."
)
LABELS = ("positive", "neutral", "negative")
# model-free rules: everything on except what needs embeddings
RULES = CurationSpec(
    min_chars=20,
    max_chars=600,
    echo_threshold=0.6,
    semantic_duplicate_threshold=None,
    label_check="off",
    min_relevance=None,
)


def _frames(texts: list[str], finish: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "prompt_id": "p0",
            "label": "positive",
            "text": texts,
            "finish_reason": finish or ["stop"] * len(texts),
        }
    )
    prompts = pd.DataFrame(
        {"prompt_id": ["p0"], "label": ["positive"], "attributes": ["{}"], "prompt_text": [PROMPT]}
    )
    return samples, prompts


def _curate(
    texts: list[str], rules: CurationSpec = RULES, finish: list[str] | None = None, **context: object
) -> CurationOutcome:
    samples, prompts = _frames(texts, finish)
    return curate(samples, prompts, rules, CurationContext(template=TEMPLATE, labels=LABELS, **context))  # type: ignore[arg-type]


def _details(outcome: CurationOutcome, sample_id: str) -> dict[str, str]:
    return json.loads(outcome.rejected.set_index("sample_id").loc[sample_id, "details"])


def test_normalize_folds_case_punctuation_and_spaces() -> None:
    assert normalize_text("  Great  BLENDER!!  ") == normalize_text("great blender") == "great blender"
    assert normalize_text("Crème brûlée_maker, 2-in-1") == "crème brûlée_maker 2 in 1"


def echo_ratio(sample: str, prompt: str, n: int = 5) -> float:
    """Reference, one row at a time: share of the sample's word n-grams (n shrinks for short text)
    that also occur in the prompt. `heuristics.echo_share` must compute the same for a column."""
    sample_words = normalize_text(sample).split()
    prompt_words = normalize_text(prompt).split()
    size = min(n, max(1, len(sample_words) // 2))
    if len(sample_words) < size or not sample_words:
        return 0.0
    grams = [tuple(sample_words[i : i + size]) for i in range(len(sample_words) - size + 1)]
    prompt_grams = {tuple(prompt_words[i : i + size]) for i in range(len(prompt_words) - size + 1)}
    return sum(gram in prompt_grams for gram in grams) / len(grams)


def test_echo_ratio() -> None:
    copied = "These headphones sound amazing and the battery lasts all week."
    assert echo_ratio(copied, PROMPT) == 1.0
    assert echo_ratio("The cushions are soft and I wear them on long flights without pain.", PROMPT) == 0.0


def test_vectorised_echo_share_equals_the_row_at_a_time_definition() -> None:
    samples = [
        "These headphones sound amazing and the battery lasts all week.",
        "The cushions are soft and I wear them on long flights without pain.",
        "Sound amazing, battery lasts all week, and they fold flat.",
        "lasts all week",
        "week",
        "",
        "Write one new positive review of headphones please, they are great.",
    ]
    prompts = [PROMPT, "A different prompt about kettles and tea."]
    prompt_of_row = np.asarray([0, 0, 0, 0, 0, 0, 1])
    shares = echo_share(tokenize(normalize_many(samples)), tokenize(normalize_many(prompts)), prompt_of_row)
    expected = [echo_ratio(s, prompts[p]) for s, p in zip(samples, prompt_of_row, strict=True)]
    assert shares.tolist() == pytest.approx(expected)


def test_curate_keeps_good_rows_and_gives_every_reason() -> None:
    outcome = _curate(
        [
            "Crisp sound, comfy fit, and the case is tiny enough for my jacket pocket.",
            "crisp sound comfy fit and the case is tiny enough for my jacket pocket",  # duplicate
            "Great.",  # too short
            "These headphones sound amazing and the battery lasts all week.",  # echo of a demo
            "",  # empty
            "x" * 700,  # too long
            "I returned them: the left ear cup rattles whenever the bass kicks in.",
        ]
    )
    assert outcome.curated["sample_id"].tolist() == ["s0", "s6"]
    assert rejection_reasons(outcome) == {
        "s1": ["exact_duplicate"],
        "s2": ["too_short"],
        "s3": ["echoes_prompt"],
        "s4": ["empty"],
        "s5": ["too_long"],
    }
    assert outcome.generated == 7
    assert outcome.reason_counts()["exact_duplicate"] == 1
    assert "same normalized text as s0" in _details(outcome, "s1")["exact_duplicate"]
    assert list(outcome.curated.columns) == stage_columns("curated_set")
    assert list(outcome.rejected.columns) == stage_columns("rejected_samples")
    assert "no embedding model" in " ".join(outcome.notes) or not outcome.notes


def test_a_row_failing_several_rules_keeps_all_reasons() -> None:
    outcome = _curate(["Lasts all week.", "lasts all week"])
    assert rejection_reasons(outcome)["s1"] == ["too_short", "echoes_prompt", "exact_duplicate"]


def test_every_reason_code_is_documented() -> None:
    assert set(REASON_CODES) == set(REASONS) and all(REASONS.values())


def test_repeated_ngrams_and_lines() -> None:
    outcome = _curate(
        [
            "The blender is great. The blender is great. The blender is great. The blender is great.",
            "I love it, I love the colour and I love the price, and the motor is quiet.",
            "The best blender I ever had!\nThe best blender I ever had!\nThe best blender I ever had!\nYes.",
            "Customer: My order never arrived.\nAgent: Sorry to hear that, let me check.\n"
            "Customer: Thanks.\nAgent: It ships tomorrow.\nCustomer: Thanks.",
        ]
    )
    reasons = rejection_reasons(outcome)
    assert reasons["s0"] == ["repeated_ngrams"]
    assert "repeated_lines" in reasons["s2"]
    assert set(outcome.curated["sample_id"]) == {"s1", "s3"}
    assert "of word 3-grams repeat" in _details(outcome, "s0")["repeated_ngrams"]


@pytest.mark.parametrize(
    "text",
    [
        "Sure! Here is a positive review of the headphones: they sound great.",
        "Here's a new review with a positive note: the headphones are comfy.",
        "As an AI language model, I do not own headphones, but they seem nice.",
        "The new negative review: the headphones broke in a week.",
        "I'd be happy to help with that. The headphones are great.",
        "Great sound and a long battery life.\nLet me know if you want another review!",
        "Comfortable headphones with deep bass. [Your Review Text]",
        "A positive review of headphones includes comfort and battery life.",
    ],
)
def test_assistant_talk_is_rejected(text: str) -> None:
    no_repair = RULES.model_copy(update={"strip_lead_in": False})
    assert rejection_reasons(_curate([text], rules=no_repair)) == {"s0": ["assistant_talk"]}


def test_a_lead_in_is_stripped_and_the_rest_judged_on_its_own() -> None:
    outcome = _curate(
        [
            'Here is a new negative review of the headphones: "The left ear cup cracked within a week."',
            "The new negative review: the headphones broke in a week and the seller ignored me.",
            "Sure! Here is a positive review of the headphones: great.",  # too little left: rejected
            "Here's a sample of a neutral review:\nReview (neutral): fine sound, weak bass, ok price.",
            "Your review is fine, but here is mine: the bass is deep and the fit is snug.",
            "Pros: deep bass. Cons: the case is bulky and the cable is short.",
        ]
    )
    kept = outcome.curated.set_index("sample_id")
    assert kept.loc["s0", "text"] == "The left ear cup cracked within a week."
    assert kept.loc["s1", "text"] == "the headphones broke in a week and the seller ignored me."
    assert json.loads(kept.loc["s0", "flags"]) == ["stripped_lead_in"]
    assert kept.loc["s5", "flags"] == "[]"  # "Pros:" is not a lead-in
    reasons = rejection_reasons(outcome)
    assert reasons["s2"] == ["assistant_talk"]
    assert "echoes_prompt" in reasons["s3"]  # what is left copies the template's demo format
    assert "assistant_talk" in reasons["s4"]  # talk to the user is not a lead-in


@pytest.mark.parametrize(
    "text",
    [
        "Sure, they are pricey, but the sound is worth every penny.",
        "Certainly the most comfortable headphones I have owned.",
        "Customer: The refund has not arrived.\nAgent: Let me know if it is not there by Friday.",
        "I rarely write reviews, but these headphones changed my commute.",
        "Here is the thing: the bass is deep and the case is tiny.",
    ],
)
def test_ordinary_text_that_resembles_assistant_talk_is_kept(text: str) -> None:
    assert _curate([text]).curated["sample_id"].tolist() == ["s0"]


def test_refusals() -> None:
    outcome = _curate(
        [
            "I'm sorry, but I can't help with writing a review of these headphones.",
            "I cannot write that review because I have not used the product.",
            "I'm sorry to say the left ear cup cracked after a month of use.",
        ]
    )
    reasons = rejection_reasons(outcome)
    assert reasons["s0"] == ["refusal"] and reasons["s1"] == ["refusal"]
    assert outcome.curated["sample_id"].tolist() == ["s2"]


def test_truncated_endings_are_trimmed_or_rejected() -> None:
    texts = [
        "The headphones are comfortable. The battery lasts long and the case is",  # trim to 1st sentence
        "The headphones are comfortable and the battery lasts long and the",  # nothing to keep
        "Great headphones, I love it",  # no full stop, but the model stopped on its own
        "Battery life is excellent. Bass is deep",  # cut at the token limit
    ]
    finish = ["length", "stop", "stop", "length"]
    outcome = _curate(texts, finish=finish)
    assert rejection_reasons(outcome) == {"s1": ["truncated"]}
    kept = outcome.curated.set_index("sample_id")
    assert kept.loc["s0", "text"] == "The headphones are comfortable."
    assert json.loads(kept.loc["s0", "flags"]) == ["trimmed_truncated_ending"]
    assert kept.loc["s3", "text"] == "Battery life is excellent."
    assert kept.loc["s2", "flags"] == "[]"
    # "drop" rejects every truncated sample, "keep" none
    dropped = _curate(texts, rules=RULES.model_copy(update={"truncated": "drop"}), finish=finish)
    assert set(rejection_reasons(dropped)) == {"s0", "s1", "s3"}
    kept_all = _curate(texts, rules=RULES.model_copy(update={"truncated": "keep"}), finish=finish)
    assert kept_all.reason_counts()["truncated"] == 0


def test_trim_to_last_sentence() -> None:
    assert trim_to_last_sentence('It works. "Love it!" And the', 5) == 'It works. "Love it!"'
    assert trim_to_last_sentence("It works. And the", 20) is None


def test_non_text_junk() -> None:
    outcome = _curate(
        [
            "<div class='review'>Buy now</div> best headphones",
            "Check https://spam.example.com for the best headphones deals",
            "▓▓▓▓ ░░░░ ▒▒▒▒ ^^^^ |||| great headphones ~~~~ ▓▓▓▓ ░░░░",
            "Love them 😍 the bass is deep and the fit is snug, 10/10!",
        ]
    )
    reasons = rejection_reasons(outcome)
    assert set(reasons) == {"s0", "s1", "s2"} and all(r == ["non_text"] for r in reasons.values())
    assert "markup" in _details(outcome, "s0")["non_text"]
    assert "not ordinary text" in _details(outcome, "s2")["non_text"]


def test_wrong_language_only_when_the_spec_names_one() -> None:
    texts = [
        "Die Kopfhörer sind sehr gut und der Akku hält eine Woche, aber die Polster sind hart.",
        "Le casque est très confortable et la batterie dure une semaine, mais le son est moyen.",
        "Наушники очень удобные, батарея держит неделю, но звук средний.",
        "The headphones are very comfortable and the battery lasts a week, but the sound is average.",
        "Bought these in Paris at a café; the bass is deep and the fit is snug.",
    ]
    english = RULES.model_copy(update={"language": "en"})
    outcome = _curate(texts, rules=english)
    assert rejection_reasons(outcome) == {
        "s0": ["wrong_language"],
        "s1": ["wrong_language"],
        "s2": ["wrong_language"],
    }
    assert "'de'" in _details(outcome, "s0")["wrong_language"]
    assert "Latin script" in _details(outcome, "s2")["wrong_language"]
    assert _curate(texts).rejected.empty  # no language in the spec: nothing checked


def test_template_echo() -> None:
    outcome = _curate(
        [
            "Review (negative): The zipper broke the first time I used it.",
            "Write one new positive review of headphones. Reply with the review text only.",
            "My review of these headphones: positive, the fit is great.",
        ]
    )
    reasons = rejection_reasons(outcome)
    assert "echoes_prompt" in reasons["s0"] and "echoes_prompt" in reasons["s1"]
    assert "template line" in _details(outcome, "s0")["echoes_prompt"]
    lines = [line for line, _ in template_line_patterns(TEMPLATE)]
    assert lines == [
        "Review ({{ demo.label }}): {{ demo.text }}",
        "Write one new {{ label }} review of {{ product }}. Reply with the review text only.",
    ]


def test_clean_row_is_kept_as_representative_of_duplicates() -> None:
    # the first copy is broken (assistant talk); the later clean copy must be the one kept
    outcome = _curate(
        [
            "Sure! The bass is deep, the fit is snug and the case is tiny.",
            "The bass is deep, the fit is snug and the case is tiny.",
            "the bass is deep the fit is snug and the case is tiny",
        ]
    )
    assert outcome.curated["sample_id"].tolist() == ["s1"]
    reasons = rejection_reasons(outcome)
    assert reasons["s2"] == ["exact_duplicate"]
    assert reasons["s0"] == ["assistant_talk", "near_duplicate"]
    assert "with s1" in _details(outcome, "s0")["near_duplicate"]


def test_every_filter_can_be_switched_off() -> None:
    off = CurationSpec(
        min_chars=0,
        max_chars=10_000,
        echo_threshold=1.0,
        truncated="keep",
        max_repeated_ngram_share=1.0,
        max_repeated_line_share=1.0,
        reject_assistant_talk=False,
        max_non_text_share=1.0,
        near_duplicate_threshold=None,
        semantic_duplicate_threshold=None,
        label_check="off",
        min_relevance=None,
        pii="off",
    )
    texts = [
        "Sure! The blender is great. The blender is great. The blender is great.",
        "Sure! The kettle is great. The kettle is great. The kettle is great.",
        "I'm sorry, but I can't help with that",
    ]
    samples, prompts = _frames(texts)
    assert curate(samples, prompts, off).rejected.empty


def test_no_samples_gives_empty_tables_in_column_order() -> None:
    outcome = _curate([])
    assert outcome.curated.empty and outcome.rejected.empty and outcome.generated == 0
    assert list(outcome.curated.columns) == stage_columns("curated_set")
    assert outcome.duplicate_rate == 0.0


def test_heuristics_over_chunks_equal_one_pass() -> None:
    texts = [
        "The blender is great. The blender is great. The blender is great. The blender is great.",
        "These headphones sound amazing and the battery lasts all week.",
        "Sure! Here is a review: fine.",
        "A quiet kettle that boils fast.",
        "",
        "Die Kopfhörer sind sehr gut und der Akku hält eine Woche.",
        "I'm sorry, but I can't help with that.",
    ]
    rules = RULES.model_copy(update={"language": "en"})
    results = []
    for chunk_rows in (2, 3, 100):
        findings = Findings(len(texts))
        run_heuristics(
            texts,
            normalize_many(texts),
            findings,
            rules,
            prompt_texts=[PROMPT],
            prompt_of_row=np.zeros(len(texts), dtype=np.int64),
            template=TEMPLATE,
            labels=LABELS,
            chunk_rows=chunk_rows,
        )
        results.append(findings.reasons_and_details())
    assert results[0] == results[1] == results[2]
    assert results[0][0][0] == ["repeated_ngrams"] and results[0][0][1] == ["echoes_prompt"]


def test_cap_per_cell_keeps_first_n_per_cell_and_rejects_the_surplus_with_a_reason() -> None:
    import json as _json

    from synth_assets.curation.pipeline import CurationOutcome, cap_per_cell
    from synth_assets.storage import stage_columns

    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(5)],
            "prompt_index": range(5),
            "cell": ['{"product": "a"}'] * 3 + ['{"product": "b"}'] * 2,
        }
    )
    curated = pd.DataFrame({c: [None] * 5 for c in stage_columns("curated_set")})
    curated["sample_id"] = [f"s{i}" for i in (4, 2, 1, 0, 3)]  # out of prompt order on purpose
    curated["prompt_id"] = [f"p{i}" for i in (4, 2, 1, 0, 3)]
    curated["text"] = "text"
    rejected = pd.DataFrame(columns=stage_columns("rejected_samples"))
    capped = cap_per_cell(CurationOutcome(curated=curated, rejected=rejected), prompts, n=1)
    assert sorted(capped.curated["sample_id"]) == ["s0", "s3"]  # first prompt of each cell
    assert sorted(capped.rejected["sample_id"]) == ["s1", "s2", "s4"]
    assert all(_json.loads(r) == ["cell_full"] for r in capped.rejected["reasons"])
    assert len(capped.curated) + len(capped.rejected) == 5


def test_invisible_characters_do_not_hide_a_copy_of_the_prompt() -> None:
    copied = "These head\u200bphones sound ama\u00adzing and the battery lasts all week."
    outcome = _curate([copied, "I returned them: the left ear cup rattles whenever the bass kicks in."])
    assert rejection_reasons(outcome) == {"s0": ["echoes_prompt"]}


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (
            "nl",
            "De koptelefoon klinkt geweldig en de batterij gaat de hele week mee, ik ben er erg blij mee.",
        ),
        ("sv", "Hörlurarna låter fantastiskt och batteriet håller hela veckan, jag är mycket nöjd med dem."),
        ("pl", "Słuchawki brzmią świetnie, a bateria wytrzymuje cały tydzień. Jestem bardzo zadowolony."),
        ("tr", "Kulaklıklar harika ses veriyor ve pil bütün hafta dayanıyor, bundan çok memnunum."),
        ("id", "Headphone ini suaranya bagus sekali dan baterainya tahan selama satu minggu penuh."),
    ],
)
def test_language_check_catches_latin_script_languages_with_py3langid(language: str, text: str) -> None:
    outcome = _curate([text], rules=RULES.model_copy(update={"language": "en"}))
    assert rejection_reasons(outcome) == {"s0": ["wrong_language"]}
    assert f"py3langid: '{language}'" in _details(outcome, "s0")["wrong_language"]


def test_language_check_passes_english_and_leaves_short_texts_alone() -> None:
    english = RULES.model_copy(update={"language": "en"})
    seed = pd.read_csv(Path(__file__).resolve().parent.parent / "specs" / "data" / "product_reviews_seed.csv")
    texts = [
        *seed.iloc[:, 0].astype(str),
        "Crisp sound, comfy fit, and the case is tiny enough for my jacket pocket.",
        "Bought these in Paris at a café; the bass is deep and the fit is snug.",
    ]
    assert not _curate(texts, rules=english).reason_counts().get("wrong_language")
    # under MIN_WORDS_FOR_DETECTOR words there is too little evidence: never rejected
    assert (
        rejection_reasons(
            _curate(["Perfecto, muy bueno!"], rules=english.model_copy(update={"min_chars": 5}))
        )
        == {}
    )


def test_your_request_is_data_in_a_dialogue_and_assistant_talk_alone() -> None:
    dialogue = (
        "Customer: I asked for a refund for my earbuds last week.\n"
        "Agent: I have processed your request, the refund arrives within five days.\n"
        "Customer: Thank you, that was quick."
    )
    single = "Thanks for your request! The earbuds are comfortable and the case charges fast."
    outcome = _curate([dialogue, single], rules=RULES.model_copy(update={"max_chars": 1000}))
    assert rejection_reasons(outcome) == {"s1": ["assistant_talk"]}
    assert "your request" in _details(outcome, "s1")["assistant_talk"]


def test_invisible_characters_do_not_hide_chat_wrapping_or_loops() -> None:
    line = "The handle stays cool and the lid clicks shut every time."
    outcome = _curate(
        [
            "Su\u200bre! Here is a new re\u00adview: the kettle boils fast and the handle stays cool.",
            f"{line}\n{line.replace('handle', 'han' + chr(0x200B) + 'dle')}",
        ],
        rules=RULES.model_copy(update={"max_repeated_line_share": 0.3}),
    )
    reasons = rejection_reasons(outcome)
    assert "assistant_talk" in reasons["s0"] and "repeated_lines" in reasons["s1"]
    assert "'Sure!'" in _details(outcome, "s0")["assistant_talk"]


def test_chat_wrapping_marks_what_must_never_become_a_demo() -> None:
    from synth_assets.curation.heuristics import chat_wrapping

    flags = chat_wrapping(
        [
            "Sure! Here is a review: the kettle boils fast.",
            "I'm sorry, but I can't help with that.",
            "[Your Review Text]",
            "Thanks for your request! The kettle boils fast.",
            "Customer: Where is my order?\nAgent: I have checked your request, it ships today.",
            "The kettle boils fast and the handle stays cool.",
        ]
    )
    assert flags.tolist() == [True, True, True, True, False, False]


def test_close_languages_are_not_wrong_languages() -> None:
    norwegian = "Vannkokeren koker vannet veldig raskt, og håndtaket blir aldri varmt. Jeg er fornøyd."
    outcome = _curate([norwegian], rules=RULES.model_copy(update={"language": "no"}))
    assert rejection_reasons(outcome) == {}
