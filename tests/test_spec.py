"""Spec and seed loading: valid specs load, every bad input fails with one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_spec

from synth_assets.seed import load_seed_data
from synth_assets.spec import SpecError, load_spec

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_demo_specs_load_with_their_seed_data(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    rows = load_seed_data(spec)
    assert set(rows["label"]) <= set(spec.labels)
    assert (rows["split"] == "train").sum() >= spec.seed.min_rows


def test_default_demo_has_enough_varied_seed_and_a_holdout() -> None:
    spec = load_spec(Path(__file__).parent.parent / "specs" / "product_reviews.yaml")
    rows = load_seed_data(spec)
    train = rows[rows["split"] == "train"]
    holdout = rows[rows["split"] == "holdout"]
    assert len(train) >= 60
    assert set(train["label"]) == {"positive", "neutral", "negative"}
    assert len(holdout) >= 30
    assert not set(train["text"]) & set(holdout["text"])


def test_tiny_spec_loads(tiny_spec_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    assert spec.num_samples == 6
    assert spec.attributes[0].normalized_weights() == [0.5, 0.25, 0.25]
    assert spec.seed_path == (tiny_spec_path.parent / "data" / "tiny_seed.csv").resolve()


def _error_for(tmp_path: Path, replacements: dict[str, str]) -> str:
    path = write_tiny_spec(tmp_path, replacements=replacements)
    with pytest.raises(SpecError) as caught:
        spec = load_spec(path)
        load_seed_data(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        ({"num_samples: 6": "num_samples: -1"}, "num_samples: Input should be greater than or equal to 1"),
        ({"random_seed: 7": "random_seed: 7\ncolour: blue"}, "colour: unknown field"),
        (
            {"weights: [2, 1, 1]": "weights: [2, 1]"},
            "attributes.0: attribute 'product' has 3 values but 2 weights",
        ),
        ({"name: tiny_reviews": "name: Tiny Reviews!"}, "name: must be lower-case"),
        (
            {"labels: [positive, neutral, negative]": "labels: [positive, neutral]"},
            "not in the spec's labels",
        ),
        ({"text_column: review": "text_column: body"}, "seed.text_column 'body' is not a column"),
        ({"data/tiny_seed.csv": "data/missing.csv"}, "seed.path: file not found"),
        ({"data/tiny_seed.csv": "data/tiny_seed.xlsx"}, "unsupported seed format '.xlsx'"),
        ({"{{ product }}.": "{{ product }."}, "template: Jinja2 syntax error"),
        ({"{{ product }}.": "{{ colour }}."}, "template: cannot render: 'colour' is undefined"),
        ({"max_chars: 600": "max_chars: 5"}, "curation: min_chars must be smaller than max_chars"),
    ],
)
def test_bad_spec_fails_with_one_line_naming_file_and_field(
    tmp_path: Path, replacements: dict[str, str], expected: str
) -> None:
    message = _error_for(tmp_path, replacements)
    assert "tiny_reviews.yaml" in message or ".csv" in message or ".xlsx" in message
    assert expected in message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line"):
        load_spec(broken)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_seed_with_empty_text_names_the_row(tmp_path: Path) -> None:
    path = write_tiny_spec(tmp_path)
    seed = tmp_path / "data" / "tiny_seed.csv"
    seed.write_text(seed.read_text() + '"",positive\n')
    with pytest.raises(SpecError, match=r"tiny_seed.csv: row 10: empty text in column 'review'"):
        load_seed_data(load_spec(path))


def test_parquet_and_jsonl_seeds_load_the_same_rows(tmp_path: Path) -> None:
    csv_spec = load_spec(write_tiny_spec(tmp_path / "csv"))
    frame = pd.read_csv(csv_spec.seed_path)
    for suffix in ("parquet", "jsonl"):
        folder = tmp_path / suffix
        path = write_tiny_spec(folder, replacements={"data/tiny_seed.csv": f"data/tiny_seed.{suffix}"})
        target = folder / "data" / f"tiny_seed.{suffix}"
        if suffix == "parquet":
            frame.to_parquet(target)
        else:
            frame.to_json(target, orient="records", lines=True)
        rows = load_seed_data(load_spec(path))
        expected = load_seed_data(csv_spec)
        assert rows[["seed_id", "text", "label"]].equals(expected[["seed_id", "text", "label"]])


def test_holdout_that_leaks_into_training_is_refused(tmp_path: Path) -> None:
    path = write_tiny_spec(tmp_path)
    holdout = tmp_path / "data" / "tiny_holdout.csv"
    holdout.write_text(holdout.read_text() + '"Average desk chair, fine for short sessions.",neutral\n')
    with pytest.raises(SpecError, match="held-out texts also appear in the training seed"):
        load_seed_data(load_spec(path))


# --- fail before spending: every template, schema, weight and bound is checked at load --------------
LABELS = "labels: [positive, neutral, negative]"
PER_CELL = "random_seed: 7\nper_cell: {attributes: [label, product], "
STEP = "random_seed: 7\nsteps:\n  - name: critique\n    template: |-\n      {body}"


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        (
            {"random_seed: 7": STEP.format(body="Improve: {{ steps.answer }} {{ colour }}")},
            "steps.0.template: cannot render: 'colour' is undefined",
        ),
        (
            {"random_seed: 7": STEP.format(body="{{ steps.rewrite }}")},
            "steps.0.template: cannot render: 'dict object' has no attribute 'rewrite'",
        ),
        (
            {"random_seed: 7": "random_seed: 7\noutput_template: '{{ steps.answer }} {{ colour }}'"},
            "output_template: cannot render: 'colour' is undefined",
        ),
        (
            {"random_seed: 7": "random_seed: 7\noutput_template: '{{ steps.critique }}'"},
            "output_template: cannot render: 'dict object' has no attribute 'critique'",
        ),
        (
            {"max_chars: 600": "max_chars: 600\n  relevance_text: 'A {{ colour }} review'"},
            "curation.relevance_text: cannot render: 'colour' is undefined",
        ),
        (
            {"max_chars: 600": "max_chars: 600\n  relevance_text: 'A {{ colour } review'"},
            "curation.relevance_text: not a valid Jinja template: Jinja2 syntax error",
        ),
        (
            {
                "random_seed: 7": "random_seed: 7\nstructured_output:\n  text_field: review\n  json_schema:\n"
                "    type: objekt\n    properties: {review: {type: string}}"
            },
            "structured_output.json_schema: not a valid JSON schema at $.type",
        ),
        (
            {
                "random_seed: 7": "random_seed: 7\nstructured_output:\n  text_field: review\n  json_schema:\n"
                "    type: object\n    properties: {review: {type: string}}\n    required: review"
            },
            "structured_output.json_schema: not a valid JSON schema at $.required",
        ),
        (
            {LABELS: LABELS + "\nlabel_weights: [0, 0, 0]"},
            "label_weights: all weights are 0",
        ),
        (
            {LABELS: LABELS + "\nlabel_weights: [2, -1, 1]"},
            "label_weights: every weight must be a finite number >= 0",
        ),
        (
            {"curated_min_rows: 1": "curated_min_rows: 0"},
            "gates.curated_min_rows: Input should be greater than or equal to 1",
        ),
        (
            {"curated_min_rows: 1": "curated_min_rows: 7"},
            "gates.curated_min_rows: 7 can never be met: the spec makes at most 6 samples (num_samples)",
        ),
        (
            {
                "random_seed: 7": "random_seed: 7\nper_cell: {attributes: [label, product], n: 2}",
                "curated_min_rows: 1": "curated_min_rows: 19",
            },
            "gates.curated_min_rows: 19 can never be met: the spec makes at most 18 samples (per_cell",
        ),
        (
            {"random_seed: 7": PER_CELL + "n: 10000, budget_factor: 2}"},
            "per_cell: 9 cells x ceil(n x budget_factor) plans 180,000 prompts, more than the 100,000",
        ),
        (
            {"random_seed: 7": "random_seed: 7\nnum_samples: 9"},
            "not valid YAML at line 26: duplicate key 'num_samples'",
        ),
        ({"  k: 2\n": "  k: 2\n  k: 3\n"}, "not valid YAML at line 17: duplicate key 'k'"),
    ],
)
def test_a_spec_that_would_fail_after_generation_fails_at_load_instead(
    tmp_path: Path, replacements: dict[str, str], expected: str
) -> None:
    message = _error_for(tmp_path, replacements)
    assert message.startswith(str(tmp_path / "tiny_reviews.yaml") + ": ")
    assert expected in message


@pytest.mark.parametrize("field", ["label_check", "label_fidelity", "pii"])
def test_yaml_off_is_read_as_off_wherever_the_spec_takes_off(tmp_path: Path, field: str) -> None:
    path = write_tiny_spec(tmp_path, replacements={"max_chars: 600": f"max_chars: 600\n  {field}: off"})
    assert getattr(load_spec(path).curation, field) == "off"


def test_per_cell_within_the_bound_and_reachable_gates_load(tmp_path: Path) -> None:
    path = write_tiny_spec(
        tmp_path,
        replacements={
            "random_seed: 7": "random_seed: 7\nper_cell: {attributes: [label, product], n: 2}",
            "curated_min_rows: 1": "curated_min_rows: 18",
        },
    )
    spec = load_spec(path)
    assert (spec.cell_count(), spec.planned_prompts(), spec.max_curated_rows()) == (9, 54, 18)


def test_the_gate_never_promotes_an_empty_set_whatever_the_threshold(tmp_path: Path) -> None:
    from synth_assets.quality.gates import validate_curated_set
    from synth_assets.storage import stage_columns

    spec = load_spec(write_tiny_spec(tmp_path))
    # a spec copied in code skips validation: the gate itself must still refuse
    unchecked = spec.model_copy(update={"gates": spec.gates.model_copy(update={"curated_min_rows": 0})})
    gate = validate_curated_set(pd.DataFrame(columns=stage_columns("curated_set")), unchecked)
    assert not gate.passed
    assert "expect_table_row_count_to_be_between" in {f.expectation for f in gate.failures}


def test_csv_with_repeated_column_names_is_one_line_error(tmp_path: Path) -> None:
    path = write_tiny_spec(tmp_path)
    seed = tmp_path / "data" / "tiny_seed.csv"
    lines = seed.read_text().splitlines()
    seed.write_text("\n".join([lines[0] + ",review"] + [line + ",x" for line in lines[1:]]) + "\n")
    with pytest.raises(SpecError, match=r"^[^\n]*tiny_seed.csv: header: column names repeated: 'review'$"):
        load_seed_data(load_spec(path))


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_integer_text_column_is_one_line_error(tmp_path: Path, suffix: str) -> None:
    path = write_tiny_spec(tmp_path, replacements={"data/tiny_seed.csv": f"data/tiny_seed.{suffix}"})
    frame = pd.read_csv(tmp_path / "data" / "tiny_seed.csv")
    frame["review"] = range(100, 100 + len(frame))
    target = tmp_path / "data" / f"tiny_seed.{suffix}"
    if suffix == "csv":
        frame.to_csv(target, index=False)
    else:
        frame.to_json(target, orient="records", lines=True)
    with pytest.raises(
        SpecError, match=rf"^[^\n]*tiny_seed.{suffix}: seed.text_column 'review' holds numbers, not text"
    ):
        load_seed_data(load_spec(path))


def test_broken_jsonl_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write_tiny_spec(tmp_path, replacements={"data/tiny_seed.csv": "data/tiny_seed.jsonl"})
    frame = pd.read_csv(tmp_path / "data" / "tiny_seed.csv")
    target = tmp_path / "data" / "tiny_seed.jsonl"
    lines = frame.to_json(orient="records", lines=True).splitlines()
    lines[2] = lines[2][:-5]  # cut off the end of the third record
    target.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match=r"^[^\n]*tiny_seed.jsonl: line 3: invalid JSON: "):
        load_seed_data(load_spec(path))


def test_nul_byte_in_a_seed_csv_is_one_line_error_not_a_silently_cut_text(tmp_path: Path) -> None:
    """pandas ends a CSV field at a NUL byte; the row would have been stored cut without a word."""
    path = write_tiny_spec(tmp_path)
    seed = tmp_path / "data" / "tiny_seed.csv"
    lines = seed.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" ", b" ama\x00zing ", 1)
    seed.write_bytes(b"\n".join(lines))
    with pytest.raises(SpecError, match=r"^[^\n]*tiny_seed.csv: line 4: contains a NUL byte"):
        load_seed_data(load_spec(path))


def test_nul_character_in_a_jsonl_seed_text_is_one_line_error(tmp_path: Path) -> None:
    path = write_tiny_spec(tmp_path, replacements={"data/tiny_seed.csv": "data/tiny_seed.jsonl"})
    frame = pd.read_csv(tmp_path / "data" / "tiny_seed.csv")
    frame.loc[1, frame.columns[0]] = str(frame.loc[1, frame.columns[0]]) + "\x00 hidden"
    (tmp_path / "data" / "tiny_seed.jsonl").write_text(frame.to_json(orient="records", lines=True))
    with pytest.raises(SpecError, match=r"^[^\n]*tiny_seed.jsonl: row 2: NUL character"):
        load_seed_data(load_spec(path))
