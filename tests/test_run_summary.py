"""The closing summary of `synth-assets run`: what was made, what was promoted, and why not, in words
read from the stored tables (a promoted version, a refused one, a run that failed half-way)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import write_tiny_spec

from synth_assets.cli import _current_note
from synth_assets.run_summary import summary_lines
from synth_assets.spec import GenerationSpec, load_spec
from synth_assets.storage import GateRecord, Publication, Warehouse, stage_columns


def _frame(stage: str, rows: int, prefix: str = "x") -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * rows for column in stage_columns(stage)})
    first = stage_columns(stage)[0]
    if first.endswith("_id"):
        frame[first] = [f"{prefix}{i}" for i in range(rows)]
    return frame


def _spec(tmp_path: Path, min_rows: int = 1) -> GenerationSpec:
    return load_spec(
        write_tiny_spec(
            tmp_path, num_samples=96, replacements={"curated_min_rows: 1": f"curated_min_rows: {min_rows}"}
        )
    )


def _upstream(store: Warehouse, spec: GenerationSpec, run: str, generated: int = 96) -> None:
    store.write_version("seed_data", spec.name, run, _frame("seed_data", 12), promote=True)
    store.write_version("expanded_prompts", spec.name, run, _frame("expanded_prompts", 96), promote=True)
    store.write_version(
        "generated_samples", spec.name, run, _frame("generated_samples", generated), promote=True,
        gate=GateRecord("generated_samples", "gx_gate", True, "all passed"),
    )  # fmt: skip


def _curated(
    store: Warehouse, spec: GenerationSpec, rejected: int, passed: bool = True, why: str = "ok"
) -> None:
    """run1's curated_set (41 rows) and rejected rows, staged with its GX verdict."""
    frames = {
        "curated_set": _frame("curated_set", 41),
        "rejected_samples": _frame("rejected_samples", rejected, "r"),
    }
    verdict = GateRecord("curated_set", "gx_gate", passed, why)
    store.write_versions(frames, spec.name, "run1", promote=False, gate=verdict)


def test_summary_of_a_promoted_version(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = Warehouse(tmp_path / "w.duckdb")
    _upstream(store, spec, "run1")
    _curated(store, spec, rejected=55)
    report = _frame("evaluation_report", 1).assign(passed=True)
    store.write_version(
        "evaluation_report", spec.name, "run1", report, promote=True,
        publication=Publication("curated_set", "run1", True, "passed"),
    )  # fmt: skip
    assert summary_lines(store, spec, "run1") == [
        "made in this run, and what became current:",
        "  seed_data: 12 rows, promoted",
        "  expanded_prompts: 96 rows, promoted",
        "  generated_samples: 96 rows, promoted",
        "  curated_set: 41 curated (+55 rejected), promoted",
        "  evaluation_report: report written, promoted",
        "see them: synth-assets report --spec tiny_reviews (this run's report, passed or not); "
        "every version stays in the <stage>_history tables",
    ]


def test_summary_of_a_version_refused_by_curated_min_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path, min_rows=48)
    store = Warehouse(tmp_path / "w.duckdb")
    _upstream(store, spec, "run1")
    failed = "curated_set suite: expect_table_row_count_to_be_between: observed 41 [gates.curated_min_rows]"
    _curated(store, spec, rejected=55, passed=False, why=failed)
    lines = summary_lines(store, spec, "run1")
    # what the issue asked for, word for word: what was made, and why it was not promoted
    assert "  curated_set: 41 curated (+55 rejected), not promoted: curated_min_rows 48" in lines
    assert "  evaluation_report: not made (the previous current version, if any, stays)" in lines
    assert lines[-1].startswith("see them: synth-assets report --spec tiny_reviews")
    assert _current_note(store, spec, "run1") == (
        "this run's versions of seed_data, expanded_prompts, generated_samples are now current; "
        "curated_set, evaluation_report keep their previous versions"
    )


def test_summary_of_a_version_held_back_by_the_usefulness_gate(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = Warehouse(tmp_path / "w.duckdb")
    _upstream(store, spec, "run1")
    _curated(store, spec, rejected=7)
    store.write_version(
        "evaluation_report", spec.name, "run1", _frame("evaluation_report", 1).assign(passed=False),
        promote=False, publication=Publication("curated_set", "run1", False, "FAILED: same run: worse"),
    )  # fmt: skip
    lines = summary_lines(store, spec, "run1")
    assert (
        "  curated_set: 41 curated (+7 rejected), not promoted: held back by the usefulness gate "
        "(why: the publication line)"
    ) in lines
    assert (
        "  evaluation_report: report written, not promoted: its usefulness gate failed "
        "(why: the publication line, or synth-assets report)"
    ) in lines


def test_a_run_that_failed_after_the_prompts_names_what_became_current(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = Warehouse(tmp_path / "w.duckdb")
    _upstream(store, spec, "run1")  # an earlier complete upstream
    store.write_version("seed_data", spec.name, "run2", _frame("seed_data", 12), promote=True)
    store.write_version("expanded_prompts", spec.name, "run2", _frame("expanded_prompts", 96), promote=True)
    assert _current_note(store, spec, "run2") == (
        "this run's versions of seed_data, expanded_prompts are now current; "
        "generated_samples, curated_set, evaluation_report keep their previous versions"
    )
    assert (
        _current_note(store, spec, "run-that-made-nothing") == "the previous promoted versions are unchanged"
    )
    lines = summary_lines(store, spec, "run2")
    assert "  generated_samples: not made (the previous current version, if any, stays)" in lines
