"""Self-Instruct bootstrapping: a pool that grows from the seed, kept novel by ROUGE-L.

A candidate joins the pool only if its ROUGE-L F1 to every pooled item is below the threshold (0.7, as
in Self-Instruct). Comparing against every item is quadratic as the pool grows, so candidates are
first bounded through an inverted index: ROUGE-L F1 <= 2*overlap/(|a|+|b|), where overlap is the
multiset token overlap; only items whose bound reaches the threshold get the exact LCS (rapidfuzz).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from synth_assets.curation.text import normalize_text


def tokenize(text: str) -> list[str]:
    """Words of `text` as every curation filter sees them (`normalize_text`: invisible format
    characters removed, case folded, one token per character in scripts without spaces)."""
    return normalize_text(text).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (rapidfuzz's bit-parallel LCS:
    2000 pairs in 16 ms against 7.4 s for a pure-Python dynamic programme, same values)."""
    from rapidfuzz.distance import LCSseq

    return int(LCSseq.similarity(a, b))


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 between two token lists (the measure Self-Instruct filters on)."""
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class NoveltyCheck:
    novel: bool
    max_rouge_l: float
    most_similar: int | None  # index of the closest pooled item, when any was compared
    exact_comparisons: int


class NoveltyPool:
    """Texts kept so far; `check` a candidate, `add` it when novel."""

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = threshold
        self.items: list[str] = []
        self._tokens: list[list[str]] = []
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, text: str) -> int:
        index = len(self.items)
        tokens = tokenize(text)
        self.items.append(text)
        self._tokens.append(tokens)
        for token, count in Counter(tokens).items():
            self._postings[token].append((index, count))
        return index

    def check(self, text: str) -> NoveltyCheck:
        tokens = tokenize(text)
        if not tokens:
            return NoveltyCheck(False, 1.0, None, 0)
        overlap: dict[int, int] = defaultdict(int)
        for token, count in Counter(tokens).items():
            for index, pooled_count in self._postings.get(token, ()):
                overlap[index] += min(count, pooled_count)
        bounds = sorted(
            (
                (2 * shared / (len(tokens) + len(self._tokens[index])), index)
                for index, shared in overlap.items()
            ),
            reverse=True,
        )
        best, best_index, exact = 0.0, None, 0
        # highest bound first: a near-copy is found early, and once the bound drops below the
        # threshold no remaining item can reach it
        for bound, index in bounds:
            if bound < self.threshold:
                break
            exact += 1
            score = rouge_l(tokens, self._tokens[index])
            if score > best:
                best, best_index = score, index
            if best >= self.threshold:
                break
        return NoveltyCheck(best < self.threshold, best, best_index, exact)
