"""The curated-set GX gate (real Great Expectations Core): a clean set passes; each broken property
fails its own expectation, and the failure names the rows or values that broke it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_spec

from synth_assets.curation.pipeline import CurationOutcome, curate
from synth_assets.defs.common import gate_result
from synth_assets.quality.gates import curation_metrics, label_balance_frame, validate_curated_set
from synth_assets.spec import CurationSpec, GateSpec, GenerationSpec, load_spec

RULES = CurationSpec(min_chars=10, semantic_duplicate_threshold=None, label_check="off", min_relevance=None)
TEXTS = {
    "positive": ["The kettle boils fast and looks lovely.", "Best headphones I have owned, so comfy."],
    "neutral": ["The lamp is fine, a bit dim for reading.", "Average blender, loud but it works."],
    "negative": ["The zipper broke on the first trip.", "Coffee tastes burnt on every setting."],
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> GenerationSpec:
    loaded = load_spec(write_tiny_spec(tmp_path_factory.mktemp("gates")))
    return loaded.model_copy(
        update={
            "curation": RULES,
            "gates": GateSpec(
                curated_min_rows=3,
                curated_min_yield=0.5,
                max_duplicate_rate=0.2,
                label_balance_tolerance=0.2,
                min_mean_relevance=None,
            ),
        }
    )


def _outcome(texts: list[tuple[str, str]]) -> CurationOutcome:
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "prompt_id": "p",
            "label": [label for label, _ in texts],
            "text": [text for _, text in texts],
        }
    )
    return curate(samples, pd.DataFrame(), RULES)


def test_a_clean_curated_set_passes(spec: GenerationSpec) -> None:
    outcome = _outcome([(label, text) for label, texts in TEXTS.items() for text in texts])
    gate = validate_curated_set(outcome.curated, spec, rejected=outcome.rejected)
    assert gate.passed, gate.summary()
    names = {r.expectation for r in gate.results}
    assert {
        "expect_table_columns_to_match_ordered_list",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_between",
        "expect_column_mean_to_be_between",
    } <= names
    assert gate.summary().startswith("curated_set_gate: all")


def test_failures_name_the_expectation_with_counts_and_examples(spec: GenerationSpec) -> None:
    texts = [("positive", t) for t in TEXTS["positive"]] + [("positive", TEXTS["positive"][0])] * 3
    outcome = _outcome(texts)  # 2 kept of 5: yield 0.4, duplicate rate 0.6, only positive labels
    curated = outcome.curated.copy()
    curated.loc[0, "text"] = "Mail me at jane.doe@example.com, the kettle boils fast."  # PII left
    gate = validate_curated_set(
        curated,
        spec.model_copy(update={"gates": spec.gates.model_copy(update={"curated_min_rows": 3})}),
        rejected=outcome.rejected,
    )
    assert not gate.passed
    failed = {f.describe().split(":")[0]: f for f in gate.failures}
    assert set(failed) == {
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_between(pii_left)",
        "expect_column_mean_to_be_between(yield)",
        "expect_column_mean_to_be_between(duplicate_rate)",
        "expect_column_values_to_be_between(abs_diff)",
    }
    pii = failed["expect_column_values_to_be_between(pii_left)"]
    assert pii.unexpected_count == 1 and pii.examples == [{"sample_id": "s0", "pii_left": 1}]
    assert "no personal data left" in pii.describe()
    assert failed["expect_column_mean_to_be_between(yield)"].observed_value == pytest.approx(0.4)
    assert failed["expect_column_mean_to_be_between(duplicate_rate)"].observed_value == pytest.approx(0.6)
    balance = failed["expect_column_values_to_be_between(abs_diff)"]
    assert balance.unexpected_count == 3
    assert {e["label"] for e in balance.examples} == {"positive", "neutral", "negative"}
    # what the Dagster check shows in the UI
    check = gate_result(gate)
    assert not check.passed
    assert check.metadata["expectations_failed"].value == 5
    examples = check.metadata["failing_examples"].value
    assert any("s0" in json.dumps(v) for v in examples.values())


def test_schema_scores_and_relevance_bounds(spec: GenerationSpec) -> None:
    outcome = _outcome([(label, text) for label, texts in TEXTS.items() for text in texts])
    curated = outcome.curated.copy()
    curated["relevance"] = [0.5, 0.6, 0.05, 0.7, 0.4, 0.5]
    strict = spec.model_copy(
        update={
            "curation": RULES.model_copy(update={"min_relevance": 0.1}),
            "gates": spec.gates.model_copy(update={"min_mean_relevance": 0.6}),
        }
    )
    gate = validate_curated_set(curated, strict, rejected=outcome.rejected)
    failed = {f.describe().split(":")[0]: f for f in gate.failures}
    assert set(failed) == {
        "expect_column_values_to_be_between(relevance)",
        "expect_column_mean_to_be_between(relevance)",
    }
    assert failed["expect_column_values_to_be_between(relevance)"].examples == [
        {"sample_id": "s2", "relevance": 0.05}
    ]
    broken = validate_curated_set(curated.drop(columns=["flags"]), spec)
    assert "expect_table_columns_to_match_ordered_list" in broken.summary()


def test_metrics_and_balance_frames(spec: GenerationSpec) -> None:
    outcome = _outcome([("positive", TEXTS["positive"][0])] * 2 + [("negative", TEXTS["negative"][0])])
    assert curation_metrics(outcome.curated, outcome.rejected) == {
        "generated": 3,
        "yield": pytest.approx(2 / 3),
        "duplicate_rate": pytest.approx(1 / 3),
    }
    balance = label_balance_frame(outcome.curated, spec).set_index("label")
    assert balance.loc["positive", "curated_share"] == 0.5
    assert balance.loc["neutral", "abs_diff"] == pytest.approx(0.3333, abs=1e-4)


def test_spec_validation_of_new_fields(tmp_path: Path) -> None:
    from synth_assets.spec import SpecError

    for old, new, message in (
        ("curation:\n", "curation:\n  language: xx\n", "language 'xx' is not one of"),
        ("curation:\n", "curation:\n  judge_min_score: 3\n", "judge_min_score needs judge: true"),
        ("curation:\n", "curation:\n  relevance_text: '{{ broken'\n", "not a valid Jinja template"),
        ("gates:\n", "gates:\n  curated_min_yield: 0.9\n  curated_max_yield: 0.5\n", "must not exceed"),
        ("curation:\n", "curation:\n  label_check: maybe\n", "curation.label_check"),
    ):
        path = write_tiny_spec(
            tmp_path / old.strip(":\n") / message[:5].replace(" ", "_"), replacements={old: new}
        )
        with pytest.raises(SpecError, match=message.replace("(", r"\(")):
            load_spec(path)


def test_pii_gate_is_red_with_an_international_phone_left(spec: GenerationSpec) -> None:
    outcome = _outcome([(label, text) for label, texts in TEXTS.items() for text in texts])
    curated = outcome.curated.copy()
    curated.loc[0, "text"] = "The kettle boils fast. Call +81 3-1234-5678 for spare lids."
    failed = {f.describe().split(":")[0]: f for f in validate_curated_set(curated, spec).failures}
    pii = failed["expect_column_values_to_be_between(pii_left)"]
    assert pii.unexpected_count == 1 and pii.examples[0]["pii_left"] == 1
