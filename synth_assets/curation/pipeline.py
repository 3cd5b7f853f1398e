"""The whole curation pass: generated samples in, curated rows (with scores) and rejected rows (with
every reason) out. Pure: no Dagster, no DuckDB; the asset reads the inputs and writes the outputs.

Order matters and is deliberate:
1. personal data is scrubbed first, so no later table (or detail string) ever holds it;
2. repairs: a chat lead-in ("Here is a positive review:") is cut off, and a truncated ending is
   trimmed to the last complete sentence, where what remains is long enough;
3. heuristics run on the resulting text;
4. embedding filters (relevance, label consistency) and the optional LLM judge;
5. duplicates last, so that the representative of a group of duplicates is a row that passed
   everything else whenever one exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from synth_assets.curation import reasons as R
from synth_assets.curation.dedup import (
    MinHasher,
    exact_duplicates,
    near_duplicates,
    near_matches_in,
    priority_order,
    semantic_duplicates,
    semantic_matches_in,
)
from synth_assets.curation.heuristics import (
    find_truncated,
    run_heuristics,
    strip_lead_ins,
    trim_to_last_sentence,
)
from synth_assets.curation.label_check import SeedLabelClassifier
from synth_assets.curation.label_fidelity import (
    LabelLikelihood,
    LikelihoodModel,
    classifier_fidelity,
    label_likelihood,
    likelihood_fidelity,
)
from synth_assets.curation.pii import scan, scrub
from synth_assets.curation.relevance import condition_texts, relevance_scores
from synth_assets.curation.text import hash_many, normalize_many
from synth_assets.spec import CurationSpec
from synth_assets.storage import stage_columns

if TYPE_CHECKING:
    from synth_assets.curation.judge import ChatModel
    from synth_assets.spec import GenerationSpec

Embed = Callable[[Sequence[str]], np.ndarray]
# Seed rows embedded for the label classifier and label fidelity: at most this many, a seeded sample
# stratified by label (all rows of a smaller seed, so small seeds behave as before). Why: embedding
# every seed row made curation grow with the seed. benchmarks/seed_scaling.py (48 samples, AMD EPYC,
# 2 cores, float32): curated_set 29.9 s at 1k seed rows, 150.1 s at 10k, nearly all of it
# all-MiniLM-L6-v2 over the seed; a logistic regression on 384-d embeddings gains little past a few
# hundred rows per label.
MAX_SEED_ROWS_EMBEDDED = 2000
# Semantic copies of a reference row (seed, earlier versions): past MAX_SEED_ROWS_EMBEDDED reference
# rows, only the rows lexically closest to each sample (TF-IDF cosine, this many per sample) are
# embedded; exact and MinHash near copies are still checked against every row.
LEXICAL_CANDIDATES = 32
DUPLICATE_REASONS = (R.EXACT_DUPLICATE, R.NEAR_DUPLICATE, R.SEMANTIC_DUPLICATE)


@dataclass(frozen=True)
class CurationContext:
    """What curation needs besides the samples: the spec's task, the seed rows, earlier versions,
    and the models. Filters whose input is missing are skipped and said so in `notes`."""

    task: str = ""
    labels: tuple[str, ...] = ()
    template: str | None = None
    random_seed: int = 0
    seed_rows: pd.DataFrame | None = None  # seed_data rows: seed_id, split, text, label
    previous: pd.DataFrame | None = None  # rows of earlier curated versions: sample_id, text, run_id
    embed: Embed | None = None
    judge_model: ChatModel | None = None
    # log p(texts | the spec's prompt for a label): the likelihood half of curation.label_fidelity
    label_likelihood: LabelLikelihood | None = None

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
        """`likelihood_model` (the local model) is needed only by label_fidelity likelihood / both."""
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
        )


@dataclass(frozen=True)
class CurationOutcome:
    curated: pd.DataFrame
    rejected: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # sample_id, kind, of, similarity
    pii_by_type: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def generated(self) -> int:
        return len(self.curated) + len(self.rejected)

    def reason_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(R.REASON_CODES, 0)
        for encoded in self.rejected["reasons"]:
            for reason in json.loads(encoded):
                counts[reason] = counts.get(reason, 0) + 1
        return counts

    def flag_counts(self) -> dict[str, int]:
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


def _prompt_lookup(samples: pd.DataFrame, prompts: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(full prompt texts, index of each sample's prompt in them or -1)."""
    if prompts is None or prompts.empty or "prompt_text" not in prompts.columns:
        return [], np.full(len(samples), -1, dtype=np.int64)
    system = (
        prompts["system_prompt"] if "system_prompt" in prompts.columns else pd.Series([""] * len(prompts))
    )
    # the system prompt is part of what the model saw, so copying it is echoing too
    texts = [
        f"{s}\n{p}" if isinstance(s, str) and s else str(p)
        for s, p in zip(system.tolist(), prompts["prompt_text"].tolist(), strict=True)
    ]
    position = {pid: i for i, pid in enumerate(prompts["prompt_id"].tolist())}
    index = np.asarray([position.get(pid, -1) for pid in samples["prompt_id"].tolist()], dtype=np.int64)
    return texts, index


def curate(
    samples: pd.DataFrame,
    prompts: pd.DataFrame,
    rules: CurationSpec,
    context: CurationContext | None = None,
) -> CurationOutcome:
    """Split generated samples into curated and rejected rows (both in their table's column order)."""
    context = context or CurationContext()
    if context.embed is not None:
        # seed rows are embedded for the classifier and for seed dedup; encode each text once
        context = replace(context, embed=_memoized(context.embed))
    n = len(samples)
    ids = samples["sample_id"].astype(str).tolist()
    original = samples["text"].fillna("").astype(str).tolist()
    intended = samples["label"].astype(str).tolist()
    findings = R.Findings(n)
    flags: list[list[str]] = [[] for _ in range(n)]
    notes: list[str] = []
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = round(timings.get(stage, 0.0) + now - clock[0], 3)
        clock[0] = now

    # 1. personal data: scrubbed in every mode, so rejected rows do not spread it either
    texts = list(original)
    pii_hits = np.zeros(n, dtype=np.int64)
    pii_by_type: dict[str, int] = {}
    if rules.pii != "off":
        found = scan(texts, rules.pii_types)
        pii_hits = found.counts
        pii_by_type = found.by_type()
        for row in np.flatnonzero(pii_hits).tolist():
            texts[row] = scrub(texts[row], found.hits[row])
            flags[row].append(R.FLAG_PII_SCRUBBED)
        if rules.pii == "drop":
            findings.add(R.PII, pii_hits > 0, lambda i: json.dumps(found.types_of(i), sort_keys=True))
    shown_text = list(texts)  # what rejected_samples stores: scrubbed, not trimmed
    lap("pii")

    # 2. repairs: a chat lead-in ("Here is a positive review:") is cut off, a truncated ending trimmed
    if rules.strip_lead_in:
        for row in strip_lead_ins(texts, rules.min_chars):
            flags[row].append(R.FLAG_LEAD_IN)

    finish = samples["finish_reason"].tolist() if "finish_reason" in samples.columns else None
    truncated, _ = find_truncated(pa.array(texts, type=pa.large_string()), finish)
    unrepaired = np.zeros(n, dtype=bool)
    if rules.truncated == "trim":
        for row in np.flatnonzero(truncated).tolist():
            trimmed = trim_to_last_sentence(texts[row], rules.min_chars)
            if trimmed is None:
                unrepaired[row] = True
            else:
                texts[row] = trimmed
                flags[row].append(R.FLAG_TRIMMED)
    elif rules.truncated == "drop":
        unrepaired = truncated

    # 3. heuristics
    normalized = normalize_many(texts)
    prompt_texts, prompt_of_row = _prompt_lookup(samples, prompts)
    run_heuristics(
        texts,
        normalized,
        findings,
        rules,
        prompt_texts=prompt_texts,
        prompt_of_row=prompt_of_row,
        truncated=unrepaired,
        template=context.template,
        labels=context.labels,
    )
    lap("heuristics")

    # 4. embedding filters
    if rules.seed_length_range is not None:
        _seed_length(texts, rules.seed_length_range, context, findings, notes)

    wants_embeddings = (
        rules.min_relevance is not None
        or rules.label_check != "off"
        or rules.label_fidelity in ("classifier", "both")
        or rules.semantic_duplicate_threshold is not None
    )
    embeddings: np.ndarray | None = None
    if wants_embeddings and context.embed is None:
        notes.append("relevance, label check and semantic dedup skipped: no embedding model given")
    elif wants_embeddings and context.embed is not None:
        embeddings = context.embed(texts) if n else np.zeros((0, 384), dtype=np.float32)

    relevance = np.full(n, np.nan)
    if embeddings is not None and rules.min_relevance is not None and prompts is not None and len(prompts):
        conditions = condition_texts(prompts, context.task, context.labels, rules.relevance_text)
        relevance = relevance_scores(embeddings, samples["prompt_id"].tolist(), conditions, context.embed)
        threshold = rules.min_relevance
        sample_prompts = samples["prompt_id"].tolist()
        findings.add(
            R.IRRELEVANT,
            np.nan_to_num(relevance, nan=1.0) < threshold,
            lambda i: (
                f"cosine {relevance[i]:.2f} < {threshold} to '{conditions.get(sample_prompts[i], '')[:60]}'"
            ),
        )

    final_label = list(intended)
    predicted: list[str | None] = [None] * n
    label_confidence = np.full(n, np.nan)
    if embeddings is not None and rules.label_check != "off":
        classifier = _seed_classifier(context, notes)
        if classifier is not None:
            check = classifier.check(embeddings, intended, rules.label_min_confidence)
            predicted = list(check.predicted)
            label_confidence = check.intended_probability.copy()
            describe = lambda i: (  # noqa: E731
                f"classifier says '{check.predicted[i]}' ({check.confidence[i]:.2f}), "
                f"asked for '{intended[i]}'"
            )
            if rules.label_check == "drop":
                findings.add(R.LABEL_MISMATCH, check.mismatch, describe)
            for row in np.flatnonzero(check.mismatch).tolist():
                if rules.label_check == "flag":
                    flags[row].append(R.FLAG_LABEL_DOUBT)
                elif rules.label_check == "relabel":
                    final_label[row] = check.predicted[row]
                    label_confidence[row] = check.confidence[row]
                    flags[row].append(R.FLAG_RELABELED)

    if rules.label_fidelity != "off" and n:
        _label_fidelity(texts, intended, embeddings, rules, context, findings, notes)

    judge_score = np.full(n, np.nan)
    if rules.judge:
        if context.judge_model is None:
            notes.append("judge skipped: no chat model given")
        elif n:
            from synth_assets.curation.judge import judge_samples

            judge_score, _ = judge_samples(
                context.judge_model, texts, final_label, task=context.task, rubric=rules.judge_rubric
            )
            unscored = int(np.isnan(judge_score).sum())
            if unscored:
                notes.append(f"judge gave no parseable score for {unscored} of {n} samples (kept unscored)")
            if rules.judge_min_score is not None:
                minimum = rules.judge_min_score
                findings.add(
                    R.LOW_JUDGE_SCORE,
                    np.nan_to_num(judge_score, nan=5.0) < minimum,
                    lambda i: f"judge score {judge_score[i]:.0f} < {minimum}",
                )

    lap("embedding_filters_and_judge")

    # 5. duplicates, with clean rows as representatives
    order = priority_order(findings.any())
    hashes = hash_many(normalized)
    blank = np.asarray([not text for text in normalized], dtype=bool)
    exact_of = exact_duplicates(hashes, order, skip=blank)
    findings.add(R.EXACT_DUPLICATE, exact_of >= 0, lambda i: f"same normalized text as {ids[exact_of[i]]}")
    duplicate_rows: list[dict[str, Any]] = [
        {"sample_id": ids[i], "kind": R.EXACT_DUPLICATE, "duplicate_of": ids[exact_of[i]], "similarity": 1.0}
        for i in np.flatnonzero(exact_of >= 0).tolist()
    ]
    lap("dedup_exact")
    signatures = None
    hasher = MinHasher(num_perm=rules.minhash_num_perm, shingle_size=rules.shingle_size)
    if rules.near_duplicate_threshold is not None:
        signatures = hasher.signatures(normalized)
        near_of, jaccard = near_duplicates(
            signatures, order, rules.near_duplicate_threshold, skip=blank | (exact_of >= 0)
        )
        findings.add(
            R.NEAR_DUPLICATE, near_of >= 0, lambda i: f"Jaccard ~{jaccard[i]:.2f} with {ids[near_of[i]]}"
        )
        duplicate_rows += [
            {
                "sample_id": ids[i],
                "kind": R.NEAR_DUPLICATE,
                "duplicate_of": ids[near_of[i]],
                "similarity": jaccard[i],
            }
            for i in np.flatnonzero(near_of >= 0).tolist()
        ]
    else:
        near_of = np.full(n, -1)
    lap("dedup_near")
    nearest = np.full(n, np.nan)
    if embeddings is not None:
        skip = blank | (exact_of >= 0) | (near_of >= 0)
        threshold = (
            rules.semantic_duplicate_threshold if rules.semantic_duplicate_threshold is not None else 2.0
        )
        semantic_of, cosine, nearest = semantic_duplicates(embeddings, order, threshold, skip)
        findings.add(
            R.SEMANTIC_DUPLICATE,
            semantic_of >= 0,
            lambda i: f"cosine {cosine[i]:.3f} with {ids[semantic_of[i]]}",
        )
        duplicate_rows += [
            {
                "sample_id": ids[i],
                "kind": R.SEMANTIC_DUPLICATE,
                "duplicate_of": ids[semantic_of[i]],
                "similarity": cosine[i],
            }
            for i in np.flatnonzero(semantic_of >= 0).tolist()
        ]

    lap("dedup_semantic")
    references: list[tuple[str, pd.DataFrame | None, str]] = []
    if rules.dedup_against_seed:
        references.append((R.COPIES_SEED, _seed_reference(context.seed_rows), "seed row"))
    if rules.dedup_against_previous_versions:
        references.append(
            (R.SEEN_IN_PREVIOUS_VERSION, _previous_reference(context.previous, ids), "curated row")
        )
    for reason, reference, noun in references:
        if reference is None or reference.empty:
            continue
        _match_reference(
            reason, noun, reference, rules, findings, normalized, hashes, blank, signatures, hasher,
            embeddings, context.embed,
        )  # fmt: skip

    lap("dedup_references")
    outcome = _assemble(
        samples, ids, texts, shown_text, intended, final_label, predicted, label_confidence, relevance,
        nearest, judge_score, pii_hits, flags, hashes, findings, duplicate_rows, pii_by_type, notes,
    )  # fmt: skip
    lap("assemble")
    return replace(outcome, timings=timings)


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


def _seed_classifier(context: CurationContext, notes: list[str]) -> SeedLabelClassifier | None:
    seed = context.seed_rows
    if seed is None or seed.empty or context.embed is None:
        notes.append("label check skipped: no seed rows given")
        return None
    train = bounded_sample(_seed_train(context), MAX_SEED_ROWS_EMBEDDED, context.random_seed)
    classifier = SeedLabelClassifier.fit(
        context.embed(train["text"].astype(str).tolist()),
        train["label"].astype(str).tolist(),
        context.random_seed,
    )
    if classifier is None:
        notes.append("label check skipped: the seed train split needs 2+ labels with 2+ rows each")
    return classifier


def bounded_sample(rows: pd.DataFrame, limit: int, random_seed: int, by: str = "label") -> pd.DataFrame:
    """At most about `limit` of `rows` (all of them when there are no more), drawn with `random_seed`,
    each value of column `by` keeping its share and at least 2 rows (a classifier needs 2 per label).
    Rows keep their original order."""
    if len(rows) <= limit:
        return rows
    share = limit / len(rows)
    parts = [
        group.sample(n=min(len(group), max(2, round(len(group) * share))), random_state=random_seed)
        for _, group in rows.groupby(rows[by].astype(str), sort=True)
    ]
    return pd.concat(parts).sort_index()


def lexical_candidates(queries: Sequence[str], reference: Sequence[str], per_query: int) -> np.ndarray:
    """Sorted indices of the reference texts among the `per_query` closest to any query by TF-IDF
    cosine (scikit-learn), so only those need embedding. All indices when TF-IDF finds no words."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(reference) <= per_query:
        return np.arange(len(reference))
    try:
        vectorizer = TfidfVectorizer(sublinear_tf=True).fit(reference)
    except ValueError:  # no word in any reference text: nothing lexical to rank by
        return np.arange(len(reference))
    scores = (vectorizer.transform(queries) @ vectorizer.transform(reference).T).toarray()
    top = np.argpartition(-scores, per_query - 1, axis=1)[:, :per_query]
    return np.unique(top)


def _seed_train(context: CurationContext) -> pd.DataFrame | None:
    seed = context.seed_rows
    if seed is None or seed.empty:
        return None
    return seed[seed["split"] == "train"] if "split" in seed.columns else seed


def _seed_length(
    texts: list[str],
    quantiles: tuple[float, float],
    context: CurationContext,
    findings: R.Findings,
    notes: list[str],
) -> None:
    """Match the seed's shape: word counts outside the given quantiles of the seed rows' counts."""
    train = _seed_train(context)
    if train is None:
        notes.append("seed_length_range skipped: no seed rows given")
        return
    seed_words = np.asarray([len(str(t).split()) for t in train["text"]], dtype=float)
    low, high = (float(np.quantile(seed_words, q)) for q in quantiles)
    words = np.asarray([len(t.split()) for t in texts], dtype=float)
    findings.add(
        R.OFF_SEED_LENGTH,
        (words < low) | (words > high),
        lambda i: f"{words[i]:.0f} words, seed range {low:.0f}-{high:.0f}",
    )


def _label_fidelity(
    texts: list[str],
    intended: list[str],
    embeddings: np.ndarray | None,
    rules: CurationSpec,
    context: CurationContext,
    findings: R.Findings,
    notes: list[str],
) -> None:
    """curation.label_fidelity: the classifier and/or likelihood margins, thresholds from the seed."""
    train = _seed_train(context)
    if train is None:
        notes.append("label fidelity skipped: no seed rows given")
        return
    seed_texts = train["text"].astype(str).tolist()
    seed_labels = train["label"].astype(str).tolist()
    embedded = bounded_sample(train, MAX_SEED_ROWS_EMBEDDED, context.random_seed)
    recall = rules.label_fidelity_recall
    if rules.label_fidelity in ("classifier", "both"):
        verdict = None
        if embeddings is not None and context.embed is not None:
            verdict = classifier_fidelity(
                context.embed(embedded["text"].astype(str).tolist()),
                embedded["label"].astype(str).tolist(),
                embeddings,
                intended,
                recall,
                context.random_seed,
            )
        if verdict is None:
            notes.append("label fidelity (classifier) skipped: needs embeddings and 2+ seed rows per label")
        else:
            findings.add(
                R.LOW_LABEL_FIDELITY,
                verdict.low,
                lambda i: f"classifier margin {verdict.margin[i]:+.2f} < {verdict.threshold[i]:+.2f}",
            )
    if rules.label_fidelity in ("likelihood", "both"):
        if context.label_likelihood is None:
            notes.append("label fidelity (likelihood) skipped: no local model given")
            return
        labels = list(context.labels) or sorted(set(seed_labels))
        verdict_l = likelihood_fidelity(
            context.label_likelihood, labels, seed_texts, seed_labels, texts, intended, recall
        )
        findings.add(
            R.LOW_LABEL_FIDELITY,
            verdict_l.low,
            lambda i: f"likelihood margin {verdict_l.margin[i]:+.1f} nats < {verdict_l.threshold[i]:+.1f}",
        )


def _seed_reference(seed_rows: pd.DataFrame | None) -> pd.DataFrame | None:
    # holdout rows too: a sample copying one would leak the evaluation set into training data
    if seed_rows is None or seed_rows.empty:
        return None
    ids = seed_rows["seed_id"] if "seed_id" in seed_rows.columns else seed_rows.index.astype(str)
    return pd.DataFrame({"ref_id": ids.astype(str).tolist(), "text": seed_rows["text"].astype(str).tolist()})


def _previous_reference(previous: pd.DataFrame | None, current_ids: list[str]) -> pd.DataFrame | None:
    # the same sample re-curated (same id: same prompt, model, parameters and seed) is not a duplicate
    # of itself; otherwise a re-materialization would reject its own rows
    if previous is None or previous.empty:
        return None
    fresh = previous[~previous["sample_id"].astype(str).isin(set(current_ids))]
    fresh = fresh.drop_duplicates(subset=["text"])
    run = (
        fresh["run_id"].astype(str)
        if "run_id" in fresh.columns
        else pd.Series([""] * len(fresh), index=fresh.index)
    )
    return pd.DataFrame(
        {
            "ref_id": [
                f"{sid} (run {r[:8]})" if r else sid for sid, r in zip(fresh["sample_id"], run, strict=True)
            ],
            "text": fresh["text"].astype(str).tolist(),
        }
    )


def _match_reference(
    reason: str,
    noun: str,
    reference: pd.DataFrame,
    rules: CurationSpec,
    findings: R.Findings,
    normalized: list[str],
    hashes: list[str],
    blank: np.ndarray,
    signatures: np.ndarray | None,
    hasher: MinHasher,
    embeddings: np.ndarray | None,
    embed: Embed | None,
) -> None:
    """Flag rows that duplicate any reference row: exact, else near, else semantic (strongest wins)."""
    ref_ids = reference["ref_id"].tolist()
    ref_normalized = normalize_many(reference["text"].tolist())
    by_hash: dict[str, int] = {}
    for i, digest in enumerate(hash_many(ref_normalized)):
        if ref_normalized[i]:
            by_hash.setdefault(digest, i)
    exact = np.asarray([-1 if blank[i] else by_hash.get(h, -1) for i, h in enumerate(hashes)], dtype=np.int64)
    details: dict[int, str] = {i: f"same text as {noun} {ref_ids[j]}" for i, j in enumerate(exact) if j >= 0}
    found = exact >= 0
    if signatures is not None and rules.near_duplicate_threshold is not None:
        match, jaccard = near_matches_in(
            signatures, hasher.signatures(ref_normalized), rules.near_duplicate_threshold, skip=blank | found
        )
        details |= {
            i: f"Jaccard ~{jaccard[i]:.2f} with {noun} {ref_ids[j]}" for i, j in enumerate(match) if j >= 0
        }
        found |= match >= 0
    if embeddings is not None and embed is not None and rules.semantic_duplicate_threshold is not None:
        ref_texts = reference["text"].tolist()
        rows = (
            lexical_candidates(normalized, ref_normalized, LEXICAL_CANDIDATES)
            if len(ref_texts) > MAX_SEED_ROWS_EMBEDDED
            else np.arange(len(ref_texts))
        )
        match, cosine = semantic_matches_in(
            embeddings,
            embed([ref_texts[j] for j in rows]),
            rules.semantic_duplicate_threshold,
            skip=blank | found,
        )
        match = np.where(match >= 0, rows[np.maximum(match, 0)], -1)
        details |= {
            i: f"cosine {cosine[i]:.3f} with {noun} {ref_ids[j]}" for i, j in enumerate(match) if j >= 0
        }
        found |= match >= 0
    findings.add(reason, found, lambda i: details[i])


def _assemble(
    samples: pd.DataFrame,
    ids: list[str],
    texts: list[str],
    shown_text: list[str],
    intended: list[str],
    final_label: list[str],
    predicted: list[str | None],
    label_confidence: np.ndarray,
    relevance: np.ndarray,
    nearest: np.ndarray,
    judge_score: np.ndarray,
    pii_hits: np.ndarray,
    flags: list[list[str]],
    hashes: list[str],
    findings: R.Findings,
    duplicate_rows: list[dict[str, Any]],
    pii_by_type: dict[str, int],
    notes: list[str],
) -> CurationOutcome:
    reasons, details = findings.reasons_and_details()
    rejected_mask = np.asarray([bool(r) for r in reasons], dtype=bool)
    keep = np.flatnonzero(~rejected_mask)
    drop = np.flatnonzero(rejected_mask)
    prompt_ids = samples["prompt_id"].astype(str).to_numpy()
    scores = {
        "predicted_label": np.asarray(predicted, dtype=object),
        "label_confidence": label_confidence,
        "relevance": relevance,
        "nearest_similarity": nearest,
        "judge_score": judge_score,
        "pii_hits": pii_hits,
    }
    curated = pd.DataFrame(
        {
            "sample_id": np.asarray(ids, dtype=object)[keep],
            "prompt_id": prompt_ids[keep],
            "label": np.asarray(final_label, dtype=object)[keep],
            "text": np.asarray(texts, dtype=object)[keep],
            "normalized_hash": np.asarray(hashes, dtype=object)[keep],
            "intended_label": np.asarray(intended, dtype=object)[keep],
            **{name: values[keep] for name, values in scores.items()},
            "flags": [json.dumps(flags[i]) for i in keep.tolist()],
        }
    )
    rejected = pd.DataFrame(
        {
            "sample_id": np.asarray(ids, dtype=object)[drop],
            "prompt_id": prompt_ids[drop],
            "label": np.asarray(intended, dtype=object)[drop],
            "text": np.asarray(shown_text, dtype=object)[drop],
            "reasons": [json.dumps(reasons[i]) for i in drop.tolist()],
            "details": [json.dumps(details[i], sort_keys=True) for i in drop.tolist()],
            **{name: values[drop] for name, values in scores.items()},
        }
    )
    for frame in (curated, rejected):
        frame["pii_hits"] = frame["pii_hits"].astype("int64")
        for column in ("label_confidence", "relevance", "nearest_similarity", "judge_score"):
            frame[column] = frame[column].astype("float64").round(4)
    duplicates = pd.DataFrame(duplicate_rows, columns=["sample_id", "kind", "duplicate_of", "similarity"])
    return CurationOutcome(
        curated=curated[stage_columns("curated_set")].reset_index(drop=True),
        rejected=rejected[stage_columns("rejected_samples")].reset_index(drop=True),
        duplicates=duplicates,
        pii_by_type=pii_by_type,
        notes=notes,
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
