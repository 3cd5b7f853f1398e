"""deploy/dagster-postgres.yaml: valid Dagster instance config with env-var credentials and the same run
queue rules as the repo's dagster.yaml (runs of different specs at once, one run per spec, the CLI's
runs kept from the daemon), and a real instance on a throwaway PostgreSQL server (Debian's `postgresql`
package) that stores a partitioned run and queues runs by those rules. The second test skips, saying
why, when PostgreSQL's server binaries are not installed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config

from synth_assets.run_queue import QUEUE_TAG, SPEC_TAG, enqueue_run, queue_blocker

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy" / "dagster-postgres.yaml"
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


def test_the_postgres_deploy_queues_runs_by_the_same_rules_as_the_local_instance(tmp_path: Path) -> None:
    queues = {}
    for name, source in (("local", ROOT / "dagster.yaml"), ("postgres", DEPLOY)):
        home = tmp_path / name
        home.mkdir()
        shutil.copy(source, home / "dagster.yaml")
        queues[name] = dagster_instance_config(str(home))[0]["concurrency"]["runs"]
    # the same tag limits, entry for entry: one run per spec (every run of a spec carries its name in
    # dagster/partition), and the CLI's runs (QUEUE_TAG) never dequeued by the daemon
    assert queues["postgres"]["tag_concurrency_limits"] == queues["local"]["tag_concurrency_limits"]
    per_spec = {"key": SPEC_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert per_spec in queues["postgres"]["tag_concurrency_limits"]
    assert {"key": QUEUE_TAG, "limit": 0} in queues["postgres"]["tag_concurrency_limits"]
    # runs of different specs at once (the warehouse takes concurrent writers on either catalog)
    assert queues["postgres"]["max_concurrent_runs"] == queues["local"]["max_concurrent_runs"] > 1


def test_instance_runs_on_a_real_postgres(
    postgres_database: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in postgres_database.items():
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
        # the queue by the deploy's rules, on PostgreSQL: a second run of one spec waits behind the
        # first, a run of another spec may start beside it (what the CLI and the daemon both apply)
        job = dg.Definitions(
            assets=[seed_data], jobs=[dg.define_asset_job("seed_job", selection=[seed_data])]
        ).resolve_job_def("seed_job")
        other.add_dynamic_partitions("spec", ["smartphone_reviews"])
        first, again, beside = (f"0b7d5b2e-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
        enqueue_run(other, job, "product_reviews", {}, first)
        enqueue_run(other, job, "product_reviews", {}, again)
        enqueue_run(other, job, "smartphone_reviews", {}, beside)
        assert queue_blocker(other, first) is None
        assert queue_blocker(other, again) == (
            f"run {first} of spec product_reviews is queued ahead of this one (one run per spec at a time)"
        )
        assert queue_blocker(other, beside) is None  # max_concurrent_runs: 2
    assert yaml.safe_load(DEPLOY.read_text())["storage"]["postgres"]
    assert time.monotonic() - started < 120
