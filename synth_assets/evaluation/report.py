"""The evaluation report: every metric of a run, compared with the last good run, as Markdown.

`build_report` computes (pure: DataFrames in, numbers out; the embedding function is passed in),
`render_markdown` writes it up, `write_report` puts the Markdown and the plots in a folder next to
the DuckDB file. Metric families: counts and yield, diversity, fidelity to the real seed, relevance
and label faithfulness, usefulness (train on synthetic, test on real), bias, cost.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth_assets.evaluation import metrics as m
from synth_assets.evaluation.gate import GATE_METRIC, GateVerdict, usefulness_gate
from synth_assets.evaluation.inputs import BaselineRun, EvaluationInputs
from synth_assets.evaluation.seed_cv import SeedCVResult, seed_cross_validation
from synth_assets.evaluation.usefulness import CONFIGS, TrainingSet, UsefulnessResult, evaluate_usefulness
from synth_assets.spec import GenerationSpec, content_hash

Embedder = Callable[[Sequence[str]], np.ndarray]

# (metric, label, direction) of the key-figures table; direction +1: higher is better, -1: lower,
# 0: neither (a count or a size). The same keys are the top-level numbers the UI plots over time.
KEY_FIGURES: tuple[tuple[str, str, int], ...] = (
    (GATE_METRIC, "usefulness: macro-F1, real + curated (gate)", 1),
    ("usefulness_real_macro_f1", "usefulness: macro-F1, real only", 1),
    ("usefulness_synthetic_macro_f1", "usefulness: macro-F1, synthetic only", 1),
    ("usefulness_real_plus_uncurated_macro_f1", "usefulness: macro-F1, real + uncurated", 1),
    ("seed_cv_real_plus_curated_macro_f1", "seed cross-validation: macro-F1, real + curated", 1),
    ("seed_cv_real_macro_f1", "seed cross-validation: macro-F1, real only", 1),
    ("seed_cv_delta_macro_f1", "seed cross-validation: Δ macro-F1, real + curated vs real only", 1),
    ("curated", "curated rows", 0),
    ("yield", "yield (curated / generated)", 1),
    ("distinct_2", "distinct-2", 1),
    ("self_bleu", "self-BLEU", -1),
    ("embedding_distance", "mean pairwise embedding distance", 1),
    ("mauve", "MAUVE vs real", 1),
    ("length_ks", "length KS statistic vs real", -1),
    ("centroid_distance", "embedding centroid distance vs real", -1),
    ("relevance", "relevance to task and conditions", 1),
    ("label_agreement", "label agreement (real-seed classifier)", 1),
    ("label_tvd", "label TVD requested vs curated", -1),
    ("attribute_tvd_max", "worst attribute TVD requested vs curated", -1),
    ("tokens_per_curated_sample", "completion tokens per curated sample", -1),
)
# Top-level numeric metadata of the materialization, which the UI plots across runs: the key figures
# and a few more; every metric is still in the `metrics` JSON entry and in evaluation_history.
UI_METRICS: tuple[str, ...] = (
    *(key for key, _, _ in KEY_FIGURES),
    "prompts",
    "generated",
    "rejected",
    "distinct_1",
    "distinct_3",
    "vocab_size",
    "compression_ratio",
    *(f"usefulness_{name}_accuracy" for name, _ in CONFIGS),
    f"{GATE_METRIC}_ci_low",
    f"{GATE_METRIC}_ci_high",
    "seed_cv_delta_macro_f1_ci_low",
    "seed_cv_delta_macro_f1_ci_high",
    "seed_cv_rows",
    "seed_cv_kept_share",
    "seed_cv_seconds",
    "completion_tokens",
    "generation_seconds",
    "evaluation_seconds",
)
# wall-clock metrics change every run: kept out of the data version so an unchanged run is not "new"
VOLATILE_METRICS = {"evaluation_seconds", "seed_cv_seconds"}
# distribution scores withheld below a minimum row count: score -> the metric saying "too few rows: ..."
WITHHELD_STATUS = {
    "mauve": "mauve_status",
    "length_ks": "length_ks_status",
    "length_ks_pvalue": "length_ks_status",
    "centroid_distance": "centroid_distance_status",
}
PLOT_TITLES = {
    "label_balance": "Label balance",
    "attribute_balance": "Attribute balance",
    "lengths": "Length distributions",
    "embedding_map": "Embedding map (PCA)",
    "usefulness": "Usefulness",
}


@dataclass
class EvaluationReport:
    spec_name: str
    run_id: str
    model: str
    num_samples: int
    curated_run_id: str | None
    metrics: dict[str, Any]
    details: dict[str, Any]
    label_table: pd.DataFrame
    attribute_tables: dict[str, pd.DataFrame]
    diversity_table: pd.DataFrame
    usefulness: UsefulnessResult
    reject_reasons: dict[str, int]
    verdict: GateVerdict
    baseline: BaselineRun | None
    curated_preview: pd.DataFrame
    plot_data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    markdown: str = ""
    # minimum rows (per side) of each withheld score, to judge a baseline computed before the minimum
    size_minimums: dict[str, int] = field(default_factory=dict)
    # what happened to the evaluated curated_set version (set by the asset before the report is written)
    publication: str | None = None
    # usefulness from the seed rows alone (leakage-free cross-validation); None in reports built before
    seed_cv: SeedCVResult | None = None

    def numeric_metrics(self, keys: Sequence[str] | None = None) -> dict[str, float]:
        """Scalar metrics as floats rounded to 4 places (None and flags left out), all or only `keys`."""
        return {
            key: round(float(value), 4)  # readable in the UI; full precision stays in `metrics`
            for key, value in self.metrics.items()
            if (keys is None or key in keys)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }

    def withheld_metrics(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Scores not computed because a side had too few rows: key -> "too few rows: ..." (for the
        UI, which would otherwise show nothing, or a stale number, where a verdict used to be)."""
        return {
            key: str(self.metrics[status])
            for key, status in WITHHELD_STATUS.items()
            if (keys is None or key in keys) and self.metrics.get(key) is None and self.metrics.get(status)
        }

    def data_version(self) -> str:
        return content_hash({k: v for k, v in self.metrics.items() if k not in VOLATILE_METRICS})


# ------------------------------------------------------------------------------------------ compute


def _embed_all(embed: Embedder, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Embed every group in one call, each distinct text once."""
    unique = list(dict.fromkeys(text for texts in groups.values() for text in texts))
    vectors = embed(unique) if unique else np.zeros((0, 384), dtype=np.float32)
    index = {text: i for i, text in enumerate(unique)}
    width = vectors.shape[1] if vectors.ndim == 2 else 384
    return {
        name: (vectors[[index[t] for t in texts]] if texts else np.zeros((0, width), dtype=np.float32))
        for name, texts in groups.items()
    }


def _matched(texts: list[str], vectors: np.ndarray, size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """A fixed random subset of the real rows as large as the synthetic set: distinct-n, vocabulary
    and compression ratio depend on corpus size, so the real reference must not be larger."""
    pick = m.subsample_indices(len(texts), size or len(texts), seed)  # no synthetic rows: all real ones
    return [texts[i] for i in pick], vectors[pick]


def _diversity_rows(
    spec: GenerationSpec,
    curated: pd.DataFrame,
    curated_vectors: np.ndarray,
    train: pd.DataFrame,
    train_vectors: np.ndarray,
    samples: pd.DataFrame,
    sample_vectors: np.ndarray,
) -> pd.DataFrame:
    settings = {"max_pairwise": spec.evaluation.max_pairwise_samples, "seed": spec.random_seed}
    rows: list[dict[str, Any]] = []
    groups = ["all", *spec.labels]
    for label in groups:
        c_mask = np.ones(len(curated), bool) if label == "all" else (curated["label"] == label).to_numpy()
        t_mask = np.ones(len(train), bool) if label == "all" else (train["label"] == label).to_numpy()
        c_texts = curated["text"][c_mask].tolist()
        rows.append(
            {
                "set": "synthetic (curated)",
                "label": label,
                **m.diversity(c_texts, curated_vectors[c_mask], **settings),
            }
        )
        real_texts, real_vectors = _matched(
            train["text"][t_mask].tolist(), train_vectors[t_mask], len(c_texts), spec.random_seed
        )
        rows.append(
            {
                "set": "real train (size-matched)",
                "label": label,
                **m.diversity(real_texts, real_vectors, **settings),
            }
        )
    rows.append(
        {
            "set": "generated (uncurated)",
            "label": "all",
            **m.diversity(samples["text"].tolist(), sample_vectors, **settings),
        }
    )
    return pd.DataFrame(rows)


def _training_sets(train: pd.DataFrame, curated: pd.DataFrame, samples: pd.DataFrame) -> list[TrainingSet]:
    texts = {
        "real": (train["text"].tolist(), train["label"].tolist()),
        "synthetic": (curated["text"].tolist(), curated["label"].tolist()),
        "real_plus_curated": (
            train["text"].tolist() + curated["text"].tolist(),
            train["label"].tolist() + curated["label"].tolist(),
        ),
        "real_plus_uncurated": (
            train["text"].tolist() + samples["text"].tolist(),
            train["label"].tolist() + samples["label"].tolist(),
        ),
    }
    return [TrainingSet(name, description, *texts[name]) for name, description in CONFIGS]


def _usefulness_metrics(result: UsefulnessResult) -> dict[str, Any]:
    """Flat usefulness metrics; the same keys (None when not measured) every run, so history compares."""
    out: dict[str, Any] = {}
    measured = result.by_name()
    for name, _ in CONFIGS:
        config = measured.get(name)
        prefix = f"usefulness_{name}"
        out[f"{prefix}_accuracy"] = config.accuracy if config else None
        out[f"{prefix}_macro_f1"] = config.macro_f1 if config else None
        for metric in ("accuracy", "macro_f1"):
            interval = getattr(config, f"{metric}_ci") if config else None
            out[f"{prefix}_{metric}_ci_low"] = interval[0] if interval else None
            out[f"{prefix}_{metric}_ci_high"] = interval[1] if interval else None
        if name != "real":
            # the paired bootstrap of (this config - real only): the same-run side of the gate reads it
            delta_ci = config.delta_macro_f1_ci if config else None
            out[f"{prefix}_delta_macro_f1"] = config.delta_macro_f1 if config else None
            out[f"{prefix}_delta_macro_f1_ci_low"] = delta_ci[0] if delta_ci else None
            out[f"{prefix}_delta_macro_f1_ci_high"] = delta_ci[1] if delta_ci else None
    return out


def _seed_cv(
    spec: GenerationSpec, train: pd.DataFrame, curated: pd.DataFrame, shown_seed_ids: dict[str, list[str]]
) -> SeedCVResult:
    """Cross-validated usefulness on the seed train rows; a curated row's prompt lineage decides which
    folds may train on it (`seed_cv.py`)."""
    if spec.self_instruct is not None:
        # self-instruct draws each prompt's demos at generation time (from seed rows and earlier
        # samples, recorded in the sample's steps, not in expanded_prompts.demo_ids); a machine demo
        # carries the seed rows it was made from, so no fold is free of them
        return SeedCVResult(
            None,
            0,
            len(train),
            len(curated),
            note="self_instruct shows machine samples as demos, and those were made from seed rows "
            "themselves, so the leakage filter cannot tell which seed rows a curated row depends on",
        )
    return seed_cross_validation(
        train["seed_id"].astype(str).tolist(),
        train["text"].tolist(),
        train["label"].tolist(),
        curated["text"].tolist(),
        curated["label"].tolist(),
        [shown_seed_ids.get(str(pid)) for pid in curated["prompt_id"]],
        seed=spec.random_seed,
        bootstrap_samples=spec.evaluation.bootstrap_samples,
    )


def _seed_cv_metrics(result: SeedCVResult) -> dict[str, Any]:
    """Flat seed cross-validation metrics, the same keys every run (None when not measured); the
    gate's same-run side reads them when the holdout cannot judge."""
    out: dict[str, Any] = {
        "seed_cv_method": result.method,
        "seed_cv_rows": result.seed_rows,
        "seed_cv_folds": result.folds if result.method else None,
        "seed_cv_status": result.note,
    }
    for key, value, interval in (
        ("seed_cv_real_macro_f1", result.real_macro_f1, result.real_macro_f1_ci),
        (
            "seed_cv_real_plus_curated_macro_f1",
            result.real_plus_synthetic_macro_f1,
            result.real_plus_synthetic_macro_f1_ci,
        ),
        ("seed_cv_delta_macro_f1", result.delta_macro_f1, result.delta_macro_f1_ci),
    ):
        out[key] = value
        out[f"{key}_ci_low"] = interval[0] if interval else None
        out[f"{key}_ci_high"] = interval[1] if interval else None
    out |= {
        "seed_cv_kept_share": result.kept_share,
        "seed_cv_unknown_lineage_rows": result.unknown_lineage_rows,
        "seed_cv_seconds": round(result.seconds, 2) if result.seconds is not None else None,
    }
    return out


def build_report(
    spec: GenerationSpec,
    *,
    run_id: str,
    inputs: EvaluationInputs,
    embed: Embedder,
    baseline: BaselineRun | None = None,
) -> EvaluationReport:
    """Every metric of one run; the gate verdict against `baseline` (the last good run)."""
    started = time.perf_counter()
    seed = spec.random_seed
    notes = list(inputs.notes)
    seed_rows, samples, curated = inputs.seed_rows, inputs.samples, inputs.curated
    train = seed_rows[seed_rows["split"] == "train"].reset_index(drop=True)
    holdout = seed_rows[seed_rows["split"] == "holdout"].reset_index(drop=True)
    real = pd.concat([train, holdout], ignore_index=True)
    rejected = inputs.rejected
    attributes = m.prompt_attributes(inputs.prompts)

    def conditions(frame: pd.DataFrame) -> list[str]:
        return [
            m.condition_text(spec.task, str(label), attributes.get(str(pid), {}))
            for label, pid in zip(frame["label"], frame["prompt_id"], strict=True)
        ]

    vectors = _embed_all(
        embed,
        {
            "train": train["text"].tolist(),
            "holdout": holdout["text"].tolist(),
            "samples": samples["text"].tolist(),
            "curated": curated["text"].tolist(),
            "rejected": rejected["text"].tolist(),
            "curated_conditions": conditions(curated),
            "train_conditions": [m.condition_text(spec.task, str(label), {}) for label in train["label"]],
            "curated_label_conditions": [m.condition_text(spec.task, str(lb), {}) for lb in curated["label"]],
        },
    )
    real_vectors = np.concatenate([vectors["train"], vectors["holdout"]])

    # ---- counts, diversity
    metrics: dict[str, Any] = {
        "seed_train_rows": len(train),
        "seed_holdout_rows": len(holdout),
        "prompts": len(inputs.prompts),
        "generated": len(samples),
        "curated": len(curated),
        "rejected": len(rejected),
        "yield": len(curated) / len(samples) if len(samples) else 0.0,
        "truncated_share": float((samples["finish_reason"] == "length").mean()) if len(samples) else 0.0,
    }
    diversity_table = _diversity_rows(
        spec, curated, vectors["curated"], train, vectors["train"], samples, vectors["samples"]
    )
    overall = diversity_table[diversity_table["label"] == "all"].set_index("set")
    for key in (
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "self_bleu",
        "embedding_distance",
        "vocab_size",
        "compression_ratio",
    ):
        metrics[key] = overall.loc["synthetic (curated)", key]
        metrics[f"seed_{key}"] = overall.loc["real train (size-matched)", key]

    # ---- fidelity to the real seed (train + holdout: every real row we have)
    mauve = m.mauve_score(
        real_vectors,
        vectors["curated"],
        num_buckets=spec.evaluation.mauve_num_buckets,
        min_samples=spec.evaluation.mauve_min_samples,
        seed=seed,
    )
    distribution = m.distribution_scores(
        real["text"].tolist(),
        curated["text"].tolist(),
        real_vectors,
        vectors["curated"],
        min_rows=spec.evaluation.distribution_min_rows,
    )
    for note in (mauve.note, distribution["length_ks_status"], distribution["centroid_distance_status"]):
        if note:
            notes.append(note)
    real_words, curated_words = m.word_counts(real["text"]), m.word_counts(curated["text"])
    metrics |= {
        "mauve": mauve.score,
        "mauve_buckets": mauve.num_buckets,
        "mauve_status": mauve.note,
        **distribution,
        "real_mean_words": float(real_words.mean()) if len(real_words) else None,
        "synthetic_mean_words": float(curated_words.mean()) if len(curated_words) else None,
    }

    # ---- relevance and label faithfulness
    relevance = m.rowwise_cosine(vectors["curated"], vectors["curated_conditions"])
    seed_relevance = m.rowwise_cosine(vectors["train"], vectors["train_conditions"])
    metrics["relevance"] = float(relevance.mean()) if len(relevance) else None
    metrics["seed_relevance"] = float(seed_relevance.mean()) if len(seed_relevance) else None
    # real rows have no attribute values: compare them with synthetic rows on task + label alone
    label_relevance = m.rowwise_cosine(vectors["curated"], vectors["curated_label_conditions"])
    metrics["relevance_task_label"] = float(label_relevance.mean()) if len(label_relevance) else None
    judge = m.fit_label_judge(vectors["train"], train["label"].tolist(), seed)
    per_label_faithfulness: list[dict[str, Any]] = []
    if judge is None:
        notes.append("label agreement skipped: the real training seed has fewer than two labels")
        metrics |= {
            "label_agreement": None,
            "label_agreement_uncurated": None,
            "label_judge_holdout_accuracy": None,
        }
    else:
        curated_agrees = (
            judge.predict(vectors["curated"]) == curated["label"].to_numpy()
            if len(curated)
            else np.zeros(0, bool)
        )
        samples_agree = (
            judge.predict(vectors["samples"]) == samples["label"].to_numpy()
            if len(samples)
            else np.zeros(0, bool)
        )
        metrics["label_agreement"] = float(curated_agrees.mean()) if len(curated_agrees) else None
        metrics["label_agreement_uncurated"] = float(samples_agree.mean()) if len(samples_agree) else None
        metrics["label_judge_holdout_accuracy"] = (
            float((judge.predict(vectors["holdout"]) == holdout["label"].to_numpy()).mean())
            if len(holdout)
            else None
        )
        for label in spec.labels:
            mask = (curated["label"] == label).to_numpy()
            per_label_faithfulness.append(
                {
                    "label": label,
                    "curated": int(mask.sum()),
                    "relevance": float(relevance[mask].mean()) if mask.any() else None,
                    "label_agreement": float(curated_agrees[mask].mean()) if mask.any() else None,
                }
            )

    # ---- usefulness: train on (real +) synthetic, test on the real holdout
    usefulness = evaluate_usefulness(
        _training_sets(train, curated, samples),
        holdout["text"].tolist(),
        holdout["label"].tolist(),
        seed=seed,
        bootstrap_samples=spec.evaluation.bootstrap_samples,
    )
    if usefulness.note:
        notes.append(f"usefulness skipped: {usefulness.note}")
    for config in usefulness.configs:
        if config.note:
            notes.append(f"usefulness ({config.description}): {config.note}")
    metrics |= _usefulness_metrics(usefulness)

    # ---- usefulness from the seed alone: leakage-free cross-validation over the train rows
    seed_cv = _seed_cv(spec, train, curated, inputs.shown_seed_ids)
    if seed_cv.note:
        notes.append(f"seed cross-validation skipped: {seed_cv.note}")
    if seed_cv.unknown_lineage_rows and seed_cv.method:
        notes.append(
            f"seed cross-validation: {seed_cv.unknown_lineage_rows} curated rows have no known prompt "
            "lineage (expanded_prompts.demo_ids), so no fold trained on them"
        )
    metrics |= _seed_cv_metrics(seed_cv)

    # ---- bias: requested vs realized labels and attributes, yield per condition
    label_table = m.label_balance(spec, samples, curated)
    attribute_tables = m.attribute_balance(spec, inputs.prompts, samples, curated)
    metrics["label_tvd"] = m.table_tvd(label_table)
    attribute_tvds = {name: m.table_tvd(table) for name, table in attribute_tables.items()}
    for name, value in attribute_tvds.items():
        metrics[f"attribute_tvd_{name}"] = value
    metrics["attribute_tvd_max"] = max(attribute_tvds.values()) if attribute_tvds else None
    yields = [y for t in attribute_tables.values() for y in t["yield"] if y is not None and not pd.isna(y)]
    metrics["min_attribute_yield"] = min(yields) if yields else None

    # ---- cost
    completion = int(samples["completion_tokens"].sum()) if len(samples) else 0
    metrics |= {
        "prompt_tokens": int(samples["prompt_tokens"].sum()) if len(samples) else 0,
        "completion_tokens": completion,
        "tokens_per_curated_sample": completion / len(curated) if len(curated) else None,
        "generation_seconds": inputs.generation_seconds,
        "seconds_per_curated_sample": (
            inputs.generation_seconds / len(curated)
            if inputs.generation_seconds is not None and len(curated)
            else None
        ),
    }
    if inputs.generation_seconds is None:
        notes.append(
            "generation seconds: not recorded in generated_samples (no per-row time column) nor in its "
            "materialization metadata, so cost is in tokens only"
        )

    reasons: Counter[str] = Counter()
    for encoded in rejected["reasons"]:
        reasons.update(json.loads(encoded))

    verdict = usefulness_gate(
        metrics,
        baseline.metrics if baseline else None,
        spec.evaluation.usefulness_tolerance,
        baseline.run_id if baseline else None,
        harm_tolerance=spec.evaluation.harm_tolerance,
        harm_min_holdout_rows=spec.evaluation.harm_min_holdout_rows,
    )
    metrics["passed"] = verdict.passed
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 2)
    metrics = {key: m.finite_or_none(_plain(value)) for key, value in metrics.items()}

    details = {
        "diversity": _records(diversity_table),
        "labels": _records(label_table),
        "attributes": {name: _records(table) for name, table in attribute_tables.items()},
        "faithfulness_per_label": per_label_faithfulness,
        "usefulness": {
            "holdout_rows": usefulness.holdout_rows,
            "note": usefulness.note,
            "configs": [c.__dict__ for c in usefulness.configs],
        },
        "seed_cv": seed_cv.__dict__,
        "rejections": dict(reasons),
        "gate": verdict.as_dict(),
        "generation_seconds_source": inputs.generation_seconds_source,
        "curated_run_id": inputs.curated_run_id,
        "samples_run_id": inputs.samples_run_id,
        "notes": notes,
    }
    preview = curated[["label", "text"]].head(5).copy()
    preview["text"] = preview["text"].str.replace("\n", " ").str.slice(0, 160)
    return EvaluationReport(
        spec_name=spec.name,
        run_id=run_id,
        model=spec.generation.model,
        num_samples=spec.num_samples,
        curated_run_id=inputs.curated_run_id,
        metrics=metrics,
        details=json.loads(json.dumps(details, default=_plain)),
        label_table=label_table,
        attribute_tables=attribute_tables,
        diversity_table=diversity_table,
        usefulness=usefulness,
        reject_reasons=dict(reasons),
        verdict=verdict,
        baseline=baseline,
        curated_preview=preview,
        plot_data={
            "lengths": {
                "real": real_words,
                "curated": curated_words,
                "rejected": m.word_counts(rejected["text"]),
            },
            "embedding_map": _embedding_map(
                {
                    "real train": (vectors["train"], train["label"].tolist()),
                    "real holdout": (vectors["holdout"], holdout["label"].tolist()),
                    "synthetic curated": (vectors["curated"], curated["label"].tolist()),
                    "synthetic rejected": (vectors["rejected"], rejected["label"].tolist()),
                },
                seed,
            ),
        },
        notes=notes,
        seed_cv=seed_cv,
        size_minimums={
            "mauve": spec.evaluation.mauve_min_samples,
            "length_ks": spec.evaluation.distribution_min_rows,
            "length_ks_pvalue": spec.evaluation.distribution_min_rows,
            "centroid_distance": spec.evaluation.distribution_min_rows,
        },
    )


def _embedding_map(groups: dict[str, tuple[np.ndarray, list[str]]], seed: int) -> pd.DataFrame:
    """2-D PCA of all embeddings together (a fixed linear map: runs stay comparable, unlike t-SNE)."""
    frames = [(name, v, labels) for name, (v, labels) in groups.items() if len(v)]
    if sum(len(v) for _, v, _ in frames) < 3:
        return pd.DataFrame(columns=["x", "y", "group", "label"])
    from sklearn.decomposition import PCA

    stacked = np.concatenate([v for _, v, _ in frames])
    xy = PCA(n_components=2, random_state=seed).fit_transform(stacked)
    return pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "group": [name for name, v, _ in frames for _ in range(len(v))],
            "label": [label for _, _, labels in frames for label in labels],
        }
    )


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: m.finite_or_none(_plain(v)) for k, v in row.items()} for row in frame.to_dict("records")]


# ------------------------------------------------------------------------------------------- render


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _signed_ci(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else f"{value:+.3f}"


def _delta(now: Any, before: Any, direction: int) -> str:
    if not isinstance(now, int | float) or not isinstance(before, int | float):
        return "—"
    change = now - before
    if abs(change) < 1e-12:
        return "="
    arrow = "" if direction == 0 else (" ▲" if change * direction > 0 else " ▼")
    number = f"{change:+d}" if isinstance(change, int) else f"{change:+.3f}"
    return f"{number}{arrow}"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".3f") if len(frame) else "_no rows_"


def _withheld(metrics: dict[str, Any], key: str, minimums: dict[str, int]) -> str | None:
    """ "too few rows" when the score `key` was withheld, or (for a baseline from before the minimum
    existed) computed on fewer rows than the minimum now asks for; None when the number may be shown."""
    if key not in WITHHELD_STATUS:
        return None
    if metrics.get(key) is None:
        return m.TOO_FEW_ROWS if metrics.get(WITHHELD_STATUS[key]) else None
    minimum = minimums.get(key)
    real = (metrics.get("seed_train_rows") or 0) + (metrics.get("seed_holdout_rows") or 0)
    synthetic = metrics.get("curated")
    if minimum and isinstance(synthetic, int) and min(real, synthetic) < minimum:
        return m.TOO_FEW_ROWS
    return None


def _shown(metrics: dict[str, Any], key: str, minimums: dict[str, int], digits: int = 3) -> str:
    return _withheld(metrics, key, minimums) or _fmt(metrics.get(key), digits)


def _comparison_rows(verdict: GateVerdict) -> list[str]:
    """The gate's two comparisons as Markdown table rows, and the seed cross-validation when it was
    measured but did not decide (shown, "not judged")."""
    rows = []
    shown = [verdict.same_run]
    if verdict.seed_cv is not None and verdict.seed_cv is not verdict.same_run:
        shown.append(verdict.seed_cv)
    for c in (*shown, verdict.last_good):
        if c.kind == "same_run" and c.basis == "seed_cv":
            what = f"same run: vs real only (seed cross-validation over {c.seed_cv_rows} seed rows)"
            if c is not verdict.same_run:
                what = what[:-1] + "; shown, the holdout decides)"
            tolerance = f"harm ≤ {c.tolerance:.3f}"
        elif c.kind == "same_run":
            what = "same run: vs real only (paired bootstrap on the holdout)"
            tolerance = f"harm ≤ {c.tolerance:.3f}"
        else:
            what = f"vs last good run `{c.reference_run_id}`" if c.reference_run_id else "vs last good run"
            tolerance = f"drop ≤ {c.tolerance:.3f}"
        delta = "—" if c.delta is None else f"{c.delta:+.3f}"
        if c.delta is not None and c.delta_ci:
            delta += f" [{c.delta_ci[0]:+.3f}, {c.delta_ci[1]:+.3f}]"
        outcome = {"passed": "passed", "failed": "**FAILED**", "not judged": "not judged"}[c.outcome]
        rows.append(
            f"| {what} | {_fmt(c.current)} | {_fmt(c.reference)} | {delta} | {tolerance} | {outcome} |"
        )
    return rows


def _seed_cv_section(result: SeedCVResult | None, metrics: dict[str, Any]) -> list[str]:
    """What the seed cross-validation is, and its numbers (the report's own words for users)."""
    lines = [
        "## Usefulness from the seed alone (cross-validation)",
        "",
        "Most users have no holdout, only their labeled seed rows, so usefulness is also estimated from "
        "those alone: each seed train row is held out in turn and predicted by the same TF-IDF + logistic "
        "regression, trained (a) on the other seed rows and (b) on them plus the curated rows whose prompt "
        "never showed the held-out row (lineage: `expanded_prompts.demo_ids`; a synthetic paraphrase of "
        "the held-out row would otherwise inflate (b)). Macro-F1 of the pooled out-of-fold predictions; "
        "brackets: 95% bootstrap CIs over the seed rows, paired for Δ. When the holdout cannot judge (none, "
        "or fewer than `evaluation.harm_min_holdout_rows` rows), Δ decides the usefulness gate's same-run "
        "side; with a usable holdout it is shown only.",
        "",
    ]
    if result is None or result.method is None:
        note = result.note if result is not None else metrics.get("seed_cv_status")
        return [*lines, f"Skipped: {note or 'not measured'}.", ""]
    lines += [
        f"Method: {result.method} ({result.folds} folds over {result.seed_rows} seed rows, "
        f"{result.synthetic_rows} curated rows).",
        "",
        "| trained on | macro-F1 [95% CI] |",
        "|---|---|",
        f"| (a) real: the other seed rows | {_ci(result.real_macro_f1, result.real_macro_f1_ci)} |",
        f"| (b) real + curated rows that never saw the held-out row | "
        f"{_ci(result.real_plus_synthetic_macro_f1, result.real_plus_synthetic_macro_f1_ci)} |",
        f"| Δ = (b) - (a) | {_signed_ci(result.delta_macro_f1, result.delta_macro_f1_ci)} |",
        "",
    ]
    used = (
        f"On average {result.kept_share:.0%} of the curated rows trained each fold's model (b); the others "
        "came from prompts that showed a held-out row."
        if result.kept_share is not None
        else "No curated row has a known prompt lineage, so (b) trained on seed rows only."
    )
    if result.unknown_lineage_rows:
        used += f" {result.unknown_lineage_rows} curated rows have no known prompt and trained no fold."
    seconds = f" It took {result.seconds:.1f} s." if result.seconds is not None else ""
    return [*lines, used + seconds, ""]


def render_markdown(report: EvaluationReport, images: dict[str, str]) -> str:
    """The report as Markdown; `images` maps plot names to link targets (relative paths, data URIs)."""
    metrics, verdict, baseline = report.metrics, report.verdict, report.baseline
    minimums = report.size_minimums

    def image(name: str) -> list[str]:
        return [f"![{PLOT_TITLES[name]}]({images[name]})", ""] if name in images else []

    status = (
        "**Usefulness gate passed.**"
        if verdict.passed
        else "**Usefulness gate FAILED**: this report is not promoted, and the curated_set version it "
        "evaluated is not published (the last good report and the published curated_set stay current)."
    )
    lines = [
        f"# Evaluation report: `{report.spec_name}`",
        "",
        f"Run `{report.run_id}` · model `{report.model}` · {report.num_samples} prompts requested · "
        f"curated_set from run `{report.curated_run_id}`",
        "",
        status,
        "",
        verdict.summary,
        "",
        "| comparison | macro-F1, real + curated | reference | Δ [paired 95% CI] | tolerance | verdict |",
        "|---|---|---|---|---|---|",
        *_comparison_rows(verdict),
        "",
    ]
    if report.publication:
        lines += [f"**Publication:** {report.publication}", ""]
    if report.notes:
        lines += ["> **Notes**", ">"] + [f"> - {note}" for note in report.notes] + [""]
    against = (
        f"Deltas against the last good run `{baseline.run_id}`; ▲ better, ▼ worse."
        if baseline
        else "No earlier good run to compare with: this run sets the baseline."
    )
    lines += [
        "## Key figures",
        "",
        against,
        "",
        "| metric | this run | last good | Δ |",
        "|---|---|---|---|",
    ]
    for key, label, direction in KEY_FIGURES:
        now, before = metrics.get(key), (baseline.metrics.get(key) if baseline else None)
        shown_now = _shown(metrics, key, minimums)
        shown_before = _shown(baseline.metrics, key, minimums) if baseline else "n/a"
        # a score on too few rows is no verdict, so neither is its change
        withheld = shown_now == m.TOO_FEW_ROWS or shown_before == m.TOO_FEW_ROWS
        change = "—" if withheld else _delta(now, before, direction)
        lines.append(f"| {label} | {shown_now} | {shown_before} | {change} |")
    lines += [
        "",
        "## Rows per stage",
        "",
        "| stage | rows |",
        "|---|---|",
        f"| seed_data (train / holdout) | {metrics['seed_train_rows']} / {metrics['seed_holdout_rows']} |",
        f"| expanded_prompts | {metrics['prompts']} |",
        f"| generated_samples | {metrics['generated']} |",
        f"| curated_set | {metrics['curated']} (yield {_fmt(metrics['yield'])}) |",
        f"| rejected_samples | {metrics['rejected']} |",
        "",
        "## Usefulness (train on synthetic, test on real)",
        "",
    ]
    useful = report.usefulness
    if useful.note:
        lines += [f"Skipped: {useful.note}.", ""]
    else:
        lines += [
            f"TF-IDF (word 1-2 grams) + logistic regression (scikit-learn, fixed seed), tested on "
            f"{useful.holdout_rows} real held-out rows that generation never saw. Brackets: 95% bootstrap "
            f"CIs over the holdout rows; Δ: paired difference to *real only*.",
            "",
            "| trained on | rows | accuracy | macro-F1 | Δ macro-F1 vs real only | note |",
            "|---|---|---|---|---|---|",
        ]
        for c in useful.configs:
            delta = _ci(c.delta_macro_f1, c.delta_macro_f1_ci) if c.delta_macro_f1 is not None else "—"
            lines.append(
                f"| {c.description} | {c.train_rows} | {_ci(c.accuracy, c.accuracy_ci)} | "
                f"{_ci(c.macro_f1, c.macro_f1_ci)} | {delta} | {c.note or ''} |"
            )
        lines += ["", *image("usefulness")]
    lines += _seed_cv_section(report.seed_cv, metrics)
    lines += [
        "## Diversity",
        "",
        "distinct-n: unique / all word n-grams; self-BLEU (sacrebleu): mean BLEU of each text against the "
        "others (lower = more diverse); embedding distance: mean pairwise cosine distance (MiniLM); "
        "compression ratio: bytes / gzip bytes (lower = more diverse). The real reference is a random "
        "subset of the training seed as large as the synthetic set (all of it when smaller), since "
        "these numbers depend on size.",
        "",
        _table(report.diversity_table),
        "",
        "## Fidelity to the real seed",
        "",
        "| metric | value |",
        "|---|---|",
        f"| MAUVE (mauve-text on MiniLM embeddings, {_fmt(metrics['mauve_buckets'])} buckets; 1 = same "
        f"distribution) | {metrics.get('mauve_status') or _fmt(metrics['mauve'])} |",
        "| length KS statistic (scipy; words; 0 = same distribution) | "
        + (
            metrics.get("length_ks_status")
            or f"{_fmt(metrics['length_ks'])} (p = {_fmt(metrics['length_ks_pvalue'])})"
        )
        + " |",
        f"| mean words: real / synthetic | {_fmt(metrics['real_mean_words'], 1)} / "
        f"{_fmt(metrics['synthetic_mean_words'], 1)} |",
        "| embedding centroid distance (cosine; 0 = same centre) | "
        f"{metrics.get('centroid_distance_status') or _fmt(metrics['centroid_distance'])} |",
        "",
        "Real = training seed + holdout; synthetic = the curated set. A distribution score computed on "
        "too few rows is not a verdict (it cannot tell a one-label set from the real mix), so below "
        "`evaluation.mauve_min_samples` / `evaluation.distribution_min_rows` rows per side it says "
        '"too few rows" instead of a number.',
        "",
        *image("lengths"),
        *image("embedding_map"),
        "## Relevance and label faithfulness",
        "",
        "Relevance: cosine (MiniLM) between a sample and the text of its conditions (task, label, attribute "
        "values). MiniLM encodes topic more than sentiment, so it tells on-topic from off-topic, and a "
        "score far above the real rows' hints at samples that repeat the instructions. Label agreement: "
        "share of samples whose label a logistic regression on MiniLM embeddings, trained on the real "
        "training seed, predicts as the intended one.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| relevance, curated | {_fmt(metrics['relevance'])} |",
        f"| relevance, curated, to task + label only | {_fmt(metrics['relevance_task_label'])} |",
        f"| relevance, real train rows to task + label (reference) | {_fmt(metrics['seed_relevance'])} |",
        f"| label agreement, curated | {_fmt(metrics['label_agreement'])} |",
        f"| label agreement, all generated | {_fmt(metrics['label_agreement_uncurated'])} |",
        f"| the classifier's accuracy on the real holdout (how far to trust it) | "
        f"{_fmt(metrics['label_judge_holdout_accuracy'])} |",
        "",
    ]
    faithfulness = report.details.get("faithfulness_per_label") or []
    if faithfulness:
        lines += [_table(pd.DataFrame(faithfulness)), ""]
    lines += [
        "## Label balance (requested vs curated)",
        "",
        f"Total variation distance requested vs curated: {_fmt(metrics['label_tvd'])}.",
        "",
        _table(report.label_table),
        "",
        *image("label_balance"),
    ]
    if report.attribute_tables:
        lines += ["## Attribute balance and yield per condition", ""]
        for name, table in report.attribute_tables.items():
            lines += [
                f"### `{name}` (TVD requested vs curated: {_fmt(metrics.get(f'attribute_tvd_{name}'))})",
                "",
                _table(table),
                "",
            ]
        lines += image("attribute_balance")
    seconds = metrics.get("generation_seconds")
    lines += [
        "## Cost",
        "",
        "| metric | value |",
        "|---|---|",
        f"| prompt tokens | {metrics['prompt_tokens']} |",
        f"| completion tokens | {metrics['completion_tokens']} |",
        f"| completion tokens per curated sample | {_fmt(metrics['tokens_per_curated_sample'], 1)} |",
        f"| generation seconds | {_fmt(seconds, 1) if seconds is not None else 'not recorded'} |",
        f"| generation seconds per curated sample | {_fmt(metrics['seconds_per_curated_sample'], 2)} |",
        f"| evaluation seconds | {_fmt(metrics['evaluation_seconds'], 1)} |",
        "",
    ]
    source = report.details.get("generation_seconds_source")
    if source:
        lines += [f"Generation seconds: {source}.", ""]
    lines += ["## Rejections by reason", ""]
    if report.reject_reasons:
        lines += ["| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(report.reject_reasons.items())]
    else:
        lines.append("No sample was rejected.")
    if len(report.curated_preview):
        lines += ["", "## Curated samples (first 5)", "", report.curated_preview.to_markdown(index=False)]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class WrittenReport:
    path: Path  # <reports>/<spec>/<run_id>/report.md, links relative to its folder
    latest_path: Path  # <reports>/<spec>/report.md, the newest run's report (good or not)
    plots: dict[str, Path]
    markdown: str  # the per-run file's text (stored in DuckDB, printed by the CLI)
    ui_markdown: str  # for Dagster metadata: plots inlined as data URIs, or left out


def write_report(report: EvaluationReport, spec_folder: Path, *, inline_plots: bool) -> WrittenReport:
    """Plots and Markdown under `spec_folder/<run_id>/`, plus a copy of the Markdown (with links
    into the run folder) at `spec_folder/report.md`, so every run keeps its own plots."""
    from synth_assets.evaluation.plots import render_plots

    run_folder = spec_folder / report.run_id
    run_folder.mkdir(parents=True, exist_ok=True)
    plots = render_plots(report, run_folder)
    markdown = render_markdown(report, {name: path.name for name, path in plots.items()})
    path = run_folder / "report.md"
    path.write_text(markdown, encoding="utf-8")
    latest = spec_folder / "report.md"
    tmp = latest.with_suffix(".md.tmp")
    tmp.write_text(
        render_markdown(report, {name: f"{report.run_id}/{p.name}" for name, p in plots.items()}),
        encoding="utf-8",
    )
    shutil.move(tmp, latest)  # readers never see a half-written file
    if inline_plots:
        # the Dagster UI cannot reach files next to the DuckDB file, but renders data: image URIs
        uris = {
            name: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            for name, p in plots.items()
        }
        ui_markdown = render_markdown(report, uris)
    else:
        ui_markdown = render_markdown(report, {})
    report.markdown = markdown
    return WrittenReport(path, latest, plots, markdown, ui_markdown)
