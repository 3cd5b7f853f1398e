"""ROUGE-L novelty pool: exact scores, the threshold, and pruning that stays exact."""

from __future__ import annotations

import random

import pytest

from synth_assets.generation.self_instruct import NoveltyPool, lcs_length, rouge_l, tokenize


def reference_lcs(a: list[str], b: list[str]) -> int:
    """The pure-Python dynamic programme ROUGE-L used before rapidfuzz (7.4 s per 2000 pairs)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def test_rouge_l_known_values() -> None:
    a = tokenize("the cat sat on the mat")
    assert rouge_l(a, a) == 1.0
    # LCS "the cat the mat" = 4 of 6 and 4 of 5 tokens
    b = tokenize("the cat lay the mat")
    assert abs(rouge_l(a, b) - 2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5)) < 1e-12
    assert rouge_l(a, tokenize("dogs bark loudly")) == 0.0


def test_pool_rejects_near_copies_and_keeps_new_items() -> None:
    pool = NoveltyPool(threshold=0.7)
    pool.add("Write a short review of a blender that broke after a week.")
    assert not pool.check("Write a short review of a blender that broke after one week.").novel
    check = pool.check("Describe a hiking trip in the Alps with friends.")
    assert check.novel and check.max_rouge_l < 0.7


def test_pruned_search_matches_brute_force() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 20))) for _ in range(300)]
    pool = NoveltyPool(threshold=0.5)
    for text in texts[:200]:
        pool.add(text)
    for text in texts[200:]:
        brute = max(rouge_l(tokenize(text), tokenize(item)) for item in texts[:200])
        check = pool.check(text)
        assert check.novel == (brute < 0.5)
        if not check.novel:
            assert check.max_rouge_l >= 0.5
        assert check.exact_comparisons <= 200


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("the cat sat on the mat", "the cat lay the mat"),
        ("Write a short review of a blender that broke.", "Write a review of a kettle that broke today."),
        ("a b c d e f g", "g f e d c b a"),
        ("same words here", "same words here"),
        ("nothing shared", "entirely different"),
        ("这个水壶烧水很快", "这个水壶烧水非常快"),
    ],
)
def test_rapidfuzz_lcs_equals_the_pure_python_reference(a: str, b: str) -> None:
    ta, tb = tokenize(a), tokenize(b)
    assert lcs_length(ta, tb) == reference_lcs(ta, tb) == reference_lcs(tb, ta)


def test_rapidfuzz_lcs_equals_the_reference_on_random_pairs() -> None:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(12)]
    for _ in range(300):
        a, b = rng.choices(words, k=rng.randint(0, 25)), rng.choices(words, k=rng.randint(0, 25))
        assert lcs_length(a, b) == reference_lcs(a, b)


def test_invisible_characters_and_unspaced_scripts_in_novelty() -> None:
    pool = NoveltyPool(threshold=0.7)
    pool.add("Write a short review of a blender that broke after a week.")
    assert not pool.check("Write a short re\u200bview of a blen\u00adder that broke after a week.").novel
    pool.add("这个电热水壶烧水非常快，把手一点也不烫。")
    assert tokenize("水壶很快") == ["水", "壶", "很", "快"]
    assert not pool.check("这个电热水壶烧水非常快，把手一点都不烫。").novel
