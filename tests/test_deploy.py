"""deploy/dagster-postgres.yaml: valid Dagster instance config with env-var credentials, and a real
instance on a throwaway PostgreSQL server (Debian's `postgresql` package) that stores a partitioned
run. The second test skips, saying why, when PostgreSQL's server binaries are not installed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
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
