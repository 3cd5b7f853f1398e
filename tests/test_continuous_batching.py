"""The continuous-batching decode loop's key/value cache (issue 10): a decode step writes its position in
place instead of copying every layer's cache with torch.cat, and the tokens stay exactly the same.

A tiny randomly initialised Llama (two layers, grouped-query attention) stands in for the model, so
this runs in seconds without the bundled weights; the bundled model's own exactness tests are in
test_local_llm.py (slow)."""

from __future__ import annotations

import functools
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from synth_assets.generation import continuous_batching as cb  # noqa: E402
from synth_assets.generation.prefix_cache import plan_prefill, split_by_length  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama() -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _decode(
    model: object, prompts: list[list[int]], slots: int, share_prefixes: bool = True
) -> dict[int, list[int]]:
    finished: dict[int, list[int]] = {}
    with torch.no_grad():
        cb.generate_continuously(
            model,  # type: ignore[arg-type]
            prompts,
            seeds=list(range(len(prompts))),
            stops=[frozenset({5, 7, 11})] * len(prompts),
            slots=slots,
            max_new_tokens=60,
            temperature=0.9,
            top_p=0.9,
            repetition_penalty=1.1,
            pad_id=0,
            device=torch.device("cpu"),
            on_finished=lambda done: finished.update({row.index: row.tokens for row in done}),
            share_prefixes=share_prefixes,
        )
    return finished


def test_the_in_place_cache_gives_the_tokens_of_transformers_own_cache(
    tiny_llama: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    # prompts of 3-39 tokens stopping at different steps: rows leave, join and outgrow their buffers
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randrange(3, 40))] for _ in range(23)]
    in_place = {slots: _decode(tiny_llama, prompts, slots) for slots in (8, 3, 1)}
    monkeypatch.setattr(cb, "_growing_cache", lambda model: transformers.DynamicCache(config=model.config))
    concatenated = _decode(tiny_llama, prompts, 8)
    assert len(concatenated) == 23 and sum(map(len, concatenated.values())) > 23 * 10
    for slots, tokens in in_place.items():
        assert tokens == concatenated, f"{slots} slots"


def test_a_decode_step_and_a_finished_row_leave_the_buffer_in_place(tiny_llama: object) -> None:
    layer = cb._growing_cache(tiny_llama).layers[0]  # type: ignore[attr-defined]
    keys, values = torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)
    layer.update(keys, values)
    buffer = layer.buffers[0]
    for step in range(10):
        new = torch.full((4, 2, 1, 8), float(step))
        stored_keys, stored_values = layer.update(new, new)
        assert layer.buffers[0] is buffer and stored_keys.shape == (4, 2, 6 + step, 8)
    assert torch.equal(stored_keys[:, :, :5], keys) and torch.equal(stored_keys[:, :, -1], new[:, :, 0])
    expected_keys = stored_keys[[3, 1], :, -7:].clone()
    expected_values = stored_values[[3, 1], :, -7:].clone()
    # rows 0 and 2 finish: row 3 takes row 0's place within the same buffer, row 1 stays where it is
    layer.keep_rows(torch.tensor([3, 1]), width=7)
    assert layer.buffers[0] is buffer and layer.keys.shape == (2, 2, 7, 8)
    assert torch.equal(layer.keys, expected_keys) and torch.equal(layer.values, expected_values)
    step_keys, _ = layer.update(torch.full((2, 2, 1, 8), -1.0), torch.full((2, 2, 1, 8), -1.0))
    assert layer.buffers[0] is buffer and step_keys.shape == (2, 2, 8, 8)
    assert torch.equal(step_keys[:, :, :7], expected_keys) and bool((step_keys[:, :, -1] == -1).all())


def _prefix_tree_prompts(rng: random.Random, count: int) -> list[list[int]]:
    """Prompts shaped like a spec's: one of 3 lead-ins (20 tokens), one of 2 attribute phrases per
    lead-in (18 tokens), then 1-29 tokens of their own; plus an exact repeat and a short prompt."""
    heads = [[rng.randrange(3, 300) for _ in range(20)] for _ in range(3)]
    phrases = [[rng.randrange(3, 300) for _ in range(18)] for _ in range(6)]
    prompts = [
        heads[i % 3]
        + phrases[2 * (i % 3) + rng.randrange(2)]
        + [rng.randrange(3, 300) for _ in range(rng.randrange(1, 30))]
        for i in range(count)
    ]
    return [*prompts, list(prompts[4]), heads[0][:5]]


def test_a_shared_prefix_is_computed_once_and_the_tokens_stay_the_same(
    tiny_llama: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = _prefix_tree_prompts(random.Random(1), 30)
    prompt_tokens_fed: list[int] = []
    forward = tiny_llama.forward  # type: ignore[attr-defined]

    @functools.wraps(forward)  # keeps forward's signature: the engine reads its cache argument's name
    def counting(*args: object, **kwargs: torch.Tensor) -> object:
        if kwargs["input_ids"].shape[1] > 1:  # a prefill, not a decode step
            prompt_tokens_fed.append(int(kwargs["input_ids"].numel()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "forward", counting)
    for slots in (3, 40):
        prompt_tokens_fed.clear()
        plain = _decode(tiny_llama, prompts, slots, share_prefixes=False)
        fed_plain = sum(prompt_tokens_fed)
        prompt_tokens_fed.clear()
        shared = _decode(tiny_llama, prompts, slots, share_prefixes=True)
        assert shared == plain, f"{slots} slots"
        assert sum(prompt_tokens_fed) < 0.75 * fed_plain, f"{slots} slots"
    assert len(plain) == len(prompts) and sum(map(len, plain.values())) > len(prompts) * 10


def test_the_prefill_plan_computes_each_prefix_tree_token_once() -> None:
    prompts = [tuple(p) for p in _prefix_tree_prompts(random.Random(2), 12)]
    live = [(*prompts[0][:30], 7, 7, 7)]  # a live row sharing a lead-in and part of a phrase
    passes = plan_prefill(prompts, known=live, min_shared=1, pass_overhead=0)
    entries = list(live)
    computed = 0
    for step in passes:
        for tokens, source, shared in zip(step.tokens, step.sources, step.shared, strict=True):
            if source is None:
                assert shared == 0
            else:  # an earlier entry that really has these tokens
                assert source < len(entries) and entries[source][:shared] == tokens[:shared]
            computed += len(tokens) - shared
        entries += step.tokens
    assert set(prompts) <= set(entries)
    tree = {p[:n] for p in prompts for n in range(1, len(p) + 1)} - {live[0][:n] for n in range(1, 31)}
    # + 1: the 5-token prompt lies inside the others, yet a row computes its last token (its logits)
    assert computed == len(tree) + 1
    # a reuse shorter than min_shared is not worth a pass: the 5-token prompt starts from scratch
    short = plan_prefill(prompts, known=[], min_shared=16)
    assert all(shared == 0 or shared >= 16 for step in short for shared in step.shared)


def test_prefill_passes_group_rows_of_similar_length() -> None:
    # padding a 6-token row to 101 costs far more than one more pass; 99-101 share one
    assert split_by_length([5, 100, 101, 99, 6, 50], pass_overhead=8) == [[0, 4], [5], [3, 1, 2]]
    assert split_by_length([40, 41, 42], pass_overhead=8) == [[0, 1, 2]]


def test_finished_rows_are_replaced_by_rows_from_the_end_so_few_rows_move() -> None:
    assert cb._kept_order(6, {1, 3}) == [0, 4, 2, 5]
    assert cb._kept_order(6, {4, 5}) == [0, 1, 2, 3]  # the last rows left: nothing moves
    assert cb._kept_order(5, {0, 4}) == [3, 1, 2]
    assert cb._kept_order(3, {0, 1, 2}) == []
    order = cb._kept_order(64, {0, 10, 40, 63})
    assert sorted(order) == sorted(set(range(64)) - {0, 10, 40, 63})
    assert [(place, row) for place, row in enumerate(order) if row != place] == [(0, 60), (10, 61), (40, 62)]
