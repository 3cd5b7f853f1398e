"""Curation speed and near-duplicate quality on a synthetic corpus, without any LLM or embedding model.

The corpus is templated product reviews (two to four sentences from combinatorial templates) with
planted duplicates: exact copies that differ only in case, punctuation and spacing, and near copies
with one word edited per ~15 words (substituted, deleted, inserted or swapped), plus a few percent
of broken rows (refusals, assistant talk, loops, truncated, junk, personal data) for the
heuristics to chew on. Every sample has one of 500 prompts with three demo reviews.

What is timed is the curation pass that needs no model: PII scrub, heuristics, exact dedup,
MinHash LSH near dedup, and dedup against 200 seed rows; on 100k rows and on 200k rows (same
generator, same shares). Near-duplicate recall is the share of planted (original, near copy) pairs
that end up as duplicate and representative of each other; precision is the share of rows flagged
`near_duplicate` whose representative comes from the same original. Ends with one line:

RESULT rows=100000 seconds=<s> seconds_200k=<t> scaling_2x=<t/s> near_dup_recall=<r> near_dup_precision=<p>

Run: .venv/bin/python benchmarks/curation.py [--rows 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from synth_assets.curation.pipeline import CurationOutcome

PRODUCTS = (
    "blender", "laptop", "desk chair", "coffee maker", "tent", "phone case", "vacuum cleaner", "kettle",
    "smartwatch", "speaker", "backpack", "monitor", "keyboard", "mouse", "toaster", "air fryer", "lamp",
    "water bottle", "yoga mat", "rice cooker", "e-reader", "drone", "router", "printer", "microwave",
    "hair dryer", "jacket", "pair of boots", "pair of headphones", "camera", "tripod", "suitcase",
    "sofa", "mattress", "bike helmet", "fan", "heater", "dishwasher", "iron", "stroller",
)  # fmt: skip
ADJECTIVES = (
    "sturdy", "flimsy", "quiet", "noisy", "compact", "bulky", "elegant", "ugly", "reliable", "fragile",
    "powerful", "weak", "comfortable", "stiff", "lightweight", "heavy", "cheap-looking", "premium",
    "intuitive", "confusing", "durable", "wobbly", "bright", "dim", "fast", "slow", "warm", "cold",
    "smooth", "rough", "solid", "shaky", "sleek", "clunky", "versatile", "limited", "handy", "awkward",
)  # fmt: skip
FEATURES = (
    "battery", "handle", "lid", "cable", "button", "screen", "motor", "fabric", "zipper", "strap",
    "base", "filter", "speaker grille", "charging port", "hinge", "wheel", "seat cushion", "display",
    "remote", "app", "manual", "packaging", "finish", "frame", "sensor", "power switch", "timer",
)  # fmt: skip
TIMES = (
    "two days", "a week", "three weeks", "a month", "six weeks", "two months", "half a year",
    "a year", "ten days", "four months", "eight months", "a fortnight",
)  # fmt: skip
PEOPLE = ("my wife", "my husband", "my son", "my daughter", "my roommate", "my dad", "my mom", "a friend")
VERDICTS = (
    "I would buy it again", "I returned it", "I recommend it to everyone", "I regret the purchase",
    "it was worth every penny", "it is fine for the price", "I gave it away", "I bought a second one",
    "I am still undecided", "I will keep it for now", "it exceeded my expectations",
)  # fmt: skip
TEMPLATES = (
    "I bought this {p} {t} ago and the {f} is already {a}.",
    "The {f} on this {p} feels {a}, but the {g} is {b}.",
    "After {t} of daily use, {who} says the {p} is {a} and {b}.",
    "Honestly, {v}: the {p} is {a} and the {f} works as described.",
    "For a {a} {p}, the {f} surprised me, and {v}.",
    "We use the {p} every morning; the {g} is {b} while the {f} stays {a}.",
    "My old {p} died after {t}, so I tried this one and {v}.",
    "The {a} {f} makes this {p} easy to use, though the {g} could be {b}.",
    "{who} borrowed the {p} for {t} and found the {f} {a}.",
    "Setup took {t2} minutes, the {f} is {a} and {v}.",
)  # fmt: skip
BROKEN = (
    "Sure! Here is a positive review of the {p}: it is {a}.",
    "As an AI language model, I cannot have opinions about a {p}.",
    "I'm sorry, but I can't write a review of this {p}.",
    "The {p} is {a}. The {p} is {a}. The {p} is {a}. The {p} is {a}. The {p} is {a}.",
    "The {f} of the {p} is {a} and the",
    "<div>{p}</div> ###### $$$$ ||||| ^^^^ @@@@",
    "Great {p}, email me at buyer{n}@example.com or call +1 555 010 {n4} for details.",
    "ok",
)  # fmt: skip


@dataclass(frozen=True)
class Corpus:
    samples: pd.DataFrame
    prompts: pd.DataFrame
    seed_rows: pd.DataFrame
    group: list[int]  # the original each row was made from (its own index for originals)
    near_pairs: list[tuple[int, int]]  # (original row, near copy row) after shuffling


def _sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    a, b = rng.sample(ADJECTIVES, 2)
    f, g = rng.sample(FEATURES, 2)
    return template.format(
        p=rng.choice(PRODUCTS), a=a, b=b, f=f, g=g, t=rng.choice(TIMES), who=rng.choice(PEOPLE),
        v=rng.choice(VERDICTS), t2=rng.randint(2, 90),
    )  # fmt: skip


def _review(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.choice((2, 3, 3, 4))))


def _broken(rng: random.Random, template: int) -> str:
    return BROKEN[template].format(
        p=rng.choice(PRODUCTS), a=rng.choice(ADJECTIVES), f=rng.choice(FEATURES), n=rng.randint(1, 999),
        n4=f"{rng.randint(0, 9999):04d}",
    )  # fmt: skip


def _exact_variant(text: str, rng: random.Random) -> str:
    """Same text after normalisation: case, punctuation and spacing only."""
    variant = text.upper() if rng.random() < 0.3 else text.lower()
    variant = variant.replace(",", "").replace(";", " ;").replace(".", " !")
    return "  " + variant.replace(" ", "  ", rng.randint(1, 3))


def _near_variant(text: str, rng: random.Random) -> str:
    """One word edit per ~15 words: substitute, delete, insert or swap."""
    words = text.split()
    pool = ADJECTIVES + FEATURES + ("really", "quite", "also", "still", "very", "new")
    for _ in range(max(1, len(words) // 15)):
        i = rng.randrange(1, len(words) - 1)
        operation = rng.choice(("substitute", "delete", "insert", "swap"))
        if operation == "substitute":
            words[i] = rng.choice(pool)
        elif operation == "delete" and len(words) > 6:
            del words[i]
        elif operation == "insert":
            words.insert(i, rng.choice(pool))
        else:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_corpus(rows: int, seed: int, exact_share: float = 0.05, near_share: float = 0.05) -> Corpus:
    from synth_assets.curation.text import normalize_text

    rng = random.Random(seed)
    n_exact, n_near, n_broken = int(rows * exact_share), int(rows * near_share), int(rows * 0.02)
    n_original = rows - n_exact - n_near - n_broken
    texts = [_review(rng) for _ in range(n_original)]
    group = list(range(n_original))
    kinds = ["original"] * n_original
    for _ in range(n_exact):
        source = rng.randrange(n_original)
        texts.append(_exact_variant(texts[source], rng))
        group.append(source)
        kinds.append("exact")
    for _ in range(n_near):
        source = rng.randrange(n_original)
        variant = _near_variant(texts[source], rng)
        while normalize_text(variant) == normalize_text(texts[source]):
            variant = _near_variant(texts[source], rng)
        texts.append(variant)
        group.append(source)
        kinds.append("near")
    for _ in range(n_broken):
        template = rng.randrange(len(BROKEN))
        texts.append(_broken(rng, template))
        # broken rows of one template differ in a word or two: they ARE near duplicates of each other
        group.append(-1 - template)
        kinds.append("broken")
    order = list(range(rows))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    shuffled_group = [position[group[old]] if group[old] >= 0 else group[old] for old in order]
    near_pairs = [(position[group[old]], position[old]) for old in range(rows) if kinds[old] == "near"]

    n_prompts = 500
    prompt_ids = [f"p{i:04d}" for i in range(n_prompts)]
    prompts = pd.DataFrame(
        {
            "prompt_id": prompt_ids,
            "label": [rng.choice(("positive", "neutral", "negative")) for _ in prompt_ids],
            "attributes": "{}",
            "system_prompt": "You write short, realistic product reviews.",
            "prompt_text": [
                "You write realistic customer reviews for an online shop.\n"
                + "".join(f"Review (positive): {_review(rng)}\n" for _ in range(3))
                + "Write one new review. Reply with the review text only."
                for _ in prompt_ids
            ],
        }
    )
    prompt_of = [rng.randrange(n_prompts) for _ in range(rows)]
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i:07d}" for i in range(rows)],
            "prompt_id": [prompt_ids[prompt_of[i]] for i in range(rows)],
            "label": [prompts["label"].iat[prompt_of[i]] for i in range(rows)],
            "text": [texts[old] for old in order],
            "finish_reason": "stop",
        }
    )
    seed_rows = pd.DataFrame(
        {
            "seed_id": [f"seed-{i}" for i in range(200)],
            "split": "train",
            "text": [_review(rng) for _ in range(200)],
            "label": "positive",
        }
    )
    return Corpus(samples, prompts, seed_rows, shuffled_group, near_pairs)


def run(corpus: Corpus) -> tuple[float, CurationOutcome]:
    from synth_assets.curation.pipeline import CurationContext, curate
    from synth_assets.spec import CurationSpec

    # everything that needs no model: the embedding filters are off, as they would be without one
    rules = CurationSpec(
        min_chars=20, max_chars=800, semantic_duplicate_threshold=None, label_check="off", min_relevance=None
    )
    context = CurationContext(
        task="You write realistic customer reviews for an online shop.",
        labels=("positive", "neutral", "negative"),
        template="Review ({{ demo.label }}): {{ demo.text }}\nWrite one new review. Reply with the text.",
        seed_rows=corpus.seed_rows,
    )
    gc.collect()
    started = time.perf_counter()
    outcome = curate(corpus.samples, corpus.prompts, rules, context)
    return time.perf_counter() - started, outcome


def near_quality(corpus: Corpus, outcome: CurationOutcome) -> tuple[float, float]:
    duplicates = outcome.duplicates
    index = {sid: i for i, sid in enumerate(corpus.samples["sample_id"])}
    representative = {
        index[a]: index[b] for a, b in zip(duplicates["sample_id"], duplicates["duplicate_of"], strict=True)
    }
    group = corpus.group

    def joined(row: int) -> bool:
        return row in representative and group[representative[row]] == group[row]

    # a pair is caught when either row ended up a duplicate of a row made from the same original
    caught = sum(joined(copy) or joined(original) for original, copy in corpus.near_pairs)
    recall = caught / len(corpus.near_pairs) if corpus.near_pairs else 1.0
    near = duplicates[duplicates["kind"] == "near_duplicate"]
    correct = sum(
        group[index[a]] == group[index[b]]
        for a, b in zip(near["sample_id"], near["duplicate_of"], strict=True)
    )
    precision = correct / len(near) if len(near) else 1.0
    return recall, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    small = build_corpus(args.rows, args.seed)
    large = build_corpus(2 * args.rows, args.seed + 1)
    run(build_corpus(2_000, args.seed + 2))  # warm-up: imports, regex compilation, datasketch
    seconds, outcome = run(small)
    recall, precision = near_quality(small, outcome)
    counts = {k: v for k, v in outcome.reason_counts().items() if v}
    print(f"{args.rows} rows: {seconds:.1f}s, kept {len(outcome.curated)}, rejected {json.dumps(counts)}")
    print(f"stage seconds: {json.dumps(outcome.timings)}")
    del outcome
    seconds_large, outcome_large = run(large)
    print(f"{2 * args.rows} rows: {seconds_large:.1f}s, stage seconds {json.dumps(outcome_large.timings)}")
    sys.stdout.flush()
    print(
        f"RESULT rows={args.rows} seconds={seconds:.2f} seconds_200k={seconds_large:.2f} "
        f"scaling_2x={seconds_large / seconds:.2f} near_dup_recall={recall:.4f} "
        f"near_dup_precision={precision:.4f}"
    )


if __name__ == "__main__":
    main()
