"""Export of the published curated set (Parquet, JSONL, Hugging Face folder) and its dataset card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import write_tiny_spec

from synth_assets import cli
from synth_assets.export import ExportError, dataset_card, load_export_data, write_export
from synth_assets.spec import load_spec
from synth_assets.storage import Publication, Warehouse, stage_columns

SPEC = "tiny_reviews"


def rows(stage: str, items: list[dict[str, Any]]) -> pd.DataFrame:
    columns = stage_columns(stage)
    return pd.DataFrame([{c: item.get(c) for c in columns} for item in items], columns=columns)


def samples(run: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "sample_id": f"s-{run}-{i}",
            "prompt_id": f"p-{i}",
            "label": ["positive", "negative"][i % 2],
            "text": f"Synthetic review {i} from {run}.",
            "model": "smollm2-135m-instruct",
            "model_fingerprint": "smollm2-fp",
            "backend": "local",
            "generation_params": json.dumps({"temperature": 0.8}),
            "generation_seed": i,
            "normalized_hash": f"h{i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Warehouse:
    """Run good-1 published (3 rows, report passed), then run bad-2 whose curated_set failed its gate."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    seed = rows(
        "seed_data",
        [
            {
                "seed_id": f"seed-{i}",
                "split": "train" if i < 3 else "holdout",
                "text": f"real {i}",
                "label": "positive",
            }
            for i in range(4)
        ],
    )
    prompts = rows(
        "expanded_prompts",
        [
            {
                "prompt_id": f"p-{i}",
                "attributes": json.dumps({"product": "blender"}),
                "demo_ids": json.dumps(["seed-0"]),
            }
            for i in range(3)
        ],
    )
    good = samples("good", 3)
    warehouse.write_versions(
        {
            "seed_data": seed,
            "expanded_prompts": prompts,
            "generated_samples": rows("generated_samples", good),
            "curated_set": rows("curated_set", good),
            "rejected_samples": rows(
                "rejected_samples", [{**good[0], "sample_id": "s-rej", "reasons": '["too_short"]'}]
            ),
        },
        SPEC,
        "good-1",
        promote=True,
    )
    warehouse.record_gate(SPEC, "good-1", "curated_set", "gx_gate", True, "all expectations passed")
    report = {
        "metrics": json.dumps(
            {"curated": 3, "yield": 0.75, "distinct_2": 0.91, "usefulness_real_macro_f1": 0.8}
        ),
        "markdown": "# Evaluation report",
        "report_path": "/r.md",
        "passed": True,
        "curated_run_id": "good-1",
    }
    warehouse.write_version(
        "evaluation_report", SPEC, "good-1", rows("evaluation_report", [report]), promote=True
    )
    bad = samples("bad", 1)
    warehouse.write_versions({"curated_set": rows("curated_set", bad)}, SPEC, "bad-2", promote=False)
    warehouse.record_gate(SPEC, "bad-2", "curated_set", "gx_gate", False, "1 row < 5")
    return warehouse


def test_exports_the_published_version_with_lineage_columns(store: Warehouse, tmp_path: Path) -> None:
    spec = load_spec(write_tiny_spec(tmp_path / "specs"))
    data = load_export_data(store, SPEC, spec)
    assert data.curated_run_id == "good-1" and len(data.rows) == 3  # not the failed bad-2 version
    assert list(data.rows.columns[:4]) == ["text", "label", "sample_id", "prompt_id"]
    first = data.rows.iloc[0]
    assert first["model_fingerprint"] == "smollm2-fp" and json.loads(first["attributes"]) == {
        "product": "blender"
    }
    assert first["curated_run_id"] == "good-1"
    assert data.counts == {
        "seed_data": 4,
        "expanded_prompts": 3,
        "generated_samples": 3,
        "curated_set": 3,
        "rejected_samples": 1,
    }
    assert data.rejections == {"too_short": 1} and data.versions == 2
    assert data.evaluation is not None and data.evaluation["metrics"]["yield"] == 0.75

    card = dataset_card(data, ["tiny_reviews.parquet"])
    # front matter from huggingface_hub's DatasetCardData (was hand-written with a quoted name)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["pretty_name"] == "tiny_reviews (synthetic)" and front["license"] == "other"
    assert front["task_categories"] == ["text-classification"] and front["language"] == ["en"]
    for part in (
        "Write a short product review",  # the spec's task
        "```yaml",  # the spec itself
        "`smollm2-135m-instruct` via `local` (fingerprint `smollm2-fp`)",
        "| seed_data | 4 (holdout 1 / train 3) |",
        "| rejected_samples | 1 (too_short 1) |",
        "usefulness gate: passed",
        "| yield | 0.75 |",
        "| distinct_2 | 0.91 |",
        "run `good-1`",
        "one of 2 version(s)",
        "curated_set:gx_gate passed",
        "## License notes",
        "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        f"synth-assets run --spec {spec.source_path}",
    ):
        assert part in card, part


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_every_format_reads_back(store: Warehouse, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out" / fmt
    written = write_export(load_export_data(store, SPEC), fmt, out)
    assert (out / "README.md") in written and (out / "README.md").read_text().startswith("---\n")
    if fmt == "parquet":
        back = pd.read_parquet(out / f"{SPEC}.parquet")
    elif fmt == "jsonl":
        back = pd.read_json(out / f"{SPEC}.jsonl", lines=True)
    else:
        import datasets

        dataset = datasets.load_from_disk(str(out))
        assert dataset.num_rows == 3 and "text" in dataset.column_names
        back = dataset.to_pandas()
    assert sorted(back["sample_id"]) == ["s-good-0", "s-good-1", "s-good-2"]
    assert "spec file: not found" in (out / "README.md").read_text()


def test_nothing_promoted_is_an_error(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.write_versions(
        {"curated_set": rows("curated_set", samples("bad", 1))}, SPEC, "r", promote=False
    )
    with pytest.raises(ExportError, match="no published curated_set"):
        load_export_data(warehouse, SPEC)


def test_a_held_back_version_is_not_exported_and_the_card_says_so(store: Warehouse, tmp_path: Path) -> None:
    """Staged run held-3 fails its usefulness gate: export keeps writing good-1 and names held-3."""
    held = samples("held", 2)
    store.write_versions(
        {"curated_set": rows("curated_set", held), "rejected_samples": rows("rejected_samples", [])},
        SPEC,
        "held-3",
        promote=False,
    )
    store.record_gate(SPEC, "held-3", "curated_set", "gx_gate", True, "all expectations passed")
    report = {"metrics": "{}", "passed": False, "curated_run_id": "held-3"}
    store.write_version(
        "evaluation_report",
        SPEC,
        "held-3",
        rows("evaluation_report", [report]),
        promote=False,
        publication=Publication("curated_set", "held-3", False, "FAILED: same run: worse than real only"),
    )
    data = load_export_data(store, SPEC)
    assert data.curated_run_id == "good-1" and len(data.rows) == 3
    assert data.evaluation is not None and data.evaluation["passed"] is True  # good-1's own report
    (note,) = [n for n in data.notes if "held back" in n]
    assert "run held-3" in note and "FAILED: same run: worse than real only" in note
    card = dataset_card(data, ["x.jsonl"])
    assert "This is the published version" in card and "run held-3" in card


def test_publication_reason_in_the_card_and_nothing_published_says_why(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    for run, passed in (("r1", False), ("r2", True)):
        warehouse.write_versions(
            {"curated_set": rows("curated_set", samples(run, 2))}, SPEC, run, promote=False
        )
        warehouse.record_gate(SPEC, run, "curated_set", "gx_gate", True, "ok")
        warehouse.write_version(
            "evaluation_report",
            SPEC,
            f"eval-{run}",
            rows("evaluation_report", [{"metrics": "{}", "passed": passed, "curated_run_id": run}]),
            promote=passed,
            publication=Publication("curated_set", run, passed, "passed: same run: +0.02"),
        )
        if run == "r1":  # held back, and nothing was published before
            with pytest.raises(ExportError, match=r"no published curated_set .*run r1, was held back"):
                load_export_data(warehouse, SPEC)
    data = load_export_data(warehouse, SPEC)
    assert data.curated_run_id == "r2"
    assert data.publication is not None and "evaluation in run `eval-r2`" in data.publication
    assert "Publication: published by the evaluation in run `eval-r2`" in dataset_card(data, ["x.jsonl"])


def test_withheld_scores_show_too_few_rows_in_the_card(store: Warehouse) -> None:
    data = load_export_data(store, SPEC)
    assert data.evaluation is not None
    data.evaluation["metrics"] |= {"mauve": None, "mauve_status": "too few rows: MAUVE needs at least 1000"}
    card = dataset_card(data, ["x.jsonl"])
    assert "| mauve | too few rows |" in card and "mauve_status" not in card


def test_cli_export(
    store: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs_dir = tmp_path / "specs"
    write_tiny_spec(specs_dir)
    monkeypatch.setenv("SYNTH_ASSETS_SPECS_DIR", str(specs_dir))  # the spec is found by name
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))  # no instance: card without it
    out = tmp_path / "export"
    assert (
        cli.main(
            ["--db", str(store.path), "export", "--spec", SPEC, "--format", "parquet", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 3 rows of 'tiny_reviews' (curated_set run good-1)" in printed
    assert "```yaml" in (out / "README.md").read_text()
    # the same export again: refused with one line, nothing replaced, unless --overwrite
    again = ["--db", str(store.path), "export", "--spec", SPEC, "--format", "parquet", "--out", str(out)]
    assert cli.main(again) == 2
    error = capsys.readouterr().err.strip()
    assert "already exists" in error and "--overwrite" in error and len(error.splitlines()) == 1
    assert cli.main([*again, "--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(["--db", str(store.path), "export", "--spec", "nope", "--out", str(out)]) == 2
    assert "spec 'nope' has no published curated_set to export" in capsys.readouterr().err


def test_export_refuses_to_overwrite_unless_asked(store: Warehouse, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my own notes\n")
    with pytest.raises(ExportError, match=r"README.md: already exists .*pass --overwrite"):
        write_export(load_export_data(store, SPEC), "jsonl", out)
    assert (out / "README.md").read_text() == "my own notes\n" and not (out / f"{SPEC}.jsonl").exists()
    write_export(load_export_data(store, SPEC), "jsonl", out, overwrite=True)
    assert (out / "README.md").read_text().startswith("---\n")
    # any existing output file, not only the card
    (out / "README.md").unlink()
    with pytest.raises(ExportError, match=rf"{SPEC}.jsonl: already exists"):
        write_export(load_export_data(store, SPEC), "jsonl", out)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_every_export_format_and_the_card_are_rescanned_for_personal_data(
    store: Warehouse, tmp_path: Path, fmt: str
) -> None:
    data = load_export_data(store, SPEC)
    phones = ["+81 3-1234-5678", "+33 6 12 34 56 78", "+61 2 1234 5678"]
    data.rows["text"] = [f"Call {phone} for help, the kettle is fine." for phone in phones]
    out = tmp_path / fmt
    written = write_export(data, fmt, out)
    exported = " ".join(p.read_bytes().decode("utf-8", "replace") for p in written)
    assert not any(phone in exported for phone in phones)
    assert "[PHONE]" in exported and "3 values held personal data" in (out / "README.md").read_text()


def test_card_task_category_and_language_follow_the_spec(store: Warehouse, tmp_path: Path) -> None:
    specs = Path(__file__).resolve().parent.parent / "specs"
    conversation = load_spec(specs / "support_conversations.yaml")
    description = load_spec(specs / "backpack_descriptions.yaml")
    data = load_export_data(store, SPEC)
    fronts = {}
    for spec in (conversation, description):
        data.spec = spec
        fronts[spec.name] = yaml.safe_load(dataset_card(data, ["x.jsonl"]).split("---\n")[1])
    assert fronts["support_conversations"]["task_categories"][0] == "text-generation"
    assert fronts["support_conversations"]["task_ids"] == ["dialogue-modeling"]
    assert fronts["backpack_descriptions"]["task_categories"][0] == "text-generation"
    german = description.model_copy(
        update={"curation": description.curation.model_copy(update={"language": "de"})}
    )
    data.spec = german
    assert yaml.safe_load(dataset_card(data, ["x.jsonl"]).split("---\n")[1])["language"] == ["de"]


def test_export_at_a_snapshot_writes_what_was_published_then(
    store: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    first = store.promotion_snapshot("curated_set", SPEC, "good-1")
    newer = samples("new", 2)
    published = store.write_versions(
        {"curated_set": rows("curated_set", newer), "rejected_samples": rows("rejected_samples", [])},
        SPEC,
        "good-3",
        promote=True,
    )
    now = load_export_data(store, SPEC)
    assert (now.curated_run_id, len(now.rows), now.snapshot_id) == ("good-3", 2, published)
    then = load_export_data(store, SPEC, snapshot=first)  # time travel: every figure as it was then
    assert (then.curated_run_id, len(then.rows), then.counts["curated_set"]) == ("good-1", 3, 3)
    assert then.versions == 1 and then.rejections == {"too_short": 1}
    assert f"Read at DuckLake snapshot `@{first}`" in dataset_card(then, ["x.jsonl"])

    db = ["--db", str(store.path), "export", "--spec", SPEC, "--format", "jsonl"]
    assert cli.main([*db, "--out", str(tmp_path / "a"), "--at", "good-1"]) == 0
    assert f"(curated_set run good-1) as of snapshot @{first}:" in capsys.readouterr().out
    assert len((tmp_path / "a" / f"{SPEC}.jsonl").read_text().splitlines()) == 3
    assert cli.main([*db, "--out", str(tmp_path / "b"), "--at", f"@{published}"]) == 0
    assert "(curated_set run good-3)" in capsys.readouterr().out
    # a version never published, a snapshot before any, one that does not exist: one line each
    for at, message in (
        (
            "bad",
            f"curated_set run bad-2 of spec '{SPEC}' was never published, and export writes published "
            f"versions only (published versions: good-3 @{published}, good-1 @{first})",
        ),
        (f"@{first - 1}", f"snapshot @{first - 1}: spec '{SPEC}' had no published curated_set then"),
        ("@12345", f"snapshot @12345 does not exist in {store.path}: its snapshots run from @0 to"),
    ):
        assert cli.main([*db, "--out", str(tmp_path / "c"), "--at", at]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "c").exists()
