"""The whole curation pass: generated samples in, curated rows (with scores) and rejected rows (with
every reason) out. Pure: no Dagster, no DuckDB; the asset reads the inputs and writes the outputs.

`curate` runs the registered filters (`curation.filters.FILTERS`) in their phase order — personal
data, repairs, heuristics, seed/embedding/model filters, duplicates last; see `filters.base.Phase`
for why that order — and assembles the two tables. `cheap_acceptance` runs the same filters up to
the heuristics: what exact-N generation counts as accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synth_assets.curation import reasons as R
from synth_assets.curation.filters import FILTERS, CurationRows, FilterRegistry, Phase, run_filters
from synth_assets.curation.filters.base import STORED_SCORES
from synth_assets.curation.label_fidelity import LabelLikelihood, LikelihoodModel, label_likelihood
from synth_assets.curation.seed_sample import (  # noqa: F401  (re-exported: the tests and benchmarks use them here)
    LEXICAL_CANDIDATES,
    MAX_SEED_ROWS_EMBEDDED,
    bounded_sample,
    lexical_candidates,
)
from synth_assets.spec import CurationSpec
from synth_assets.storage import stage_columns

if TYPE_CHECKING:
    from synth_assets.curation.filters.perplexity import PerplexityModel
    from synth_assets.curation.judge import ChatModel
    from synth_assets.spec import GenerationSpec

Embed = Callable[[Sequence[str]], np.ndarray]
DUPLICATE_REASONS = (R.EXACT_DUPLICATE, R.NEAR_DUPLICATE, R.SEMANTIC_DUPLICATE)
# the soft flags of a row a repair changed: its stored text is not what the model wrote
REPAIR_FLAGS = frozenset({R.FLAG_LEAD_IN, R.FLAG_TRIMMED})


@dataclass(frozen=True)
class CurationContext:
    """What curation needs besides the samples: the spec's task, the seed rows, earlier versions,
    and the models (`filters.base.NEEDS` names them). A filter whose input is missing is skipped and
    says so in `CurationOutcome.notes`."""

    task: str = ""
    labels: tuple[str, ...] = ()
    template: str | None = None
    random_seed: int = 0
    seed_rows: pd.DataFrame | None = None  # seed_data rows: seed_id, split, text, label
    previous: pd.DataFrame | None = None  # rows of earlier curated versions: sample_id, text, run_id
    embed: Embed | None = None  # texts -> float32 (n, 384) unit vectors (all-MiniLM-L6-v2)
    judge_model: ChatModel | None = None
    # log p(texts | the spec's prompt for a label): the likelihood half of curation.label_fidelity
    label_likelihood: LabelLikelihood | None = None
    # the local causal LM (`LocalChatModel`): curation.perplexity scores texts with it
    local_model: PerplexityModel | None = None

    @classmethod
    def for_spec(
        cls,
        spec: GenerationSpec,
        *,
        seed_rows: pd.DataFrame | None = None,
        previous: pd.DataFrame | None = None,
        embed: Embed | None = None,
        judge_model: ChatModel | None = None,
        likelihood_model: LikelihoodModel | None = None,
    ) -> CurationContext:
        """`likelihood_model` (the local model) is needed only by filters that need `local_model`
        (`needs(spec.curation)`): label_fidelity likelihood / both, perplexity."""
        return cls(
            task=spec.task,
            labels=tuple(spec.labels),
            template=spec.template,
            random_seed=spec.random_seed,
            seed_rows=seed_rows,
            previous=previous,
            embed=embed,
            judge_model=judge_model,
            label_likelihood=label_likelihood(spec, likelihood_model) if likelihood_model else None,
            local_model=likelihood_model,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class CurationOutcome:
    """What `curate` returns; the asset stores `curated` and `rejected`, logs `notes`, and reports the
    rest as metadata. Nothing here raises.

    - `curated`: the kept rows, columns of `stage_columns("curated_set")`: sample_id, prompt_id, label
      (final: relabeled when curation.label_check is relabel), text (scrubbed and repaired),
      normalized_hash, intended_label, the score columns (`filters.base.STORED_SCORES`: predicted_label,
      label_confidence and relevance and nearest_similarity as cosines/probabilities in [-1, 1] rounded to
      4 places, judge_score 1-5, pii_hits a count; NaN/None where no filter scored the row) and flags
      (a JSON list of `reasons.FLAG_*`).
    - `rejected`: the dropped rows, columns of `stage_columns("rejected_samples")`: the intended label, the
      scrubbed but unrepaired text, reasons (JSON list of reason codes in `reasons.REASON_CODES` order),
      details (JSON object reason -> readable detail) and the same scores.
    - `duplicates`: one row per duplicate found in the batch: sample_id, kind (a duplicate reason code),
      duplicate_of (the kept representative's sample_id), similarity (1.0 exact, Jaccard, cosine).
    - `scores`: every score column any filter filled, stored or not (e.g. perplexity), one row per
      generated sample in input order, with sample_id.
    - `pii_by_type`: personal-data hits per type (EMAIL, PHONE...) before scrubbing.
    - `notes`: one line per filter skipped for a missing input, or worth telling the user.
    - `timings`: seconds per filter name (and `assemble`)."""

    curated: pd.DataFrame
    rejected: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)
    pii_by_type: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def generated(self) -> int:
        """Samples curated (kept plus rejected)."""
        return len(self.curated) + len(self.rejected)

    def reason_counts(self) -> dict[str, int]:
        """Rejected rows per reason code (every code, 0 included); a row counts once per reason."""
        counts = dict.fromkeys(R.REASON_CODES, 0)
        for encoded in self.rejected["reasons"]:
            for reason in json.loads(encoded):
                counts[reason] = counts.get(reason, 0) + 1
        return counts

    def flag_counts(self) -> dict[str, int]:
        """Kept rows per soft flag (only flags that occur)."""
        counts: dict[str, int] = {}
        for encoded in self.curated["flags"]:
            for flag in json.loads(encoded):
                counts[flag] = counts.get(flag, 0) + 1
        return counts

    @property
    def duplicate_rate(self) -> float:
        """Share of generated samples rejected as a duplicate of another sample of the same batch."""
        if not self.generated:
            return 0.0
        hits = sum(any(r in DUPLICATE_REASONS for r in json.loads(e)) for e in self.rejected["reasons"])
        return hits / self.generated


def needs(rules: CurationSpec, registry: FilterRegistry = FILTERS) -> frozenset[str]:
    """What the filters `rules` enable need (`filters.base.NEEDS` names): the asset loads the local
    model or the judge only when one is needed."""
    return registry.needs(rules)


def start_rows(
    samples: pd.DataFrame, prompts: pd.DataFrame, rules: CurationSpec, context: CurationContext
) -> CurationRows:
    """The rows a curation pass starts from: texts as generated, no finding, no score yet."""
    n = len(samples)
    ids = (
        samples["sample_id"].astype(str).tolist()
        if "sample_id" in samples.columns
        else [str(i) for i in range(n)]
    )
    texts = samples["text"].fillna("").astype(str).tolist()
    intended = samples["label"].astype(str).tolist()
    return CurationRows(
        samples=samples,
        prompts=prompts,
        rules=rules,
        context=context,
        ids=ids,
        intended=intended,
        texts=texts,
        findings=R.Findings(n),
        shown_text=list(texts),
        final_label=list(intended),
        flags=[[] for _ in range(n)],
        scores={
            name: np.full(n, default, dtype=object if default is None else None)
            for name, default in STORED_SCORES.items()
        },
    )


def curate(
    samples: pd.DataFrame,
    prompts: pd.DataFrame,
    rules: CurationSpec,
    context: CurationContext | None = None,
    registry: FilterRegistry = FILTERS,
) -> CurationOutcome:
    """Split generated samples (sample_id, prompt_id, label, text, optional finish_reason) into curated
    and rejected rows (both in their table's column order) with the filters of `registry`.

    `prompts` (prompt_id, prompt_text, optional system_prompt and attributes) feed the echo and
    relevance checks. Raises only on malformed frames (a missing column: KeyError)."""
    context = context or CurationContext()
    if context.embed is not None:
        # seed rows are embedded for the classifier and for seed dedup; encode each text once
        context = replace(context, embed=_memoized(context.embed))
    rows = start_rows(samples, prompts, rules, context)
    timings: dict[str, float] = {}
    run_filters(registry.ordered(), rows, timings)
    started = time.perf_counter()
    outcome = _assemble(rows)
    timings["assemble"] = round(time.perf_counter() - started, 3)
    return replace(outcome, timings=timings)


def cheap_acceptance(samples: pd.DataFrame, prompts: pd.DataFrame, spec: GenerationSpec) -> pd.Series:
    """Which samples the cheap curation phases (personal data, repairs, heuristics: no seed, no model)
    keep, on the same text `curate` sees: what exact-N generation counts as accepted (boolean Series on
    `samples.index`). The embedding, model and duplicate filters run later, in curated_set.

    Self-Instruct shows an accepted sample verbatim to the model as a demo, so there a row a repair had
    to change (a lead-in cut off, an ending trimmed) is not accepted."""
    if samples.empty:
        return pd.Series([], dtype=bool)
    context = CurationContext(task=spec.task, labels=tuple(spec.labels), template=spec.template)
    rows = start_rows(samples, prompts, spec.curation, context)
    run_filters(FILTERS.ordered(up_to=Phase.HEURISTICS), rows)
    accepted = ~rows.findings.any()
    if spec.self_instruct is not None:
        accepted &= np.asarray([not REPAIR_FLAGS & set(f) for f in rows.flags], dtype=bool)
    return pd.Series(accepted, index=samples.index)


def _memoized(embed: Embed) -> Embed:
    cache: dict[str, np.ndarray] = {}

    def cached(texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, embed(missing), strict=True))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([cache[t] for t in texts])

    return cached


def _assemble(rows: CurationRows) -> CurationOutcome:
    reasons, details = rows.findings.reasons_and_details()
    rejected_mask = np.asarray([bool(r) for r in reasons], dtype=bool)
    keep = np.flatnonzero(~rejected_mask)
    drop = np.flatnonzero(rejected_mask)
    ids = np.asarray(rows.ids, dtype=object)
    prompt_ids = rows.samples["prompt_id"].astype(str).to_numpy()
    stored = {name: rows.scores[name] for name in STORED_SCORES}
    hashes = rows.dedup.hashes if rows.dedup is not None else [""] * rows.n
    curated = pd.DataFrame(
        {
            "sample_id": ids[keep],
            "prompt_id": prompt_ids[keep],
            "label": np.asarray(rows.final_label, dtype=object)[keep],
            "text": np.asarray(rows.texts, dtype=object)[keep],
            "normalized_hash": np.asarray(hashes, dtype=object)[keep],
            "intended_label": np.asarray(rows.intended, dtype=object)[keep],
            **{name: values[keep] for name, values in stored.items()},
            "flags": [json.dumps(rows.flags[i]) for i in keep.tolist()],
        }
    )
    rejected = pd.DataFrame(
        {
            "sample_id": ids[drop],
            "prompt_id": prompt_ids[drop],
            "label": np.asarray(rows.intended, dtype=object)[drop],
            "text": np.asarray(rows.shown_text, dtype=object)[drop],
            "reasons": [json.dumps(reasons[i]) for i in drop.tolist()],
            "details": [json.dumps(details[i], sort_keys=True) for i in drop.tolist()],
            **{name: values[drop] for name, values in stored.items()},
        }
    )
    for frame in (curated, rejected):
        frame["pii_hits"] = frame["pii_hits"].astype("int64")
        for column in ("label_confidence", "relevance", "nearest_similarity", "judge_score"):
            frame[column] = frame[column].astype("float64").round(4)
    duplicates = pd.DataFrame(
        rows.duplicate_rows, columns=["sample_id", "kind", "duplicate_of", "similarity"]
    )
    return CurationOutcome(
        curated=curated[stage_columns("curated_set")].reset_index(drop=True),
        rejected=rejected[stage_columns("rejected_samples")].reset_index(drop=True),
        duplicates=duplicates,
        pii_by_type=rows.pii_by_type,
        notes=rows.notes,
        scores=pd.DataFrame({"sample_id": rows.ids, **rows.scores}),
    )


def cap_per_cell(outcome: CurationOutcome, prompts: pd.DataFrame, n: int) -> CurationOutcome:
    """Exact-N: keep the first `n` curated rows of each cell (in prompt order); the surplus of the
    over-generation moves to the rejected rows with reason `cell_full`, nothing is dropped."""
    if outcome.curated.empty or "cell" not in prompts.columns:
        return outcome
    order = dict(zip(prompts["prompt_id"], prompts["prompt_index"], strict=True))
    cell = dict(zip(prompts["prompt_id"], prompts["cell"], strict=True))
    ranked = outcome.curated.assign(
        _order=outcome.curated["prompt_id"].map(order), _cell=outcome.curated["prompt_id"].map(cell)
    ).sort_values("_order", kind="stable")
    surplus = ranked.groupby("_cell", sort=False).cumcount() >= n
    if not surplus.any():
        return outcome
    extra = ranked[surplus]
    moved = extra.reindex(columns=outcome.rejected.columns)
    moved["reasons"] = json.dumps([R.CELL_FULL])
    moved["details"] = json.dumps({R.CELL_FULL: f"cell already has {n} accepted samples"})
    kept = outcome.curated[~outcome.curated["sample_id"].isin(extra["sample_id"])]
    rejected = pd.concat([outcome.rejected, moved], ignore_index=True)
    return replace(outcome, curated=kept.reset_index(drop=True), rejected=rejected)
