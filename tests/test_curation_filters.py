"""Curation filters as units: the registry, the running order, what each filter declares, exact-N's
cheap acceptance seeing the text curate sees, and the perplexity filter (slow: the real local model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synth_assets.curation import reasons as R
from synth_assets.curation.filters import FILTERS, CurationFilter, CurationRows, FilterRegistry, Phase
from synth_assets.curation.filters.base import (
    EMBEDDINGS,
    JUDGE_MODEL,
    LOCAL_MODEL,
    NEEDS,
    PREVIOUS,
    SEED_ROWS,
    STORED_SCORES,
)
from synth_assets.curation.pipeline import CurationContext, cheap_acceptance, curate, needs
from synth_assets.spec import CurationSpec, SpecError, load_spec
from tests.conftest import rejection_reasons as _reasons
from tests.conftest import write_tiny_spec
from tests.test_curation import _frames

FLAGS = {R.FLAG_LABEL_DOUBT, R.FLAG_RELABELED, R.FLAG_PII_SCRUBBED, R.FLAG_TRIMMED, R.FLAG_LEAD_IN}
# rules without anything that needs the seed, embeddings or a model
TEXT_ONLY = CurationSpec(
    min_chars=20,
    semantic_duplicate_threshold=None,
    label_check="off",
    min_relevance=None,
    dedup_against_seed=False,
    dedup_against_previous_versions=False,
)
REVIEWS_SEED = Path(__file__).parent.parent / "specs" / "data" / "product_reviews_seed.csv"


# --- the registry -----------------------------------------------------------------------------------


def test_registered_filters_run_in_phase_order() -> None:
    names = [f.name for f in FILTERS.ordered()]
    assert names == [
        "pii",
        "repairs",
        "heuristics",
        "seed_length",
        "relevance",
        "label_check",
        "label_fidelity",
        "judge",
        "perplexity",
        "dedup_exact",
        "dedup_near",
        "dedup_semantic",
        "dedup_references",
    ]
    phases = [f.phase for f in FILTERS.ordered()]
    assert phases == sorted(phases)
    assert [f.name for f in FILTERS.ordered(up_to=Phase.HEURISTICS)] == ["pii", "repairs", "heuristics"]


def test_every_filter_declares_known_reasons_flags_scores_and_needs() -> None:
    produced: list[str] = []
    for step in FILTERS.ordered():
        assert set(step.reasons) <= set(R.REASONS), step.name
        assert set(step.flags) <= FLAGS, step.name
        produced += step.reasons
        for rules in (CurationSpec(), CurationSpec(label_fidelity="both", judge=True, perplexity=True)):
            assert step.needs(rules) <= NEEDS, step.name
    # every reason code belongs to exactly one filter, except the exact-N cap applied after curation
    assert sorted(produced) == sorted(set(R.REASON_CODES) - {R.CELL_FULL})
    stored = {column for step in FILTERS.ordered() for column in step.scores} & set(STORED_SCORES)
    assert stored == set(STORED_SCORES)


def test_registry_refuses_a_repeated_name_an_unknown_reason_and_a_bad_phase() -> None:
    registry = FilterRegistry()
    registry.register(FILTERS["heuristics"])
    with pytest.raises(ValueError, match="'heuristics' is registered twice"):
        registry.register(FILTERS["heuristics"])

    class Unknown(CurationFilter):
        name = "unknown"
        phase = Phase.MODELS
        reasons = ("too_boring",)

    with pytest.raises(ValueError, match=r"unknown reason codes \['too_boring'\]"):
        registry.register(Unknown())

    class NoPhase(CurationFilter):
        name = "no_phase"
        phase = 7  # type: ignore[assignment]

    with pytest.raises(ValueError, match="is not a Phase"):
        registry.register(NoPhase())


def test_needs_follow_the_rules() -> None:
    assert needs(CurationSpec()) == {EMBEDDINGS, SEED_ROWS, PREVIOUS}
    assert needs(TEXT_ONLY) == frozenset()
    assert LOCAL_MODEL in needs(TEXT_ONLY.model_copy(update={"label_fidelity": "likelihood"}))
    assert LOCAL_MODEL not in needs(TEXT_ONLY.model_copy(update={"label_fidelity": "classifier"}))
    assert needs(CurationSpec(perplexity=True)) >= {LOCAL_MODEL, SEED_ROWS}
    assert JUDGE_MODEL in needs(CurationSpec(judge=True))


class Shouting(CurationFilter):
    """A real (small) new filter: texts written all in capitals are rejected as non-text."""

    name = "shouting"
    phase = Phase.MODELS
    reasons = (R.NON_TEXT,)
    scores = ("upper_share",)

    def run(self, rows: CurationRows) -> None:
        share = np.asarray(
            [sum(c.isupper() for c in t) / max(1, sum(c.isalpha() for c in t)) for t in rows.texts]
        )
        rows.scores["upper_share"] = share
        rows.findings.add(R.NON_TEXT, share > 0.9, lambda i: f"{share[i]:.0%} capitals")


def test_a_new_filter_is_one_registration_and_runs_before_dedup_whatever_the_registration_order() -> None:
    registry = FilterRegistry()
    for step in FILTERS.ordered():
        registry.register(step)
    registry.register(Shouting())  # registered after the duplicate filters, runs before them
    assert [f.name for f in registry.ordered()].index("shouting") < [
        f.name for f in registry.ordered()
    ].index("dedup_exact")
    loud = "THE BLENDER IS GREAT AND MAKES SMOOTHIES IN SECONDS."
    quiet = "The blender is great and makes smoothies in seconds."
    samples, prompts = _frames([loud, quiet])
    outcome = curate(samples, prompts, TEXT_ONLY, registry=registry)
    # both normalise to the same text: the clean row, not the shouting one, is the representative
    assert _reasons(outcome) == {"s0": [R.NON_TEXT, R.EXACT_DUPLICATE]}
    assert outcome.curated["sample_id"].tolist() == ["s1"]
    assert outcome.scores.set_index("sample_id")["upper_share"].round(2).to_dict() == {"s0": 1.0, "s1": 0.02}
    assert "shouting" in outcome.timings and "assemble" in outcome.timings
    # the default registry is untouched
    assert curate(samples, prompts, TEXT_ONLY).rejected["reasons"].map(json.loads).tolist() == [
        [R.EXACT_DUPLICATE]
    ]


# --- exact-N's cheap acceptance ---------------------------------------------------------------------

GOOD = "Great sound and the battery lasts for days, I am really happy with them."
LEAD_IN = "Here is a positive review: The blender crushes ice in seconds and rinses clean under the tap."
TRUNCATED_REPAIRABLE = "The lamp is bright and sturdy. The arm holds any angle and the base is"
CUT_OFF = "The tent went up in minutes and kept us dry through a night of rain and the"
SCRUBBED_SHORT = "Mail me: jane.doe@example.com"


def _spec(tmp_path: Path, extra: str = "") -> object:
    return load_spec(write_tiny_spec(tmp_path, replacements={"  max_chars: 600": "  max_chars: 600" + extra}))


def test_cheap_acceptance_counts_what_curate_keeps_on_the_same_repaired_text(tmp_path: Path) -> None:
    """Before: exact-N judged the raw text, so a lead-in cut off by curate counted as rejected and a
    row trimmed to its last sentence was not checked for truncation at all; the counts diverged."""
    spec = _spec(tmp_path)
    texts = [GOOD, LEAD_IN, TRUNCATED_REPAIRABLE, CUT_OFF, "ok", SCRUBBED_SHORT]
    finish = ["stop", "stop", "length", "length", "stop", "stop"]
    samples, prompts = _frames(texts, finish)
    accepted = cheap_acceptance(samples, prompts, spec).tolist()  # type: ignore[arg-type]
    assert accepted == [True, True, True, False, False, True]
    # with every filter beyond the cheap ones off, curate keeps exactly the accepted rows
    rules = spec.curation.model_copy(  # type: ignore[attr-defined]
        update={
            "near_duplicate_threshold": None,
            "semantic_duplicate_threshold": None,
            "label_check": "off",
            "min_relevance": None,
            "dedup_against_seed": False,
            "dedup_against_previous_versions": False,
        }
    )
    context = CurationContext(task=spec.task, labels=tuple(spec.labels), template=spec.template)  # type: ignore[attr-defined]
    kept = set(curate(samples, prompts, rules, context).curated["sample_id"])
    assert [f"s{i}" in kept for i in range(len(texts))] == accepted


def test_cheap_acceptance_drops_personal_data_when_curation_drops_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "\n  pii: drop")
    samples, prompts = _frames([GOOD, f"{GOOD} Call me on +44 20 7946 0958."])
    assert cheap_acceptance(samples, prompts, spec).tolist() == [True, False]  # type: ignore[arg-type]


def test_self_instruct_demos_must_pass_without_repair(tmp_path: Path) -> None:
    """A Self-Instruct demo is shown verbatim: a lead-in curate would cut off still disqualifies it."""
    spec = load_spec(
        write_tiny_spec(
            tmp_path,
            replacements={
                "num_samples: 6": "self_instruct:\n  per_round: 3\n  machine_demos: 1\nnum_samples: 6"
            },
        )
    )
    samples, prompts = _frames([GOOD, LEAD_IN])
    assert cheap_acceptance(samples, prompts, spec).tolist() == [True, False]


def test_cheap_acceptance_of_nothing_is_empty(tmp_path: Path) -> None:
    samples, prompts = _frames([])
    assert cheap_acceptance(samples, prompts, _spec(tmp_path)).empty  # type: ignore[arg-type]


# --- the perplexity filter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "perplexity:\n    margin: 0.5",
            "curation.perplexity.margin: Input should be greater than or equal to 1",
        ),
        (
            "perplexity:\n    upper_quantile: 1.5",
            "curation.perplexity.upper_quantile: Input should be less than",
        ),
        ("perplexity:\n    lower_quantile: 0.995", "lower_quantile must be smaller than upper_quantile"),
        ("perplexity:\n    marginn: 2", "curation.perplexity.marginn: unknown field"),
        ("perplexity: maybe", "curation.perplexity"),
    ],
)
def test_a_bad_perplexity_block_is_a_one_line_error_naming_the_field(
    tmp_path: Path, block: str, expected: str
) -> None:
    path = write_tiny_spec(tmp_path, replacements={"  max_chars: 600": f"  max_chars: 600\n  {block}"})
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message and "tiny_reviews.yaml" in message and expected in message


@pytest.mark.parametrize(("value", "on"), [("true", True), ("off", False), ("false", False), ("null", False)])
def test_perplexity_is_off_by_default_and_switched_by_yaml(tmp_path: Path, value: str, on: bool) -> None:
    assert load_spec(write_tiny_spec(tmp_path / "default")).curation.perplexity is None
    path = write_tiny_spec(
        tmp_path, replacements={"  max_chars: 600": f"  max_chars: 600\n  perplexity: {value}"}
    )
    settings = load_spec(path).curation.perplexity
    assert (settings is not None) == on
    if on:
        assert settings is not None and (settings.upper_quantile, settings.margin) == (0.99, 1.5)


def test_perplexity_without_a_model_or_enough_seed_rows_is_skipped_with_a_note() -> None:
    rules = TEXT_ONLY.model_copy(update={"perplexity": CurationSpec(perplexity=True).perplexity})
    samples, prompts = _frames([GOOD])
    outcome = curate(samples, prompts, rules, CurationContext())
    assert outcome.rejected.empty and any("perplexity skipped: no local model" in n for n in outcome.notes)


@pytest.fixture(scope="module")
def local_model() -> object:
    from synth_assets.generation.local_llm import get_local_model

    return get_local_model()


@pytest.mark.slow
def test_perplexity_ranks_fluent_text_below_its_shuffled_words(local_model: object) -> None:
    from synth_assets.curation.filters.perplexity import perplexities

    fluent = "The blender crushes ice in seconds and rinses clean under the tap."
    words = fluent.split()
    shuffled = " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words)))
    scores = perplexities(local_model, [fluent, shuffled, ""])  # type: ignore[arg-type]
    assert np.isfinite(scores[:2]).all() and np.isnan(scores[2])
    assert 1.0 < scores[0] < scores[1] / 3


@pytest.mark.slow
def test_perplexity_flags_garbage_against_the_seed_under_the_real_model(local_model: object) -> None:
    seed = pd.read_csv(REVIEWS_SEED)
    seed_rows = pd.DataFrame(
        {
            "seed_id": [f"r{i}" for i in range(len(seed))],
            "split": "train",
            "text": seed.iloc[:, 0],
            "label": seed.iloc[:, 1],
        }
    )
    good = [
        "The kettle boils a full jug in two minutes and the handle stays cool.",
        "Terrible headphones, the left ear cracked after a week and support ignored me.",
        "It is an average desk lamp, bright enough for reading but nothing special.",
    ]
    garbage = [
        "xq zvbn kkjw pqlr ttyz mmnb qqwe rrtz vvbn xxcv lkjh poiu",
        "Ã©tait trÃ¨s bien Ã  la maison â€™ Ã¢ Ã§a Ã´ Ã¹ Ã® ï¿½ ï¿½ Ã«",
        "blender purple seven quickly the of sandwich democracy under cable whisper tomorrow",
    ]
    samples, prompts = _frames(good + garbage)
    rules = TEXT_ONLY.model_copy(
        update={
            "perplexity": CurationSpec(perplexity=True).perplexity,
            "max_non_text_share": 1.0,
            "language": None,
        }
    )
    context = CurationContext(seed_rows=seed_rows, local_model=local_model)  # type: ignore[arg-type]
    outcome = curate(samples, prompts, rules, context)
    reasons = _reasons(outcome)
    assert set(outcome.curated["sample_id"]) >= {"s0", "s1", "s2"}
    # measured: word salad is flagged; random letters and mojibake are not (per-token perplexity: they
    # split into many short tokens, each fairly predictable after the previous fragment)
    assert "s5" in {sid for sid, found in reasons.items() if R.PERPLEXITY_OUTLIER in found}
    detail = json.loads(outcome.rejected.set_index("sample_id").loc["s5", "details"])[R.PERPLEXITY_OUTLIER]
    assert detail.startswith("perplexity ") and "(seed p99 " in detail
    ppl = outcome.scores.set_index("sample_id")["perplexity"]
    assert ppl[["s0", "s1", "s2"]].max() < ppl["s5"]
    assert any(note.startswith("perplexity: seed median") for note in outcome.notes)
    assert outcome.timings["perplexity"] > 0
