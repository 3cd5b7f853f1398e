"""DuckDB layout: history keeps every version, only passing versions are promoted, writes are atomic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synth_assets.storage import Warehouse, stage_columns


def _curated(ids: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * len(ids) for column in stage_columns("curated_set")})
    frame["sample_id"] = ids
    frame["prompt_id"] = "p"
    frame["label"] = "positive"
    frame["text"] = [f"text {i}" for i in ids]
    frame["normalized_hash"] = ids
    return frame


def test_history_keeps_versions_and_promotion_is_gated(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "demo", "run1", _curated(["a", "b"]), promote=True)
    store.write_version("curated_set", "demo", "run2", _curated(["c"]), promote=False)
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a", "b"]
    assert store.read_version("curated_set", "demo", "run2")["sample_id"].tolist() == ["c"]
    store.write_version("curated_set", "demo", "run3", _curated(["d"]), promote=True)
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["d"]
    runs = store.query("SELECT DISTINCT run_id FROM curated_set_history ORDER BY run_id")
    assert runs["run_id"].tolist() == ["run1", "run2", "run3"]


def test_specs_do_not_touch_each_other(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "one", "r1", _curated(["a"]), promote=True)
    store.write_version("curated_set", "two", "r2", _curated(["b"]), promote=True)
    assert store.read_current("curated_set", "one")["sample_id"].tolist() == ["a"]


def test_failed_write_leaves_previous_version_intact(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("curated_set", "demo", "run1", _curated(["a"]), promote=True)
    bad_rejected = pd.DataFrame({"sample_id": ["x"]})  # lacks columns: the whole write must fail
    with pytest.raises(ValueError, match="lacks columns"):
        store.write_versions(
            {"curated_set": _curated(["z"]), "rejected_samples": bad_rejected}, "demo", "run2", promote=True
        )
    seed_rows = pd.DataFrame(
        {c: ["x"] for c in stage_columns("seed_data")} | {"source_row": ["not a number"]}
    )
    # curated_set is inserted first, then seed_data fails to cast: the transaction must roll back
    with pytest.raises(Exception, match=r"source_row|Could not convert|Conversion"):
        store.write_versions(
            {"curated_set": _curated(["z"]), "seed_data": seed_rows}, "demo", "run3", promote=True
        )
    assert store.read_current("curated_set", "demo")["sample_id"].tolist() == ["a"]
    assert store.query("SELECT count(*) AS n FROM curated_set_history")["n"].iloc[0] == 1


def test_read_only_query_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no DuckDB file yet"):
        Warehouse(tmp_path / "none.duckdb").read_only_query("SELECT 1")
