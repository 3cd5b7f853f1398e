"""The usefulness gate: two comparisons, both of which must pass.

1. **Same run (harm):** does the curated synthetic data make the classifier worse than the real rows
   alone? macro-F1 of (real + curated) minus macro-F1 of (real only), both trained in this run and
   scored on the same real holdout (the paired bootstrap CI of that difference comes from
   `evaluation/usefulness.py`). This needs no earlier run, so it judges the first run too.
2. **Regression vs the last good run:** may this run be much less useful than the last run that passed?

Pure: it compares metric dicts. The asset turns the verdict into a blocking asset check, promotes the
report and publishes the evaluated curated_set version only when it passes, so a failed run never
becomes the baseline of the next and its data is never what `synth-assets export` writes.

The same-run rule, exactly (Δ = the point estimate on the whole holdout):
- when the holdout cannot judge (Δ not measured: no holdout, or a classifier could not be trained; or
  fewer than `harm_min_holdout_rows` holdout rows), Δ comes from the **seed cross-validation** instead
  (`evaluation/seed_cv.py`: out-of-fold macro-F1 over the seed train rows, real + curated minus real
  only, synthetic rows kept out of the folds whose held-out rows their prompt showed), provided it was
  measured on at least `harm_min_holdout_rows` seed rows (the same reason: one row moves it by ~1/n);
- not judged (passes, saying so) when neither can judge;
- **fails when Δ < -harm_tolerance**;
- passes otherwise. The paired 95% CI is shown next to Δ but does not decide.
With a usable holdout the holdout decides and the seed cross-validation is only shown (`seed_cv`).

Why the point estimate and not "the CI lies below 0": the real rows are what the user already has, the
synthetic rows are an optional addition, so the burden of proof is on them. On the holdouts this tool
is built for (tens of rows) the paired CI of Δ spans about ±0.1 (0.23-0.24 wide on the demo's 45-row
holdout, measured with real rows added as "synthetic"), so requiring a significant loss would wave
through the very case that motivated the gate (Δ = -0.041 on 45 rows, issue 9). Why a minimum
holdout size: one holdout row changing class moves macro-F1 by about 1/n, so below ~1/tolerance rows a
single row would decide the verdict; on 3 rows the comparison says nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

GATE_CHECK = "usefulness_gate"
GATE_METRIC = "usefulness_real_plus_curated_macro_f1"
REAL_METRIC = "usefulness_real_macro_f1"
DELTA_METRIC = "usefulness_real_plus_curated_delta_macro_f1"
HOLDOUT_METRIC = "seed_holdout_rows"
# the seed cross-validation (report keys): judges the same-run side when the holdout cannot
SEED_CV_METRIC = "seed_cv_real_plus_curated_macro_f1"
SEED_CV_REAL_METRIC = "seed_cv_real_macro_f1"
SEED_CV_DELTA_METRIC = "seed_cv_delta_macro_f1"
SEED_CV_ROWS_METRIC = "seed_cv_rows"
SEED_CV_METHOD_METRIC = "seed_cv_method"
# defaults of EvaluationSpec.harm_tolerance / harm_min_holdout_rows (a test keeps them equal)
DEFAULT_HARM_TOLERANCE = 0.03
DEFAULT_HARM_MIN_HOLDOUT_ROWS = 40
# float noise must not fail a run whose score equals the reference minus exactly the tolerance
_EPSILON = 1e-9
NAME = "macro-F1 (real + curated)"

Outcome = Literal["passed", "failed", "not judged"]


@dataclass(frozen=True)
class Comparison:
    """One side of the gate: `current` against `reference`, with `delta` = current - reference."""

    kind: Literal["same_run", "last_good"]
    outcome: Outcome
    summary: str
    current: float | None
    reference: float | None
    tolerance: float
    delta_ci: tuple[float, float] | None = None  # paired bootstrap 95% CI of delta (same run only)
    reference_run_id: str | None = None  # the last good run (last_good only)
    holdout_rows: int | None = None
    # what the same-run numbers come from: the holdout, or the seed cross-validation ("seed_cv")
    basis: Literal["holdout", "seed_cv"] = "holdout"
    seed_cv_rows: int | None = None  # seed rows the cross-validation predicted (seed_cv only)

    @property
    def passed(self) -> bool:
        return self.outcome != "failed"

    @property
    def delta(self) -> float | None:
        if self.current is None or self.reference is None:
            return None
        return self.current - self.reference

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta, "passed": self.passed}


@dataclass(frozen=True)
class GateVerdict:
    """Both comparisons; `summary` names the failed one(s) first, with their numbers."""

    passed: bool
    summary: str
    same_run: Comparison
    last_good: Comparison
    metric: str = GATE_METRIC
    # the seed cross-validation's comparison: `same_run` itself when it judged, else shown alongside
    # the holdout's ("not judged": the holdout decides, or too few seed rows); None when not measured
    seed_cv: Comparison | None = None

    # the regression side under its historical names (report table, export card, older callers)
    @property
    def current(self) -> float | None:
        return self.last_good.current

    @property
    def baseline(self) -> float | None:
        return self.last_good.reference

    @property
    def baseline_run_id(self) -> str | None:
        return self.last_good.reference_run_id

    @property
    def tolerance(self) -> float:
        return self.last_good.tolerance

    @property
    def drop(self) -> float | None:
        delta = self.last_good.delta
        return None if delta is None else -delta

    @property
    def failed_comparisons(self) -> list[str]:
        return [c.kind for c in (self.same_run, self.last_good) if not c.passed]

    @property
    def reason(self) -> str:
        """Why the gate decided as it did: the failed comparisons only when it failed ("FAILED: ..."),
        else the whole summary. What `publications.reason` keeps for the curated version."""
        failed = [c.summary for c in (self.same_run, self.last_good) if not c.passed]
        return "FAILED: " + "; ".join(failed) if failed else self.summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary,
            "metric": self.metric,
            "current": self.current,
            "baseline": self.baseline,
            "baseline_run_id": self.baseline_run_id,
            "tolerance": self.tolerance,
            "drop": self.drop,
            "failed_comparisons": self.failed_comparisons,
            "same_run": self.same_run.as_dict(),
            "last_good": self.last_good.as_dict(),
            "seed_cv": self.seed_cv.as_dict() if self.seed_cv else None,
        }


def _number(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _interval(metrics: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    low, high = _number(metrics, f"{key}_ci_low"), _number(metrics, f"{key}_ci_high")
    return (low, high) if low is not None and high is not None else None


def _holdout_comparison(
    current: Mapping[str, Any], harm_tolerance: float, min_holdout_rows: int
) -> tuple[Comparison, str | None]:
    """The same-run comparison on the holdout, and why the holdout cannot judge (None: it judged)."""
    with_synthetic, real = _number(current, GATE_METRIC), _number(current, REAL_METRIC)
    interval = _interval(current, DELTA_METRIC)
    rows = _number(current, HOLDOUT_METRIC)
    holdout = int(rows) if rows is not None else None

    def result(outcome: Outcome, summary: str) -> Comparison:
        return Comparison(
            "same_run", outcome, summary, with_synthetic, real, harm_tolerance, interval, None, holdout
        )

    if with_synthetic is None or real is None:
        return result(
            "not judged",
            "same run: real + curated vs real only not measured (no holdout, or a classifier could not be "
            "trained): cannot judge",
        ), "no holdout usefulness measured"
    delta = with_synthetic - real
    ci = f", paired 95% CI [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
    numbers = f"{NAME} {with_synthetic:.3f} vs real only {real:.3f} (Δ {delta:+.3f}{ci})"
    if holdout is not None and holdout < min_holdout_rows:
        return result(
            "not judged",
            f"same run: {numbers}; too few holdout rows to judge ({holdout} < {min_holdout_rows}: one row "
            f"moves macro-F1 by about {1 / max(holdout, 1):.2f})",
        ), f"only {holdout} holdout rows, fewer than {min_holdout_rows}"
    return result(*_harm_verdict("same run", numbers, delta, harm_tolerance)), None


def _harm_verdict(what: str, numbers: str, delta: float, harm_tolerance: float) -> tuple[Outcome, str]:
    """The rule itself: fail when Δ < -harm_tolerance (float noise aside)."""
    if delta < -harm_tolerance - _EPSILON:
        return "failed", (
            f"{what}: the curated data makes the classifier worse: {numbers}, a loss beyond the harm "
            f"tolerance {harm_tolerance:.3f}"
        )
    return "passed", f"{what}: {numbers}, within the harm tolerance {harm_tolerance:.3f}"


def seed_cv_comparison(
    current: Mapping[str, Any], harm_tolerance: float, min_rows: int, holdout_unusable: str | None
) -> Comparison | None:
    """real + curated against real only by cross-validation on the seed rows (None: not measured).

    Judges by the holdout's rule only when the holdout cannot (`holdout_unusable` says why) and at
    least `min_rows` seed rows were predicted; otherwise "not judged", saying why. Reads
    `seed_cv_real_plus_curated_macro_f1`, `seed_cv_real_macro_f1`, `seed_cv_delta_macro_f1_ci_low/high`,
    `seed_cv_rows` and `seed_cv_method`."""
    with_synthetic, real = _number(current, SEED_CV_METRIC), _number(current, SEED_CV_REAL_METRIC)
    if with_synthetic is None or real is None:
        return None
    interval = _interval(current, SEED_CV_DELTA_METRIC)
    counted = _number(current, SEED_CV_ROWS_METRIC)
    rows = int(counted) if counted is not None else 0
    method = current.get(SEED_CV_METHOD_METRIC) or "cross-validation"
    delta = with_synthetic - real
    ci = f", paired 95% CI [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
    numbers = f"{NAME} {with_synthetic:.3f} vs real only {real:.3f} (Δ {delta:+.3f}{ci})"
    what = f"same run, by seed cross-validation ({method} over {rows} seed rows"

    def result(outcome: Outcome, summary: str) -> Comparison:
        return Comparison(
            "same_run",
            outcome,
            summary,
            with_synthetic,
            real,
            harm_tolerance,
            interval,
            basis="seed_cv",
            seed_cv_rows=rows,
        )

    if holdout_unusable is None:
        return result("not judged", f"{what}): {numbers}; shown only, the holdout decides")
    if rows < min_rows:
        return result(
            "not judged",
            f"{what}): {numbers}; too few seed rows to judge ({rows} < {min_rows}: one row moves macro-F1 "
            f"by about {1 / max(rows, 1):.2f})",
        )
    return result(
        *_harm_verdict(
            f"{what}, as the holdout cannot judge: {holdout_unusable})", numbers, delta, harm_tolerance
        )
    )


def same_run_comparison(
    current: Mapping[str, Any], harm_tolerance: float, min_holdout_rows: int
) -> Comparison:
    """real + curated against real only, in this run (rule: module docstring): on the holdout, or, when
    the holdout cannot judge, by the seed cross-validation (`basis` says which).

    Reads `usefulness_real_plus_curated_macro_f1`, `usefulness_real_macro_f1`, the paired CI keys
    `usefulness_real_plus_curated_delta_macro_f1_ci_low/high` and `seed_holdout_rows`; for the seed
    cross-validation the keys of `seed_cv_comparison`."""
    return _same_run(current, harm_tolerance, min_holdout_rows)[0]


def _same_run(
    current: Mapping[str, Any], harm_tolerance: float, min_holdout_rows: int
) -> tuple[Comparison, Comparison | None]:
    """(the deciding same-run comparison, the seed cross-validation's comparison or None)."""
    holdout, unusable = _holdout_comparison(current, harm_tolerance, min_holdout_rows)
    seed_cv = seed_cv_comparison(current, harm_tolerance, min_holdout_rows, unusable)
    if unusable is None:
        return holdout, seed_cv
    if seed_cv is not None and seed_cv.outcome != "not judged":
        decided = replace(seed_cv, holdout_rows=holdout.holdout_rows)
        return decided, decided
    if seed_cv is None:
        note = "; no seed cross-validation to judge by either"
    else:
        note = "; " + seed_cv.summary.removeprefix("same run, ")
    return replace(holdout, summary=holdout.summary + note), seed_cv


def regression_comparison(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    tolerance: float,
    baseline_run_id: str | None = None,
) -> Comparison:
    """Fail when macro-F1 of real + curated drops more than `tolerance` below the last good run's.

    Not judged (saying why) when there is nothing to compare: no holdout in this run, no earlier good
    run, or a baseline that did not measure usefulness."""
    now = _number(current, GATE_METRIC)
    before = _number(baseline, GATE_METRIC)

    def result(outcome: Outcome, summary: str) -> Comparison:
        return Comparison("last_good", outcome, summary, now, before, tolerance, None, baseline_run_id)

    if now is None:
        return result("not judged", f"vs last good run: {NAME} not measured in this run: nothing to compare")
    if baseline is None:
        return result(
            "not judged",
            f"vs last good run: {NAME} = {now:.3f}; no earlier good run to compare with (first good run: "
            "if the gate passes, it becomes the baseline)",
        )
    if before is None:
        return result(
            "not judged", f"vs last good run: {NAME} = {now:.3f}; the last good run did not measure it"
        )
    drop = before - now
    if drop > tolerance + _EPSILON:
        return result(
            "failed",
            f"vs last good run: {NAME} fell from {before:.3f} to {now:.3f} (-{drop:.3f}), more than the "
            f"tolerance {tolerance:.3f} below the last good run {baseline_run_id or ''}".rstrip(),
        )
    return result(
        "passed",
        f"vs last good run: {NAME} = {now:.3f} ({now - before:+.3f} vs {before:.3f}, "
        f"tolerance {tolerance:.3f})",
    )


def usefulness_gate(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    tolerance: float,
    baseline_run_id: str | None = None,
    *,
    harm_tolerance: float = DEFAULT_HARM_TOLERANCE,
    harm_min_holdout_rows: int = DEFAULT_HARM_MIN_HOLDOUT_ROWS,
) -> GateVerdict:
    """Both comparisons on flat metric dicts (`build_report`'s `metrics`, `evaluation_history.metrics`).

    Passes only when neither fails; a comparison that cannot judge does not fail the gate, and the
    summary says so. `tolerance` is the regression tolerance (EvaluationSpec.usefulness_tolerance)."""
    same_run, seed_cv = _same_run(current, harm_tolerance, harm_min_holdout_rows)
    last_good = regression_comparison(current, baseline, tolerance, baseline_run_id)
    both = (same_run, last_good)
    failed = [c for c in both if not c.passed]
    # the failed comparison first, so a truncated summary (a log line, a UI cell) still names it
    ordered = failed + [c for c in both if c.passed]
    summary = ("FAILED: " if failed else "passed: ") + "; ".join(c.summary for c in ordered)
    return GateVerdict(not failed, summary, same_run, last_good, seed_cv=seed_cv)


@dataclass(frozen=True)
class PublicationDecision:
    """Whether the evaluated curated_set version becomes the published one, and a sentence saying so."""

    publish: bool
    published_run_id: str | None  # the published version after the decision (None: none)
    note: str  # "published: ..." or "held back: ..."

    @property
    def status(self) -> str:
        return "published" if self.publish else "held back"


def publication_decision(
    verdict: GateVerdict, evaluated_run_id: str | None, published_before: str | None
) -> PublicationDecision:
    """Publish the evaluated (staged) version exactly when the usefulness gate passed.

    A failed gate changes nothing: the previously published version, if any, stays what export
    writes and what readers see. Pure; the asset writes the decision with the report."""
    evaluated = evaluated_run_id or "?"
    if verdict.passed and evaluated_run_id:
        if published_before == evaluated_run_id:
            note = f"published: curated_set run {evaluated} stays the published version (gate passed again)"
        elif published_before:
            note = (
                f"published: curated_set run {evaluated} is now the published version (usefulness gate "
                f"passed); it replaces run {published_before}"
            )
        else:
            note = (
                f"published: curated_set run {evaluated} is the first published version (usefulness gate "
                "passed)"
            )
        return PublicationDecision(True, evaluated_run_id, note)
    failed = verdict.reason.removeprefix("FAILED: ")
    if published_before == evaluated_run_id:
        where = (
            f"run {evaluated} was published by an earlier evaluation and stays published (nothing newer "
            "passed its GX gate)"
        )
    elif published_before:
        where = f"curated_set run {published_before} stays the published version (what export writes)"
    else:
        where = "no curated_set version is published yet, so export has nothing to write"
    return PublicationDecision(
        False,
        published_before,
        f"held back: curated_set run {evaluated} failed the usefulness gate ({failed}); {where}",
    )
