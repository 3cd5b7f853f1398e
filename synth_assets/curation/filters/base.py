"""What a curation filter is: its phase, what it needs, what it finds; the rows it works on; the registry.

A filter (`CurationFilter`) is a small object with
- `name`: unique, also the key of its seconds in `CurationOutcome.timings`;
- `phase`: when it runs (`Phase`); filters of one phase run in registration order;
- `reasons` / `flags` / `scores`: the reason codes (`curation.reasons`) it may reject with, the soft
  flags it may put on kept rows, and the score columns it fills;
- `needs(rules)`: what it needs besides the text (`NEEDS`): the runner embeds the texts once for every
  filter that needs embeddings, and the asset loads the local model or the judge only when an enabled
  filter needs it;
- `enabled(rules)`: whether the spec switches it on;
- `run(rows)`: adds its findings to `rows.findings` and writes its scores into `rows.scores`.

Shaped after NeMo Data Designer's validators registered by type (`engine/validators/base.py`) and
DataDreamer's `Step`, which declares its inputs and outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from synth_assets.curation import reasons as R

if TYPE_CHECKING:
    from synth_assets.curation.pipeline import CurationContext
    from synth_assets.spec import CurationSpec

Embed = Callable[[Sequence[str]], np.ndarray]
EMBEDDING_WIDTH = 384  # all-MiniLM-L6-v2

# What a filter can need besides the texts (the runner and the asset act on these names):
EMBEDDINGS = "embeddings"  # one vector per text, from CurationContext.embed
SEED_ROWS = "seed_rows"  # CurationContext.seed_rows
PREVIOUS = "previous"  # rows of earlier curated versions, CurationContext.previous
JUDGE_MODEL = "judge_model"  # a chat model for the LLM judge, CurationContext.judge_model
LOCAL_MODEL = "local_model"  # the local causal LM for likelihoods, CurationContext.local_model
NEEDS = frozenset({EMBEDDINGS, SEED_ROWS, PREVIOUS, JUDGE_MODEL, LOCAL_MODEL})

# Score columns stored in curated_set and rejected_samples, with the value of a row no filter scored.
STORED_SCORES: dict[str, Any] = {
    "predicted_label": None,
    "label_confidence": np.nan,
    "relevance": np.nan,
    "nearest_similarity": np.nan,
    "judge_score": np.nan,
    "pii_hits": 0,
}


class Phase(IntEnum):
    """When a filter runs. The order is deliberate:
    1. personal data is scrubbed first, so no later table (or detail string) ever holds it;
    2. repairs: a chat lead-in is cut off, a truncated ending trimmed to its last complete sentence;
    3. heuristics run on the resulting text;
    4. filters that need the seed, embeddings or a model;
    5. duplicates last, so that the representative of a group of duplicates is a row that passed
       everything else whenever one exists.
    Phases up to HEURISTICS are cheap (no model, no seed): exact-N generation counts a sample as
    accepted when they keep it (`pipeline.cheap_acceptance`)."""

    PRIVACY = 1
    REPAIR = 2
    HEURISTICS = 3
    MODELS = 4
    DUPLICATES = 5


@dataclass
class DedupState:
    """What the duplicate filters share: the order in which rows claim to be a group's representative
    (clean rows first), normalized-text hashes, blank rows, the matches found so far (-1: none) and the
    MinHash signatures (None until near-duplicate detection ran)."""

    order: np.ndarray
    hashes: list[str]
    blank: np.ndarray  # bool (n,)
    exact_of: np.ndarray  # int64 (n,): row this one copies exactly, -1 when none
    near_of: np.ndarray  # int64 (n,)
    signatures: np.ndarray | None = None
    hasher: Any = None  # dedup.MinHasher


@dataclass
class CurationRows:
    """The samples under curation, passed through the filters in order. Every list/array holds one
    entry per sample (length `n`, the samples' order).

    `texts` is the current text (scrubbed, then repaired: what curated_set stores), `shown_text` what
    rejected_samples stores (scrubbed, not repaired), `normalized` the texts after
    `curation.text.normalize_many` (set by the heuristics phase). `scores` maps a score column to its
    values; the STORED_SCORES columns are stored, any other column (a new filter's score) is kept in
    `CurationOutcome.scores` only."""

    samples: pd.DataFrame
    prompts: pd.DataFrame
    rules: CurationSpec
    context: CurationContext
    ids: list[str]
    intended: list[str]
    texts: list[str]
    findings: R.Findings
    shown_text: list[str] = field(default_factory=list)
    normalized: list[str] = field(default_factory=list)
    final_label: list[str] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    unrepaired: np.ndarray | None = None  # bool (n,): cut off and not repaired (set by the repairs)
    embeddings: np.ndarray | None = None  # float32 (n, 384), unit length; None: not computed
    dedup: DedupState | None = None
    duplicate_rows: list[dict[str, Any]] = field(default_factory=list)
    pii_by_type: dict[str, int] = field(default_factory=dict)
    embedded: bool = False  # whether embedding was attempted

    @property
    def n(self) -> int:
        return len(self.ids)

    def flag(self, rows: Iterable[int], flag: str) -> None:
        """Put a soft flag (`reasons.FLAG_*`) on kept rows."""
        for row in rows:
            self.flags[row].append(flag)


class CurationFilter:
    """One curation step (see the module docstring). Subclasses set the class attributes and `run`;
    `run` may raise only on a programming error: missing inputs are skipped with a line in
    `rows.notes`, never an exception, so one missing model does not stop curation."""

    name: ClassVar[str]
    phase: ClassVar[Phase]
    reasons: ClassVar[tuple[str, ...]] = ()
    flags: ClassVar[tuple[str, ...]] = ()
    scores: ClassVar[tuple[str, ...]] = ()

    def enabled(self, rules: CurationSpec) -> bool:
        """Whether the spec switches this filter on (default: always)."""
        return True

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        """Inputs (names from NEEDS) this filter uses under `rules`."""
        return frozenset()

    def run(self, rows: CurationRows) -> None:
        raise NotImplementedError


class FilterRegistry:
    """Filters by name, run in phase order (registration order within a phase)."""

    def __init__(self) -> None:
        self._filters: dict[str, CurationFilter] = {}

    def register(self, step: CurationFilter) -> CurationFilter:
        """Add `step`; raises ValueError on a repeated name, an unknown phase, reason or flag code."""
        if step.name in self._filters:
            raise ValueError(f"curation filter {step.name!r} is registered twice")
        if not isinstance(step.phase, Phase):
            raise ValueError(f"curation filter {step.name!r}: phase {step.phase!r} is not a Phase")
        unknown = [r for r in step.reasons if r not in R.REASONS]
        if unknown:
            raise ValueError(
                f"curation filter {step.name!r}: unknown reason codes {unknown} (add to reasons.py)"
            )
        self._filters[step.name] = step
        return step

    def ordered(self, up_to: Phase = Phase.DUPLICATES) -> list[CurationFilter]:
        """Registered filters of phases <= `up_to`, in running order."""
        return sorted((f for f in self._filters.values() if f.phase <= up_to), key=lambda f: f.phase)

    def needs(self, rules: CurationSpec) -> frozenset[str]:
        """Everything the filters enabled by `rules` need."""
        return frozenset().union(*(f.needs(rules) for f in self.ordered() if f.enabled(rules)))

    def __getitem__(self, name: str) -> CurationFilter:
        return self._filters[name]

    def __len__(self) -> int:
        return len(self._filters)


def run_filters(
    filters: Sequence[CurationFilter], rows: CurationRows, timings: dict[str, float] | None = None
) -> None:
    """Run the enabled `filters` over `rows` in the given order, embedding the texts once before the
    first filter that needs embeddings; seconds per filter go to `timings` (embedding counts towards
    the filter that first needed it)."""
    for step in filters:
        if not step.enabled(rows.rules):
            continue
        started = time.perf_counter()
        if EMBEDDINGS in step.needs(rows.rules) and not rows.embedded:
            _embed(rows)
        step.run(rows)
        if timings is not None:
            timings[step.name] = round(timings.get(step.name, 0.0) + time.perf_counter() - started, 3)


def _embed(rows: CurationRows) -> None:
    rows.embedded = True
    embed = rows.context.embed
    if embed is None:
        rows.notes.append("relevance, label check and semantic dedup skipped: no embedding model given")
    elif rows.n:
        rows.embeddings = embed(rows.texts)
    else:
        rows.embeddings = np.zeros((0, EMBEDDING_WIDTH), dtype=np.float32)
