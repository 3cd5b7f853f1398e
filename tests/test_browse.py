"""`synth-assets browse`: one curated_set version of a spec in Datasette.

A real DuckDB warehouse holds two versions of a small spec (rows written through `Warehouse`, the way
the stages write them, without running the model); the browser is exported from it and served by
the real Datasette in a subprocess. Checked:

- every curated and rejected row is there with label, reasons, flags, scores and attributes, and
  the full text exactly as stored (line breaks, Markdown and HTML characters, thousands of chars);
- facets on status, label, reason, flag and attribute; filters; foreign-key links to the prompt,
  its seed demos, the model and the runs; the `lineage` canned query;
- `--version` picks an older version (prefix), the default is the published one;
- bad input is one line and exit code 2: unknown spec, unknown or ambiguous version, no DuckDB file,
  a port in use;
- in headless Chromium: the facets show, a row's full text is raw, a lineage link opens the prompt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import free_port

from synth_assets.browse import DATABASE, export_browse_db, main
from synth_assets.storage import Warehouse

SPEC = "tiny_reviews"
ROOT = Path(__file__).parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LONG_TEXT = (
    "**Not bold**, <b>not HTML</b> & # not a heading\nsecond line of the review\n" + "long tail. " * 300
).strip()


def _seed() -> pd.DataFrame:
    texts = ["Great headphones, crisp sound.", "Broke after two days.", "It is fine, nothing special."]
    return pd.DataFrame(
        {
            "seed_id": ["s1", "s2", "s3"],
            "split": ["train", "train", "train"],
            "text": texts,
            "label": ["positive", "negative", "neutral"],
            "source_file": "seed.csv",
            "source_row": [1, 2, 3],
        }
    )


def _prompts(run: int) -> pd.DataFrame:
    products = ["headphones", "blender", "backpack", "headphones"]
    labels = ["positive", "negative", "neutral", "positive"]
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(4)],
            "prompt_index": list(range(4)),
            "label": labels,
            "attributes": [json.dumps({"product": p}) for p in products],
            "demo_ids": [json.dumps(["s1", "s2"]), json.dumps(["s2", "s3"]), json.dumps(["s3"]), "[]"],
            "system_prompt": "You write product reviews.",
            "prompt_text": [
                f"Write one {lab} review of {p} (v{run})." for lab, p in zip(labels, products, strict=True)
            ],
            "generation_seed": [7, 8, 9, 10],
            "cell": None,
        }
    )


def _generated(run: int, run_id: str) -> pd.DataFrame:
    texts = [LONG_TEXT, "Loud blender, broke fast.", "ok", f"Love these headphones (v{run})."]
    return pd.DataFrame(
        {
            "sample_id": [f"sample-{i}" for i in range(4)],
            "prompt_id": [f"p{i}" for i in range(4)],
            "label": ["positive", "negative", "neutral", "positive"],
            "text": texts,
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "model_fingerprint": f"fp-v{run}",
            "backend": "local",
            "generation_params": json.dumps({"temperature": 0.8, "max_new_tokens": 64}),
            "generation_seed": [7, 8, 9, 10],
            "prompt_tokens": 50,
            "completion_tokens": 20,
            "finish_reason": "stop",
            "cache_key": [f"k{i}" for i in range(4)],
            "generated_in_run": run_id,
            "steps": "{}",
        }
    )


def _curated(generated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept = generated.iloc[[0, 1, 3]]
    curated = kept[["sample_id", "prompt_id", "label", "text"]].assign(
        normalized_hash=["h0", "h1", "h3"],
        intended_label=kept["label"].to_numpy(),
        predicted_label=["positive", "positive", "positive"],
        label_confidence=[0.9, 0.4, 0.8],
        relevance=[0.7, 0.6, 0.5],
        nearest_similarity=[0.2, 0.3, 0.4],
        judge_score=None,
        pii_hits=[0, 1, 0],
        flags=[json.dumps([]), json.dumps(["label_doubt", "pii_scrubbed"]), json.dumps([])],
    )
    dropped = generated.iloc[[2]]
    rejected = dropped[["sample_id", "prompt_id", "label", "text"]].assign(
        reasons=json.dumps(["too_short", "low_relevance"]),
        details=json.dumps({"too_short": "2 chars < 10", "low_relevance": "0.05 < 0.2"}),
        predicted_label="neutral",
        label_confidence=0.5,
        relevance=0.05,
        nearest_similarity=0.1,
        judge_score=None,
        pii_hits=0,
    )
    return curated, rejected


def write_two_versions(store: Warehouse) -> list[str]:
    """Two full versions of the spec (run-a, then run-b), run-a published; returns the run ids."""
    runs = ["run-a-11111111", "run-b-22222222"]
    for number, run_id in enumerate(runs, start=1):
        store.write_version("seed_data", SPEC, run_id, _seed(), promote=True)
        store.write_version("expanded_prompts", SPEC, run_id, _prompts(number), promote=True)
        generated = _generated(number, run_id)
        store.write_version("generated_samples", SPEC, run_id, generated, promote=True)
        curated, rejected = _curated(generated)
        # only the first version is published (the second one waits for its usefulness gate)
        store.write_versions(
            {"curated_set": curated, "rejected_samples": rejected}, SPEC, run_id, promote=number == 1
        )
        time.sleep(0.01)  # distinct materialized_at per version
    return runs


@pytest.fixture
def store(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    write_two_versions(warehouse)
    return warehouse


def _rows(database: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    connection = sqlite3.connect(database)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def test_every_curated_and_rejected_row_with_full_text_and_lineage_keys(
    store: Warehouse, tmp_path: Path
) -> None:
    export = export_browse_db(store, SPEC, tmp_path / "browse")
    assert export.run_id == "run-a-11111111"  # the published version by default
    assert (export.curated_rows, export.rejected_rows) == (3, 1)
    rows = {row["sample_id"]: row for row in _rows(export.database, "SELECT * FROM samples")}
    assert sorted(rows) == ["sample-0", "sample-1", "sample-2", "sample-3"]
    assert rows["sample-0"]["text"] == LONG_TEXT  # raw, in full
    assert rows["sample-2"]["status"] == "rejected"
    assert json.loads(rows["sample-2"]["reasons"]) == ["too_short", "low_relevance"]
    assert json.loads(rows["sample-1"]["flags"]) == ["label_doubt", "pii_scrubbed"]
    assert rows["sample-1"]["label_confidence"] == pytest.approx(0.4)
    assert rows["sample-1"]["attr_product"] == "blender"
    assert rows["sample-0"]["model_fingerprint"] == "fp-v1"
    assert rows["sample-0"]["generated_in_run"] == "run-a-11111111"
    assert rows["sample-0"]["lineage"].endswith(f"/{DATABASE}/lineage?sample_id=sample-0")
    # the prompt of sample-0 with its two seed demos, in order
    demos = _rows(
        export.database,
        "SELECT d.text FROM prompt_demos pd JOIN demos d USING (seed_id) WHERE pd.prompt_id = 'p0' "
        "ORDER BY pd.position",
    )
    assert [d["text"] for d in demos] == ["Great headphones, crisp sound.", "Broke after two days."]
    [prompt] = _rows(export.database, "SELECT prompt_text FROM prompts WHERE prompt_id = 'p0'")
    assert prompt["prompt_text"] == "Write one positive review of headphones (v1)."
    keys = _rows(export.database, "SELECT * FROM pragma_foreign_key_list('samples')")
    assert {k["from"]: k["table"] for k in keys} == {
        "prompt_id": "prompts",
        "model_fingerprint": "models",
        "generated_in_run": "runs",
        "curated_in_run": "runs",
    }
    metadata = json.loads(export.metadata.read_text())["databases"][DATABASE]
    facets = metadata["tables"]["samples"]["facets"]
    assert facets == ["status", "label", {"array": "reasons"}, {"array": "flags"}, "attr_product"]
    assert "lineage" in metadata["queries"]


def test_version_prefix_picks_an_older_or_newer_version(store: Warehouse, tmp_path: Path) -> None:
    export = export_browse_db(store, SPEC, tmp_path / "browse", version="run-b")
    assert export.run_id == "run-b-22222222"
    [row] = _rows(export.database, "SELECT text, model_fingerprint FROM samples WHERE sample_id = 'sample-3'")
    assert (row["text"], row["model_fingerprint"]) == ("Love these headphones (v2).", "fp-v2")
    [prompt] = _rows(export.database, "SELECT prompt_text FROM prompts WHERE prompt_id = 'p3'")
    assert prompt["prompt_text"].endswith("(v2).")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--spec", "no_such_spec"],
            "--spec: no curated_set version of spec 'no_such_spec' (specs with one: tiny_reviews)",
        ),
        (["--spec", SPEC, "--version", "zzz"], "--version: 'zzz' matches no curated_set version"),
        (["--spec", SPEC, "--version", "run-"], "--version: 'run-' matches 2 curated_set version"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    store: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    code = main(
        ["--db", str(store.path), "browse", *arguments, "--export-only", "--out", str(tmp_path / "b")]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and message in error and str(store.path) in error
    assert not (tmp_path / "b" / f"{DATABASE}.db").exists()


def test_no_duckdb_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from synth_assets.browse import main; sys.exit(main())",
            "--db",
            str(tmp_path / "missing.duckdb"),
            "browse",
            "--spec",
            SPEC,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "missing.duckdb: no DuckDB file yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line(
    store: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--db", str(store.path), "browse", "--spec", SPEC, "--port", str(port)])
    assert code == 2
    assert f"--port: 127.0.0.1:{port} is already in use" in capsys.readouterr().err


@dataclass
class Browser:
    url: str
    process: subprocess.Popen[str]


@contextmanager
def serve_browser(database: Path, out: Path, spec: str = SPEC) -> Iterator[Browser]:
    """`synth-assets browse` in its own process, as a user starts it; stopped with SIGTERM, which
    also stops Datasette."""
    port = free_port()
    script = "import sys; from synth_assets.browse import main; sys.exit(main())"
    arguments = ["--db", str(database), "browse", "--spec", spec, "--port", str(port), "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the URL line is printed once Datasette answers
            lines.append(line)
            if line.startswith("browse: "):
                break
        assert lines and lines[-1].startswith(f"browse: {url}/{DATABASE}/samples"), lines
        yield Browser(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    # Datasette went away with it
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/-/versions.json", timeout=2)


@pytest.fixture
def served(store: Warehouse, tmp_path: Path) -> Iterator[Browser]:
    with serve_browser(store.path, tmp_path / "b") as browser:
        yield browser


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_served_datasette_facets_filters_and_lineage_query(served: Browser) -> None:
    base = f"{served.url}/{DATABASE}"
    table = _get(f"{base}/samples.json?_shape=objects&_extra=facet_results")
    facets = table["facet_results"]
    results = facets.get("results", facets)  # Datasette 0.65 nests them under "results"
    counts = {name: {v["value"]: v["count"] for v in facet["results"]} for name, facet in results.items()}
    assert counts["status"] == {"curated": 3, "rejected": 1}
    assert counts["reasons"] == {"too_short": 1, "low_relevance": 1}
    assert counts["flags"] == {"label_doubt": 1, "pii_scrubbed": 1}
    assert counts["attr_product"] == {"headphones": 2, "blender": 1, "backpack": 1}
    rejected = _get(f"{base}/samples.json?_shape=objects&status=rejected")["rows"]
    assert [row["sample_id"] for row in rejected] == ["sample-2"]
    full = _get(f"{base}/samples/sample-0.json?_shape=objects")["rows"][0]
    assert full["text"] == LONG_TEXT
    query = urllib.parse.urlencode({"sample_id": "sample-0", "_shape": "objects"})
    [chain] = _get(f"{base}/lineage.json?{query}")["rows"]
    assert chain["prompt_text"] == "Write one positive review of headphones (v1)."
    assert "Great headphones, crisp sound." in chain["demos"] and "Broke after two days." in chain["demos"]
    assert chain["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert chain["generation_run_in_dagster"].endswith("/runs/run-a-11111111")


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: run scripts/ensure_chromium.sh"
)
def test_in_chromium_facets_raw_text_and_a_lineage_link(served: Browser, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright
    from test_ui_browser import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 900},
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(f"{served.url}/{DATABASE}/samples")
        for facet in ("status", "label", "reasons", "flags", "attr_product"):
            page.locator(f'.facet-info[data-column="{facet}"]').wait_for(state="visible")
        # the full text raw: Markdown and HTML characters shown as typed, nothing rendered or cut
        cell = page.locator("td.col-text").filter(has_text="Not bold").first
        assert cell.inner_text().startswith("**Not bold**, <b>not HTML</b> & # not a heading\nsecond line")
        assert len(cell.inner_text()) == len(LONG_TEXT)
        assert page.locator("td.col-text b").count() == 0 and page.locator("td.col-text strong").count() == 0
        page.locator(".facet-results").evaluate("facets => facets.scrollIntoView()")
        shot = tmp_path / "browse-samples.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000  # the README's picture comes from a real run: test_ui_browser
        # a facet filters
        page.locator('.facet-info[data-column="status"] a', has_text="rejected").click()
        page.wait_for_url("**status=rejected**")
        assert page.locator("td.col-sample_id").all_inner_texts() == ["sample-2"]
        # a lineage link: the sample's prompt, and from the prompt page its demos
        page.goto(f"{served.url}/{DATABASE}/samples?sample_id=sample-1")
        page.locator("td.col-prompt_id a").first.click()
        page.wait_for_url(f"**/{DATABASE}/prompts/p1")
        prompt_page = page.inner_text("body")
        assert "Write one negative review of blender (v1)." in prompt_page
        assert "Links from other tables" in prompt_page and "prompt_demos" in prompt_page
        page.goto(f"{served.url}/{DATABASE}/samples/sample-0")
        page.locator("td.col-lineage a").first.click()
        page.wait_for_url(f"**/{DATABASE}/lineage?sample_id=sample-0")
        body = page.inner_text("body")
        assert "Great headphones, crisp sound." in body and "SmolLM2-135M-Instruct" in body
        context.close()


def test_a_duckdb_file_without_curated_rows_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import duckdb

    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()  # a DuckDB file no stage has written to
    assert main(["--db", str(empty), "browse", "--spec", SPEC, "--export-only"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no curated_set table yet" in error
