"""The usefulness regression gate: this run may not be much less useful than the last good run.

Pure: it compares two metric dicts. The asset turns the verdict into a blocking asset check and
promotes the report only when it passes, so a failed run never becomes the baseline of the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GATE_CHECK = "usefulness_gate"
GATE_METRIC = "usefulness_real_plus_curated_macro_f1"
# float noise must not fail a run whose score equals the baseline minus exactly the tolerance
_EPSILON = 1e-9


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    summary: str
    current: float | None
    baseline: float | None
    baseline_run_id: str | None
    tolerance: float
    metric: str = GATE_METRIC

    @property
    def drop(self) -> float | None:
        if self.current is None or self.baseline is None:
            return None
        return self.baseline - self.current

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
        }


def _number(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def usefulness_gate(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    tolerance: float,
    baseline_run_id: str | None = None,
) -> GateVerdict:
    """Fail when macro-F1 of real + curated drops more than `tolerance` below the baseline's.

    Passes (saying why) when there is nothing to compare: no holdout in this run, no earlier good
    run, or a baseline that did not measure usefulness."""
    now = _number(current, GATE_METRIC)
    before = _number(baseline, GATE_METRIC)
    name = "macro-F1 (real + curated)"

    def verdict(passed: bool, summary: str) -> GateVerdict:
        return GateVerdict(passed, summary, now, before, baseline_run_id, tolerance)

    if now is None:
        return verdict(True, f"{name} not measured in this run (no holdout or no model): nothing to gate")
    if baseline is None:
        return verdict(True, f"{name} = {now:.3f}; first good run, it becomes the baseline")
    if before is None:
        return verdict(True, f"{name} = {now:.3f}; the last good run did not measure it: nothing to compare")
    drop = before - now
    if drop > tolerance + _EPSILON:
        return verdict(
            False,
            f"{name} fell from {before:.3f} to {now:.3f} (-{drop:.3f}), more than the tolerance "
            f"{tolerance:.3f} below the last good run {baseline_run_id or ''}".rstrip(),
        )
    change = f"{now - before:+.3f}"
    return verdict(True, f"{name} = {now:.3f} ({change} vs last good run, tolerance {tolerance:.3f})")
