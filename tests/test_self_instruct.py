"""ROUGE-L novelty pool: exact scores, the threshold, and pruning that stays exact."""

from __future__ import annotations

import random

from synth_assets.generation.self_instruct import NoveltyPool, rouge_l, tokenize


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
