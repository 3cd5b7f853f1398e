"""Prompt expansion: deterministic ids, exact label allocation, demos from training rows only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_spec
from jinja2.exceptions import SecurityError

from synth_assets.generation.prompts import allocate_counts, expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import SpecError, load_spec


def _expand(tmp_path: Path, num_samples: int = 30, replacements: dict[str, str] | None = None):
    spec = load_spec(write_tiny_spec(tmp_path, num_samples=num_samples, replacements=replacements))
    seed = load_seed_data(spec)
    return spec, seed, expand_prompts(spec, seed)


def test_allocate_counts_is_exact_and_proportional() -> None:
    assert allocate_counts(10, [0.5, 0.3, 0.2]) == [5, 3, 2]
    assert allocate_counts(7, [1 / 3, 1 / 3, 1 / 3]) == [3, 2, 2]
    assert sum(allocate_counts(101, [0.1, 0.25, 0.65])) == 101


def test_same_spec_gives_same_prompts_and_ids(tmp_path: Path) -> None:
    _, _, first = _expand(tmp_path / "a")
    _, _, second = _expand(tmp_path / "b")
    assert first["prompt_id"].tolist() == second["prompt_id"].tolist()
    assert first["prompt_text"].tolist() == second["prompt_text"].tolist()
    assert first["prompt_id"].is_unique


def test_changing_the_seed_changes_prompts(tmp_path: Path) -> None:
    _, _, first = _expand(tmp_path / "a")
    _, _, other = _expand(tmp_path / "b", replacements={"random_seed: 7": "random_seed: 8"})
    assert first["prompt_id"].tolist() != other["prompt_id"].tolist()


def test_labels_are_allocated_exactly_and_attributes_follow_weights(tmp_path: Path) -> None:
    _, _, prompts = _expand(tmp_path, num_samples=300)
    assert prompts["label"].value_counts().to_dict() == {"positive": 100, "neutral": 100, "negative": 100}
    products = prompts["attributes"].map(lambda a: json.loads(a)["product"]).value_counts(normalize=True)
    assert 0.42 < products["headphones"] < 0.58
    assert 0.17 < products["blender"] < 0.33


def test_demos_are_training_rows_stratified_with_the_target_label(tmp_path: Path) -> None:
    _, seed, prompts = _expand(tmp_path)
    train = seed[seed["split"] == "train"].set_index("seed_id")
    holdout_ids = set(seed.loc[seed["split"] == "holdout", "seed_id"])
    for row in prompts.itertuples():
        demo_ids = json.loads(row.demo_ids)
        assert len(demo_ids) == 2
        assert not set(demo_ids) & holdout_ids
        demo_labels = [train.loc[d, "label"] for d in demo_ids]
        assert row.label in demo_labels
        assert len(set(demo_labels)) == 2  # stratified: two different labels
        for demo_id in demo_ids:
            assert train.loc[demo_id, "text"] in row.prompt_text
        assert f"new {row.label} review" in row.prompt_text


def test_same_label_strategy(tmp_path: Path) -> None:
    _, seed, prompts = _expand(tmp_path, replacements={"strategy: stratified": "strategy: same_label"})
    labels = seed.set_index("seed_id")["label"]
    for row in prompts.itertuples():
        assert {labels[d] for d in json.loads(row.demo_ids)} == {row.label}


def test_template_runs_in_a_sandbox(tmp_path: Path) -> None:
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises((SpecError, SecurityError)):
        _expand(tmp_path, replacements={"{{ task }}": hostile})


def test_more_samples_keep_the_earlier_prompts(tmp_path: Path) -> None:
    # raising num_samples must not reshuffle: the first prompts (and their cached generations) stay
    _, _, smaller = _expand(tmp_path / "a", num_samples=20)
    _, _, larger = _expand(tmp_path / "b", num_samples=22)
    assert larger["prompt_id"].head(20).tolist() == smaller["prompt_id"].tolist()
    assert larger["prompt_text"].head(20).tolist() == smaller["prompt_text"].tolist()


ANCHOR_TEMPLATE = """  Write one new {{ label }} review of {{ product }}. Reply with the review text only.
"""
REWRITE_TEMPLATE = """  Rewrite this {{ label }} review about {{ product }}: {{ anchor.text }}
"""


def test_seed_rewriting_gives_each_prompt_an_anchor_of_its_label_and_covers_the_seed(tmp_path: Path) -> None:
    _spec, seed, prompts = _expand(tmp_path, num_samples=18, replacements={ANCHOR_TEMPLATE: REWRITE_TEMPLATE})
    text_of = dict(zip(seed["seed_id"], seed["text"], strict=True))
    label_of = dict(zip(seed["seed_id"], seed["label"], strict=True))
    anchors = [json.loads(ids)[0] for ids in prompts["demo_ids"]]
    for anchor, label, prompt in zip(anchors, prompts["label"], prompts["prompt_text"], strict=True):
        assert label_of[anchor] == label  # the anchor leads the prompt's lineage and keeps its label
        assert text_of[anchor] in prompt
    train = seed[seed["split"] == "train"]
    # 18 prompts over 3 labels with 3 train rows each: every train row is rewritten twice
    assert sorted(pd.Series(anchors).value_counts().tolist()) == [2] * len(train)


def test_nearest_demos_are_the_anchors_closest_rows_of_its_label(tmp_path: Path) -> None:
    _spec, seed, prompts = _expand(
        tmp_path,
        num_samples=6,
        replacements={"strategy: stratified": "strategy: nearest", "k: 2": "k: 2"},
    )
    from synth_assets.embeddings import embed

    train = seed[seed["split"] == "train"]
    vectors = dict(zip(train["seed_id"], embed(train["text"].tolist()), strict=True))
    label_of = dict(zip(train["seed_id"], train["label"], strict=True))
    for ids, label in zip(prompts["demo_ids"], prompts["label"], strict=True):
        anchor, *demos = json.loads(ids)
        assert {label_of[d] for d in demos} == {label} and anchor not in demos
        others = [s for s, lab in label_of.items() if lab == label and s != anchor]
        ranked = sorted(others, key=lambda s: -float(vectors[s] @ vectors[anchor]))
        assert demos == list(reversed(ranked[:2]))  # least similar first, closest next to the slot


def test_continuation_mode_rejects_chat_only_features(tmp_path: Path) -> None:
    path = write_tiny_spec(
        tmp_path,
        replacements={"  batch_size: 8": "  batch_size: 8\n  mode: continuation\n  system_prompt: hi"},
    )
    with pytest.raises(SpecError, match="system_prompt has no place in continuation mode"):
        load_spec(path)
    assert load_spec(
        write_tiny_spec(
            tmp_path / "ok", replacements={"  batch_size: 8": "  batch_size: 8\n  mode: continuation"}
        )
    ).generation.stop_strings() == ("\n",)


def _seed_with_long_rows(tmp_path: Path, lengths: list[int], strategy: str = "stratified") -> Path:
    path = write_tiny_spec(
        tmp_path, num_samples=12, replacements={"strategy: stratified": f"strategy: {strategy}"}
    )
    seed = tmp_path / "data" / "tiny_seed.csv"
    frame = pd.read_csv(seed)
    if strategy == "same_label":  # every positive row is long, so every positive prompt holds two of them
        frame = frame[frame["sentiment"] != "positive"]
    long_rows = pd.DataFrame(
        {"review": [f"row{i} " + "word " * (n // 5) for i, n in enumerate(lengths)], "sentiment": "positive"}
    )
    pd.concat([frame, long_rows]).to_csv(seed, index=False)
    return path


def test_a_seed_row_that_cannot_fit_the_context_is_named_before_any_prompt_is_made(tmp_path: Path) -> None:
    spec = load_spec(_seed_with_long_rows(tmp_path, [1_000_000]))  # a 1 MB cell
    seed = load_seed_data(spec)
    with pytest.raises(SpecError) as caught:
        expand_prompts(spec, seed)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'data' / 'tiny_seed.csv'}: row 10: text of 1,000,00")
    assert "cannot fit the model's 8,192-token context with max_new_tokens 24" in message


def test_a_prompt_whose_demos_together_overflow_the_context_names_its_longest_row(tmp_path: Path) -> None:
    # each row alone fits (450k characters >= 5,556 tokens), two in one prompt cannot (>= 11,112)
    spec = load_spec(_seed_with_long_rows(tmp_path, [450_000, 455_000, 460_000], strategy="same_label"))
    with pytest.raises(SpecError) as caught:
        expand_prompts(spec, load_seed_data(spec))
    message = str(caught.value)
    assert "\n" not in message and "tiny_seed.csv: row " in message
    assert "cannot fit the model's 8,192-token context" in message


def test_a_template_that_fails_on_real_rows_names_the_spec_field_and_prompt(tmp_path: Path) -> None:
    # the load-time check renders placeholder demos; a branch only real seed text reaches fails here
    branch = "{% for d in demos %}{% if ' the ' in d.text %}{{ colour }}{% endif %}{% endfor %}"
    spec = load_spec(write_tiny_spec(tmp_path, replacements={"{{ task }}": "{{ task }}" + branch}))
    with pytest.raises(
        SpecError, match=r"tiny_reviews.yaml: template: prompt \d+: cannot render: 'colour' is undefined"
    ):
        expand_prompts(spec, load_seed_data(spec))
