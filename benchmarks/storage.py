"""Storage figures of the warehouse (`Warehouse` on DuckLake, synth_assets.storage).

Imports an old-layout warehouse (a DuckDB file this DuckDB can open, or the folder
`EXPORT DATABASE '<folder>' (FORMAT parquet)` wrote from one; the file is only read) into a fresh catalog,
reads the newest version of every stage of one spec from it, then replays "materializations" of those
rows through `Warehouse` (each stage written as the assets write it: versions promoted, curated/rejected
staged with their gate row, the evaluation report publishing them):

0. the import: seconds, rows per table, bytes of the file vs the catalog + data files;
1. bytes on disk after 10 unchanged materializations / after 1, and ms per write and per read;
2. two processes materializing two specs at once vs one after the other (wall, rows per spec equal);
3. reads of the current version in a bounded loop while (2) writes: how many failed;
4. (2) and (3) again through `Warehouse` with the catalog on a real PostgreSQL and the data on moto's
   S3 server, both on loopback (started with tests/conftest.py's `postgres_server` / `moto_s3_server`;
   `--no-pg-s3` skips it); (2) and (4) also give the bytes left each way (catalog, data files).

    PYTHONPATH=.lake-site:$PWD MOTO_PYTHONPATH=.moto-site python benchmarks/storage.py --source data/export

Prints the CPU model, one line per figure and a RESULT line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pandas as pd
import psycopg2  # dagster-postgres's driver (dev extra): creates the catalog databases

from synth_assets.storage import (
    HISTORY_TABLE,
    WAREHOUSE_ERRORS,
    GateRecord,
    LakeConfig,
    Publication,
    S3Settings,
    Warehouse,
)
from synth_assets.storage.migrate import import_warehouse, source_tables

ROOT = Path(__file__).resolve().parent.parent
STAGED = ("curated_set", "rejected_samples")
READ_EVERY_S = 0.1  # the reader's pace while writers run (a UI refreshing, a CLI polling)
MAX_READS = 10_000  # the bounded loop


def load_stages(source: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    """(spec_name, {stage: rows}) of the newest version of each stage of the first spec in `source`."""
    connection, tables = source_tables(source)
    try:
        spec = connection.execute('SELECT any_value(spec_name) FROM "seed_data_history"').fetchone()[0]
        frames = {}
        for stage, history in HISTORY_TABLE.items():
            if history in tables:
                frames[stage] = connection.execute(
                    f'SELECT * FROM "{history}" WHERE spec_name = ? AND run_id = '
                    f'(SELECT arg_max(run_id, materialized_at) FROM "{history}" WHERE spec_name = ?)',
                    [spec, spec],
                ).fetchdf()
        return str(spec), frames
    finally:
        connection.close()


def materialize(store: Warehouse, spec: str, run_id: str, frames: dict[str, pd.DataFrame]) -> None:
    """One run's writes, in the order and shape the assets make them."""
    for stage in ("seed_data", "expanded_prompts", "generated_samples"):
        store.write_version(stage, spec, run_id, frames[stage], promote=True)
    store.write_versions(
        {stage: frames[stage] for stage in STAGED},
        spec,
        run_id,
        promote=False,
        gate=GateRecord("curated_set", "curated_set_gate", True, "benchmark"),
    )
    store.write_version(
        "evaluation_report",
        spec,
        f"{run_id}-eval",
        frames["evaluation_report"],
        promote=True,
        publication=Publication("curated_set", run_id, True, "benchmark"),
    )


def folder_bytes(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def growth(frames: dict[str, pd.DataFrame], spec: str, runs: int, folder: Path) -> dict[str, float]:
    """Bytes after 1 and after `runs` unchanged materializations; ms per write (each materialization
    is 5 writes) and per read of the current generated_samples."""
    lake = Warehouse(config=LakeConfig.embedded(folder))
    sizes: list[int] = []
    writing = reading = 0.0
    for run in range(runs):
        started = time.perf_counter()
        materialize(lake, spec, f"run-{run}", frames)
        writing += time.perf_counter() - started
        started = time.perf_counter()
        lake.read_current("generated_samples", spec, read_only=True)
        reading += time.perf_counter() - started
        if run in (0, runs - 1):
            sizes.append(lake.storage_bytes())
    lake.close()
    return {
        "bytes_1": sizes[0],
        f"bytes_{runs}": sizes[1],
        "growth": sizes[1] / sizes[0],
        "ms_per_write": 1000 * writing / (runs * 5),
        "ms_per_read": 1000 * reading / runs,
    }


def migration(source: Path, folder: Path) -> dict[str, object]:
    """Import `source` (old layout) into a fresh embedded catalog: seconds, rows, bytes."""
    store = Warehouse(config=LakeConfig.embedded(folder))
    store.check_usable()
    started = time.perf_counter()
    counts = import_warehouse(source, store)
    seconds = time.perf_counter() - started
    lake_bytes = store.storage_bytes()
    store.close()
    return {
        "seconds": round(seconds, 2),
        "rows": counts,
        "file_bytes": folder_bytes(source),
        "lake_bytes": lake_bytes,
    }


def _config_json(config: LakeConfig) -> str:
    s3 = dataclasses.asdict(config.s3) if config.s3 else None
    return json.dumps({"catalog": config.catalog, "data_path": config.data_path, "s3": s3})


def worker(config_json: str, spec: str, runs: int, source: Path) -> None:
    """One writer process: `runs` materializations of the source rows under the name `spec`."""
    settings = json.loads(config_json)
    s3 = S3Settings(**settings["s3"]) if settings["s3"] else None
    lake = Warehouse(config=LakeConfig(settings["catalog"], settings["data_path"], s3))
    _name, frames = load_stages(source)
    for run in range(runs):
        # each run changes one generated text, so every run writes new rows as well as new versions
        changed = {stage: frame.copy() for stage, frame in frames.items()}
        changed["generated_samples"].loc[0, "text"] = f"{spec} run {run}"
        started = time.monotonic()
        materialize(lake, spec, f"run-{run}", changed)
        print(f"{spec} run {run}: {time.monotonic() - started:.2f}s", flush=True)
    print(json.dumps({"retries": len(lake.retries), "kinds": sorted(set(lake.retries))[:3]}))


def _spawn(config: LakeConfig, spec: str, runs: int, source: Path) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--worker", _config_json(config), spec, str(runs), str(source)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate(timeout=900)
    if process.returncode != 0:
        raise SystemExit(f"writer failed: {err[-2000:]}")
    print(out.strip(), flush=True)


def rows_per_spec(config: LakeConfig, specs: tuple[str, ...]) -> dict[str, list[tuple[str, str, int]]]:
    lake = Warehouse(config=config)
    out = {
        spec: [
            (str(stage), str(run), int(count))
            for stage, run, count in lake.query(
                "SELECT stage, run_id, row_count FROM versions WHERE spec_name = ? ORDER BY stage, run_id",
                [spec],
            ).itertuples(index=False)
        ]
        for spec in specs
    }
    lake.close()
    return out


def _write_while_reading(
    config: LakeConfig, groups: list[tuple[str, ...]], runs: int, source: Path
) -> tuple[float, int, int]:
    """Run the writer groups one after the other (the specs of a group at once) while this process
    reads the current generated_samples every READ_EVERY_S; (wall seconds, reads, failed reads)."""
    reader, reads, failed = Warehouse(config=config), 0, 0
    reader.snapshot_id()  # the tables exist before the writers start, as after `synth-assets` startup
    started = time.monotonic()
    for group in groups:
        writers = [_spawn(config, spec, runs, source) for spec in group]
        while any(writer.poll() is None for writer in writers) and reads + failed < MAX_READS:
            try:
                reader.read_current("generated_samples", group[0], read_only=True)
                reads += 1
            except WAREHOUSE_ERRORS as exc:
                failed += 1
                print(f"read failed: {str(exc).splitlines()[0]}", flush=True)
            time.sleep(READ_EVERY_S)
        for writer in writers:
            _finish(writer)
    wall = time.monotonic() - started
    reader.close()
    return wall, reads + failed, failed


def embedded_bytes(config: LakeConfig) -> dict[str, int]:
    """Bytes of an embedded catalog: the SQLite file (with its WAL) and the Parquet folder."""
    catalog, data = Path(str(config.catalog_file)), Path(str(config.local_data))
    files = [path for path in catalog.parent.glob(catalog.name + "*") if path.is_file()]
    return {"catalog_bytes": folder_bytes(*files), "data_bytes": folder_bytes(data)}


def two_writers(
    make_config: Callable[[str], LakeConfig],
    runs: int,
    source: Path,
    measure: Callable[[LakeConfig], dict[str, int]] = embedded_bytes,
) -> dict[str, object]:
    """Two specs one after the other vs at once (fresh catalogs), a reader polling during both; the
    bytes each way left (`measure`: catalog and data bytes of a configuration)."""
    specs = ("alpha", "beta")
    sequential_config, concurrent_config = make_config("sequential"), make_config("concurrent")
    sequential_s, sequential_reads, sequential_failed = _write_while_reading(
        sequential_config, [(spec,) for spec in specs], runs, source
    )
    concurrent_s, reads, failed = _write_while_reading(concurrent_config, [specs], runs, source)
    one_by_one, at_once = rows_per_spec(sequential_config, specs), rows_per_spec(concurrent_config, specs)
    same = one_by_one == at_once
    for spec in specs if not same else ():
        print(f"{spec} one after the other only: {sorted(set(one_by_one[spec]) - set(at_once[spec]))}")
        print(f"{spec} at once only: {sorted(set(at_once[spec]) - set(one_by_one[spec]))}")
        print(f"{spec} versions rows: {len(one_by_one[spec])} vs {len(at_once[spec])}", flush=True)
    return {
        "sequential_s": round(sequential_s, 1),
        "concurrent_s": round(concurrent_s, 1),
        "concurrent_vs_sequential": round(concurrent_s / sequential_s, 2),
        "rows_equal": same,
        "reads": reads + sequential_reads,
        "failed_reads": failed + sequential_failed,
        **{f"sequential_{k}": v for k, v in measure(sequential_config).items()},
        **{f"concurrent_{k}": v for k, v in measure(concurrent_config).items()},
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, help="warehouse file or EXPORT DATABASE folder")
    parser.add_argument(
        "--runs", type=int, default=10, help="unchanged materializations for the growth figure"
    )
    parser.add_argument("--writer-runs", type=int, default=5, help="materializations per writer process")
    parser.add_argument("--no-pg-s3", action="store_true", help="skip the PostgreSQL + S3 figure")
    parser.add_argument("--no-writers", action="store_true", help="skip the two-writer figures")
    parser.add_argument(
        "--also-import", type=Path, nargs="*", default=[], help="more old-layout files to time the import of"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("CONFIG", "SPEC", "RUNS", "SOURCE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        config_json, spec, runs, source = args.worker
        worker(config_json, spec, int(runs), Path(source))
        return
    if args.source is None:
        parser.error("--source is required")
    source = args.source.resolve()
    print(
        f"cpu: {cpu_model()}, {len(__import__('os').sched_getaffinity(0))} cores; duckdb {duckdb.__version__}"
    )
    spec, frames = load_stages(source)
    print(f"source: {source} spec={spec} rows=" + ",".join(f"{s}:{len(f)}" for s, f in frames.items()))
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        for extra in [source, *args.also_import]:
            imported = migration(extra.resolve(), folder / f"import-{extra.name}")
            print(f"import {extra}:", json.dumps(imported))
        grown = growth(frames, spec, args.runs, folder / "growth")
        print("growth:", json.dumps(grown))
        results |= {
            "growth": round(grown["growth"], 3),
            "ms_per_write": round(grown["ms_per_write"], 1),
            "ms_per_read": round(grown["ms_per_read"], 1),
        }

        if args.no_writers:
            print("RESULT " + " ".join(f"{key}={value}" for key, value in results.items()))
            return
        embedded = two_writers(
            lambda name: LakeConfig.embedded(folder / f"embedded-{name}"), args.writer_runs, source
        )
        print("embedded two writers:", json.dumps(embedded))
        results |= {f"embedded_{key}": value for key, value in embedded.items()}

        if not args.no_pg_s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import moto_s3_server, postgres_server  # the tests' real servers

            pg = stack.enter_context(postgres_server())
            s3 = stack.enter_context(moto_s3_server())
            base = (
                f"host={pg['DAGSTER_PG_HOST']} port={pg['DAGSTER_PG_PORT']} "
                f"user={pg['DAGSTER_PG_USERNAME']} password={pg['DAGSTER_PG_PASSWORD']}"
            )

            def pg_s3(name: str) -> LakeConfig:
                database = f"lake_{name}"  # one catalog database per configuration
                admin = psycopg2.connect(f"dbname={pg['DAGSTER_PG_DB']} {base}")
                admin.autocommit = True  # CREATE DATABASE refuses to run in a transaction
                with admin.cursor() as cursor:
                    cursor.execute(f"CREATE DATABASE {database}")
                admin.close()
                settings = S3Settings(s3["endpoint"], s3["key_id"], s3["secret"])
                return LakeConfig(
                    f"postgres:dbname={database} {base}", f"s3://{s3['bucket']}/{name}/", settings
                )

            def remote_bytes(config: LakeConfig) -> dict[str, int]:
                # the catalog's tables in PostgreSQL (not the empty database's own ~7 MB) and the
                # objects under the configuration's prefix in the bucket
                import boto3  # moto's own dependency (dev extra)

                admin = psycopg2.connect(config.catalog.removeprefix("postgres:"))
                with admin.cursor() as cursor:
                    cursor.execute(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
                    )
                    catalog_bytes = int(cursor.fetchone()[0])
                admin.close()
                client = boto3.client(
                    "s3",
                    endpoint_url=f"http://{s3['endpoint']}",
                    aws_access_key_id=s3["key_id"],
                    aws_secret_access_key=s3["secret"],
                    region_name="us-east-1",
                )
                prefix = config.data_path.removeprefix(f"s3://{s3['bucket']}/")
                pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix)
                data_bytes = sum(item["Size"] for page in pages for item in page.get("Contents", []))
                return {"catalog_bytes": catalog_bytes, "data_bytes": data_bytes}

            remote = two_writers(pg_s3, args.writer_runs, source, remote_bytes)
            print("postgres catalog + s3 data two writers:", json.dumps(remote))
            results |= {f"pg_s3_{key}": value for key, value in remote.items()}
    print("RESULT " + " ".join(f"{key}={value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
