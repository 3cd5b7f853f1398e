"""Perplexity outliers: samples the local model finds far less (or far more) predictable than real rows.

Per-token perplexity of a text is exp(-log p(text) / tokens) under the local causal LM, the text scored
on its own (after an end-of-text token, no prompt), so seed rows and samples are scored alike. Garbage,
broken encodings, word salad and run-on fragments score far above real rows; the thresholds come from the
seed rows alone: a sample is an outlier above the seed's `upper_quantile` x `margin` (and, when
`lower_quantile` is set, below the seed's `lower_quantile` / `margin`: copied boilerplate, loops).
This is the perplexity filter of CCNet (Wenzek et al. 2020, "CCNet: Extracting High Quality Monolingual
Datasets from Web Crawl Data"), with the reference distribution taken from the spec's own seed instead
of Wikipedia, so it adapts to the domain's register (terse reviews, chat logs).

Off by default (`curation.perplexity: null`); it costs one forward pass of the local model per sample
and per scored seed row (at most `max_seed_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from synth_assets.curation import reasons as R
from synth_assets.curation.filters.base import LOCAL_MODEL, SEED_ROWS, CurationFilter, CurationRows, Phase
from synth_assets.curation.seed_sample import bounded_sample, seed_train

if TYPE_CHECKING:
    from synth_assets.spec import CurationSpec

# Fewer seed rows than this give no usable tail quantile: the filter is skipped with a note.
MIN_SEED_ROWS = 10


class PerplexityModel(Protocol):
    """A causal LM that scores text: the local model (`LocalChatModel`)."""

    def log_likelihood(
        self, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 32
    ) -> list[float]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


def perplexities(model: PerplexityModel, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Per-token perplexity of each text on its own, float64 (n,); NaN for a text with no token.

    Batched forward passes under torch.inference_mode (`LocalChatModel.log_likelihood`)."""
    if not texts:
        return np.zeros(0)
    stripped = [text.strip() for text in texts]
    # an empty prefix is scored after the pad token (end of text): a fresh document, no prompt
    log_p = np.asarray(
        model.log_likelihood([""] * len(stripped), stripped, batch_size=batch_size), dtype=float
    )
    tokens = np.asarray(model.count_tokens(stripped), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tokens > 0, np.exp(-log_p / np.maximum(tokens, 1)), np.nan)


class Perplexity(CurationFilter):
    """curation.perplexity (see the module docstring). Score: perplexity (not stored in the tables;
    in `CurationOutcome.scores` and in the rejection's detail)."""

    name = "perplexity"
    phase = Phase.MODELS
    reasons = (R.PERPLEXITY_OUTLIER,)
    scores = ("perplexity",)

    def enabled(self, rules: CurationSpec) -> bool:
        return rules.perplexity is not None

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        return frozenset({LOCAL_MODEL, SEED_ROWS})

    def run(self, rows: CurationRows) -> None:
        settings, context = rows.rules.perplexity, rows.context
        assert settings is not None
        if not rows.n:
            return
        if context.local_model is None:
            rows.notes.append("perplexity skipped: no local model given")
            return
        train = seed_train(context)
        if train is None or len(train) < MIN_SEED_ROWS:
            rows.notes.append(f"perplexity skipped: needs {MIN_SEED_ROWS}+ seed train rows")
            return
        seed = bounded_sample(train, settings.max_seed_rows, context.random_seed)
        seed_ppl = perplexities(context.local_model, seed["text"].astype(str).tolist())
        seed_ppl = seed_ppl[np.isfinite(seed_ppl)]
        sample_ppl = perplexities(context.local_model, rows.texts)
        rows.scores["perplexity"] = sample_ppl
        top = float(np.quantile(seed_ppl, settings.upper_quantile))
        high = top * settings.margin
        bottom = (
            float(np.quantile(seed_ppl, settings.lower_quantile))
            if settings.lower_quantile is not None
            else 0.0
        )
        low = bottom / settings.margin
        rows.notes.append(
            f"perplexity: seed median {np.median(seed_ppl):.1f} over {len(seed_ppl)} rows, "
            f"outlier above {high:.1f}" + (f" or below {low:.1f}" if low else "")
        )
        outlier = np.isfinite(sample_ppl) & ((sample_ppl > high) | (sample_ppl < low))

        upper = f"seed p{settings.upper_quantile * 100:g} {top:.1f} x {settings.margin:g}"
        lower = f"seed p{(settings.lower_quantile or 0) * 100:g} {bottom:.1f} / {settings.margin:g}"

        def detail(i: int) -> str:
            if sample_ppl[i] > high:
                return f"perplexity {sample_ppl[i]:.1f} > {high:.1f} ({upper})"
            return f"perplexity {sample_ppl[i]:.1f} < {low:.1f} ({lower})"

        rows.findings.add(R.PERPLEXITY_OUTLIER, outlier, detail)
