"""The Dagster UI in a real browser: a temporary instance + DuckDB holding a real materialization of the
tiny spec (real model, through the refresh job), `dagster-webserver` on a free loopback port, and
Debian's headless Chromium driven by Playwright, kept off the network by its flags.

Checks that the asset graph shows the five stages (and the observed spec) with their checks passed,
that materialization metadata renders (curated_set's row count, evaluation_report's Markdown, the
previews as raw tables), and `synth-assets browse` over the same run (docs/browse-samples.png).
The graph screenshot goes to the test's temp folder, and to docs/ui-asset-graph.png (the README's
picture) when that file is missing or SYNTH_ASSETS_UPDATE_SCREENSHOT=1, so a test run does not
rewrite a committed image every time. Install Chromium with scripts/ensure_chromium.sh.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pytest
from conftest import free_port, write_tiny_spec

from synth_assets.definitions import build_definitions
from synth_assets.defs.common import spec_partitions
from synth_assets.defs.resources import SPEC_PATH_TAG
from synth_assets.defs.seed_data import spec_inputs
from synth_assets.storage import Warehouse

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# headless, and nothing that phones home: no QUIC, no background fetches, no component updates, no sync
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SPEC = "tiny_reviews"
STAGES = ["seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report"]
ROOT = Path(__file__).parent.parent
SCREENSHOT = ROOT / "docs" / "ui-asset-graph.png"
BROWSE_SCREENSHOT = ROOT / "docs" / "browse-samples.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing: run scripts/ensure_chromium.sh (apt-get install chromium)",
    ),
]


@dataclass
class Ui:
    url: str
    root: Path
    home: Path
    store: Warehouse
    checks: dict[str, list[str]]  # asset -> its check names, from the definitions


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"dagster-webserver did not answer {url} in {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    root = tmp_path_factory.mktemp("ui")
    spec_path = write_tiny_spec(root / "specs")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    store = Warehouse(root / "warehouse.duckdb")

    # a real materialization, the way `synth-assets run` makes one
    definitions = build_definitions(database=str(store.path), specs_dir=str(spec_path.parent))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(spec_partitions.name, [SPEC])
        result = definitions.resolve_job_def("synth_refresh_job").execute_in_process(
            instance=instance, partition_key=SPEC, tags={SPEC_PATH_TAG: str(spec_path)}, raise_on_error=False
        )
        assert result.success, result.get_failed_step_keys()
    graph = definitions.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)

    workspace = root / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: synth_assets.definitions\n"
        f"      attribute: defs\n      location_name: synth_assets\n      working_directory: {ROOT}\n"
    )
    port = free_port()
    log = root / "webserver.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SYNTH_ASSETS_DB": str(store.path),
        "SYNTH_ASSETS_SPECS_DIR": str(spec_path.parent),
    }
    webserver = Path(sys.executable).parent / "dagster-webserver"
    with log.open("wb") as output:
        # its own session: stopping it also stops the code server it starts, and nothing else
        process = subprocess.Popen(
            [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", process, log)
        yield Ui(f"http://127.0.0.1:{port}", root, home, store, checks)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(ui: Ui) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(ui.root / "chromium-profile"),  # a fresh profile: no state from earlier runs
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1800, "height": 760},
        )
        context.set_default_timeout(60_000)
        yield context.new_page()
        context.close()


def _dismiss_welcome(page: Page) -> None:
    """A fresh instance greets with a 'Join the Dagster community' dialog once: skip it."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=8_000)
    except Exception:
        return
    skip.click()


def test_asset_graph_shows_the_five_assets_and_their_checks(ui: Ui, page: Page) -> None:
    page.goto(f"{ui.url}/locations/synth_assets/asset-groups/synthetic_data")
    _dismiss_welcome(page)
    for name in [*STAGES, "spec_inputs"]:
        page.get_by_text(name, exact=True).first.wait_for(state="visible")
    page.get_by_text("Hide navigation").click()
    # one step of zoom: Dagster switches from name-only boxes to full nodes (status, checks, partitions)
    page.locator("#zoom-slider-container button").first.click()
    page.get_by_text("Asset checks").first.wait_for(state="visible")
    time.sleep(2)  # let the last edges and badges settle before the picture
    nodes = page.get_by_text("Latest event")
    assert nodes.count() == len(STAGES) + 1
    passed = page.get_by_text("1 / 1 Passed")
    assert passed.count() == sum(len(names) for names in ui.checks.values()) >= 2
    shot = ui.root / "ui-asset-graph.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if not SCREENSHOT.exists() or os.environ.get("SYNTH_ASSETS_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot.read_bytes())

    for asset, names in sorted(ui.checks.items()):
        page.goto(f"{ui.url}/assets/{asset}?view=checks")
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for(state="visible")
        assert page.get_by_text("Passed").count() >= 1


def test_materialization_metadata_renders(ui: Ui, page: Page) -> None:
    rows = int(ui.store.read_only_query("SELECT count(*) AS n FROM curated_set")["n"].iloc[0])
    page.goto(f"{ui.url}/assets/curated_set?partition={SPEC}")
    _dismiss_welcome(page)
    page.get_by_text("Row count").first.wait_for(state="visible")
    shown = re.search(r"Row count\s+(\d+)", page.inner_text("body"))
    assert shown is not None and int(shown.group(1)) == rows
    page.get_by_text("Columns").first.wait_for(state="visible")  # the column schema
    assert page.get_by_text("normalized_hash").count() >= 1

    page.goto(f"{ui.url}/assets/evaluation_report?partition={SPEC}&view=events")
    page.get_by_text("[Show Markdown]").first.click()
    heading = page.get_by_role("heading", name=f"Evaluation report: {SPEC}")
    heading.wait_for(state="visible")
    assert heading.count() == 1


def _partition_page(ui: Ui, page: Page, stage: str) -> str:
    page.goto(f"{ui.url}/assets/{stage}?view=partitions&partition={SPEC}")
    page.get_by_text("View all historical events").first.wait_for(state="visible")
    time.sleep(2)  # the stale status arrives in a later query than the partition detail
    return page.inner_text("body")


def _observe_spec(ui: Ui, digest: str | None = None) -> None:
    """Record an observation of the spec, as the refresh job and spec_change_sensor do: with the
    digest observed last (nothing changed) or with a new one (the spec file changed)."""
    with dg.DagsterInstance.from_config(str(ui.home)) as instance:
        latest = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=spec_inputs.key, asset_partitions=[SPEC]), limit=1
        ).records[0]
        version = digest or latest.asset_observation.tags["dagster/data_version"]
        instance.report_runless_asset_event(
            dg.AssetObservation(spec_inputs.key, partition=SPEC, tags={"dagster/data_version": version})
        )


def test_stages_show_unsynced_only_when_the_spec_changed(ui: Ui, page: Page) -> None:
    _observe_spec(ui)  # the same spec content observed again
    for stage in STAGES:
        assert "Unsynced" not in _partition_page(ui, page, stage), stage
    _observe_spec(ui, "a-changed-spec-digest")
    for stage in STAGES:
        page.goto(f"{ui.url}/assets/{stage}?view=partitions&partition={SPEC}")
        page.get_by_text("Unsynced").first.wait_for(state="visible")


def test_previews_are_raw_tables_of_the_stored_rows(ui: Ui, page: Page) -> None:
    """curated_set's preview: a table (not Markdown) with the stored texts, raw."""
    curated = ui.store.read_only_query(  # the version the run wrote (staged, maybe not yet published)
        "SELECT sample_id, text FROM curated_set_history WHERE run_id = "
        "(SELECT max_by(run_id, materialized_at) FROM curated_set_history) ORDER BY row_position"
    )
    page.goto(f"{ui.url}/assets/curated_set?partition={SPEC}")
    _dismiss_welcome(page)
    page.get_by_text("Show schema").first.wait_for(state="visible")
    body = page.inner_text("body")
    for sample_id, text in curated.head(20).itertuples(index=False):
        assert sample_id in body
        assert " ".join(text.split())[:60] in " ".join(body.split())  # the UI shows line breaks as spaces
    assert page.locator("table strong, table em, table h1, table h2").count() == 0  # nothing rendered


def test_sample_browser_over_a_real_run(ui: Ui, page: Page) -> None:
    """`synth-assets browse` on the run above: every curated and rejected row, with a lineage link
    that reaches the seed demos; the README's picture of it (docs/browse-samples.png)."""
    from test_browse import serve_browser

    run = "(SELECT run_id FROM curated_set_history ORDER BY materialized_at DESC LIMIT 1)"
    counts = ui.store.read_only_query(
        f"SELECT (SELECT count(*) FROM curated_set_history WHERE run_id = {run}) AS curated, "
        f"(SELECT count(*) FROM rejected_samples_history WHERE run_id = {run}) AS rejected"
    ).iloc[0]
    with serve_browser(ui.store.path, ui.root / "browse") as browser:
        page.goto(f"{browser.url}/browse/samples?_facet_size=10")
        page.locator('.facet-info[data-column="status"]').wait_for(state="visible")
        shown = re.search(r"([\d,]+) rows?", page.inner_text("h3"))
        assert shown is not None and int(shown.group(1)) == int(counts["curated"]) + int(counts["rejected"])
        page.locator(".facet-results").evaluate("facets => facets.scrollIntoView()")
        shot = ui.root / "browse-samples.png"
        page.screenshot(path=str(shot))
        if not BROWSE_SCREENSHOT.exists() or os.environ.get("SYNTH_ASSETS_UPDATE_SCREENSHOT") == "1":
            BROWSE_SCREENSHOT.write_bytes(shot.read_bytes())
        page.locator("td.col-lineage a").first.click()
        page.wait_for_url("**/browse/lineage?sample_id=*")
        page.locator("td.col-demos").first.wait_for(state="visible")
        demos = page.locator("td.col-demos").first.inner_text()
        seed_texts = ui.store.read_only_query("SELECT text FROM seed_data")["text"].tolist()
        assert any(text in demos for text in seed_texts)
