"""Metric families as units: the registry the report, the UI metadata and the dataset card are derived
from, and the Vendi score family on vectors with known answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from synth_assets import export
from synth_assets.defs import evaluation_report as asset_module
from synth_assets.evaluation import report
from synth_assets.evaluation.families import (
    FAMILIES,
    card_figures,
    figures,
    key_figures,
    ui_metrics,
    volatile_metrics,
    withheld_status,
)
from synth_assets.evaluation.families.base import EvaluationContext, FamilyResult, Figure
from synth_assets.evaluation.families.vendi import vendi_score

# the three lists kept by hand before the families existed (report.KEY_FIGURES, report.UI_METRICS,
# export.PREFERRED_FIGURES), copied from the code they replace: the derived ones must say the same
OLD_KEY_FIGURES = (
    ("usefulness_real_plus_curated_macro_f1", "usefulness: macro-F1, real + curated (gate)", 1),
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
OLD_UI_EXTRAS = {
    "prompts",
    "generated",
    "rejected",
    "distinct_1",
    "distinct_3",
    "vocab_size",
    "compression_ratio",
    "usefulness_real_accuracy",
    "usefulness_synthetic_accuracy",
    "usefulness_real_plus_curated_accuracy",
    "usefulness_real_plus_uncurated_accuracy",
    "usefulness_real_plus_curated_macro_f1_ci_low",
    "usefulness_real_plus_curated_macro_f1_ci_high",
    "seed_cv_delta_macro_f1_ci_low",
    "seed_cv_delta_macro_f1_ci_high",
    "seed_cv_rows",
    "seed_cv_kept_share",
    "seed_cv_seconds",
    "completion_tokens",
    "generation_seconds",
    "evaluation_seconds",
}
OLD_PREFERRED_FIGURES = (
    "usefulness_real_plus_curated_macro_f1",
    "usefulness_real_macro_f1",
    "usefulness_synthetic_macro_f1",
    "curated",
    "generated",
    "yield",
    "distinct_1",
    "distinct_2",
    "self_bleu",
    "mauve",
    "relevance",
    "label_agreement",
    "label_tvd",
)
VENDI_ROW = ("vendi_score", "Vendi score (effective number of distinct samples)", 1)


# ------------------------------------------------------------------------------------------ registry


def test_key_figures_ui_keys_and_card_figures_come_from_the_families() -> None:
    """The same names as the hand-kept lists, plus the Vendi family's, from one registry."""
    derived = key_figures()
    assert [row for row in derived if row != VENDI_ROW] == list(OLD_KEY_FIGURES)
    # the Vendi family is registered after diversity: its row follows diversity's
    assert derived.index(VENDI_ROW) == [k for k, _, _ in derived].index("embedding_distance") + 1
    assert derived == report.KEY_FIGURES
    old_ui = {key for key, _, _ in OLD_KEY_FIGURES} | OLD_UI_EXTRAS
    assert set(ui_metrics()) == old_ui | {"vendi_score", "seed_vendi_score"}
    assert asset_module.UI_METRICS == report.UI_METRICS == ui_metrics()
    assert card_figures() == export.PREFERRED_FIGURES == OLD_PREFERRED_FIGURES
    assert (
        withheld_status()
        == report.WITHHELD_STATUS
        == {
            "mauve": "mauve_status",
            "length_ks": "length_ks_status",
            "length_ks_pvalue": "length_ks_status",
            "centroid_distance": "centroid_distance_status",
        }
    )
    assert volatile_metrics() == {"evaluation_seconds", "seed_cv_seconds"}


def test_every_family_is_a_unit_with_a_name_figures_and_a_section() -> None:
    names = [family.name for family in FAMILIES]
    assert len(set(names)) == len(names)
    for family in FAMILIES:
        assert callable(family.compute) and callable(family.section), family.name
        assert all(isinstance(figure, Figure) for figure in family.figures), family.name
        assert all(figure.direction in (-1, 0, 1) for figure in family.figures), family.name
    # the families the usefulness gate reads lead the key figures
    assert [f.name for f in FAMILIES if f.decides_gate] == ["usefulness", "seed_cv"]
    assert key_figures()[0][0] == "usefulness_real_plus_curated_macro_f1"


class _Claims:
    """A family that declares a figure another family already declares."""

    name = "claims_curated"
    decides_gate = False
    figures = (Figure("curated", "curated rows again"),)

    def compute(self, context: EvaluationContext) -> FamilyResult:
        return FamilyResult(metrics={"curated": 0})

    def section(self, report: Any, images: Mapping[str, str]) -> list[str]:
        return []


def test_two_families_cannot_declare_the_same_figure_or_name() -> None:
    with pytest.raises(ValueError, match="declare the same figure twice: curated"):
        figures((*FAMILIES, _Claims()))
    renamed = _Claims()
    renamed.name = "counts"
    renamed.figures = ()
    with pytest.raises(ValueError, match="two metric families share a name"):
        figures((*FAMILIES, renamed))


# --------------------------------------------------------------------------------------------- Vendi


def _brute_force_vendi(x: np.ndarray) -> float:
    """The definition, literally: eigenvalues of the n x n cosine kernel over n."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(unit @ unit.T / len(x))
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def test_vendi_score_identical_rows_is_one_and_orthogonal_rows_is_n() -> None:
    row = np.zeros((1, 384), np.float32)
    row[0, 5] = 1.0
    assert vendi_score(np.repeat(row, 12, axis=0)) == pytest.approx(1.0)
    assert vendi_score(np.eye(7, 384, dtype=np.float32)) == pytest.approx(7.0)
    assert vendi_score(3.0 * np.eye(5, dtype=np.float32)) == pytest.approx(5.0)  # scale does not count
    assert vendi_score(np.zeros((0, 384), np.float32)) is None


def test_vendi_score_counts_clusters_and_matches_the_definition_beyond_d_rows() -> None:
    """More rows than dimensions takes the d x d path: 4 equal clusters of copies score 4, and random
    rows score what the n x n kernel says."""
    directions = np.eye(4, 8)
    clusters = np.repeat(directions, 250, axis=0)  # 1000 rows in 8 dimensions
    assert vendi_score(clusters) == pytest.approx(4.0)
    rng = np.random.default_rng(0)
    many = rng.normal(size=(400, 16))
    few = rng.normal(size=(10, 384))
    assert vendi_score(many) == pytest.approx(_brute_force_vendi(many), rel=1e-9)
    assert vendi_score(few) == pytest.approx(_brute_force_vendi(few), rel=1e-9)
    assert 1.0 < vendi_score(many) < 16.0  # at most the rank
