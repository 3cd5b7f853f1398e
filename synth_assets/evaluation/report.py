"""The evaluation report: counts per stage, yield, diversity, label balance requested vs realized."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from synth_assets.curation.rules import normalize_text
from synth_assets.generation.prompts import allocate_counts
from synth_assets.spec import GenerationSpec


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over a corpus (Li et al., 2016); 0 for no n-grams."""
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = normalize_text(text).split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def label_balance(spec: GenerationSpec, curated: pd.DataFrame) -> pd.DataFrame:
    """Requested vs realized share per label in the curated set."""
    requested = allocate_counts(spec.num_samples, spec.normalized_label_weights())
    realized = Counter(curated["label"])
    total_realized = max(len(curated), 1)
    rows = [
        {
            "label": label,
            "requested": want,
            "requested_share": want / spec.num_samples,
            "curated": realized.get(label, 0),
            "curated_share": realized.get(label, 0) / total_realized,
        }
        for label, want in zip(spec.labels, requested, strict=True)
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, Any]
    label_table: pd.DataFrame
    reject_reasons: dict[str, int]
    markdown: str


def build_report(
    spec: GenerationSpec,
    *,
    run_id: str,
    seed_rows: pd.DataFrame,
    prompts: pd.DataFrame,
    samples: pd.DataFrame,
    curated: pd.DataFrame,
    rejected: pd.DataFrame,
) -> EvaluationReport:
    train = seed_rows[seed_rows["split"] == "train"]
    holdout = seed_rows[seed_rows["split"] == "holdout"]
    reasons: Counter[str] = Counter()
    for encoded in rejected["reasons"]:
        reasons.update(json.loads(encoded))
    balance = label_balance(spec, curated)
    # total variation distance between requested and realized label shares
    label_tvd = 0.5 * float((balance["requested_share"] - balance["curated_share"]).abs().sum())
    completion_tokens = int(samples["completion_tokens"].sum()) if len(samples) else 0
    metrics: dict[str, Any] = {
        "seed_train_rows": len(train),
        "seed_holdout_rows": len(holdout),
        "prompts": len(prompts),
        "generated": len(samples),
        "curated": len(curated),
        "rejected": len(rejected),
        "yield": len(curated) / len(samples) if len(samples) else 0.0,
        "distinct_1": distinct_n(curated["text"], 1),
        "distinct_2": distinct_n(curated["text"], 2),
        "seed_distinct_2": distinct_n(train["text"], 2),
        "label_tvd": label_tvd,
        "completion_tokens": completion_tokens,
        "tokens_per_curated_sample": completion_tokens / len(curated) if len(curated) else None,
        "truncated_share": float((samples["finish_reason"] == "length").mean()) if len(samples) else 0.0,
    }
    markdown = render_markdown(spec, run_id, metrics, balance, dict(reasons), curated)
    return EvaluationReport(metrics, balance, dict(reasons), markdown)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def render_markdown(
    spec: GenerationSpec,
    run_id: str,
    metrics: dict[str, Any],
    balance: pd.DataFrame,
    reasons: dict[str, int],
    curated: pd.DataFrame,
) -> str:
    lines = [
        f"# Evaluation report: `{spec.name}`",
        "",
        f"Run `{run_id}` · model `{spec.generation.model}` · {spec.num_samples} prompts requested",
        "",
        "## Rows per stage",
        "",
        "| stage | rows |",
        "|---|---|",
        f"| seed_data (train / holdout) | {metrics['seed_train_rows']} / {metrics['seed_holdout_rows']} |",
        f"| expanded_prompts | {metrics['prompts']} |",
        f"| generated_samples | {metrics['generated']} |",
        f"| curated_set | {metrics['curated']} |",
        f"| rejected_samples | {metrics['rejected']} |",
        "",
        "## Key figures",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "yield",
        "distinct_1",
        "distinct_2",
        "seed_distinct_2",
        "label_tvd",
        "completion_tokens",
        "tokens_per_curated_sample",
        "truncated_share",
    ):
        lines.append(f"| {key} | {_fmt(metrics[key])} |")
    lines += [
        "",
        "## Label balance (requested vs curated)",
        "",
        balance.to_markdown(index=False, floatfmt=".3f"),
    ]
    lines += ["", "## Rejections by reason", ""]
    if reasons:
        lines += ["| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(reasons.items())]
    else:
        lines.append("No sample was rejected.")
    if len(curated):
        lines += ["", "## Curated samples (first 5)", ""]
        preview = curated[["label", "text"]].head(5).copy()
        preview["text"] = preview["text"].str.replace("\n", " ").str.slice(0, 160)
        lines.append(preview.to_markdown(index=False))
    return "\n".join(lines) + "\n"
