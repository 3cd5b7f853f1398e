"""Duplicates: exact (normalised text), near (MinHash LSH, datasketch) and semantic (embedding cosine).

Within one batch, rows are visited in priority order (rows that passed every other filter first,
then the rest, each in original order); the first row of a group is its representative, and every
later member is a duplicate *of that representative*. So when a clean row and a broken row say the
same thing, the clean one is kept. Against references (seed rows, earlier curated versions) a row
is a duplicate when anything in the reference set matches.

MinHash signatures are computed for all rows at once with numpy, using datasketch's permutations
and its "affine32" scheme, so they are bit-identical to `datasketch.MinHash` sketches (a unit test
holds them to that). The LSH banding uses the (bands, rows) that datasketch's `MinHashLSH`
optimiser picks, but buckets are formed by hashing band keys over all rows at once: datasketch's
index is a Python dict per band, ~90 us per row for query + insert on this laptop (~28 s wall at
100k rows under load, against a 60 s budget for the whole pass). Within a batch, candidate pairs
are confirmed by the estimated Jaccard of the two signatures (what `MinHash.jaccard` computes),
joined into connected components, and each component is resolved greedily in priority order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from synth_assets.curation.text import fmix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# murmur3 32-bit finaliser, the pre-mix datasketch's affine32 scheme applies to every input hash
_F32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_SHINGLE_PRIME = np.uint64(1_000_003)
# shingles per numpy chunk: num_perm x chunk uint32 stays within a few MB of cache
_CHUNK_SHINGLES = 20_000


def _fmix32(values: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _F32
    with np.errstate(over="ignore"):
        values = values ^ (values >> s1)
        values = values * m1
        values = values ^ (values >> s2)
        values = values * m2
        return values ^ (values >> s3)


def priority_order(rejected_elsewhere: np.ndarray) -> np.ndarray:
    """Rows that passed every other filter first, then the others; original order within each."""
    rejected_elsewhere = np.asarray(rejected_elsewhere, dtype=bool)
    return np.concatenate([np.flatnonzero(~rejected_elsewhere), np.flatnonzero(rejected_elsewhere)])


def exact_duplicates(keys: Sequence[str], order: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """dup_of[i] = the representative row with the same key, or -1. `skip` rows (e.g. empty) never
    match anything."""
    n = len(keys)
    dup_of = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return dup_of
    codes, _ = pd.factorize(pd.Series(list(keys), dtype=object))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    first = np.full(codes.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, codes, rank)
    representative = order[first[codes]]
    duplicate = representative != np.arange(n)
    if skip is not None:
        duplicate &= ~skip
    dup_of[duplicate] = representative[duplicate]
    return dup_of


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def _finish(combined: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        combined = combined ^ (combined >> np.uint64(29))
        combined = combined * np.uint64(0xBF58476D1CE4E5B9)
        combined = combined ^ (combined >> np.uint64(32))
    return (combined & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def shingle_hashes(normalized: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, 32-bit hash) of every character `size`-gram of each text; a text shorter than `size`
    is one shingle. Computed over one flat code-point array, no per-row Python."""
    lengths = np.fromiter((len(t) for t in normalized), dtype=np.int64, count=len(normalized))
    rows_out: list[np.ndarray] = []
    hashes_out: list[np.ndarray] = []
    if lengths.sum():
        points = np.frombuffer("".join(normalized).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        starts = np.cumsum(lengths) - lengths
        row_of = np.repeat(np.arange(len(lengths)), lengths)
        # a window starts wherever `size` characters of the same text follow
        begin = np.flatnonzero(np.arange(len(points)) - starts[row_of] <= lengths[row_of] - size)
        combined = points[begin] + np.uint64(1)
        with np.errstate(over="ignore"):
            for offset in range(1, size):
                combined = combined * _SHINGLE_PRIME + points[begin + offset] + np.uint64(1)
        rows_out.append(row_of[begin])
        hashes_out.append(_finish(combined))
        # texts shorter than a window are one shingle each (rare: a few words at most)
        short = np.flatnonzero((lengths > 0) & (lengths < size))
        if len(short):
            whole = np.zeros(len(short), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for position, row in enumerate(short.tolist()):
                    for point in points[starts[row] : starts[row] + lengths[row]]:
                        whole[position] = whole[position] * _SHINGLE_PRIME + point + np.uint64(1)
            rows_out.append(short)
            hashes_out.append(_finish(whole))
    if not rows_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32)
    rows, hashes = np.concatenate(rows_out), np.concatenate(hashes_out)
    if len(rows_out) == 1:  # already grouped by row
        return rows, hashes
    order = np.argsort(rows, kind="stable")
    return rows[order], hashes[order]


def signatures_from_hashes(
    rows: np.ndarray, hashes: np.ndarray, n_rows: int, num_perm: int, seed: int = 1
) -> np.ndarray:
    """MinHash signatures (n_rows x num_perm, uint32), equal to datasketch's affine32 MinHash of each
    row's hash set; rows without hashes keep the empty value (all 0xFFFFFFFF)."""
    a, b = _permutations(num_perm, seed)
    signatures = np.full((n_rows, num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    if len(rows) == 0:
        return signatures
    mixed = _fmix32(hashes.astype(np.uint32))
    boundaries = np.flatnonzero(np.diff(rows)) + 1
    run_starts = np.concatenate([[0], boundaries])
    run_rows = rows[run_starts]
    # permutations x shingles layout: the min-reduction then runs along contiguous memory, which
    # measured ~10x faster than shingles x permutations
    buffer = np.empty((num_perm, _CHUNK_SHINGLES), dtype=np.uint32)
    start_run = 0
    while start_run < len(run_starts):
        begin = run_starts[start_run]
        limit = np.searchsorted(run_starts, begin + _CHUNK_SHINGLES, side="right") - 1
        end_run = max(limit, start_run + 1)
        end = run_starts[end_run] if end_run < len(run_starts) else len(rows)
        if end - begin > buffer.shape[1]:  # one row longer than a chunk
            buffer = np.empty((num_perm, end - begin), dtype=np.uint32)
        permuted = buffer[:, : end - begin]
        with np.errstate(over="ignore"):
            np.multiply(a[:, None], mixed[None, begin:end], out=permuted)
            permuted += b[:, None]
        segment_starts = run_starts[start_run:end_run] - begin
        signatures[run_rows[start_run:end_run]] = np.minimum.reduceat(permuted, segment_starts, axis=1).T
        start_run = end_run
    return signatures


@dataclass(frozen=True)
class MinHasher:
    """Character-shingle MinHash over normalised texts."""

    num_perm: int = 128
    shingle_size: int = 5
    seed: int = 1

    def signatures(self, normalized: Sequence[str], chunk_rows: int = 10_000) -> np.ndarray:
        # chunks of rows bound the memory of the flat code-point arrays (~10 int64 per character)
        parts = []
        for start in range(0, len(normalized), chunk_rows):
            part = normalized[start : start + chunk_rows]
            rows, hashes = shingle_hashes(part, self.shingle_size)
            parts.append(signatures_from_hashes(rows, hashes, len(part), self.num_perm, self.seed))
        if not parts:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        return np.concatenate(parts)


# Banding is tuned a little below the verification threshold, so pairs just above it are still
# found (at 0.7 the optimal 128-permutation banding, 16 bands x 8 rows, finds only ~60% of pairs at
# J=0.7; tuned for 0.65, 18 x 7, ~79%, and ~99% at J=0.8); the estimated Jaccard then decides.
# More slack finds a few more borderline pairs but candidate pairs grow fast on templated text
# (benchmark: slack 0.1 doubled the near-dedup time at 200k rows for +0.2% recall).
LSH_SLACK = 0.05
# how many members of a connected component are compared all-pairs; beyond that (a degenerate,
# templated corpus) members are compared with their component's representatives in chunks
_PAIR_CHUNK = 50_000


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's optimiser, weighted towards recall."""
    from datasketch import MinHashLSH

    index = MinHashLSH(threshold=max(0.05, threshold - LSH_SLACK), num_perm=num_perm, weights=(0.3, 0.7))
    return index.b, index.r


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash per band of `rows` signature values."""
    n = len(signatures)
    keys = np.empty((n, bands), dtype=np.uint64)
    wide = signatures.astype(np.uint64)
    for band in range(bands):
        key = np.full(n, band + 1, dtype=np.uint64)
        for column in range(band * rows, (band + 1) * rows):
            key = fmix64(key * _GOLDEN + wide[:, column])
        keys[:, band] = key
    return keys


def _estimated_jaccard(signatures_a: np.ndarray, signatures_b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal signature values (datasketch's `MinHash.jaccard`), chunked."""
    out = np.empty(len(signatures_a))
    for start in range(0, len(signatures_a), _PAIR_CHUNK):
        stop = start + _PAIR_CHUNK
        out[start:stop] = (signatures_a[start:stop] == signatures_b[start:stop]).mean(axis=1)
    return out


def _bucket_pairs(keys: np.ndarray, ranked_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(member, leader) for every row that shares a band bucket with an earlier row: each member is
    paired with its bucket's first row only (a star, not all pairs), so a bucket costs O(size).
    `ranked_rows` lists the rows taking part in priority order. Hash-based (factorize), not sorted,
    so the cost stays linear in the number of rows."""
    members, leaders = [], []
    positions = np.arange(len(ranked_rows))
    for band in range(keys.shape[1]):
        codes, uniques = pd.factorize(keys[ranked_rows, band])
        # codes are numbered in order of first appearance, so the first row of bucket c is where c
        # first occurs; writing positions in reverse leaves the earliest one
        first = np.empty(len(uniques), dtype=np.int64)
        first[codes[::-1]] = positions[::-1]
        later = first[codes] != positions
        members.append(ranked_rows[later])
        leaders.append(ranked_rows[first[codes[later]]])
    if not members:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    combined = np.concatenate(members).astype(np.int64) * (n + 1) + np.concatenate(leaders)
    unique = pd.unique(combined)
    return unique // (n + 1), unique % (n + 1)


def near_duplicates(
    signatures: np.ndarray,
    order: np.ndarray,
    threshold: float,
    skip: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(dup_of, jaccard) over one batch.

    LSH banding (vectorised over all rows) proposes candidate pairs; pairs whose estimated Jaccard
    reaches `threshold` are edges; each connected component is then resolved greedily in priority
    order: a member is a duplicate of the first representative it matches, else a representative.
    `skip` rows (empty, or already exact duplicates) take no part.
    """
    n, num_perm = signatures.shape
    dup_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n)
    rows = np.flatnonzero(~skip)
    if len(rows) < 2:
        return dup_of, similarity
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    bands, per_band = lsh_bands(threshold, num_perm)
    ranked_rows = order[~skip[order]]
    member, leader = _bucket_pairs(band_keys(signatures, bands, per_band), ranked_rows, n)
    confirmed = _estimated_jaccard(signatures[member], signatures[leader]) >= threshold
    member, leader = member[confirmed], leader[confirmed]
    if len(member) == 0:
        return dup_of, similarity
    graph = coo_matrix((np.ones(len(member)), (member, leader)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    in_edge = np.zeros(n, dtype=bool)
    in_edge[member] = in_edge[leader] = True
    grouped = np.flatnonzero(in_edge)
    grouped = grouped[np.lexsort((rank[grouped], component[grouped]))]
    boundaries = np.flatnonzero(np.diff(component[grouped])) + 1
    for members in np.split(grouped, boundaries):
        representatives = [int(members[0])]
        for row in members[1:].tolist():
            scores = (signatures[representatives] == signatures[row]).mean(axis=1)
            best = int(scores.argmax())
            if scores[best] >= threshold:
                dup_of[row], similarity[row] = representatives[best], float(scores[best])
            else:
                representatives.append(row)
    return dup_of, similarity


def near_matches_in(
    signatures: np.ndarray,
    reference: np.ndarray,
    threshold: float,
    skip: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(match, jaccard): for each row, the most similar reference row at or above `threshold`
    (-1: none), found through shared LSH buckets."""
    n, num_perm = signatures.shape
    match = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n)
    rows = np.flatnonzero(~skip)
    empty = (reference == np.uint32(0xFFFFFFFF)).all(axis=1)
    references = np.flatnonzero(~empty)
    if len(rows) == 0 or len(references) == 0:
        return match, similarity
    bands, per_band = lsh_bands(threshold, num_perm)
    sample_keys = band_keys(signatures[rows], bands, per_band)
    reference_keys = band_keys(reference[references], bands, per_band)
    pairs = []
    for band in range(bands):
        joined = pd.DataFrame({"key": sample_keys[:, band], "row": rows}).merge(
            pd.DataFrame({"key": reference_keys[:, band], "ref": references}), on="key"
        )
        pairs.append(joined[["row", "ref"]].to_numpy())
    if not pairs:
        return match, similarity
    stacked = np.concatenate(pairs).astype(np.int64)
    width = len(reference) + 1
    combined = pd.unique(stacked[:, 0] * width + stacked[:, 1])  # hash-based: linear, unlike np.unique
    candidates = np.stack([combined // width, combined % width], axis=1)
    if len(candidates) == 0:
        return match, similarity
    score = _estimated_jaccard(signatures[candidates[:, 0]], reference[candidates[:, 1]])
    keep = score >= threshold
    candidates, score = candidates[keep], score[keep]
    # best reference per row: highest score, then lowest reference index
    best = np.lexsort((candidates[:, 1], -score, candidates[:, 0]))
    first = np.ones(len(best), dtype=bool)
    first[1:] = candidates[best[1:], 0] != candidates[best[:-1], 0]
    chosen = best[first]
    match[candidates[chosen, 0]] = candidates[chosen, 1]
    similarity[candidates[chosen, 0]] = score[chosen]
    return match, similarity


def semantic_duplicates(
    embeddings: np.ndarray, order: np.ndarray, threshold: float, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dup_of, cosine, nearest): greedy in priority order against representatives so far (rows are
    L2-normalised, so a dot product is the cosine); `nearest` is each row's highest cosine to any
    other row, a diversity score kept on curated rows."""
    n = len(embeddings)
    dup_of = np.full(n, -1, dtype=np.int64)
    cosine = np.zeros(n)
    nearest = np.zeros(n)
    if n == 0:
        return dup_of, cosine, nearest
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -1.0)
    nearest = similarity.max(axis=1) if n > 1 else np.zeros(1)
    representatives: list[int] = []
    for row in order.tolist():
        if skip[row]:
            continue
        if representatives:
            scores = similarity[row, representatives]
            best = int(scores.argmax())
            if scores[best] >= threshold:
                dup_of[row], cosine[row] = representatives[best], float(scores[best])
                continue
        representatives.append(row)
    return dup_of, cosine, np.maximum(nearest, 0.0)


def semantic_matches_in(
    embeddings: np.ndarray, reference: np.ndarray, threshold: float, skip: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(match, cosine): for each row, the most similar reference row if at or above `threshold`."""
    n = len(embeddings)
    match = np.full(n, -1, dtype=np.int64)
    cosine = np.zeros(n)
    if n == 0 or len(reference) == 0:
        return match, cosine
    for start in range(0, n, chunk):
        block = embeddings[start : start + chunk] @ reference.T
        best = block.argmax(axis=1)
        score = block[np.arange(len(block)), best]
        hit = (score >= threshold) & ~skip[start : start + chunk]
        match[start : start + chunk][hit] = best[hit]
        cosine[start : start + chunk] = np.where(hit, score, 0.0)
    return match, cosine
