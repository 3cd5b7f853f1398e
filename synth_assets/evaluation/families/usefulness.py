"""Usefulness: train on (real +) synthetic, test on the real holdout (`evaluation/usefulness.py`).

Needs every seed row: TF-IDF + logistic regression costs little per row, and the holdout is the
only real test set there is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure, fmt_ci, image
from synth_assets.evaluation.gate import GATE_METRIC
from synth_assets.evaluation.usefulness import CONFIGS, TrainingSet, UsefulnessResult, evaluate_usefulness

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


def training_sets(train: pd.DataFrame, curated: pd.DataFrame, samples: pd.DataFrame) -> list[TrainingSet]:
    """The four training sets of `CONFIGS`: real, synthetic, real + curated, real + uncurated."""
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


def usefulness_metrics(result: UsefulnessResult) -> dict[str, Any]:
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


class Usefulness:
    name = "usefulness"
    decides_gate = True
    figures = (
        Figure(GATE_METRIC, "usefulness: macro-F1, real + curated (gate)", 1, card=True),
        Figure("usefulness_real_macro_f1", "usefulness: macro-F1, real only", 1, card=True),
        Figure("usefulness_synthetic_macro_f1", "usefulness: macro-F1, synthetic only", 1, card=True),
        Figure("usefulness_real_plus_uncurated_macro_f1", "usefulness: macro-F1, real + uncurated", 1),
        *(Figure(f"usefulness_{name}_accuracy") for name, _ in CONFIGS),
        Figure(f"{GATE_METRIC}_ci_low"),
        Figure(f"{GATE_METRIC}_ci_high"),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        inputs = context.inputs
        result = evaluate_usefulness(
            training_sets(context.train, inputs.curated, inputs.samples),
            context.holdout["text"].tolist(),
            context.holdout["label"].tolist(),
            seed=context.seed,
            bootstrap_samples=context.spec.evaluation.bootstrap_samples,
        )
        notes = [f"usefulness skipped: {result.note}"] if result.note else []
        notes += [
            f"usefulness ({config.description}): {config.note}" for config in result.configs if config.note
        ]
        return FamilyResult(
            metrics=usefulness_metrics(result),
            details={
                "usefulness": {
                    "holdout_rows": result.holdout_rows,
                    "note": result.note,
                    "configs": [c.__dict__ for c in result.configs],
                }
            },
            notes=notes,
            tables={"usefulness": result},
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        lines = ["## Usefulness (train on synthetic, test on real)", ""]
        useful = report.usefulness
        if useful.note:
            return [*lines, f"Skipped: {useful.note}.", ""]
        lines += [
            f"TF-IDF (word 1-2 grams) + logistic regression (scikit-learn, fixed seed), tested on "
            f"{useful.holdout_rows} real held-out rows that generation never saw. Brackets: 95% bootstrap "
            f"CIs over the holdout rows; Δ: paired difference to *real only*.",
            "",
            "| trained on | rows | accuracy | macro-F1 | Δ macro-F1 vs real only | note |",
            "|---|---|---|---|---|---|",
        ]
        for c in useful.configs:
            delta = fmt_ci(c.delta_macro_f1, c.delta_macro_f1_ci) if c.delta_macro_f1 is not None else "—"
            lines.append(
                f"| {c.description} | {c.train_rows} | {fmt_ci(c.accuracy, c.accuracy_ci)} | "
                f"{fmt_ci(c.macro_f1, c.macro_f1_ci)} | {delta} | {c.note or ''} |"
            )
        return [*lines, "", *image("usefulness", images)]


FAMILY = Usefulness()
