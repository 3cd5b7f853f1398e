"""Any local model (issue 10 item 4): `generation.model` names a .gguf file or a Hugging Face model
folder; the fingerprint covers the weights, so a changed checkpoint never reuses cached answers.

The second model is a tiny randomly initialised Llama written with `save_pretrained` on the fly
(SmolLM2's tokenizer, one layer of width 16): different weights, real loading and generation."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_tiny_spec

from synth_assets.generation.backends import LocalBackend
from synth_assets.generation.engine import generate_samples
from synth_assets.generation.local_llm import find_gguf_file, get_local_model
from synth_assets.generation.prompts import expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import SpecError, load_spec
from synth_assets.storage import Warehouse


def _spec_with_model(folder: Path, model: str) -> Path:
    return write_tiny_spec(folder, num_samples=3, max_new_tokens=8, replacements={
        "  temperature: 0.8": f"  model: {model}\n  temperature: 0.8"
    })  # fmt: skip


def test_a_model_path_is_resolved_against_the_spec_and_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    spec = load_spec(_spec_with_model(tmp_path, "models/mine"))
    assert spec.local_model_path == (tmp_path / "models" / "mine").resolve()
    assert load_spec(_spec_with_model(tmp_path, "smollm2-135m-instruct")).local_model_path is None
    with pytest.raises(SpecError) as missing:
        load_spec(_spec_with_model(tmp_path, "models/absent.gguf"))
    assert "generation.model: no .gguf file or model folder" in str(missing.value)
    assert "\n" not in str(missing.value)
    with pytest.raises(SpecError, match=r"a \.gguf file or a Hugging Face model folder given by path"):
        load_spec(_spec_with_model(tmp_path, "llama-3-8b"))


def _save_tiny_llama(folder: Path, seed: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(get_local_model().model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_bundled_gguf_given_by_path_is_the_bundled_model(tmp_path: Path) -> None:
    spec = load_spec(_spec_with_model(tmp_path, str(find_gguf_file())))
    backend = LocalBackend(dtype=spec.generation.dtype, source=spec.local_model_path)
    assert backend.fingerprint == LocalBackend(dtype=spec.generation.dtype).fingerprint
    assert backend.fingerprint.startswith("smollm2-135m-instruct-")


@pytest.mark.slow
def test_a_model_folder_generates_and_a_changed_checkpoint_never_reuses_answers(tmp_path: Path) -> None:
    folder = _save_tiny_llama(tmp_path / "models" / "tiny", seed=0)
    spec = load_spec(_spec_with_model(tmp_path, "models/tiny"))
    prompts = expand_prompts(spec, load_seed_data(spec))
    store = Warehouse(tmp_path / "w.duckdb")

    first_backend = LocalBackend(dtype="float32", source=spec.local_model_path)
    first = generate_samples(spec, prompts, first_backend, store, "run-1")
    assert first_backend.fingerprint.startswith("hf-tiny-")
    assert first_backend.fingerprint != get_local_model().fingerprint
    assert first.stats.calls_made == 3 and len(first.samples) + len(first.failures) == 3
    assert set(first.samples["model_fingerprint"]) <= {first_backend.fingerprint}
    again = generate_samples(spec, prompts, LocalBackend(dtype="float32", source=folder), store, "run-2")
    assert again.stats.calls_made == 0  # same weights: every answer from the cache

    _save_tiny_llama(folder, seed=1)  # a new checkpoint in the same folder, same model name
    changed_backend = LocalBackend(dtype="float32", source=spec.local_model_path)
    assert changed_backend.fingerprint != first_backend.fingerprint
    changed = generate_samples(spec, prompts, changed_backend, store, "run-3")
    assert changed.stats.calls_made == 3 and changed.stats.cache_hits == 0
