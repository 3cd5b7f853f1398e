"""Diversity, fidelity and bias metrics: pure functions of texts, labels and embeddings.

Embeddings are L2-normalized rows (see `synth_assets.embeddings.embed`), so a dot product is a cosine.
Library choices: sacrebleu for BLEU, scipy for the KS test, mauve-text for MAUVE; distinct-n,
vocabulary size and gzip compression ratio are a few lines each. Relevance and the label classifier
are curation's (`curation/relevance.py`, `curation/label_check.py`), used as they are by the
relevance family (`families/relevance.py`).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from synth_assets.curation.text import HAS_UNSPACED_SCRIPT, normalize_text
from synth_assets.generation.prompts import allocate_counts, cells_of
from synth_assets.spec import GenerationSpec

UNKNOWN_VALUE = "(unknown)"


# ---------------------------------------------------------------------------------------- diversity


def _words(text: str) -> list[str]:
    # normalize_text splits scripts without word spaces (Chinese, Japanese, Thai) into characters
    return normalize_text(text).split()


_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def bleu_tokenizer(texts: Sequence[str]) -> str:
    """sacrebleu tokenizer that fits the corpus' script: '13a' (splits on spaces and punctuation)
    unless most texts are in a script without word spaces, then 'zh' (one token per Han/kana
    character, the rest as 13a) or 'char' for Thai, Lao, Myanmar, Khmer. 'ja-mecab' would need
    MeCab and its dictionary, which are not installed; per-character BLEU is the usual fallback."""
    unspaced = [text for text in texts if HAS_UNSPACED_SCRIPT.search(text)]
    if not texts or 2 * len(unspaced) <= len(texts):
        return "13a"
    return "zh" if sum(bool(_CJK.search(t)) for t in unspaced) * 2 > len(unspaced) else "char"


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over a corpus (Li et al., 2016); 0 for no n-grams."""
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = _words(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def vocabulary_size(texts: Iterable[str]) -> int:
    """Distinct normalized words (case and punctuation folded)."""
    return len({word for text in texts for word in _words(text)})


def compression_ratio(texts: Sequence[str]) -> float:
    """Bytes of the texts (one per line) over their gzip size: higher = more repetitive corpus.

    Shaib et al. (2024) found this cheap ratio tracks the costlier diversity scores. It grows with
    corpus size (gzip has more to find), so compare it only between sets of similar size."""
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(gzip.compress(raw, mtime=0))


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean sentence BLEU (0..1) of each text against all the others as references (Zhu et al.,
    2018, Texygen): higher = texts resemble each other. sacrebleu with effective order, so short
    texts without 4-gram matches are not all zero; the tokenizer follows the script
    (`bleu_tokenizer`). None for fewer than two non-empty texts."""
    kept = [text for text in texts if text.strip()]
    if len(kept) < 2:
        return None
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True, tokenize=bleu_tokenizer(kept))
    scores = [
        bleu.sentence_score(hypothesis, kept[:i] + kept[i + 1 :]).score for i, hypothesis in enumerate(kept)
    ]
    return float(np.mean(scores)) / 100.0


def mean_pairwise_distance(embeddings: np.ndarray) -> float | None:
    """Mean cosine distance (1 - cosine) over all unordered pairs; None for fewer than two rows."""
    n = len(embeddings)
    if n < 2:
        return None
    similarities = embeddings @ embeddings.T
    upper = similarities[np.triu_indices(n, k=1)]
    return float(1.0 - upper.mean())


def subsample_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """All indices when n <= limit, else a fixed random subset (sorted) of `limit` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def diversity(
    texts: Sequence[str], embeddings: np.ndarray, *, max_pairwise: int, seed: int
) -> dict[str, Any]:
    """distinct-1/2/3, vocabulary size and compression ratio on all texts; self-BLEU and pairwise
    embedding distance (quadratic in n) on at most `max_pairwise` of them."""
    texts = list(texts)
    pick = subsample_indices(len(texts), max_pairwise, seed)
    return {
        "rows": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu": self_bleu([texts[i] for i in pick]),
        "embedding_distance": mean_pairwise_distance(embeddings[pick]) if len(texts) else None,
        "vocab_size": vocabulary_size(texts),
        "compression_ratio": compression_ratio(texts),
    }


# ----------------------------------------------------------------------------------------- fidelity


def word_counts(texts: Iterable[str]) -> np.ndarray:
    return np.array([len(str(text).split()) for text in texts], dtype=float)


def length_ks(real: Sequence[str], synthetic: Sequence[str]) -> tuple[float, float] | None:
    """Two-sample Kolmogorov-Smirnov statistic and p-value of word counts (scipy); None if a side is
    empty. The statistic is the largest gap between the two length CDFs (0 = same distribution)."""
    if not len(real) or not len(synthetic):
        return None
    from scipy.stats import ks_2samp

    result = ks_2samp(word_counts(real), word_counts(synthetic))
    return float(result.statistic), float(result.pvalue)


def centroid_distance(real: np.ndarray, synthetic: np.ndarray) -> float | None:
    """Cosine distance between the mean embeddings of the two sets (0 = same centre)."""
    if not len(real) or not len(synthetic):
        return None
    a, b = real.mean(axis=0), synthetic.mean(axis=0)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(1.0 - (a @ b) / denominator) if denominator else None


TOO_FEW_ROWS = "too few rows"


def too_few_rows(metric: str, real: int, synthetic: int, minimum: int) -> str | None:
    """The "too few rows" verdict of a distribution score, or None when both sides have `minimum` rows.

    A score computed on too few rows is not shown as a number: at 27 rows MAUVE gave 0.985 and could
    not tell a one-label set from the real label mix (issue 9); the number looked like a verdict."""
    if real >= minimum and synthetic >= minimum:
        return None
    return (
        f"{TOO_FEW_ROWS}: {metric} needs at least {minimum} real and {minimum} synthetic rows "
        f"(have {real} and {synthetic})"
    )


@dataclass(frozen=True)
class MauveResult:
    score: float | None
    num_buckets: int | None
    note: str | None = None  # why there is no score ("too few rows: ..."), else None


def mauve_buckets(n_real: int, n_synthetic: int, setting: int | str) -> int:
    """MAUVE's own 'auto' rule (a tenth of the smaller side, at least 2), or the spec's number capped
    so that each bucket can hold a few points of the smaller side."""
    smaller = min(n_real, n_synthetic)
    if setting == "auto":
        return max(2, round(smaller / 10))
    return max(2, min(int(setting), smaller // 2))


def mauve_score(
    real: np.ndarray, synthetic: np.ndarray, *, num_buckets: int | str, min_samples: int, seed: int
) -> MauveResult:
    """MAUVE (Pillutla et al., 2021; mauve-text) between real and synthetic sentence embeddings.

    We pass MiniLM features (`p_features`/`q_features`), so mauve-text never loads GPT-2 or reaches
    the hub; it quantizes both sets with faiss k-means (faiss-cpu) and compares the histograms. Below
    `min_samples` rows on either side there is no score, only a "too few rows" note: the authors ask
    for "at least a few thousand samples (we use 5000 each)" because with fewer MAUVE "is biased
    towards optimism" (mauve-text README, best practices). Measured here (MiniLM features, 5 draws
    per size): MAUVE of real vs a one-label subset stayed within the real-vs-real range up to 400
    rows per side on Rotten Tomatoes (sentiment) and 100 on TREC (topics); it separated them from
    800 and 200 (EvaluationSpec.mauve_min_samples, default 1000)."""
    skipped = too_few_rows("MAUVE", len(real), len(synthetic), min_samples)
    if skipped:
        return MauveResult(None, None, skipped)
    import faiss
    import mauve

    buckets = mauve_buckets(len(real), len(synthetic), num_buckets)
    threads = faiss.omp_get_max_threads()
    # OpenMP threads spin-wait; on a busy 2-core box k-means of 150 points took seconds instead of
    # 0.1 s, and one thread is plenty for a few hundred points
    faiss.omp_set_num_threads(1)
    try:
        out = mauve.compute_mauve(
            p_features=real.astype(np.float32),
            q_features=synthetic.astype(np.float32),
            num_buckets=buckets,
            device_id=-1,
            verbose=False,
            seed=seed % (2**31),
        )
    finally:
        faiss.omp_set_num_threads(threads)
    return MauveResult(float(out.mauve), buckets)


def distribution_scores(
    real_texts: Sequence[str],
    synthetic_texts: Sequence[str],
    real_vectors: np.ndarray,
    synthetic_vectors: np.ndarray,
    *,
    min_rows: int,
) -> dict[str, Any]:
    """Length KS (statistic, p-value) and embedding centroid distance, each None with a
    `<name>_status` "too few rows: ..." when either side has fewer than `min_rows` rows.

    Both are two-sample estimates whose sampling noise dominates on small sets: two disjoint random
    25-row draws of the same real rows were 0.27 apart in centroid distance (demo reviews, TREC), as
    far as the real mix from a one-label subset, and their length KS statistic reached 0.36; at 100
    rows the centroid told a one-label TREC subset from the mix in 5 of 5 draws
    (EvaluationSpec.distribution_min_rows, default 100). Keys: length_ks, length_ks_pvalue,
    length_ks_status, centroid_distance, centroid_distance_status (status None when computed)."""
    out: dict[str, Any] = {}
    skipped = too_few_rows("length KS", len(real_texts), len(synthetic_texts), min_rows)
    ks = None if skipped else length_ks(real_texts, synthetic_texts)
    out["length_ks"], out["length_ks_pvalue"] = (ks[0], ks[1]) if ks else (None, None)
    out["length_ks_status"] = skipped
    skipped = too_few_rows("centroid distance", len(real_vectors), len(synthetic_vectors), min_rows)
    out["centroid_distance"] = None if skipped else centroid_distance(real_vectors, synthetic_vectors)
    out["centroid_distance_status"] = skipped
    return out


# --------------------------------------------------------------------------------------------- bias


def shares(values: Iterable[str], categories: Sequence[str]) -> dict[str, float]:
    """Share of each category (categories outside the list are counted under their own name)."""
    counts = Counter(values)
    total = sum(counts.values())
    keys = list(categories) + sorted(set(counts) - set(categories))
    return {key: (counts.get(key, 0) / total if total else 0.0) for key in keys}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Total variation distance: half the L1 distance between two distributions (0 = same, 1 = disjoint)."""
    keys = set(p) | set(q)
    return 0.5 * float(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys))


def prompt_attributes(prompts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """prompt_id -> attribute dict (the `attributes` JSON column of expanded_prompts)."""
    return {
        str(pid): (json.loads(raw) if isinstance(raw, str) and raw else {})
        for pid, raw in zip(prompts["prompt_id"], prompts["attributes"], strict=True)
    }


def attribute_column(frame: pd.DataFrame, attributes: Mapping[str, dict[str, Any]], name: str) -> list[str]:
    """The value of attribute `name` for each row of a frame with a prompt_id column."""
    return [str(attributes.get(str(pid), {}).get(name, UNKNOWN_VALUE)) for pid in frame["prompt_id"]]


def _yield(curated: int, generated: int) -> float | None:
    return curated / generated if generated else None


def requested_shares(spec: GenerationSpec, name: str) -> dict[str, float]:
    """Share of the requested rows per value of `name` ('label' or an attribute).

    Without `per_cell`: the spec's weights. With `per_cell`: from the cells actually planned
    (`cells_of`, n accepted rows each) when `name` is one of the cell attributes, else the weights
    (values outside the cells are still sampled with them)."""
    if name == "label":
        values, weights = list(spec.labels), spec.normalized_label_weights()
    else:
        attribute = next(a for a in spec.attributes if a.name == name)
        values, weights = list(attribute.values), attribute.normalized_weights()
    if spec.per_cell is not None and name in spec.per_cell.attributes:
        cells = Counter(cell[name] for cell in cells_of(spec))
        total = sum(cells.values())
        return {value: cells.get(value, 0) / total for value in values}
    return dict(zip(values, weights, strict=True))


def requested_rows(spec: GenerationSpec) -> int:
    """Rows the spec asks for: `num_samples`, or n per planned cell with `per_cell`."""
    return spec.per_cell.n * len(cells_of(spec)) if spec.per_cell is not None else spec.num_samples


def label_balance(spec: GenerationSpec, samples: pd.DataFrame, curated: pd.DataFrame) -> pd.DataFrame:
    """Per label: requested count and share (`requested_shares`), generated and curated counts,
    curated share, yield."""
    asked = requested_rows(spec)
    shares_of = requested_shares(spec, "label")
    requested = allocate_counts(asked, [shares_of[label] for label in spec.labels])
    generated = Counter(samples["label"])
    realized = Counter(curated["label"])
    total = max(len(curated), 1)
    labels = list(spec.labels) + sorted((set(generated) | set(realized)) - set(spec.labels))
    wanted = dict(zip(spec.labels, requested, strict=True))
    rows = [
        {
            "label": label,
            "requested": wanted.get(label, 0),
            "requested_share": wanted.get(label, 0) / asked,
            "generated": generated.get(label, 0),
            "curated": realized.get(label, 0),
            "curated_share": realized.get(label, 0) / total,
            "yield": _yield(realized.get(label, 0), generated.get(label, 0)),
        }
        for label in labels
    ]
    return pd.DataFrame(rows)


def attribute_balance(
    spec: GenerationSpec, prompts: pd.DataFrame, samples: pd.DataFrame, curated: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Per attribute, per value: requested share (`requested_shares`), share among prompts, generated and
    curated counts, curated share and yield, so a user sees which conditions the model fails at."""
    attributes = prompt_attributes(prompts)
    tables: dict[str, pd.DataFrame] = {}
    for attribute in spec.attributes:
        requested = requested_shares(spec, attribute.name)
        prompted = shares(attribute_column(prompts, attributes, attribute.name), attribute.values)
        generated = Counter(attribute_column(samples, attributes, attribute.name))
        realized = Counter(attribute_column(curated, attributes, attribute.name))
        total = max(len(curated), 1)
        values = list(attribute.values) + sorted((set(generated) | set(realized)) - set(attribute.values))
        tables[attribute.name] = pd.DataFrame(
            [
                {
                    "value": value,
                    "requested_share": requested.get(value, 0.0),
                    "prompted_share": prompted.get(value, 0.0),
                    "generated": generated.get(value, 0),
                    "curated": realized.get(value, 0),
                    "curated_share": realized.get(value, 0) / total,
                    "yield": _yield(realized.get(value, 0), generated.get(value, 0)),
                }
                for value in values
            ]
        )
    return tables


def table_tvd(
    table: pd.DataFrame, requested: str = "requested_share", realized: str = "curated_share"
) -> float:
    key = "label" if "label" in table.columns else "value"
    return total_variation(
        dict(zip(table[key], table[requested], strict=True)),
        dict(zip(table[key], table[realized], strict=True)),
    )


def finite_or_none(value: Any) -> Any:
    """NaN and infinities become None, so metrics stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
