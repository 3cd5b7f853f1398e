"""deploy/dagster-postgres.yaml: valid Dagster instance config with env-var credentials, and a real
instance on a throwaway PostgreSQL server (Debian's `postgresql` package) that stores a partitioned
run. The second test skips, saying why, when PostgreSQL's server binaries are not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import free_port
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config

DEPLOY = Path(__file__).parent.parent / "deploy" / "dagster-postgres.yaml"
PG_VARS = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)


def test_config_is_valid_and_takes_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_postgres import DagsterPostgresStorage

    shutil.copy(DEPLOY, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # raises on a schema error
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 1
    storage = config["storage"]["postgres"]
    fields = ("hostname", "port", "username", "password", "db_name")
    # every connection setting, the password included, comes from an environment variable
    settings = {f: {"env": v} for f, v in zip(fields, PG_VARS, strict=True)}
    assert storage["postgres_db"] == {**settings, "scheme": "postgresql+psycopg2"}
    storage_type = resolve_to_config_type(DagsterPostgresStorage.config_type())
    for name in PG_VARS:
        monkeypatch.delenv(name, raising=False)
    missing = process_config(storage_type, storage)
    assert not missing.success and "DAGSTER_PG_PASSWORD" in str(missing.errors)
    values = dict(zip(PG_VARS, ["db.internal", "6543", "dagster", "s3cret", "dagster_db"], strict=True))
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    resolved = process_config(storage_type, storage)
    assert resolved.success, resolved.errors
    assert resolved.value["postgres_db"]["port"] == 6543
    assert resolved.value["postgres_db"]["password"] == "s3cret"


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres() -> Iterator[dict[str, str]]:
    """A PostgreSQL server in a temp folder on a free loopback port, stopped afterwards."""
    binaries = _pg_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    # initdb refuses to run as root: run the server as the `postgres` user the package creates
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
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


def test_instance_runs_on_a_real_postgres(
    postgres: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY, home / "dagster.yaml")
    partitions = dg.DynamicPartitionsDefinition(name="spec")

    @dg.asset(partitions_def=partitions)
    def seed_data() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 3}, data_version=dg.DataVersion("v1"))

    started = time.monotonic()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions("spec", ["product_reviews"])
        result = dg.materialize([seed_data], instance=instance, partition_key="product_reviews")
        assert result.success
    # a second instance object (another process, another machine) sees the same history
    with dg.DagsterInstance.from_config(str(home)) as other:
        assert other.get_run_by_id(result.run_id) is not None
        assert other.get_dynamic_partitions("spec") == ["product_reviews"]
        record = other.fetch_materializations(dg.AssetKey("seed_data"), limit=1).records[0]
        assert record.partition_key == "product_reviews" and record.run_id == result.run_id
    assert yaml.safe_load(DEPLOY.read_text())["storage"]["postgres"]
    assert time.monotonic() - started < 120
