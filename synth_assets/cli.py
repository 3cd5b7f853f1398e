"""`synth-assets`: run the graph for a spec, trace a row, compare versions, export, print the report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from synth_assets.paths import ensure_dagster_home
from synth_assets.seed import load_seed_data
from synth_assets.spec import SpecError, load_spec
from synth_assets.storage import HISTORY_TABLE, Warehouse

STAGES = ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "rejected_samples")


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _warehouse(args: argparse.Namespace) -> Warehouse:
    return Warehouse(args.db) if args.db else Warehouse()


def _latest_spec(store: Warehouse, spec_name: str | None) -> str:
    if spec_name:
        return spec_name
    latest = store.read_only_query(
        f"SELECT spec_name FROM {HISTORY_TABLE['curated_set']} ORDER BY materialized_at DESC LIMIT 1"
    )
    if latest.empty:
        raise CliError("no curated_set yet: run `synth-assets run --spec PATH` first")
    return str(latest["spec_name"].iloc[0])


def command_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    load_seed_data(spec)  # a bad seed file is reported in one line before any run starts
    ensure_dagster_home()
    import dagster as dg

    from synth_assets.definitions import build_definitions
    from synth_assets.defs.assets import spec_partitions
    from synth_assets.defs.resources import SPEC_PATH_TAG

    store = _warehouse(args)
    definitions = build_definitions(database=str(store.path))
    job = definitions.resolve_job_def("synth_refresh_job")
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(spec_partitions.name, spec.name):
        instance.add_dynamic_partitions(spec_partitions.name, [spec.name])
    print(f"materializing spec '{spec.name}' ({spec.source_path}) into {store.path}", flush=True)
    result = job.execute_in_process(
        instance=instance,
        partition_key=spec.name,
        tags={SPEC_PATH_TAG: str(spec.source_path)},
        raise_on_error=False,
    )
    for evaluation in result.get_asset_check_evaluations():
        verdict = "passed" if evaluation.passed else "FAILED"
        print(f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {verdict}")
    counts = []
    for stage in STAGES:
        frame = store.read_only_query(f'SELECT count(*) AS n FROM "{stage}" WHERE spec_name = ?', [spec.name])
        counts.append(f"{stage}={int(frame['n'].iloc[0])}")
    print("rows: " + " ".join(counts))
    report = store.read_only_query(
        "SELECT report_path FROM evaluation_report WHERE spec_name = ?", [spec.name]
    )
    print(f"DuckDB: {store.path}")
    if not report.empty:
        print(f"report: {report['report_path'].iloc[0]}")
    print(f"Dagster run {result.run_id} in DAGSTER_HOME={instance.root_directory}")
    print("UI: make ui  (dagster dev -w workspace.yaml), then open http://127.0.0.1:3000")
    if not result.success:
        failed = ", ".join(result.get_failed_step_keys()) or "unknown step"
        print(f"error: run failed at {failed}; the previous promoted versions are unchanged", file=sys.stderr)
        return 1
    return 0


def command_lineage(args: argparse.Namespace) -> int:
    from synth_assets.lineage.chain import LineageError, format_chain, trace

    try:
        chain = trace(_warehouse(args), args.id)
    except LineageError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(chain.as_dict(), indent=2, default=str) if args.json else format_chain(chain))
    return 0


def command_diff(args: argparse.Namespace) -> int:
    store = _warehouse(args)
    spec_name = _latest_spec(store, args.spec)
    runs = store.read_only_query(
        f"SELECT run_id, max(materialized_at) AS at FROM {HISTORY_TABLE['curated_set']} "
        "WHERE spec_name = ? GROUP BY run_id ORDER BY at",
        [spec_name],
    )
    if args.runs:
        if len(args.runs) != 2:
            raise CliError("diff takes two run ids (or none for the last two runs)")
        run_a, run_b = args.runs
        for run in (run_a, run_b):
            if run not in set(runs["run_id"]):
                raise CliError(f"run '{run}' has no curated_set version for spec '{spec_name}'")
    else:
        if len(runs) < 2:
            raise CliError(f"spec '{spec_name}' has {len(runs)} curated_set version(s); diff needs two")
        run_a, run_b = runs["run_id"].iloc[-2], runs["run_id"].iloc[-1]
    before = store.read_version("curated_set", spec_name, run_a)
    after = store.read_version("curated_set", spec_name, run_b)
    added = after[~after["sample_id"].isin(before["sample_id"])]
    removed = before[~before["sample_id"].isin(after["sample_id"])]
    print(f"curated_set of '{spec_name}': {run_a} -> {run_b}")
    print(
        f"rows {len(before)} -> {len(after)}: +{len(added)} added, -{len(removed)} removed, "
        f"{len(after) - len(added)} unchanged"
    )
    for label, frame, sign in (("added", added, "+"), ("removed", removed, "-")):
        for row in frame.head(args.limit).itertuples(index=False):
            print(f"{sign} {row.sample_id} [{row.label}] {' '.join(str(row.text).split())[:100]}")
        if len(frame) > args.limit:
            print(f"  ... {len(frame) - args.limit} more {label}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    store = _warehouse(args)
    curated = store.read_only_query(
        "SELECT sample_id, prompt_id, label, text, run_id FROM curated_set WHERE spec_name = ?",
        [args.spec],
    )
    if curated.empty:
        raise CliError(f"spec '{args.spec}' has no promoted curated_set to export")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{args.spec}.{args.format}"
    if args.format == "parquet":
        curated.to_parquet(target, index=False)
    else:
        curated.to_json(target, orient="records", lines=True, force_ascii=False)
    print(f"wrote {len(curated)} rows to {target}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    store = _warehouse(args)
    spec_name = args.spec
    query = "SELECT spec_name, markdown FROM evaluation_report"
    frame = store.read_only_query(
        query + (" WHERE spec_name = ?" if spec_name else " ORDER BY materialized_at DESC LIMIT 1"),
        [spec_name] if spec_name else [],
    )
    if frame.empty:
        raise CliError(f"no evaluation report{' for ' + spec_name if spec_name else ''} yet")
    print(frame["markdown"].iloc[0])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synth-assets",
        description="Synthetic text datasets as Dagster assets in DuckDB, with lineage and quality gates.",
    )
    parser.add_argument("--db", help="DuckDB file (default: $SYNTH_ASSETS_DB or data/synth_assets.duckdb)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialize all five assets for one spec")
    run.add_argument("--spec", required=True, help="path of a spec YAML file")
    run.set_defaults(handler=command_run)

    lineage = commands.add_parser("lineage", help="where a curated or rejected row came from")
    lineage.add_argument("id", help="sample id (a unique prefix is enough)")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.set_defaults(handler=command_lineage)

    diff = commands.add_parser("diff", help="rows added/removed in curated_set between two runs")
    diff.add_argument("runs", nargs="*", help="RUN_A RUN_B (default: the last two runs)")
    diff.add_argument("--spec", help="spec name (default: the most recently curated)")
    diff.add_argument("--limit", type=int, default=10, help="rows to show per side")
    diff.set_defaults(handler=command_diff)

    export = commands.add_parser("export", help="write the promoted curated set to a file")
    export.add_argument("--spec", required=True, help="spec name")
    export.add_argument("--format", choices=["parquet", "jsonl"], default="jsonl")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(handler=command_export)

    report = commands.add_parser("report", help="print the latest evaluation report")
    report.add_argument("--spec", help="spec name (default: the latest report)")
    report.set_defaults(handler=command_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (SpecError, CliError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
