"""The local model's output layer (hidden states -> vocabulary logits), computed in vocabulary chunks.

SmolLM2-135M's output layer is its tied 49152 x 576 embedding: 113 MB of float32 weights, a quarter of
the model, multiplied by only the 1-32 hidden states a decode step has. MKL's product of a few rows with
that tall transposed weight ran at a fraction of the speed of the model's other matrix products (2-core
AMD EPYC, AVX2, float32, 2 threads, best of repeated calls, /tmp micro-benchmark on random weights of
the real shape): 33.8 / 32.6 / 39.6 / 61.6 ms for 2 / 8 / 16 / 32 rows, against 12.0 ms for one row
(one read of the weight). Splitting the vocabulary into blocks of 1024 rows (2.4 MB of weight per
product) took 25.8 / 23.1 / 23.4 / 42.3 ms, and gave **the same logits bit for bit** at every row count
tried (1, 2, 4, 8, 12, 16, 24, 32, 64): each logit is still one dot product over the 576 hidden units,
computed by the same kernel; only the columns computed per call change. So the cached answers stay
valid and the model's fingerprint does not change.

Tried and not kept: `weight @ hidden.T` (the transposed product) was faster still at 2-8 rows
(9.4-15.4 ms) but rounds differently there (not bit-identical to `F.linear`), which would change
sampled texts and invalidate every cached answer; `hidden @ weight.T.contiguous()` was slower.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# Vocabulary rows per product: 1024 x 576 float32 weights = 2.4 MB (256 and 4096 were slower, above).
VOCABULARY_CHUNK = 1024


def chunked_linear(hidden: torch.Tensor, weight: torch.Tensor, chunk: int = VOCABULARY_CHUNK) -> torch.Tensor:
    """`F.linear(hidden, weight)` (no bias) computed `chunk` output features at a time.

    `hidden` [..., in_features], `weight` [out_features, in_features]; returns [..., out_features] in
    `hidden`'s dtype. A strided input (transformers slices the last position out of a prefill's
    hidden states) is made contiguous first: MKL ran the strided product several times slower."""
    import torch

    rows = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    out = rows.new_empty((rows.shape[0], weight.shape[0]))
    for start in range(0, weight.shape[0], chunk):
        torch.mm(rows, weight[start : start + chunk].t(), out=out[:, start : start + chunk])
    return out.reshape(*hidden.shape[:-1], weight.shape[0])


def use_chunked_output_layer(model: PreTrainedModel, chunk: int = VOCABULARY_CHUNK) -> bool:
    """Replace `model`'s output layer by one computing the same logits in vocabulary chunks
    (`chunked_linear`), keeping the very same weight tensor (tied to the input embedding: no copy).
    Only a bias-free `torch.nn.Linear` wider than one chunk is replaced; returns whether it was."""
    import torch

    layer = model.get_output_embeddings()
    if type(layer) is not torch.nn.Linear or layer.bias is not None or layer.out_features <= chunk:
        return False
    model.set_output_embeddings(_module_class()(layer, chunk))
    return True


@functools.cache
def _module_class() -> type:
    """`ChunkedLinear`, built on first use so importing this module stays free of torch."""
    import torch

    class ChunkedLinear(torch.nn.Linear):
        """A bias-free `Linear` whose forward is `chunked_linear` (same weight Parameter, same logits)."""

        def __init__(self, layer: torch.nn.Linear, chunk: int) -> None:
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = layer.in_features, layer.out_features
            self.weight = layer.weight  # the tied Parameter itself
            self.bias = None
            self.chunk = chunk

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return chunked_linear(hidden, self.weight, self.chunk)

    return ChunkedLinear
