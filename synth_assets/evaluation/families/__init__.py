"""The registered metric families, in report order, and everything derived from them.

Adding a family: write `families/<name>.py` with a class satisfying `base.MetricFamily` and a
module-level `FAMILY`, then add it to `FAMILIES` below. The report's sections and key-figures table,
the Dagster UI's numeric metadata (`ui_metrics`), the dataset card's leading figures
(`card_figures`) and the data version's volatile keys all follow from this one list.
"""

from __future__ import annotations

from synth_assets.evaluation.families import (
    bias,
    cost,
    counts,
    diversity,
    fidelity,
    rejections,
    relevance,
    seed_cv,
    usefulness,
    vendi,
)
from synth_assets.evaluation.families.base import Figure, MetricFamily

# report order: each family's section follows the previous one's
FAMILIES: tuple[MetricFamily, ...] = (
    counts.FAMILY,
    usefulness.FAMILY,
    seed_cv.FAMILY,
    diversity.FAMILY,
    vendi.FAMILY,
    fidelity.FAMILY,
    relevance.FAMILY,
    bias.FAMILY,
    cost.FAMILY,
    rejections.FAMILY,
)


def figures(families: tuple[MetricFamily, ...] = FAMILIES) -> list[Figure]:
    """Every declared figure: the families the usefulness gate reads first (their numbers decide
    publication, so they lead the key-figures table and the card), then the others in report order."""
    ordered = [f for f in families if f.decides_gate] + [f for f in families if not f.decides_gate]
    found = [figure for family in ordered for figure in family.figures]
    keys = [figure.key for figure in found]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"metric families declare the same figure twice: {', '.join(duplicated)}")
    names = [family.name for family in families]
    if len(set(names)) != len(names):
        raise ValueError(f"two metric families share a name: {names}")
    return found


def key_figures(families: tuple[MetricFamily, ...] = FAMILIES) -> tuple[tuple[str, str, int], ...]:
    """(metric, label, direction) rows of the report's key-figures table."""
    return tuple((f.key, f.label, f.direction) for f in figures(families) if f.label)


def ui_metrics(families: tuple[MetricFamily, ...] = FAMILIES) -> tuple[str, ...]:
    """Metric keys shown as top-level numeric metadata of the materialization (plotted across runs)."""
    return tuple(f.key for f in figures(families) if f.ui)


def card_figures(families: tuple[MetricFamily, ...] = FAMILIES) -> tuple[str, ...]:
    """Metric keys the dataset card lists first (the other scalar metrics follow)."""
    return tuple(f.key for f in figures(families) if f.card)


def withheld_status(families: tuple[MetricFamily, ...] = FAMILIES) -> dict[str, str]:
    """Score -> the metric saying "too few rows: ..." when the score was withheld."""
    return {f.key: f.status for f in figures(families) if f.status}


def volatile_metrics(families: tuple[MetricFamily, ...] = FAMILIES) -> frozenset[str]:
    """Wall-clock metrics: they change every run, so they stay out of the report's data version."""
    return frozenset(f.key for f in figures(families) if f.volatile)
