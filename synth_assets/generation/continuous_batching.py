"""Continuous batching for the local engine: a row that finishes hands its slot to the next prompt.

`model.generate` runs a batch until its longest row ends, so rows that stopped early keep occupying
the batch (on the demo spec most rows stop after 15-40 tokens and a few run to the limit). Here the
decode loop owns a key/value cache per slot (`transformers.DynamicCache`, rows along the batch
dimension, left padded): finished rows leave the cache at once, waiting prompts are prefilled and
joined to it, and every step decodes one token for every live row.

Why not transformers' own `ContinuousBatchingManager` / `generate_batch` (5.24): it samples with one
`torch.multinomial` over the manager's single generator, so a request's text depends on its batch
mates and per-request seeds are impossible; its per-request processors cover temperature/top-k/top-p
only (no repetition penalty over the generated tokens) and never see which request a row is; its paged
attention is built for CUDA. Our sampler needs one generator per request.

Exactness: each row draws from its own generator exactly as the batched engine's sampler did (one
draw of the top-k candidates per step, or of the whole vocabulary when they do not hold top_p), the
repetition penalty sees the row's own generated tokens only, and padding is masked; in float32 a
request's tokens do not depend on which rows share its steps.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from synth_assets.generation.prefix_cache import MIN_SHARED_TOKENS, KVBlock, plan_prefill, run_pass

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# top-k candidates considered per sampling step (see sample_next)
SAMPLING_CANDIDATES = 256


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniform draws (clamped away from 0 and 1)."""
    import torch

    return -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))


def sample_next(
    scores: torch.Tensor,
    generated: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    *,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
) -> torch.Tensor:
    """One next token per row (LongTensor [rows]) from `scores` [rows, vocab] (logits).

    Repetition penalty over the row's own `generated` tokens (CTRL, Keskar et al. 2019), temperature,
    exact nucleus (top-p, Holtzman et al. 2020) and a Gumbel-max draw from the row's own generator;
    temperature 0 is greedy. Only the top-256 tokens are looked at: when they already hold top_p of the
    mass every other token is outside the nucleus anyway; a row whose top-256 do not (a very flat
    distribution) falls back to the whole vocabulary, so the draw stays exact. Sorting and drawing noise
    over all 49k tokens every step cost more than the forward pass."""
    import torch

    scores = scores.float()
    rows = scores.shape[0]
    width = max((len(tokens) for tokens in generated), default=0)
    if repetition_penalty != 1.0 and width:
        # ragged -> rectangular: pad with a token the row already has (scatter writes the same value
        # twice), rows with no token yet get index 0 and keep their original score
        index = torch.tensor(
            [list(t) + [t[0] if t else 0] * (width - len(t)) for t in generated], dtype=torch.long
        ).to(scores.device)
        has_tokens = torch.tensor([bool(t) for t in generated], device=scores.device).unsqueeze(1)
        seen = torch.gather(scores, 1, index)
        penalised = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        scores = scores.scatter(1, index, torch.where(has_tokens, penalised, seen))
    if temperature == 0:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    k = min(SAMPLING_CANDIDATES, scores.shape[-1])
    top_scores, top_index = torch.topk(scores, k, dim=-1)
    top_probs = (top_scores - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
    # drop a token once the tokens ranked above it already cover top_p; the best one always stays
    keep = (top_probs.cumsum(dim=-1) - top_probs) < top_p
    covered = top_probs.sum(dim=-1) >= top_p if k < scores.shape[-1] else torch.ones_like(keep[:, 0])
    choice = torch.empty(rows, dtype=torch.long, device=scores.device)
    covered_rows = covered.tolist()  # one device sync, not one per row
    uncovered = [row for row in range(rows) if not covered_rows[row]]
    drawn = [row for row in range(rows) if covered_rows[row]]
    if drawn:
        # each row's own draws, then the Gumbel-max over all rows at once (elementwise: same numbers)
        uniform = torch.stack(
            [torch.rand(k, generator=generators[row], device=scores.device) for row in drawn]
        )
        index = torch.tensor(drawn, device=scores.device)
        perturbed = torch.where(keep[index], top_scores[index] + gumbel(uniform), float("-inf"))
        choice[index] = top_index[index].gather(1, perturbed.argmax(dim=-1, keepdim=True)).squeeze(1)
    if uncovered:
        flat = scores[uncovered]
        if top_p < 1.0:
            sorted_scores, sorted_index = torch.sort(flat, descending=True, dim=-1)
            probs = sorted_scores.softmax(dim=-1)
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, sorted_index, drop_sorted)
            flat = flat.masked_fill(drop, float("-inf"))
        noise = torch.stack(
            [
                gumbel(torch.rand(flat.shape[-1], generator=generators[row], device=flat.device))
                for row in uncovered
            ]
        )
        choice[uncovered] = (flat + noise).argmax(dim=-1)
    return choice


def row_generator(seed: int, device: torch.device) -> torch.Generator:
    """A request's own random generator (manual_seed rejects values outside int64: seeds are caller data)."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) % (2**63))
    return generator


@dataclass
class _Row:
    index: int  # position in the caller's prompt list
    prompt_len: int
    stop: frozenset[int]
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)

    @property
    def cached(self) -> int:
        # the last sampled token is fed by the next step, so it is not in the cache yet
        return self.prompt_len + len(self.generated) - 1


@dataclass(frozen=True)
class Finished:
    """A prompt's completion: its index in the caller's list, its tokens (stop token included), and
    whether it ended on a stop token (else it reached max_new_tokens)."""

    index: int
    tokens: list[int]
    stopped: bool


def supports_continuous_batching(model: PreTrainedModel) -> bool:
    """True when the model's default cache is all plain DynamicLayers (no sliding windows, no
    linear-attention state), the only layout whose rows this module knows how to move."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # an unusual config: use the batch-at-a-time path
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers) if cache.layers else True


def generate_continuously(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    seeds: Sequence[int],
    stops: Sequence[frozenset[int]],
    slots: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    pad_id: int,
    device: torch.device,
    on_finished: Callable[[list[Finished]], None],
    share_prefixes: bool = True,
) -> None:
    """Decode every prompt (token ids, already checked to fit the context) with at most `slots` rows
    live at once; `on_finished` gets the rows that ended at each step, in the order they ended.

    Prompts are admitted in length order (similar lengths share a prefill, little padding), whenever
    at least an eighth of the slots are free (a join copies the cache once, like one decode step).
    With `share_prefixes`, a joining prompt's prefix that a live row's prompt or another joining
    prompt already has is not computed again (`prefix_cache`); the tokens are the same either way."""
    import torch
    from transformers import DynamicCache

    order = deque(sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i)))
    refill_at = max(1, slots // 8)
    live: list[_Row] = []
    cache: DynamicCache | None = None
    sampling = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty}
    cache_argument = _cache_argument(model)

    while order or live:
        if order and (not live or slots - len(live) >= refill_at):
            joining = [order.popleft() for _ in range(min(slots - len(live), len(order)))]
            rows = [_Row(i, len(prompts[i]), stops[i], row_generator(seeds[i], device)) for i in joining]
            new_cache, logits = _prefill(
                model,
                [prompts[i] for i in joining],
                [tuple(prompts[row.index]) for row in live] if share_prefixes else [],
                _live_block(cache, live),
                MIN_SHARED_TOKENS if share_prefixes else None,
                pad_id,
                device,
                cache_argument,
            )
            first = sample_next(logits, [[] for _ in rows], [r.generator for r in rows], **sampling)
            for row, token in zip(rows, first.tolist(), strict=True):
                row.generated.append(int(token))
            cache = new_cache if cache is None or not live else _join(cache, new_cache)
            live += rows
        else:
            assert cache is not None
            width = cache.get_seq_length()
            mask = torch.zeros((len(live), width + 1), dtype=torch.long)
            for position, row in enumerate(live):
                mask[position, width - row.cached :] = 1
            logits = model(
                input_ids=torch.tensor([[r.generated[-1]] for r in live], device=device),
                attention_mask=mask.to(device),
                position_ids=torch.tensor([[r.cached] for r in live], device=device),
                **{cache_argument: cache},
                cache_position=torch.tensor([width], device=device),
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            chosen = sample_next(logits, [r.generated for r in live], [r.generator for r in live], **sampling)
            for row, token in zip(live, chosen.tolist(), strict=True):
                row.generated.append(int(token))

        done = [
            position
            for position, row in enumerate(live)
            if row.generated[-1] in row.stop or len(row.generated) >= max_new_tokens
        ]
        if done:
            on_finished(
                [
                    Finished(live[p].index, live[p].generated, live[p].generated[-1] in live[p].stop)
                    for p in done
                ]
            )
            keep = _kept_order(len(live), set(done))
            live = [live[position] for position in keep]
            if live and cache is not None:
                _select(cache, keep, max(row.cached for row in live))


def _kept_order(rows: int, gone: set[int]) -> list[int]:
    """The order of the rows left when rows `gone` (positions among `rows`) finish: a finished row's
    place among the first `rows - len(gone)` is taken by a live row from beyond them, the rest keep
    their place, so dropping k rows moves at most k rows of the cache (`keep_rows`). The rows' order
    changes no token in float32 (a row's values do not depend on its batch mates or their order)."""
    size = rows - len(gone)
    movers = [position for position in range(size, rows) if position not in gone]
    holes = [position for position in range(size) if position in gone]
    keep = list(range(size))
    for hole, mover in zip(holes, movers, strict=True):
        keep[hole] = mover
    return keep


def _growing_cache(model: PreTrainedModel) -> object:
    """A `DynamicCache` for `model` whose layers are `_growing_layer_class()` instances."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    layer_class = _growing_layer_class()
    cache.layers = [layer_class() for _ in cache.layers]
    return cache


_LAYER_CLASS: list[type] = []


def _growing_layer_class() -> type:
    """`DynamicLayer` whose keys and values are views of a buffer with room along the sequence.

    `DynamicLayer.update` appends a decode step's one position with `torch.cat`, which copies the
    whole cache of every layer at every step into freshly allocated memory (a micro-benchmark on the
    2-core EPYC, 1 thread, 16 rows x 200 positions x 30 layers: 318 ms per step for the copies alone;
    in the engine on 32 realistic prompts, where rows leave early and prefill dominates, the whole run
    went from 16.3 to 17.3 tok/s, README). Here a step writes its position in place; the buffer is
    reallocated (with half again as much room) only when full, and `_select` drops finished rows
    in place (`keep_rows`). The values are the same numbers either way.
    Built on first use so importing this module stays free of torch."""
    if _LAYER_CLASS:
        return _LAYER_CLASS[0]
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
            self.rows = 0  # live rows and positions are buffer[:rows, :, start:stop]
            self.start = 0
            self.stop = 0
            self.views: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

        def owns_views(self) -> bool:
            """Whether keys/values are still the views set here (else they were replaced: `_join`)."""
            return self.buffers is not None and self.keys is self.views[0] and self.values is self.views[1]

        def rebuffer(self, needed: int) -> None:
            """Copy the live positions into new buffers with room for `needed` positions and more."""
            keys, values = self.keys, self.values
            length = keys.shape[-2] if keys is not None and keys.dim() == 4 else 0
            capacity = needed + max(32, needed // 2)
            buffers = []
            for tensor in (keys, values):
                buffer = tensor.new_empty((*tensor.shape[:2], capacity, tensor.shape[3]))
                buffer[:, :, :length] = tensor
                buffers.append(buffer)
            self.buffers = (buffers[0], buffers[1])
            self.rows, self.start, self.stop = keys.shape[0], 0, length

        def set_views(self) -> None:
            assert self.buffers is not None
            self.keys = self.buffers[0][: self.rows, :, self.start : self.stop]
            self.values = self.buffers[1][: self.rows, :, self.start : self.stop]
            self.views = (self.keys, self.values)

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            if not self.owns_views():
                if self.keys is None or self.keys.dim() != 4:  # empty: shape it like the new states
                    self.keys = key_states[:, :, :0]
                    self.values = value_states[:, :, :0]
                self.rebuffer(self.keys.shape[-2] + key_states.shape[-2])
            assert self.buffers is not None
            new = key_states.shape[-2]
            if self.stop + new > self.buffers[0].shape[-2]:
                self.set_views()
                self.rebuffer(self.stop - self.start + new)
            self.buffers[0][: self.rows, :, self.stop : self.stop + new] = key_states
            self.buffers[1][: self.rows, :, self.stop : self.stop + new] = value_states
            self.stop += new
            self.set_views()
            return self.keys, self.values

        def keep_rows(self, index: torch.Tensor, width: int) -> None:
            """Keep rows `index` (row i of the result is row index[i]) and the last `width` live
            positions, in place: only the rows whose place changes are copied (gathered first, so a
            row may move onto one that moves too), and positions left of the last `width` are just
            no longer viewed. With `_kept_order`'s order that is one row per finished row. Copying
            every kept row into a new buffer of exactly the kept size instead (index_select), which
            the next step's write then copied again into a buffer with room, took 12.5 s of a 115 s
            float32 run of the 256 demo prompts (Xeon, 2 threads; `benchmarks/generation.py --rows
            profile`)."""
            import torch

            if not self.owns_views():
                keys, values = self.keys, self.values
                self.keys = keys.index_select(0, index)[:, :, -width:]
                self.values = values.index_select(0, index)[:, :, -width:]
                return
            assert self.buffers is not None
            first = self.stop - width  # positions left of it are padding of rows that left
            targets = [target for target, row in enumerate(index.tolist()) if row != target]
            if targets:
                target_index = torch.tensor(targets, dtype=torch.long, device=index.device)
                source_index = index[target_index]
                for buffer in self.buffers:
                    window = buffer[: self.rows, :, first : self.stop]
                    window.index_copy_(0, target_index, window.index_select(0, source_index))
            self.rows, self.start = len(index), first
            self.set_views()

    _LAYER_CLASS.append(GrowingLayer)
    return GrowingLayer


def _cache_argument(model: PreTrainedModel) -> str:
    """transformers 5.x renames forward's `past_key_values` to `cache` model by model (the old name
    warns until 5.40): use the name this model's forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _live_block(cache: object, live: Sequence[_Row]) -> KVBlock | None:
    """The live rows' keys/values as a prefix source (each row's prompt starts `cached` from the end)."""
    if cache is None or not live:
        return None
    width = cache.get_seq_length()  # type: ignore[attr-defined]
    layers = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[attr-defined]
    return KVBlock(layers, [width - row.cached for row in live])


def _prefill(
    model: PreTrainedModel,
    prompts: list[Sequence[int]],
    known: list[tuple[int, ...]],
    live: KVBlock | None,
    min_shared: int | None,
    pad_id: int,
    device: torch.device,
    cache_argument: str,
) -> tuple[object, torch.Tensor]:
    """Left-padded forward over the joining prompts: (their cache, last-position logits [rows, vocab]).

    With `min_shared` tokens or more in common, a prefix shared with a live row (`known[i]` is row i of
    `live`) or another joining prompt is computed once (`prefix_cache`); None: every row from scratch."""
    import torch
    from transformers import DynamicCache

    blocks: list[tuple[KVBlock, int]] = [(live, row) for row in range(len(known))] if live else []
    computed: dict[tuple[int, ...], tuple[KVBlock, int, torch.Tensor]] = {}
    for step in plan_prefill([tuple(p) for p in prompts], known if live else [], min_shared):
        block, logits = run_pass(
            model, step, blocks, pad_id, device, cache_argument, lambda: DynamicCache(config=model.config)
        )
        blocks += [(block, row) for row in range(len(step.tokens))]
        computed.update({tokens: (block, row, logits[row]) for row, tokens in enumerate(step.tokens)})
    rows = [computed[tuple(p)] for p in prompts]
    width = max(len(p) for p in prompts)
    cache = _growing_cache(model)
    for layer_index, layer in enumerate(cache.layers):  # type: ignore[attr-defined]
        keys, values = (
            torch.stack(
                [
                    _right_aligned(block.layers[layer_index][kind][row], block.starts[row], width)
                    for block, row, _ in rows
                ]
            )
            for kind in (0, 1)
        )
        layer.update(keys, values)
    return cache, torch.stack([logits for _, _, logits in rows])


def _right_aligned(row: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """A row's keys or values [kv_heads, columns, head_dim] whose real positions start at column
    `start`, as the last of `width` columns (zeros before them: padding, masked)."""
    import torch

    real = row[:, start:]
    if real.shape[1] >= width:
        return real[:, real.shape[1] - width :]
    return torch.cat([real.new_zeros((real.shape[0], width - real.shape[1], real.shape[2])), real], dim=1)


def _join(cache: object, new: object) -> object:
    """`cache` with `new`'s rows appended; the shorter one is left padded (padding is masked)."""
    import torch

    old_width, new_width = cache.get_seq_length(), new.get_seq_length()  # type: ignore[attr-defined]
    width = max(old_width, new_width)
    for layer, joining in zip(cache.layers, new.layers, strict=True):  # type: ignore[attr-defined]
        for name in ("keys", "values"):
            parts = []
            for tensor, own in ((getattr(layer, name), old_width), (getattr(joining, name), new_width)):
                if own < width:
                    pad = tensor.new_zeros((*tensor.shape[:2], width - own, tensor.shape[3]))
                    tensor = torch.cat([pad, tensor], dim=2)
                parts.append(tensor)
            setattr(layer, name, torch.cat(parts, dim=0))
    return cache


def _select(cache: object, keep: list[int], width: int) -> None:
    """Keep only rows `keep` and the last `width` positions (the longest live row's cached tokens)."""
    import torch

    index = torch.tensor(keep, dtype=torch.long)
    for layer in cache.layers:  # type: ignore[attr-defined]
        if hasattr(layer, "keep_rows"):
            layer.keep_rows(index.to(layer.keys.device), width)
            continue
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            setattr(layer, name, tensor.index_select(0, index.to(tensor.device))[:, :, -width:, :])
