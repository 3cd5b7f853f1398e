"""The local model's output layer computed in vocabulary chunks (issue 10, engine speed): the very same
logits, bit for bit, as transformers' own `lm_head`, at every row count a decode step or prefill has,
with the weight still tied to the input embedding. The bundled model's texts are checked in
test_local_llm.py (slow); here a tiny Llama with a 5000-token vocabulary runs in a second."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from synth_assets.generation.output_layer import chunked_linear, use_chunked_output_layer  # noqa: E402


def _tiny_llama(vocab: int = 5000, tied: bool = True) -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def output_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(49152, 576) * 0.02  # the shape of SmolLM2-135M's output layer


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 12, 16, 32, 64, 300])
def test_chunked_products_give_the_full_products_logits_bit_for_bit(
    rows: int, output_weight: torch.Tensor
) -> None:
    torch.manual_seed(rows)
    weight = output_weight
    hidden = torch.randn(rows, 576)
    assert torch.equal(chunked_linear(hidden, weight), torch.nn.functional.linear(hidden, weight))


def test_a_strided_input_and_leading_dimensions_keep_their_shape_and_values() -> None:
    weight = torch.randn(3000, 64)
    prefill = torch.randn(5, 9, 64)
    last = prefill[:, -1:, :]  # what transformers hands the output layer with logits_to_keep=1
    assert not last.is_contiguous()
    got = chunked_linear(last, weight, chunk=1024)
    assert got.shape == (5, 1, 3000)
    assert torch.equal(got, torch.nn.functional.linear(last.contiguous(), weight))


def test_the_model_gives_the_same_logits_and_keeps_its_tied_weight() -> None:
    model = _tiny_llama()
    ids = torch.randint(3, 5000, (4, 11))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        last_before = model(input_ids=ids, logits_to_keep=1).logits
    assert use_chunked_output_layer(model, chunk=1024)
    layer = model.get_output_embeddings()
    assert layer.weight is model.get_input_embeddings().weight  # tied: the same tensor, no copy
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, before)
        assert torch.equal(model(input_ids=ids, logits_to_keep=1).logits, last_before)


def test_layers_it_does_not_know_are_left_alone() -> None:
    narrow = _tiny_llama(vocab=900)  # one chunk or less: nothing to split
    assert not use_chunked_output_layer(narrow, chunk=1024)
    assert type(narrow.get_output_embeddings()) is torch.nn.Linear
    biased = _tiny_llama()
    biased.lm_head = torch.nn.Linear(64, 5000, bias=True)
    assert not use_chunked_output_layer(biased, chunk=1024)
    assert type(biased.get_output_embeddings()) is torch.nn.Linear
