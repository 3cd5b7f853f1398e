"""Usefulness from the seed rows alone: leakage-free cross-validation (`evaluation/seed_cv.py`).

Needs every seed train row: each one is held out in turn, and the lineage filter decides per fold
which curated rows may train."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synth_assets.evaluation.families.base import (
    EvaluationContext,
    FamilyResult,
    Figure,
    fmt_ci,
    fmt_signed_ci,
)
from synth_assets.evaluation.seed_cv import SeedCVResult, seed_cross_validation

if TYPE_CHECKING:
    from synth_assets.evaluation.report import EvaluationReport


def run_seed_cv(context: EvaluationContext) -> SeedCVResult:
    """Cross-validated usefulness on the seed train rows; a curated row's prompt lineage decides which
    folds may train on it (`seed_cv.py`)."""
    spec, train, curated = context.spec, context.train, context.inputs.curated
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
    shown = context.inputs.shown_seed_ids
    return seed_cross_validation(
        train["seed_id"].astype(str).tolist(),
        train["text"].tolist(),
        train["label"].tolist(),
        curated["text"].tolist(),
        curated["label"].tolist(),
        [shown.get(str(pid)) for pid in curated["prompt_id"]],
        seed=spec.random_seed,
        bootstrap_samples=spec.evaluation.bootstrap_samples,
    )


def seed_cv_metrics(result: SeedCVResult) -> dict[str, Any]:
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


class SeedCrossValidation:
    name = "seed_cv"
    decides_gate = True
    figures = (
        Figure("seed_cv_real_plus_curated_macro_f1", "seed cross-validation: macro-F1, real + curated", 1),
        Figure("seed_cv_real_macro_f1", "seed cross-validation: macro-F1, real only", 1),
        Figure("seed_cv_delta_macro_f1", "seed cross-validation: Δ macro-F1, real + curated vs real only", 1),
        Figure("seed_cv_delta_macro_f1_ci_low"),
        Figure("seed_cv_delta_macro_f1_ci_high"),
        Figure("seed_cv_rows"),
        Figure("seed_cv_kept_share"),
        Figure("seed_cv_seconds", volatile=True),
    )

    def compute(self, context: EvaluationContext) -> FamilyResult:
        result = run_seed_cv(context)
        notes = [f"seed cross-validation skipped: {result.note}"] if result.note else []
        if result.unknown_lineage_rows and result.method:
            notes.append(
                f"seed cross-validation: {result.unknown_lineage_rows} curated rows have no known prompt "
                "lineage (expanded_prompts.demo_ids), so no fold trained on them"
            )
        return FamilyResult(
            metrics=seed_cv_metrics(result),
            details={"seed_cv": result.__dict__},
            notes=notes,
            tables={"seed_cv": result},
        )

    def section(self, report: EvaluationReport, images: Mapping[str, str]) -> list[str]:
        """What the seed cross-validation is, and its numbers (the report's own words for users)."""
        result = report.seed_cv
        lines = [
            "## Usefulness from the seed alone (cross-validation)",
            "",
            "Most users have no holdout, only their labeled seed rows, so usefulness is also estimated "
            "from those alone: each seed train row is held out in turn and predicted by the same TF-IDF + "
            "logistic regression, trained (a) on the other seed rows and (b) on them plus the curated rows "
            "whose prompt never showed the held-out row (lineage: `expanded_prompts.demo_ids`; a synthetic "
            "paraphrase of the held-out row would otherwise inflate (b)). Macro-F1 of the pooled "
            "out-of-fold predictions; brackets: 95% bootstrap CIs over the seed rows, paired for Δ. When "
            "the holdout cannot judge (none, or fewer than `evaluation.harm_min_holdout_rows` rows), Δ "
            "decides the usefulness gate's same-run side; with a usable holdout it is shown only.",
            "",
        ]
        if result is None or result.method is None:
            note = result.note if result is not None else report.metrics.get("seed_cv_status")
            return [*lines, f"Skipped: {note or 'not measured'}.", ""]
        lines += [
            f"Method: {result.method} ({result.folds} folds over {result.seed_rows} seed rows, "
            f"{result.synthetic_rows} curated rows).",
            "",
            "| trained on | macro-F1 [95% CI] |",
            "|---|---|",
            f"| (a) real: the other seed rows | {fmt_ci(result.real_macro_f1, result.real_macro_f1_ci)} |",
            f"| (b) real + curated rows that never saw the held-out row | "
            f"{fmt_ci(result.real_plus_synthetic_macro_f1, result.real_plus_synthetic_macro_f1_ci)} |",
            f"| Δ = (b) - (a) | {fmt_signed_ci(result.delta_macro_f1, result.delta_macro_f1_ci)} |",
            "",
        ]
        used = (
            f"On average {result.kept_share:.0%} of the curated rows trained each fold's model (b); the "
            "others came from prompts that showed a held-out row."
            if result.kept_share is not None
            else "No curated row has a known prompt lineage, so (b) trained on seed rows only."
        )
        if result.unknown_lineage_rows:
            used += f" {result.unknown_lineage_rows} curated rows have no known prompt and trained no fold."
        seconds = f" It took {result.seconds:.1f} s." if result.seconds is not None else ""
        return [*lines, used + seconds, ""]


FAMILY = SeedCrossValidation()
