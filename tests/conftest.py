"""Shared fixtures: a tiny spec with its own seed files, written into a temp folder."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import dagster as dg

    from synth_assets.storage import Warehouse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Files whose assertions time the machine itself (a stop within seconds, the adaptive HTTP limit read
# from reply latencies): `make test` runs them alone after the parallel part (pytest-xdist, two
# workers), because a second worker's model load on a 2-core box is exactly the scheduling noise they
# must not see.
SERIAL_FILES = {"test_http_faults.py", "test_http_stop.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


SEED_CSV = """review,sentiment
"These headphones sound amazing and the battery lasts all week.",positive
"Best blender I have owned, smoothies come out silky every time.",positive
"The running shoes are comfortable right out of the box.",positive
"Stopped working after two days and support never answered.",negative
"The zipper broke the first time I used this backpack.",negative
"Coffee tastes burnt no matter which setting I pick.",negative
"It does the job, nothing special but nothing wrong either.",neutral
"Average desk chair, fine for short sessions.",neutral
"The lamp is okay; the light is a bit cold for my taste.",neutral
"""

HOLDOUT_CSV = """review,sentiment
"Lovely kettle, boils fast and looks great on the counter.",positive
"The charger died within a week, total waste of money.",negative
"Decent mouse, the scroll wheel is a little loose.",neutral
"""

TINY_SPEC = """
name: tiny_reviews
description: a tiny spec for tests
seed:
  path: data/tiny_seed.csv
  text_column: review
  label_column: sentiment
  holdout_path: data/tiny_holdout.csv
labels: [positive, neutral, negative]
task: Write a short product review that expresses the given sentiment.
attributes:
  - name: product
    values: [headphones, blender, backpack]
    weights: [2, 1, 1]
few_shot:
  k: 2
  strategy: stratified
template: |
  {{ task }}
  {% for demo in demos %}
  Review ({{ demo.label }}): {{ demo.text }}
  {% endfor %}
  Write one new {{ label }} review of {{ product }}. Reply with the review text only.
num_samples: {num_samples}
random_seed: 7
generation:
  max_new_tokens: {max_new_tokens}
  temperature: 0.8
  batch_size: 8
curation:
  min_chars: 10
  max_chars: 600
gates:
  curated_min_rows: 1
"""


def write_tiny_spec(
    folder: Path,
    num_samples: int = 6,
    max_new_tokens: int = 24,
    replacements: dict[str, str] | None = None,
) -> Path:
    """Write the tiny spec and its seed files under `folder`; `replacements` swap text in the YAML."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "tiny_seed.csv").write_text(SEED_CSV)
    (folder / "data" / "tiny_holdout.csv").write_text(HOLDOUT_CSV)
    text = TINY_SPEC.replace("{num_samples}", str(num_samples)).replace(
        "{max_new_tokens}", str(max_new_tokens)
    )
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "tiny_reviews.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_spec_path(tmp_path: Path) -> Path:
    return write_tiny_spec(tmp_path / "specs")


def write_openai_spec(
    folder: Path,
    base_url: str,
    model: str = "m",
    num_samples: int = 2,
    extra: str = "",
    max_new_tokens: int = 24,
    replacements: dict[str, str] | None = None,
) -> Path:
    """The tiny spec with `backend: openai` at `base_url`; `extra` adds generation settings (YAML lines,
    each indented two spaces and ending in a newline); `replacements` as in `write_tiny_spec`."""
    generation = f"  backend: openai\n  model: {model}\n  base_url: {base_url}\n{extra}  temperature: 0.8"
    return write_tiny_spec(
        folder,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        replacements={"  temperature: 0.8": generation, **(replacements or {})},
    )


# ---- a loopback OpenAI-compatible server that misbehaves on request -------------------------------

Respond = Callable[["LoopbackHandler", dict[str, Any], int], None]


def completion_payload(content: str = "fine answer") -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
    respond: Respond
    models: list[dict[str, Any]]
    count: int
    in_flight: int
    lock: threading.Lock
    bodies: list[dict[str, Any]]
    props: dict[str, Any] | None = None
    protocol_version = "HTTP/1.1"

    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        props = type(self).props
        if props is not None and self.path.rstrip("/").endswith("/props"):
            self.send(200, props)  # llama-server's server properties (total_slots: its --parallel)
            return
        self.send(200, {"object": "list", "data": type(self).models})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.count += 1
            cls.in_flight += 1
            number = cls.count
            cls.bodies.append(body)
        try:
            cls.respond(self, body, number)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args: object) -> None:
        pass


class LoopbackServer:
    """A real threaded HTTP server on 127.0.0.1 standing in for an OpenAI-compatible one: POST answers
    with `respond(handler, body, request_number)`, GET /models with `models`, GET /props with `props`
    when given (else like /models). Misbehaviour on purpose (outages, slow drips, malformed bodies,
    load-dependent latency) is written as `respond`."""

    def __init__(
        self,
        respond: Respond,
        models: list[dict[str, Any]] | None = None,
        props: dict[str, Any] | None = None,
    ) -> None:
        attributes = {
            "respond": staticmethod(respond), "models": models or [], "count": 0, "in_flight": 0,
            "props": props,
        }  # fmt: skip
        handler = type("Handler", (LoopbackHandler,), {**attributes, "lock": threading.Lock(), "bodies": []})
        self.handler: type[LoopbackHandler] = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback() -> Iterator[Callable[..., LoopbackServer]]:
    """Start loopback OpenAI-compatible servers (`loopback(respond, models, props)`); closed afterwards."""
    servers: list[LoopbackServer] = []

    def start(
        respond: Respond, models: list[dict[str, Any]] | None = None, props: dict[str, Any] | None = None
    ) -> LoopbackServer:
        servers.append(LoopbackServer(respond, models, props))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def start_cli_run(spec_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real `synth-assets run --spec spec_path` subprocess in the repo root, stdout and stderr merged."""
    return subprocess.Popen(
        [sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


# ---- the real graph on a temporary DuckDB file and Dagster instance -------------------------------
# Dagster and the package are imported inside: the unit tests that only need the seed files above
# should not pay Dagster's import.

TINY_SPEC_NAME = "tiny_reviews"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GraphEnv:
    """One spec partition of the real graph (`build_definitions`, the real model) on a DuckDB file
    `root/warehouse.duckdb` and a Dagster instance under `root/dagster_home`; `specs_dir` is the spec
    catalog the assets read. `first_run_id`: whatever run the owning fixture made first."""

    root: Path
    specs_dir: Path
    store: Warehouse
    instance: dg.DagsterInstance
    partition: str = TINY_SPEC_NAME
    first_run_id: str = ""

    def run(
        self,
        spec_path: Path | None = None,
        *,
        stages: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize `synth_refresh_job` for the partition in this process, all five assets or only
        `stages`; `spec_path` replaces the catalog's spec file for this run (the CLI's --spec tag). A
        failed step or gate is returned in the result, never raised."""
        import dagster as dg

        from synth_assets.definitions import build_definitions
        from synth_assets.defs.common import spec_partitions
        from synth_assets.defs.resources import SPEC_PATH_TAG

        definitions = build_definitions(database=str(self.store.path), specs_dir=str(self.specs_dir))
        if not self.instance.has_dynamic_partition(spec_partitions.name, self.partition):
            self.instance.add_dynamic_partitions(spec_partitions.name, [self.partition])
        run_tags = {**(tags or {}), **({SPEC_PATH_TAG: str(spec_path)} if spec_path else {})}
        return definitions.resolve_job_def("synth_refresh_job").execute_in_process(
            instance=self.instance,
            partition_key=self.partition,
            tags=run_tags,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(stage) for stage in stages] if stages else None,
        )

    def count(self, table: str) -> int:
        """Rows in a warehouse table (all specs)."""
        return int(self.store.query(f"SELECT count(*) AS n FROM {table}")["n"].iloc[0])


@contextmanager
def graph_env(
    root: Path, specs_dir: Path | None = None, partition: str = TINY_SPEC_NAME
) -> Iterator[GraphEnv]:
    """A `GraphEnv` in `root` (specs in `specs_dir`, default `root/specs`) on a test instance whose
    storage lives in `root/dagster_home`; the instance is closed on exit."""
    import dagster as dg

    from synth_assets.storage import Warehouse

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield GraphEnv(
            root, specs_dir or root / "specs", Warehouse(root / "warehouse.duckdb"), instance, partition
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a real PostgreSQL server (moved here from test_deploy.py: test_storage_lake.py uses it too) ---
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class ServerUnavailable(Exception):
    """A real server cannot start here; the message says why (tests skip with it)."""


@contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """A PostgreSQL server in a temp folder on a free loopback port, stopped afterwards (also used by
    benchmarks/storage.py). Raises ServerUnavailable when it cannot start here."""
    binaries = _pg_bin()
    if binaries is None:
        raise ServerUnavailable(
            "PostgreSQL server binaries not installed (Debian: apt-get install postgresql)"
        )
    # initdb refuses to run as root: run the server as the `postgres` user the package creates
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise ServerUnavailable("running as root without runuser: cannot start PostgreSQL unprivileged")
        as_user = ["runuser", "-u", "postgres", "--"]
    # not under tmp_path: pytest's folder is private to root, and the server runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="synth-assets-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port, password = root / "data", free_port(), "test-only-password"
    (root / "pw").write_text(password)
    if as_user:
        shutil.chown(root / "pw", "postgres")

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{Path(args[0]).name} failed: {done.stderr[-1000:]}"

    run(
        str(binaries / "initdb"),
        "-D",
        str(data),
        "-U",
        "dagster",
        "--pwfile",
        str(root / "pw"),
        "-A",
        "scram-sha-256",
        "--no-sync",
    )
    run(
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-t",
        "60",
        "start",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
    )
    try:
        subprocess.run(
            [
                *as_user,
                str(binaries.parent / "bin" / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "dagster",
                "dagster_test",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": password},
        )
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": password,
            "DAGSTER_PG_DB": "dagster_test",
        }
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def moto_s3_server() -> Iterator[dict[str, str]]:
    """moto's S3-compatible server (`moto[server]`) on a free loopback port, with a bucket `lake`;
    stopped afterwards. `MOTO_PYTHONPATH`, when set, is the folder moto was installed into with
    `pip install --target` (kept off this process's path: its Flask/Werkzeug pins differ from
    Dagster's). Raises ServerUnavailable when moto is not installed."""
    env = dict(os.environ)
    if os.environ.get("MOTO_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["MOTO_PYTHONPATH"]
    found = subprocess.run([sys.executable, "-c", "import moto.server"], env=env, capture_output=True)
    if found.returncode != 0:
        raise ServerUnavailable(
            "moto[server] not installed (pip install 'moto[server]'): no S3 server to start"
        )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/lake", method="PUT")
                urllib.request.urlopen(request, timeout=5).close()
                break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on port {port}") from exc
                time.sleep(0.2)
        yield {"endpoint": f"127.0.0.1:{port}", "bucket": "lake", "key_id": "test", "secret": "test"}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[dict[str, str]]:
    """One real PostgreSQL server for the session (per xdist worker): starting one costs 1.5-4 s, so the
    scale-out tests share it, each in a database of its own (`postgres_database`)."""
    try:
        with postgres_server() as settings:
            yield settings
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def postgres_database(postgres_session: dict[str, str]) -> dict[str, str]:
    """A fresh, empty database on the session's PostgreSQL server (settings as `postgres` gives them)."""
    import uuid

    import psycopg2  # dagster-postgres's driver (dev extra)

    name = f"t_{uuid.uuid4().hex}"
    admin = psycopg2.connect(
        dbname=postgres_session["DAGSTER_PG_DB"],
        host=postgres_session["DAGSTER_PG_HOST"],
        port=postgres_session["DAGSTER_PG_PORT"],
        user=postgres_session["DAGSTER_PG_USERNAME"],
        password=postgres_session["DAGSTER_PG_PASSWORD"],
    )
    admin.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    return {**postgres_session, "DAGSTER_PG_DB": name}


def lake_catalog(postgres_settings: dict[str, str]) -> str:
    """The `postgres:` DuckLake catalog (SYNTH_ASSETS_LAKE_CATALOG) of a `postgres*` fixture's database."""
    return (
        f"postgres:dbname={postgres_settings['DAGSTER_PG_DB']} host={postgres_settings['DAGSTER_PG_HOST']} "
        f"port={postgres_settings['DAGSTER_PG_PORT']} user={postgres_settings['DAGSTER_PG_USERNAME']} "
        f"password={postgres_settings['DAGSTER_PG_PASSWORD']}"
    )


@pytest.fixture(scope="session")
def s3_session() -> Iterator[dict[str, str]]:
    """moto's S3 server for the session (per xdist worker); a test keeps to a prefix of its own."""
    try:
        with moto_s3_server() as settings:
            yield settings
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


def rejection_reasons(outcome: Any) -> dict[str, list[str]]:
    """sample_id -> reason codes of every rejected row of a `CurationOutcome`."""
    rejected = outcome.rejected
    return dict(zip(rejected["sample_id"], rejected["reasons"].map(json.loads), strict=True))


# ---- the real CLI in subprocesses --------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`synth-assets ARGS` as a real subprocess in the repo root with exactly `env`; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "synth_assets.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


@dataclass
class CliRun:
    """A finished `synth-assets run --spec spec_path` of the tiny spec (6 prompts, 24 new tokens) in a
    fresh DAGSTER_HOME `home` and DuckDB file `database`; `env` is the environment it ran with."""

    spec_path: Path
    home: Path
    database: Path
    env: dict[str, str]
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """One real CLI run of the tiny spec shared by the tests that only read what it made (its stdout,
    warehouse and Dagster runs): each read-only test would otherwise pay a model load and a run in its
    own subprocess. A test that writes to the warehouse or the instance makes its own run instead."""
    root = tmp_path_factory.mktemp("tiny_cli_run")
    spec_path = write_tiny_spec(root / "specs")
    home, database = root / "home", root / "w.duckdb"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "SYNTH_ASSETS_DB": str(database)}
    return CliRun(spec_path, home, database, env, run_cli("run", "--spec", str(spec_path), env=env))


@pytest.fixture(scope="session")
def embedder() -> Callable[..., Any]:
    """The real MiniLM model (offline, in a wheel), loaded once; each distinct text is embedded once
    per session."""
    import numpy as np

    from synth_assets.embeddings import embed

    cache: dict[str, Any] = {}

    def cached(texts: list[str]) -> Any:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, embed(missing), strict=True))
        return np.stack([cache[t] for t in texts]) if len(texts) else np.zeros((0, 384), np.float32)

    return cached
