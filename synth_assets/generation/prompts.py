"""Prompt expansion: labels and attributes sampled with weights, few-shot demos, a sandboxed template.

Everything is derived from the spec's `random_seed`, so the same spec and seed data always give the
same prompts with the same ids.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from synth_assets import templates
from synth_assets.spec import GenerationSpec, SpecError, content_hash

PROMPT_COLUMNS = [
    "prompt_id",
    "prompt_index",
    "label",
    "attributes",
    "demo_ids",
    "system_prompt",
    "prompt_text",
    "generation_seed",
    "cell",
]

# SmolLM2-135M-Instruct's context (config.json: max_position_embeddings = 8192).
LOCAL_CONTEXT_TOKENS = 8192
# The longest token in SmolLM2's vocabulary is 81 characters (a newline and 80 spaces; measured over
# tokenizer.json's 49,152 entries), so a text of c characters is at least ceil(c / 81) tokens. This
# bound never refuses a prompt that fits; it is used instead of the tokenizer because it needs no
# model files (the openai backend has none here) and costs nothing on a 1 MB cell.
MAX_CHARS_PER_TOKEN = 81


def _template_context(
    spec: GenerationSpec,
    label: str,
    attributes: dict[str, str],
    demos: list[dict[str, str]],
    anchor: dict[str, str] | None = None,
    typical_words: int = 0,
) -> dict[str, Any]:
    return templates.prompt_context(
        task=spec.task,
        label=label,
        labels=list(spec.labels),
        attributes=attributes,
        demos=demos,
        anchor=anchor,
        typical_words=typical_words,
    )


def uses_anchor(spec: GenerationSpec) -> bool:
    """Whether prompts are built around an anchor seed row (the template names `anchor`, or demos
    are retrieved as its nearest neighbours); the anchor's id then joins the prompt's lineage."""
    return spec.few_shot.strategy == "nearest" or "anchor" in templates.variables(spec.template)


def render_prompt(
    spec: GenerationSpec,
    label: str,
    attributes: dict[str, str],
    demos: list[dict[str, str]],
    anchor: dict[str, str] | None = None,
    typical_words: int = 0,
) -> str:
    """The user message for one prompt (used again by self-instruct rounds with pooled demos).
    Raises `SpecError` naming the spec file and `template` when the template cannot be rendered."""
    context = _template_context(spec, label, attributes, demos, anchor, typical_words)
    try:
        return templates.render(spec.template, context).strip()
    except templates.TemplateProblem as exc:
        raise SpecError(f"{spec.source_path}: template: {exc}") from exc


def check_seed_rows_fit(spec: GenerationSpec, seed_rows: pd.DataFrame) -> None:
    """Refuse, before any prompt is rendered, a seed row that cannot fit the local model's context
    with room for `max_new_tokens`: raises `SpecError` naming the seed file and row. Only for the
    local backend, whose context is known; a server's own limit is its to report."""
    if spec.generation.backend != "local" or seed_rows.empty:
        return
    room = LOCAL_CONTEXT_TOKENS - spec.generation.max_new_tokens
    lengths = seed_rows["text"].astype(str).str.len()
    longest = int(lengths.to_numpy().argmax())
    at_least = math.ceil(int(lengths.iloc[longest]) / MAX_CHARS_PER_TOKEN)
    if at_least > room:
        row = seed_rows.iloc[longest]
        raise SpecError(
            f"{row.get('source_file', spec.seed_path)}: row {row.get('source_row', longest + 1)}: text of "
            f"{int(lengths.iloc[longest]):,} characters is at least {at_least:,} tokens and cannot fit the "
            f"model's {LOCAL_CONTEXT_TOKENS:,}-token context with max_new_tokens "
            f"{spec.generation.max_new_tokens}"
        )


def _check_prompt_fits(spec: GenerationSpec, index: int, text: str, rows: list[dict[str, str]]) -> None:
    """A rendered prompt whose own length already passes the local context: name its longest seed row."""
    if spec.generation.backend != "local":
        return
    at_least = math.ceil(len(text) / MAX_CHARS_PER_TOKEN)
    if at_least + spec.generation.max_new_tokens > LOCAL_CONTEXT_TOKENS:
        where = max(rows, key=lambda r: len(r["text"]), default=None)
        source = (
            f"{where.get('source_file', spec.seed_path)}: row {where.get('source_row', '?')}"
            if where
            else f"{spec.source_path}: template"
        )
        raise SpecError(
            f"{source}: prompt {index} with this seed row is {len(text):,} characters, at least "
            f"{at_least:,} tokens: it cannot fit the model's {LOCAL_CONTEXT_TOKENS:,}-token context with "
            f"max_new_tokens {spec.generation.max_new_tokens}"
        )


def typical_words_by_label(rows_by_label: dict[str, list[dict[str, str]]]) -> dict[str, int]:
    """Median word count of each label's seed rows (whitespace words; at least 1)."""
    return {
        label: max(1, round(statistics.median(len(r["text"].split()) for r in rows)))
        for label, rows in rows_by_label.items()
        if rows
    }


def allocate_counts(total: int, weights: Sequence[float]) -> list[int]:
    """How many of `total` prompts each weight gets: the counts of `label_sequence` (within one of
    the exact proportional share), so the evaluation's "requested" matches what was generated."""
    positions = list(range(len(weights)))
    chosen = label_sequence(positions, weights, total)
    return [chosen.count(i) for i in positions]


class _NearestRows:
    """kNN demo retrieval: a label's seed rows ranked by embedding cosine to an anchor row."""

    def __init__(self, rows_by_label: dict[str, list[dict[str, str]]]) -> None:
        from synth_assets.embeddings import embed

        self.rows_by_label = rows_by_label
        self.vectors = {label: embed([r["text"] for r in rows]) for label, rows in rows_by_label.items()}

    def around(self, anchor: dict[str, str], k: int) -> list[dict[str, str]]:
        """The k rows of the anchor's label nearest to it (the anchor excluded), least similar first,
        so the most similar demo sits next to the slot the model fills."""
        rows = self.rows_by_label.get(anchor["label"], [])
        vectors = self.vectors.get(anchor["label"])
        if not rows or vectors is None:
            return []
        position = next(i for i, row in enumerate(rows) if row["seed_id"] == anchor["seed_id"])
        similarity = vectors @ vectors[position]
        # ties (duplicate texts) resolve by seed order, so retrieval is deterministic
        ranked = sorted((i for i in range(len(rows)) if i != position), key=lambda i: (-similarity[i], i))
        return [rows[i] for i in reversed(ranked[:k])]


def _anchor_rows(
    spec: GenerationSpec, rows_by_label: dict[str, list[dict[str, str]]]
) -> dict[str, list[dict[str, str]]]:
    """Per label, the seed rows in a fixed shuffled order; the n-th prompt of a label takes the
    (n mod rows)-th as its anchor, so every seed row is rewritten about equally often."""
    ordered = {}
    for label, rows in rows_by_label.items():
        rng = random.Random(content_hash([spec.random_seed, "anchors", label]))
        ordered[label] = rng.sample(rows, len(rows))
    return ordered


def _pick_demos(
    rng: random.Random,
    rows_by_label: dict[str, list[dict[str, str]]],
    all_rows: list[dict[str, str]],
    label: str,
    k: int,
    strategy: str,
) -> list[dict[str, str]]:
    if k == 0 or not all_rows:
        return []
    if strategy == "random":
        return rng.sample(all_rows, min(k, len(all_rows)))
    if strategy == "same_label":
        pool = rows_by_label.get(label, [])
        return rng.sample(pool, min(k, len(pool)))
    # stratified: round-robin over labels, the target label first, so every prompt sees the label set
    order = [label] + [other for other in rows_by_label if other != label]
    shuffled = {name: rng.sample(rows, len(rows)) for name, rows in rows_by_label.items()}
    picked: list[dict[str, str]] = []
    while len(picked) < min(k, len(all_rows)):
        for name in order:
            if shuffled.get(name) and len(picked) < k:
                picked.append(shuffled[name].pop())
    rng.shuffle(picked)
    return picked


def label_sequence(labels: Sequence[Any], weights: Sequence[float], count: int) -> list[Any]:
    """Labels in a weighted round-robin: every prefix is within one of its proportional share.

    A prefix-stable order (rather than a shuffle of exact counts) means raising `num_samples` from
    48 to 53 keeps the first 48 prompts, and so their ids and cached generations: 10 % more prompts
    cost 10 % of a run.
    """
    chosen: list[str] = []
    counts = [0] * len(labels)
    for position in range(1, count + 1):
        deficits = [w * position - c for w, c in zip(weights, counts, strict=True)]
        best = max(range(len(labels)), key=lambda i: (deficits[i], -i))
        counts[best] += 1
        chosen.append(labels[best])
    return chosen


def cells_of(spec: GenerationSpec) -> list[dict[str, str]]:
    """Every combination of the per-cell attributes' values (empty when the spec has no per_cell)."""
    if spec.per_cell is None:
        return []
    values = {a.name: a.values for a in spec.attributes} | {"label": list(spec.labels)}
    return [
        dict(zip(spec.per_cell.attributes, combination, strict=True))
        for combination in itertools.product(*(values[name] for name in spec.per_cell.attributes))
    ]


def _prompt_plan(spec: GenerationSpec, rng: random.Random) -> list[tuple[str, dict[str, str], str]]:
    """(label, fixed attribute values, cell key) per prompt, in generation order."""
    if spec.per_cell is None:
        return [
            (label, {}, "")
            for label in label_sequence(spec.labels, spec.normalized_label_weights(), spec.num_samples)
        ]
    # budget_factor x n prompts per cell, interleaved wave by wave: the engine takes a cell's prompts
    # in this order and stops once the cell has n accepted samples
    budget = math.ceil(spec.per_cell.n * spec.per_cell.budget_factor)
    plan = []
    for _wave in range(budget):
        for cell in cells_of(spec):
            label = cell.get("label") or rng.choices(spec.labels, weights=spec.normalized_label_weights())[0]
            fixed = {name: value for name, value in cell.items() if name != "label"}
            plan.append((label, fixed, json.dumps(cell, sort_keys=True)))
    return plan


def expand_prompts(spec: GenerationSpec, seed_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt in `PROMPT_COLUMNS` order; demos come only from the 'train' split."""
    train = seed_rows[seed_rows["split"] == "train"]
    check_seed_rows_fit(spec, train)
    all_rows = [
        {
            "seed_id": r.seed_id,
            "text": r.text,
            "label": r.label,
            "source_file": getattr(r, "source_file", str(spec.seed_path)),
            "source_row": getattr(r, "source_row", "?"),
        }
        for r in train.itertuples(index=False)
    ]
    rows_by_label: dict[str, list[dict[str, str]]] = {}
    for row in all_rows:
        rows_by_label.setdefault(row["label"], []).append(row)

    rng = random.Random(spec.random_seed)
    plan = _prompt_plan(spec, rng)

    spec_identity = {
        "task": spec.task,
        "template": spec.template,
        "system_prompt": spec.generation.system_prompt,
    }
    words_of_label = typical_words_by_label(rows_by_label)
    with_anchor = uses_anchor(spec)
    anchors = _anchor_rows(spec, rows_by_label) if with_anchor else {}
    nearest = _NearestRows(rows_by_label) if spec.few_shot.strategy == "nearest" and all_rows else None
    prompts_of_label: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    for index, (label, fixed, cell) in enumerate(plan):
        # one generator per prompt position: prompt i does not depend on how many prompts follow it
        rng = random.Random(content_hash([spec.random_seed, index]))
        attributes = {
            a.name: fixed.get(a.name) or rng.choices(a.values, weights=a.normalized_weights())[0]
            for a in spec.attributes
        }
        anchor = None
        if with_anchor and anchors.get(label):
            anchor = anchors[label][prompts_of_label[label] % len(anchors[label])]
        prompts_of_label[label] += 1
        if nearest is not None:
            demos = nearest.around(anchor, spec.few_shot.k) if anchor else []
        else:
            demos = _pick_demos(rng, rows_by_label, all_rows, label, spec.few_shot.k, spec.few_shot.strategy)
        try:
            text = templates.render(
                spec.template,
                _template_context(
                    spec,
                    label,
                    attributes,
                    [{"text": d["text"], "label": d["label"]} for d in demos],
                    {"text": anchor["text"], "label": anchor["label"]} if anchor else None,
                    words_of_label.get(label, 0),
                ),
            ).strip()
        except templates.TemplateProblem as exc:
            # an output bound passed because the seed rows alone are too long: name the row instead
            sources = ([anchor] if anchor else []) + demos
            _check_prompt_fits(spec, index, "".join(row["text"] for row in sources), sources)
            raise SpecError(f"{spec.source_path}: template: prompt {index}: {exc}") from exc
        _check_prompt_fits(spec, index, text, ([anchor] if anchor else []) + demos)
        # the anchor is a seed row the prompt was built from: it leads the prompt's lineage
        demo_ids = ([anchor["seed_id"]] if anchor else []) + [d["seed_id"] for d in demos]
        base = {**spec_identity, "label": label, "attributes": attributes, "demo_ids": demo_ids}
        key = content_hash(base)
        # identical prompts are legitimate (few conditions, many samples); the replicate keeps ids unique
        replicate = seen[key]
        seen[key] += 1
        prompt_id = "p-" + content_hash({**base, "replicate": replicate})
        records.append(
            {
                "prompt_id": prompt_id,
                "prompt_index": index,
                "label": label,
                "attributes": json.dumps(attributes, sort_keys=True),
                "demo_ids": json.dumps(demo_ids),
                "system_prompt": spec.generation.system_prompt or "",
                "prompt_text": text,
                "generation_seed": int(content_hash([spec.random_seed, prompt_id]), 16) % (2**31),
                "cell": cell,
            }
        )
    return pd.DataFrame.from_records(records, columns=PROMPT_COLUMNS)


def prompt_messages(system_prompt: str, prompt_text: str) -> list[dict[str, str]]:
    """Chat messages for one prompt (system message only when the spec sets one)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt_text}]
