"""`backend: llama_cpp` (issue 13, "Done when" c): a new backend is one class with its settings
dataclass beside it, one branch in `build_backend` and one word in the spec's `backend` choices.

The slow tests run the bundled SmolLM2 GGUF (Q4_1) in llama.cpp through the real engine and cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_tiny_spec

from synth_assets.generation.backends import build_backend
from synth_assets.generation.engine import generate_samples
from synth_assets.generation.llama_cpp_backend import LlamaCppBackend, LlamaCppSettings
from synth_assets.generation.local_llm import default_cache_dir, find_gguf_file, weights_fingerprint
from synth_assets.generation.prompts import expand_prompts
from synth_assets.generation.types import CallFailure, ChatRequest, ChatResult, ProgressUpdate
from synth_assets.seed import load_seed_data
from synth_assets.spec import GenerationParams, SpecError, load_spec
from synth_assets.storage import Warehouse


def _llama_cpp_spec(folder: Path, model: str = "smollm2-135m-instruct") -> Path:
    return write_tiny_spec(folder, num_samples=3, max_new_tokens=24, replacements={
        "  temperature: 0.8": f"  backend: llama_cpp\n  model: {model}\n  threads: 2\n  temperature: 0.8"
    })  # fmt: skip


def test_the_spec_accepts_llama_cpp_with_the_bundled_model_or_a_gguf_path(tmp_path: Path) -> None:
    assert load_spec(_llama_cpp_spec(tmp_path)).local_model_path is None
    spec = load_spec(_llama_cpp_spec(tmp_path, str(find_gguf_file())))
    assert spec.generation.backend == "llama_cpp"
    assert spec.local_model_path == find_gguf_file()


def test_the_spec_refuses_llama_cpp_without_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"the llama_cpp backend runs 'smollm2-135m-instruct' or a \.gguf"):
        load_spec(_llama_cpp_spec(tmp_path, "models/some-folder"))
    with pytest.raises(SpecError) as missing:
        load_spec(_llama_cpp_spec(tmp_path, "models/absent.gguf"))
    message = str(missing.value)
    assert "generation.model: no .gguf file" in message and "absent.gguf" in message
    assert "\n" not in message


def test_a_missing_or_non_gguf_file_is_a_one_line_error_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^generation\.model: no \.gguf file at .*absent\.gguf$"):
        LlamaCppBackend(LlamaCppSettings(model_path=tmp_path / "absent.gguf", cache_dir=tmp_path))
    fake = tmp_path / "fake.gguf"
    fake.write_text("not weights at all")
    with pytest.raises(ValueError) as not_gguf:
        LlamaCppBackend(LlamaCppSettings(model_path=fake, cache_dir=tmp_path))
    assert (
        str(not_gguf.value) == f"generation.model: {fake} is not a GGUF file (it does not start with 'GGUF')"
    )


def test_without_llama_cpp_python_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what `import llama_cpp` meets when not installed
    with pytest.raises(RuntimeError) as missing:
        build_backend(GenerationParams(backend="llama_cpp"), tmp_path)
    assert str(missing.value) == (
        "the llama_cpp backend needs llama-cpp-python: pip install 'synth-assets[server]'"
    )


@pytest.fixture(scope="module")
def llama_backend() -> LlamaCppBackend:
    backend = build_backend(GenerationParams(backend="llama_cpp", threads=2))
    assert isinstance(backend, LlamaCppBackend)
    return backend


@pytest.mark.slow
def test_three_prompts_generate_and_the_same_seed_gives_the_same_text(llama_backend: LlamaCppBackend) -> None:
    params = GenerationParams(backend="llama_cpp", max_new_tokens=24, batch_size=2)
    questions = ["Name a fruit.", "Say hello to a friend.", "Write one sentence about rain."]
    requests = [
        ChatRequest(f"q{i}", [{"role": "user", "content": question}], seed=100 + i)
        for i, question in enumerate(questions)
    ]
    batches: list[tuple[list[ChatResult], list[CallFailure]]] = []
    progress: list[ProgressUpdate] = []
    llama_backend.generate(requests, params, lambda r, f: batches.append((r, f)), progress.append)
    first = {result.key: result for results, _ in batches for result in results}
    assert [len(r) + len(f) for r, f in batches] == [2, 1]  # reported per batch_size as they finish
    assert [update.done for update in progress] == [2, 3] and progress[-1].completion_tokens > 0
    assert set(first) == {"q0", "q1", "q2"}
    assert all(r.text and r.prompt_tokens > 0 and 0 < r.completion_tokens <= 24 for r in first.values())
    assert not any("<|im_end|>" in r.text for r in first.values())  # the GGUF's chat template ended them

    again: list[ChatResult] = []
    # reversed order: a prompt's text depends on its own seed only, not on what ran before it
    llama_backend.generate(requests[::-1], params, lambda r, f: again.extend(r))
    assert {r.key: r.text for r in again} == {key: r.text for key, r in first.items()}
    reseeded: list[ChatResult] = []
    llama_backend.generate(
        [ChatRequest("q2", requests[2].messages, seed=999)], params, lambda r, f: reseeded.extend(r)
    )
    assert reseeded[0].text != first["q2"].text


@pytest.mark.slow
def test_the_fingerprint_covers_the_weights_and_differs_from_the_local_backend(
    llama_backend: LlamaCppBackend,
) -> None:
    _, digest, local_fingerprint = weights_fingerprint(None, default_cache_dir())  # LocalBackend's
    assert llama_backend.fingerprint == f"llama_cpp-{local_fingerprint}"
    assert llama_backend.fingerprint != local_fingerprint and digest[:16] in llama_backend.fingerprint


@pytest.mark.slow
def test_a_llama_cpp_spec_runs_through_the_engine_and_its_cache(tmp_path: Path) -> None:
    spec = load_spec(_llama_cpp_spec(tmp_path, str(find_gguf_file())))
    prompts = expand_prompts(spec, load_seed_data(spec))
    store = Warehouse(tmp_path / "w.duckdb")
    backend = build_backend(spec.generation, tmp_path / "cache", spec.local_model_path)
    first = generate_samples(spec, prompts, backend, store, "run-1")
    assert first.stats.calls_made == 3 and len(first.samples) == 3
    assert set(first.samples["model_fingerprint"]) == {backend.fingerprint}
    again = generate_samples(spec, prompts, backend, store, "run-2")
    assert again.stats.calls_made == 0  # same weights, same engine: every answer from the cache
