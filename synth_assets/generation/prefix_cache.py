"""Shared-prefix prefill for the continuous-batching engine: a prompt prefix whose keys/values already
exist is not computed again.

Prompts rendered from one spec share long prefixes: the task line, the label's lead-in, the attribute
phrase ("...the next one is about a laptop, in two sentences:"). On the demo spec's 256 realistic
prompts (121 tokens on average) a prefix tree over all of them holds 24.8 % fewer tokens than the
prompts (`benchmarks/generation.py` profile). The idea is vLLM's automatic prefix caching and SGLang's
RadixAttention (Zheng et al., 2024); here it is planned per joining group, on CPU, without paged memory:

- `plan_prefill` (pure Python) turns the joining prompts into a few forward passes. A pass computes a
  set of token sequences, each from the keys/values of the longest prefix some earlier sequence already
  has (a live row's prompt, or a shorter shared prefix computed by an earlier pass), so every token of
  the prefix tree is computed once; prefixes shared by several joining prompts get a pass of their own
  first (recursively: the label's lead-in before the attribute phrase).
- `run_pass` gathers each row's prefix keys/values into a left-padded cache, feeds the rest of the row
  (left padded too, so every row ends at the last column), and returns the rows' keys/values
  compacted so each row's real positions are contiguous and right aligned, as the decode loop keeps them.

The positions fed are each token's position in its own prompt and padding is masked, so a row's values
are the ones a plain prefill computes, up to float rounding of sums of a different shape; in float32
the sampled tokens are the same (tests/test_continuous_batching.py, tests/test_local_llm.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

Tokens = tuple[int, ...]

# A shared prefix earns its own pass only when it saves at least this many tokens for a row: a pass has
# a fixed cost (30 layers of small kernels) and a thin matrix product runs below the CPU's best rate.
MIN_SHARED_TOKENS = 16
# What one more forward pass costs, in prompt tokens of compute (see split_by_length): a pass has a
# fixed cost of 30 layers of small kernels, ~120-140 ms on the 2-core EPYC (a one-row decode step took
# 137 ms; README), where a prefill ran ~300 prompt tokens/s.
PASS_OVERHEAD_TOKENS = 64


@dataclass(frozen=True)
class PrefillPass:
    """One forward pass of a shared prefill. Row i computes `tokens[i]`, reusing the keys/values of the
    first `shared[i]` tokens of entry `sources[i]` (None: from scratch, shared[i] == 0). Entries are
    numbered: first the known sequences given to `plan_prefill`, then every pass's rows in order
    (a sequence computed twice, as a shared prefix and as a target, is the later entry)."""

    tokens: tuple[Tokens, ...]
    sources: tuple[int | None, ...]
    shared: tuple[int, ...]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


class _Entries:
    """Sequences with keys/values (or about to have them), sorted for longest-prefix lookups: the
    sequence sharing the longest prefix with a query is next to it in sorted order."""

    def __init__(self) -> None:
        self.ids: list[Tokens] = []  # entry number -> tokens
        self.sorted: list[tuple[Tokens, int]] = []

    def add(self, tokens: Tokens) -> None:
        bisect.insort(self.sorted, (tokens, len(self.ids)))
        self.ids.append(tokens)

    def longest(self, tokens: Tokens) -> tuple[int | None, int]:
        """(entry, shared length) of the entry sharing the longest prefix with `tokens`, shared length
        capped at len(tokens) - 1: a row must compute its last token (its logits)."""
        where = bisect.bisect_left(self.sorted, (tokens, -1))
        best: tuple[int | None, int] = (None, 0)
        for neighbour in self.sorted[max(0, where - 1) : where + 1]:
            shared = min(common_prefix(tokens, neighbour[0]), len(tokens) - 1)
            if shared > best[1]:
                best = (neighbour[1], shared)
        return best


def plan_prefill(
    targets: Sequence[Tokens],
    known: Sequence[Tokens],
    min_shared: int | None = MIN_SHARED_TOKENS,
    pass_overhead: int = PASS_OVERHEAD_TOKENS,
) -> list[PrefillPass]:
    """Forward passes that give every distinct sequence of `targets` its keys/values, reusing the
    prefixes of `known` sequences (entries 0..len(known)-1) and computing each prefix shared by several
    targets once. A reuse shorter than `min_shared` tokens is not made (the row starts from scratch);
    None: no reuse. The rows of one level of the prefix tree are split into passes of similar length
    (`split_by_length`). The last level's passes hold the distinct targets, each once."""
    if min_shared is None:
        distinct = sorted({tuple(t) for t in targets})
        return [
            PrefillPass(tuple(distinct[i] for i in chunk), (None,) * len(chunk), (0,) * len(chunk))
            for chunk in split_by_length([len(t) for t in distinct], pass_overhead)
        ]
    entries = _Entries()
    for tokens in known:
        entries.add(tuple(tokens))
    passes: list[PrefillPass] = []

    def plan(level: list[Tokens]) -> None:
        # prefix each sequence shares with its sorted neighbours (the longest it shares with any)
        within = [
            min(
                max(
                    common_prefix(tokens, level[i - 1]) if i else 0,
                    common_prefix(tokens, level[i + 1]) if i + 1 < len(level) else 0,
                ),
                len(tokens) - 1,
            )
            for i, tokens in enumerate(level)
        ]
        nodes = sorted(
            {
                tokens[:shared]
                for tokens, shared in zip(level, within, strict=True)
                if shared - entries.longest(tokens)[1] >= min_shared
            }
        )
        # a node that is a prefix of another comes with it (it is next to it in sorted order)
        nodes = [
            node for i, node in enumerate(nodes) if i + 1 == len(nodes) or nodes[i + 1][: len(node)] != node
        ]
        # the nodes' pass pays off only when the rows save more than the nodes and the pass cost
        saved = sum(
            max(0, shared - entries.longest(tokens)[1]) for tokens, shared in zip(level, within, strict=True)
        )
        spent = sum(len(node) - entries.longest(node)[1] for node in nodes) + pass_overhead
        if nodes and saved > spent:
            plan(nodes)
        reuse = []
        for tokens in level:
            entry, length = entries.longest(tokens)
            reuse.append((entry, length) if length >= min_shared else (None, 0))
        for chunk in split_by_length(
            [len(t) - length for t, (_, length) in zip(level, reuse, strict=True)], pass_overhead
        ):
            passes.append(
                PrefillPass(
                    tuple(level[i] for i in chunk),
                    tuple(reuse[i][0] for i in chunk),
                    tuple(reuse[i][1] for i in chunk),
                )
            )
            for i in chunk:
                entries.add(level[i])

    plan(sorted({tuple(t) for t in targets}))
    return passes


def split_by_length(lengths: Sequence[int], pass_overhead: int) -> list[list[int]]:
    """Row indices grouped into forward passes, each padded to its longest row: sorted by length and
    cut where the padding saved outweighs one more pass (`pass_overhead`, in tokens of compute).
    Minimises padded tokens + pass_overhead per pass (dynamic programming over the sorted lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    best = [0] + [None] * len(order)  # best[j]: cost of the first j rows in order
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * lengths[order[end - 1]] + pass_overhead  # type: ignore[operator]
            if best[end] is None or cost < best[end]:  # type: ignore[operator]
                best[end], cut[end] = cost, start
    chunks, end = [], len(order)
    while end:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


@dataclass
class KVBlock:
    """Keys and values of some rows, per layer [rows, kv_heads, width, head_dim], each row's real
    positions contiguous from column `starts[row]` to the end (left padding before them)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    starts: list[int]


def run_pass(
    model: PreTrainedModel,
    step: PrefillPass,
    blocks: Sequence[tuple[KVBlock, int]],
    pad_id: int,
    device: torch.device,
    cache_argument: str,
    new_cache: object,
) -> tuple[KVBlock, torch.Tensor]:
    """Run one planned pass: (its rows' keys/values, compacted; last-position logits [rows, vocab]).

    `blocks[entry]` is (the block holding that entry, its row there), for every entry a source may
    name. `new_cache()` makes an empty cache for the model (the decode loop's layer type)."""
    import torch

    rows = len(step.tokens)
    prefix_width = max(step.shared)
    rest = [len(tokens) - shared for tokens, shared in zip(step.tokens, step.shared, strict=True)]
    width = max(rest)
    cache = new_cache()  # type: ignore[operator]
    mask = torch.zeros((rows, prefix_width + width), dtype=torch.long)
    if prefix_width:
        first_block = blocks[next(s for s in step.sources if s is not None)][0]
        layers = len(first_block.layers)
        for layer_index in range(layers):
            sample = first_block.layers[layer_index][0]
            keys = sample.new_zeros((rows, sample.shape[1], prefix_width, sample.shape[3]))
            values = torch.zeros_like(keys)
            for row, (source, shared) in enumerate(zip(step.sources, step.shared, strict=True)):
                if source is None:
                    continue
                block, source_row = blocks[source]
                start = block.starts[source_row]
                source_keys, source_values = block.layers[layer_index]
                keys[row, :, prefix_width - shared :] = source_keys[source_row, :, start : start + shared]
                values[row, :, prefix_width - shared :] = source_values[source_row, :, start : start + shared]
            cache.layers[layer_index].update(keys, values)  # type: ignore[attr-defined]
        for row, shared in enumerate(step.shared):
            mask[row, prefix_width - shared : prefix_width] = 1
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    for row, (tokens, shared) in enumerate(zip(step.tokens, step.shared, strict=True)):
        count = len(tokens) - shared
        input_ids[row, width - count :] = torch.tensor(tokens[shared:], dtype=torch.long)
        positions[row, width - count :] = torch.arange(shared, len(tokens))
        mask[row, prefix_width + width - count :] = 1
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        **{cache_argument: cache},
        cache_position=torch.arange(prefix_width, prefix_width + width, device=device),
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1, :]
    # each row's real columns, right aligned: its prefix, then its own tokens
    full = max(len(tokens) for tokens in step.tokens)
    index = torch.zeros((rows, full), dtype=torch.long)
    for row, (tokens, shared) in enumerate(zip(step.tokens, step.shared, strict=True)):
        columns = list(range(prefix_width - shared, prefix_width))
        columns += list(range(prefix_width + width - (len(tokens) - shared), prefix_width + width))
        # padding columns repeat the row's first real column: finite values, masked later
        index[row] = torch.tensor([columns[0]] * (full - len(columns)) + columns, dtype=torch.long)
    compacted = []
    for layer in cache.layers:  # type: ignore[attr-defined]
        gather = index.to(layer.keys.device)[:, None, :, None].expand(
            -1, layer.keys.shape[1], -1, layer.keys.shape[3]
        )
        compacted.append((layer.keys.gather(2, gather), layer.values.gather(2, gather)))
    return KVBlock(compacted, [full - len(tokens) for tokens in step.tokens]), logits
