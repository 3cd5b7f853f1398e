"""Text normalisation and vectorised tokenisation shared by every curation filter.

Filters work on whole columns, not row by row: texts are normalised once, split into words with
Arrow kernels, and every word gets a stable 64-bit hash. Word n-grams are then hash combinations
computed with numpy over the flat token array, so a filter over 100k rows is a handful of array
operations instead of 100k Python loops.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# punctuation -> space, then collapse whitespace: both are runs of non-word characters
_NON_WORD_RUN = re.compile(r"\W+")
_MASK64 = (1 << 64) - 1
# odd multipliers (golden ratio, murmur) to combine token hashes into n-gram hashes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


# Scripts written without spaces between words: each character becomes its own token, so word
# n-grams, distinct-n, echo and n-gram dedup count characters there (the usual unit for Chinese and
# Japanese; sacrebleu's `zh` tokenizer does the same for Han). Hangul is written with spaces.
_UNSPACED_SCRIPT = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs, extension A, compatibility
    "\U00020000-\U0003134f"  # CJK extensions B-G
    "\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
)
_UNSPACED_CHAR = re.compile(f"([{_UNSPACED_SCRIPT}])")
HAS_UNSPACED_SCRIPT = re.compile(f"[{_UNSPACED_SCRIPT}]")


def strip_format_characters(text: str) -> str:
    """`text` without Unicode format characters (category Cf: zero-width space U+200B, soft hyphen
    U+00AD, joiners, BOM, bidi marks): invisible, they would make `ket\u200btle` a new word."""
    if text.isascii():  # Cf has no ASCII member: skip the per-character pass for most texts
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def strip_format_characters_array(texts: pa.Array) -> pa.Array:
    """`strip_format_characters` for a whole Arrow string column (one RE2 kernel)."""
    return pc.replace_substring_regex(texts, r"\p{Cf}+", "")


def normalize_text(text: str) -> str:
    """Invisible format characters removed, then case, compatibility forms (NFKC), punctuation and
    spacing folded; characters of scripts without word spaces (Han, kana, Thai, ...) separated by
    spaces so that whitespace splitting yields one token per character."""
    folded = unicodedata.normalize("NFKC", strip_format_characters(text)).casefold()
    if HAS_UNSPACED_SCRIPT.search(folded):
        folded = _UNSPACED_CHAR.sub(r" \1 ", folded)
    return _NON_WORD_RUN.sub(" ", folded).strip()


def normalized_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:16]


def normalize_many(texts: Sequence[str]) -> list[str]:
    # A list comprehension over two compiled regexes costs ~3 us per short text; Arrow's regex
    # kernels (RE2) have no Unicode-aware \w, and the hashes must match `normalized_hash` exactly.
    return [normalize_text(text) for text in texts]


def hash_many(normalized: Sequence[str]) -> list[str]:
    return [hashlib.sha256(text.encode()).hexdigest()[:16] for text in normalized]


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64 (wraps by design)."""
    with np.errstate(over="ignore"):
        mixed = values ^ (values >> np.uint64(33))
        mixed = mixed * _M1
        mixed = mixed ^ (mixed >> np.uint64(33))
        mixed = mixed * _M2
        return mixed ^ (mixed >> np.uint64(33))


def stable_hashes(values: np.ndarray) -> np.ndarray:
    """uint64 hash per string, the same in every process (pandas' SipHash with its fixed key)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


@dataclass(frozen=True)
class Tokens:
    """Words of many texts, flattened: token i belongs to row `rows[i]`, at `positions[i]` in it."""

    rows: np.ndarray  # int64, one per token
    positions: np.ndarray  # int64, position of the token inside its row
    hashes: np.ndarray  # uint64, stable hash of the token
    counts: np.ndarray  # int64, tokens per row
    words: np.ndarray  # object, the distinct tokens (for vocabulary lookups)
    codes: np.ndarray  # int64, index of each token in `words`

    @property
    def n_rows(self) -> int:
        return len(self.counts)

    def ngrams(self, n: int, row_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row, hash) of every word n-gram, optionally only for rows where `row_mask` is true."""
        total = len(self.hashes)
        if total < n or n < 1:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        starts = np.arange(total - n + 1)
        valid = self.positions[starts] <= self.counts[self.rows[starts]] - n
        if row_mask is not None:
            valid &= row_mask[self.rows[starts]]
        starts = starts[valid]
        combined = self.hashes[starts].copy()
        with np.errstate(over="ignore"):
            for offset in range(1, n):
                combined = fmix64(combined * _GOLDEN + self.hashes[starts + offset])
        return self.rows[starts], combined


def tokenize(normalized: Sequence[str]) -> Tokens:
    """Split normalised texts on whitespace (Arrow kernel) and hash each distinct word once."""
    array = pa.array(list(normalized), type=pa.large_string())
    split = pc.utf8_split_whitespace(array)
    counts = pc.list_value_length(split).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(split)
    rows = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = (
        pc.dictionary_encode(flat).combine_chunks()
        if isinstance(flat, pa.ChunkedArray)
        else (pc.dictionary_encode(flat))
    )
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    words = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    word_hashes = stable_hashes(words)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    positions = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, counts)
    return Tokens(
        rows=rows,
        positions=positions,
        hashes=word_hashes[codes] if len(codes) else np.zeros(0, dtype=np.uint64),
        counts=counts,
        words=words,
        codes=codes,
    )


def keyed(rows: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """One uint64 per (row, hash) pair, for set membership across tables (collisions ~2^-64)."""
    with np.errstate(over="ignore"):
        return fmix64(hashes ^ (rows.astype(np.uint64) * _GOLDEN + np.uint64(1)))
