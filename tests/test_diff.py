"""`diff_versions` on DataFrames (every cause), `load_diff` on a temp DuckDB, and the CLI; no Dagster."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_cli

from synth_assets import cli
from synth_assets.lineage.diff import (
    DEDUP_EARLIER,
    MODEL_OR_PARAMS,
    NEW_PROMPT,
    NO_LONGER_REJECTED,
    NOT_GENERATED,
    PROMPT_DROPPED,
    TEXT_CHANGED,
    RunVersion,
    curated_versions,
    diff_versions,
    format_diff,
    load_diff,
    newly_rejected,
)
from synth_assets.storage import Warehouse, stage_columns


def rows(stage: str, items: list[dict[str, Any]]) -> pd.DataFrame:
    columns = stage_columns(stage)
    return pd.DataFrame([{c: item.get(c) for c in columns} for item in items], columns=columns)


def curated(*pairs: tuple[str, str], text: str = "") -> pd.DataFrame:
    return rows(
        "curated_set",
        [
            {"sample_id": s, "prompt_id": p, "label": "positive", "text": text or f"text of {s}"}
            for s, p in pairs
        ],
    )


def rejected(*items: tuple[str, str, list[str], dict[str, str]]) -> pd.DataFrame:
    return rows(
        "rejected_samples",
        [
            {
                "sample_id": s,
                "prompt_id": p,
                "label": "positive",
                "text": f"text of {s}",
                # decoded, as the storage reads hand them over
                "reasons": reasons,
                "details": details,
            }
            for s, p, reasons, details in items
        ],
    )


def generations(*items: tuple[str, float, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "sample_id": s,
                "model_fingerprint": "tiny-fp",
                "backend": "local",
                "generation_params": {"temperature": t, "top_p": 0.95},
                "generation_seed": seed,
            }
            for s, t, seed in items
        ]
    )


def test_each_cause() -> None:
    before = RunVersion(
        "A",
        curated(
            ("s-keep", "p-keep"),
            ("s-temp", "p-temp"),
            ("s-strict", "p-strict"),
            ("s-gone", "p-gone"),
            ("s-dup", "p-dup"),
            ("s-fail", "p-fail"),
            ("s-regen", "p-regen"),
        ),
        rejected(
            ("s-loose", "p-loose", ["too_short"], {"too_short": "12 chars < 20"}),
            ("s-old", "p-retry", ["echoes_prompt"], {}),
        ),
        spec_fingerprint="f1",
    )
    after = RunVersion(
        "B",
        curated(
            ("s-keep", "p-keep"),
            ("s-temp2", "p-temp"),
            ("s-new", "p-new"),
            ("s-loose", "p-loose"),
            ("s-retry2", "p-retry"),
        ),
        rejected(
            ("s-strict", "p-strict", ["too_short"], {"too_short": "30 chars < 40"}),
            ("s-dup", "p-dup", ["seen_in_previous_version"], {"seen_in_previous_version": "curated row s-x"}),
            ("s-regen2", "p-regen", ["too_long"], {}),
        ),
        prompts=pd.DataFrame(
            {
                "prompt_id": [
                    "p-keep",
                    "p-temp",
                    "p-new",
                    "p-loose",
                    "p-retry",
                    "p-strict",
                    "p-dup",
                    "p-fail",
                    "p-regen",
                ]
            }
        ),
        spec_fingerprint="f2",
    )
    gens = generations(
        ("s-temp", 0.8, 1),
        ("s-temp2", 1.0, 1),
        ("s-old", 0.8, 5),
        ("s-retry2", 0.8, 6),
        ("s-regen", 0.8, 7),
        ("s-regen2", 0.9, 7),
    )
    result = diff_versions("demo", before, after, gens)
    by_sample = {c.sample_id: c for c in result.changes}
    assert by_sample["s-temp2"].change == "changed" and by_sample["s-temp2"].cause == MODEL_OR_PARAMS
    assert by_sample["s-temp2"].detail == "temperature 0.8 -> 1.0"
    assert by_sample["s-temp2"].previous_sample_id == "s-temp"
    assert by_sample["s-new"].cause == NEW_PROMPT
    assert by_sample["s-loose"].cause == NO_LONGER_REJECTED and "too_short" in by_sample["s-loose"].detail
    assert by_sample["s-retry2"].cause == MODEL_OR_PARAMS and "seed 5 -> 6" in by_sample["s-retry2"].detail
    assert by_sample["s-strict"].cause == newly_rejected(["too_short"]) == "newly rejected by too_short"
    assert "30 chars < 40" in by_sample["s-strict"].detail
    assert by_sample["s-gone"].cause == PROMPT_DROPPED
    assert by_sample["s-dup"].cause == DEDUP_EARLIER
    assert by_sample["s-fail"].cause == NOT_GENERATED
    assert by_sample["s-regen"].cause == "newly rejected by too_long"
    assert "regenerated as s-regen2 (temperature 0.8 -> 0.9)" in by_sample["s-regen"].detail
    assert "s-keep" not in by_sample
    assert (len(result.of("added")), len(result.of("removed")), len(result.of("changed"))) == (3, 5, 1)
    assert result.unchanged == 1 and result.spec_changed is True
    assert sum(result.summary().values()) == len(result.changes)
    assert result.summary()[MODEL_OR_PARAMS] == 2
    text = format_diff(result, before, after)
    assert "rows 7 -> 5: +3 added, -5 removed, ~1 changed, 1 unchanged" in text
    assert "by cause:" in text and "spec: changed between the runs (fingerprint f1 -> f2)" in text
    assert "~ s-temp -> s-temp2 [positive] model or parameter change: temperature 0.8 -> 1.0" in text


def test_duplicate_within_run_is_not_dedup_against_earlier_version() -> None:
    before = RunVersion("A", curated(("s-1", "p-1"), ("s-2", "p-2")), rejected())
    after = RunVersion(
        "B",
        curated(("s-1", "p-1")),
        rejected(("s-2", "p-2", ["exact_duplicate"], {"exact_duplicate": "same normalized text as s-9"})),
    )
    change = diff_versions("demo", before, after).changes[0]
    assert change.cause == "newly rejected by exact_duplicate"
    # ...but a duplicate of a row curated in an earlier version is
    cites_earlier = RunVersion(
        "B",
        curated(("s-1", "p-1")),
        rejected(("s-2", "p-2", ["exact_duplicate"], {"exact_duplicate": "same normalized text as s-0"})),
    )
    change = diff_versions("demo", before, cites_earlier, earlier_sample_ids={"s-0"}).changes[0]
    assert change.cause == DEDUP_EARLIER


def test_same_sample_new_text_and_identical_versions() -> None:
    before = RunVersion("A", curated(("s-1", "p-1"), text="old"), rejected())
    after = RunVersion("B", curated(("s-1", "p-1"), text="new"), rejected())
    changes = diff_versions("demo", before, after).changes
    assert [(c.change, c.cause) for c in changes] == [("changed", TEXT_CHANGED)]
    same = diff_versions("demo", before, before)
    assert same.changes == [] and same.unchanged == 1 and same.summary() == {}


@pytest.fixture
def store(tmp_path: Path) -> Warehouse:
    """Run r1, then r2 with a higher temperature (same prompts, new sample ids), a new prompt, and one
    sample now too short; r2 is the newest version."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    prompts = ["p-1", "p-2", "p-3"]
    for run, temperature, prompt_ids in (("r1-aaaa", 0.8, prompts[:2]), ("r2-bbbb", 1.0, prompts)):
        samples = [
            {
                "sample_id": f"s-{p}-{temperature}",
                "prompt_id": p,
                "label": "positive",
                "text": f"{p} at {temperature}",
                "model": "tiny",
                "model_fingerprint": "tiny-fp",
                "backend": "local",
                "generation_params": json.dumps({"temperature": temperature}),
                "generation_seed": 1,
            }
            for p in prompt_ids
        ]
        keep = samples if run.startswith("r1") else samples[1:]
        drop = (
            []
            if run.startswith("r1")
            else [
                {
                    **samples[0],
                    "reasons": json.dumps(["too_short"]),
                    "details": json.dumps({"too_short": "3 < 40"}),
                }
            ]
        )
        warehouse.write_versions(
            {
                "expanded_prompts": rows("expanded_prompts", [{"prompt_id": p} for p in prompt_ids]),
                "generated_samples": rows("generated_samples", samples),
                "curated_set": rows("curated_set", keep),
                "rejected_samples": rows("rejected_samples", drop),
            },
            "demo",
            run,
            promote=True,
        )
        warehouse.record_gate("demo", run, "curated_set", "gx_gate", True, "ok")
    return warehouse


def test_load_diff_from_duckdb(store: Warehouse) -> None:
    result, before, after = load_diff(store, "demo", "r1-aaaa", "r2-bbbb")
    assert before.promoted_gate_passed is True and after.prompts is not None
    assert result.summary() == {
        MODEL_OR_PARAMS: 1,
        NEW_PROMPT: 1,
        "newly rejected by too_short": 1,
    }
    removed = result.of("removed")[0]
    assert (
        removed.sample_id == "s-p-1-0.8"
        and "regenerated as s-p-1-1.0 (temperature 0.8 -> 1.0)" in removed.detail
    )


def test_cli_diff_defaults_to_last_two_versions(store: Warehouse, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--db", str(store.path), "diff", "--no-dagster"]) == 0
    out = capsys.readouterr().out
    assert "A: r1-aaaa" in out and "B: r2-bbbb" in out
    assert "+1 added, -1 removed, ~1 changed, 0 unchanged" in out
    assert cli.main(["--db", str(store.path), "diff", "r2", "r1", "--json", "--no-dagster"]) == 0
    reverse = json.loads(capsys.readouterr().out)
    assert reverse["run_a"] == "r2-bbbb" and reverse["summary"][PROMPT_DROPPED] == 1
    assert cli.main(["--db", str(store.path), "diff", "r9", "r1", "--no-dagster"]) == 2
    assert "run 'r9' has no curated_set version" in capsys.readouterr().err
    assert cli.main(["--db", str(store.path), "diff", "r", "r1", "--spec", "demo", "--no-dagster"]) == 2
    assert "ambiguous" in capsys.readouterr().err


# ---- versions as DuckLake snapshots ---------------------------------------------------------------


def snapshots_of(store: Warehouse) -> dict[str, int]:
    """{run_id: the snapshot that wrote its curated_set version}, as `synth-assets versions` lists them."""
    return {v.run_id: v.snapshot_id for v in store.versions("curated_set", "demo", read_only=True)}


def test_versions_list_the_snapshot_next_to_the_run(
    store: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    written = snapshots_of(store)
    assert set(written) == {"r1-aaaa", "r2-bbbb"} and written["r1-aaaa"] < written["r2-bbbb"]
    table = curated_versions(store, "demo")
    assert table["snapshot_id"].tolist() == [written["r1-aaaa"], written["r2-bbbb"]]
    assert table["promoted"].tolist() == [False, True]
    assert cli.main(["--db", str(store.path), "versions", "--spec", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "r1-aaaa  @" + str(written["r1-aaaa"]) in lines[1] and "gate passed" in lines[1]
    assert "r2-bbbb  @" + str(written["r2-bbbb"]) in lines[2] and lines[2].endswith("published")
    # any stage: its prompts were written in the same transaction (snapshot) as the curated set
    assert cli.main(["--db", str(store.path), "versions", "--stage", "expanded_prompts", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {v["run_id"]: v["snapshot_id"] for v in listed} == written
    assert cli.main(["--db", str(store.path), "versions", "--stage", "seed_data"]) == 2
    assert "spec 'demo' has no seed_data version (specs with one: none)" in capsys.readouterr().err
    assert cli.main(["--db", str(store.path), "versions", "--spec", "nope"]) == 2
    assert "spec 'nope' has no curated_set version (specs with one: demo)" in capsys.readouterr().err


def test_diff_between_snapshots_reads_each_version_as_it_was_then(
    store: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    first = snapshots_of(store)
    # run r2 writes its version again (a retried step): only p-3's sample is left
    again = rows(
        "curated_set",
        [{"sample_id": "s-p-3-1.0", "prompt_id": "p-3", "label": "positive", "text": "p-3 at 1.0"}],
    )
    rewritten = store.write_version("curated_set", "demo", "r2-bbbb", again, promote=True)
    assert snapshots_of(store)["r2-bbbb"] == rewritten > first["r2-bbbb"]

    # by run id: each version at the snapshot of its newest write (the rewrite)
    now, before, after = load_diff(store, "demo", "r1-aaaa", "r2-bbbb")
    assert (before.snapshot_id, after.snapshot_id) == (first["r1-aaaa"], rewritten)
    assert (now.rows_a, now.rows_b) == (2, 1)
    # by snapshot: r2 as it was when first written, read with time travel
    argv = ["--db", str(store.path), "diff", f"@{first['r1-aaaa']}", f"@{first['r2-bbbb']}", "--json"]
    assert cli.main([*argv, "--no-dagster"]) == 0
    then = json.loads(capsys.readouterr().out)
    assert (then["run_a"], then["run_b"]) == ("r1-aaaa", "r2-bbbb")
    assert (then["snapshot_a"], then["snapshot_b"]) == (first["r1-aaaa"], first["r2-bbbb"])
    assert (then["rows_a"], then["rows_b"], then["added"], then["removed"], then["changed"]) == (
        2,
        2,
        1,
        1,
        1,
    )
    # a snapshot between two writes names the version newest then; a run and a snapshot mix
    assert cli.main(["--db", str(store.path), "diff", "r1", f"@{rewritten - 1}", "--no-dagster"]) == 0
    printed = capsys.readouterr().out
    assert f"B: r2-bbbb (snapshot @{rewritten - 1}," in printed and "rows 2 -> 2" in printed


def test_bad_snapshot_references_are_one_line_naming_what_exists(
    store: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    written = snapshots_of(store)
    latest = store.snapshot_id()
    db = ["--db", str(store.path)]
    # the real CLI process: exit code 2, one line, no traceback
    result = run_cli(*db, "diff", "@999", "r1", "--no-dagster", env=dict(os.environ))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: snapshot @999 does not exist in {store.path}: its snapshots run from @0 to @{latest} "
        "(the latest)"
    )
    before_any = written["r1-aaaa"] - 1  # the catalog existed, the spec had no curated_set yet
    assert cli.main([*db, "diff", f"@{before_any}", "r2", "--no-dagster"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: snapshot @{before_any} holds no curated_set version of spec 'demo' (its versions, "
        f"newest first: r2-bbbb @{written['r2-bbbb']}, r1-aaaa @{written['r1-aaaa']})"
    )
    assert cli.main([*db, "diff", "@latest", "r2", "--spec", "demo", "--no-dagster"]) == 2
    assert "'@latest' is not a snapshot: use @N" in capsys.readouterr().err
    assert cli.main([*db, "diff", "r9", "--spec", "demo", "--no-dagster"]) == 2
    assert "diff takes two versions" in capsys.readouterr().err
