"""`synth-assets`: run the graph for a spec, trace a row, compare versions, export, print the report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from synth_assets.browse import add_browse_parser
from synth_assets.paths import ensure_dagster_home
from synth_assets.run_summary import promoted_stages, summary_lines
from synth_assets.runtime import choose_threads, prepare_process, request_threads
from synth_assets.seed import load_seed_data
from synth_assets.spec import GenerationSpec, SpecError, load_spec
from synth_assets.storage import ROW_STAGES, Stage, StorageError, Warehouse


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _warehouse(args: argparse.Namespace) -> Warehouse:
    return Warehouse(args.db) if args.db else Warehouse()


def _plan(args: argparse.Namespace, spec: GenerationSpec, seed_rows: pd.DataFrame) -> int:
    """`run --dry-run`: prompts, calls, tokens and a measured time estimate; writes nothing."""
    from synth_assets.generation.backends import build_backend
    from synth_assets.generation.plan import plan_run
    from synth_assets.generation.prompts import expand_prompts

    prompts = expand_prompts(spec, seed_rows)
    store = _warehouse(args)
    print(f"dry run of spec '{spec.name}' ({spec.source_path}): nothing is written", flush=True)
    backend = build_backend(spec.generation)
    plan = plan_run(spec, prompts, backend, store)  # reads the cache (or the old file) without writing
    for line in plan.lines():
        print(line)
    if spec.generation.runs_in_process:
        print(f"local model: {choose_threads().describe()}")
    return 0


def _refuse_control_tokens(spec: GenerationSpec, seed_rows: pd.DataFrame) -> None:
    """Refuse chat control tokens in what an HTTP backend would send, before the run starts: found
    inside `generated_samples`, they stopped the run only after `seed_data` and `expanded_prompts` had
    replaced the last good versions (issue 15's battery). The local backend never parses content for
    control tokens, so its prompts pass."""
    if spec.generation.backend == "local":
        return
    from synth_assets.defs.generated_samples import refuse_control_tokens
    from synth_assets.generation.backends import control_tokens_in
    from synth_assets.generation.prompts import expand_prompts

    found = control_tokens_in(spec.generation.system_prompt or "")
    if found:  # else every call is refused one by one and the run fails on its failed-prompt gate
        raise CliError(
            f"{spec.source_path}: generation.system_prompt: contains the chat control token {found[0]!r}, "
            "which the server behind generation.base_url would read as chat markup: remove it"
        )
    try:
        refuse_control_tokens(expand_prompts(spec, seed_rows), spec, seed_rows)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def command_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    seed_rows = load_seed_data(spec)  # a bad seed file is reported in one line before any run starts
    _refuse_control_tokens(spec, seed_rows)
    request_threads(spec.generation.threads)
    if args.dry_run:
        return _plan(args, spec, seed_rows)
    store = _warehouse(args)
    store.check_usable()  # a bad --db fails here, in one line, before any work
    home = ensure_dagster_home()
    import uuid

    from synth_assets.definitions import build_definitions
    from synth_assets.defs.assets import spec_partitions
    from synth_assets.defs.resources import SPEC_PATH_TAG
    from synth_assets.run_control import (
        StopWatcher,
        add_partition,
        finish_stopped_run,
        open_instance,
        process_tags,
        reap_dead_runs,
        was_interrupted,
    )
    from synth_assets.run_queue import (
        QUEUE_TAG,
        LeftQueueError,
        enqueue_run,
        execute_queued_run,
        wait_for_slot,
    )

    # a catalog without a file (PostgreSQL) reaches the run through the same environment variables
    definitions = build_definitions(database=str(store.path) if store.config.catalog_file else "")
    job = definitions.resolve_job_def("synth_refresh_job")
    instance = open_instance(home)
    for dead in reap_dead_runs(instance):
        print(f"note: run {dead} had lost its process (killed); marked failed", flush=True)
    add_partition(instance, home, spec_partitions.name, spec.name)
    print(f"materializing spec '{spec.name}' ({spec.source_path}) into {store.path}", flush=True)
    if spec.generation.runs_in_process:
        print(f"local model: {choose_threads().describe()}", flush=True)
    run_id = str(uuid.uuid4())
    tags = {SPEC_PATH_TAG: str(spec.source_path), **process_tags()}
    queued = enqueue_run(instance, job, spec.name, tags, run_id)
    with StopWatcher(instance, run_id) as watcher:
        try:
            wait_for_slot(instance, home, run_id, lambda reason: print(f"waiting: {reason}", flush=True))
        except KeyboardInterrupt as exc:
            return _stopped_in_queue(instance, run_id, watcher.signal_name or str(exc) or "SIGINT")
        except LeftQueueError as exc:
            if exc.status == "CANCELED":
                return _stopped_in_queue(instance, run_id, "Dagster UI Terminate")
            raise CliError(
                f"{instance.root_directory}/dagster.yaml: concurrency.runs.tag_concurrency_limits: "
                f"the Dagster daemon took run {run_id} of this CLI out of the queue ({exc.status}); "
                f"give the tag {QUEUE_TAG} a limit of 0 as the repo's dagster.yaml does"
            ) from exc
        result = execute_queued_run(instance, queued)
    stopped = watcher.signal_name or ("a stop signal" if was_interrupted(result) else None)
    status = finish_stopped_run(instance, run_id, stopped) if stopped else None
    for evaluation in result.get_asset_check_evaluations():
        verdict = "passed" if evaluation.passed else "FAILED"
        print(f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {verdict}")
    counts = [f"{stage}={store.row_count(stage, spec.name, read_only=True)}" for stage in ROW_STAGES]
    print("rows: " + " ".join(counts) + " (curated_set, rejected_samples: the published version)")
    for line in summary_lines(store, spec, run_id):
        print(line)
    publication, held_back = publication_summary(store, spec.name, run_id)
    print(publication)
    # this run's report, passed or not (the `evaluation_report` table keeps only the last good one)
    report = store.read_version(Stage.EVALUATION_REPORT, spec.name, run_id, read_only=True)
    if report.empty:
        report = store.read_current(Stage.EVALUATION_REPORT, spec.name, read_only=True)
    print(f"DuckDB: {store.path} (the DuckLake catalog; {store.config.describe_data()})")
    if not report.empty:
        print(f"report: {report['report_path'].iloc[0]}")
    print(f"Dagster run {run_id} in DAGSTER_HOME={instance.root_directory}")
    print("UI: make ui, then open http://127.0.0.1:3000; samples: synth-assets browse --spec NAME")
    if stopped:
        kept = store.calls_made_in(run_id, read_only=True)
        print(
            f"error: stopped by {stopped}: run {run_id} recorded as {status}; "
            f"{kept} finished LLM calls of this run are kept in llm_cache, "
            "rerun the same command to resume; "
            f"{_current_note(store, spec, run_id)}",
            file=sys.stderr,
        )
        return 130
    if not result.success:
        failed = ", ".join(result.get_failed_step_keys()) or "unknown step"
        if held_back:
            print(f"error: the usefulness gate failed at {failed}: {held_back}", file=sys.stderr)
        else:
            print(
                f"error: run failed at {failed}{_step_error(result)}; {_current_note(store, spec, run_id)}",
                file=sys.stderr,
            )
        return 1
    return 0


def _stopped_in_queue(instance: Any, run_id: str, why: str) -> int:
    """A run stopped before it left the queue: recorded CANCELED, nothing ran; exit code 130."""
    import dagster as dg

    run = instance.get_run_by_id(run_id)
    if run is not None and run.status == dg.DagsterRunStatus.QUEUED:
        instance.report_run_canceled(run, message=f"stopped while queued ({why})")
    print(
        f"error: stopped by {why} while waiting in the run queue: run {run_id} recorded as CANCELED; "
        "nothing of it ran, the stored versions are unchanged",
        file=sys.stderr,
    )
    return 130


def _current_note(store: Warehouse, spec: GenerationSpec, run_id: str) -> str:
    """Exactly which stages this run made current, e.g. after a failure half-way."""
    promoted, unchanged = promoted_stages(store, spec, run_id)
    if not promoted:
        return "the previous promoted versions are unchanged"
    return (
        f"this run's versions of {', '.join(promoted)} are now current; "
        f"{', '.join(unchanged)} keep their previous versions"
    )


def _step_error(result: Any) -> str:
    """': <the first failed step's error, its last line>' (e.g. a full disk), or ''."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            message = str(event.step_failure_data.error.message).strip().splitlines()
            if message:
                return f": {message[-1][:300]}"
    return ""


def publication_summary(store: Warehouse, spec_name: str, run_id: str) -> tuple[str, str | None]:
    """The run summary's publication line: which curated_set version is published after `run_id`
    and what happened to the version that run evaluated (with the gate's reason when held back);
    plus, when it was held back, a short sentence for the one-line error."""
    published = store.published_run(Stage.CURATED_SET, spec_name, read_only=True)
    current = (
        f"published curated_set: run {published} (what `synth-assets export` writes)"
        if published
        else "published curated_set: none yet (`synth-assets export` has nothing to write)"
    )
    decisions = store.publications(spec_name, read_only=True)
    mine = decisions[decisions["decided_in_run_id"] == run_id]
    if mine.empty:
        return f"publication: no decision in this run; {current}", None
    decision = mine.iloc[0]
    version = decision["version_run_id"]
    which = "this run's version" if version == run_id else f"version of run {version}"
    if bool(decision["published"]):
        return f"publication: {which} PUBLISHED (usefulness gate passed); {current}", None
    held = f"{which} HELD BACK (not published)"
    return f"publication: {held}: {decision['reason']}; {current}", f"{held}; {current}"


def command_lineage(args: argparse.Namespace) -> int:
    from synth_assets.lineage.chain import LineageError, format_chain, trace
    from synth_assets.lineage.dagster_runs import open_run_directory

    store = _warehouse(args)
    with open_run_directory() as runs:
        try:
            chain = trace(store, args.id, runs=None if args.no_dagster else runs)
        except LineageError as exc:
            raise CliError(str(exc)) from exc
        if runs is None and not args.no_dagster:
            chain.dagster_note = "no Dagster instance found (DAGSTER_HOME): run annotations left out"
    print(json.dumps(chain.as_dict(), indent=2, default=str) if args.json else format_chain(chain))
    return 0


def _spec_fingerprints(spec_name: str, run_ids: list[str]) -> dict[str, str]:
    """The spec fingerprint each run's curated_set materialization recorded, where Dagster has it."""
    from synth_assets.lineage.dagster_runs import open_run_directory

    found: dict[str, str] = {}
    with open_run_directory() as runs:
        if runs is None:
            return found
        for run_id in run_ids:
            info = runs.describe(run_id, spec_name) or {}
            materialization = (info.get("materializations") or {}).get(Stage.CURATED_SET) or {}
            if materialization.get("spec_fingerprint"):
                found[run_id] = str(materialization["spec_fingerprint"])
    return found


def command_diff(args: argparse.Namespace) -> int:
    from synth_assets.lineage.diff import format_diff, latest_spec, load_diff, pick_versions
    from synth_assets.lineage.versions import spec_of

    store = _warehouse(args)
    try:
        spec_name = args.spec or spec_of(store, args.runs) or latest_spec(store)
        version_a, version_b = pick_versions(store, spec_name, list(args.runs))
    except LookupError as exc:  # DiffError, VersionError: one line naming what exists
        raise CliError(str(exc)) from exc
    runs = [version_a.run_id, version_b.run_id]
    fingerprints = {} if args.no_dagster else _spec_fingerprints(spec_name, runs)
    result, before, after = load_diff(store, spec_name, version_a, version_b, fingerprints)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print(format_diff(result, before, after, limit=args.limit))
    return 0


def _export_spec(
    store: Warehouse, spec_name: str, spec_file: str | None, snapshot: int | None = None
) -> tuple[GenerationSpec | None, str | None]:
    """The spec to describe in the card (`SpecCatalog.find`: the file given, else `specs/<name>.yaml`,
    else the path Dagster recorded), and the spec fingerprint the exported version (the one published
    at `snapshot`) was curated with (from Dagster, when known). A file given that is not that spec is
    an error; otherwise a spec found nowhere leaves the card without it."""
    from synth_assets.defs.resources import SpecCatalog
    from synth_assets.lineage.dagster_runs import open_run_directory

    spec = fingerprint = None
    with open_run_directory() as runs:
        try:
            spec = SpecCatalog().find(spec_name, spec_file, runs.instance if runs is not None else None)
        except SpecError:
            if spec_file:
                raise
        if runs is not None:
            published = store.promoted_version(
                Stage.CURATED_SET, spec_name, read_only=True, snapshot=snapshot
            )
            if published:
                info = runs.describe(published, spec_name) or {}
                curated = (info.get("materializations") or {}).get(Stage.CURATED_SET) or {}
                fingerprint = curated.get("spec_fingerprint")
    return spec, fingerprint


def command_export(args: argparse.Namespace) -> int:
    from synth_assets.export import ExportError, load_export_data, write_export
    from synth_assets.lineage.versions import VersionError, resolve_published

    store = _warehouse(args)
    try:
        snapshot = resolve_published(store, args.spec, args.at)
    except VersionError as exc:
        raise CliError(str(exc)) from exc
    spec, fingerprint = _export_spec(store, args.spec, args.spec_file, snapshot)
    try:
        data = load_export_data(store, args.spec, spec, fingerprint, snapshot=snapshot)
        written = write_export(data, args.format, Path(args.out), overwrite=args.overwrite)
    except ExportError as exc:
        raise CliError(str(exc)) from exc
    print(
        f"wrote {len(data.rows)} rows of '{args.spec}' (curated_set run {data.curated_run_id}) "
        f"as of snapshot @{data.snapshot_id}:"
    )
    for path in written:
        print(f"  {path}")
    for note in data.notes:
        print(f"note: {note}")
    return 0


def command_versions(args: argparse.Namespace) -> int:
    """Every version of a stage for a spec, with the DuckLake snapshot that wrote it."""
    from synth_assets.lineage.diff import DiffError, latest_spec
    from synth_assets.lineage.versions import format_versions, version_table

    store = _warehouse(args)
    try:
        spec_name = args.spec or latest_spec(store)
    except DiffError as exc:
        raise CliError(str(exc)) from exc
    table = version_table(store, spec_name, args.stage)
    if table.empty and spec_name not in store.specs_with(args.stage, read_only=True):
        known = ", ".join(store.specs_with(args.stage, read_only=True)) or "none"
        raise CliError(f"spec '{spec_name}' has no {args.stage} version (specs with one: {known})")
    if args.json:
        print(table.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(format_versions(table, spec_name, args.stage))
    return 0


def command_report(args: argparse.Namespace) -> int:
    """The newest evaluation report (of a spec, or of any spec), whether or not it passed its gate;
    `--good` prints the last good (promoted) one instead."""
    store = _warehouse(args)
    # the promoted report is the last good one: a report is promoted exactly when its gate passed
    row = store.newest_row(Stage.EVALUATION_REPORT, args.spec, promoted=args.good, read_only=True)
    if row is None:
        which = "good " if args.good else ""
        raise CliError(f"no {which}evaluation report{' for ' + args.spec if args.spec else ''} yet")
    print(row["markdown"])
    if row.get("report_path"):
        print(f"report file: {row['report_path']} (plot links are relative to its folder)")
    # str(): the flag comes back as bool, numpy.bool_ or None (rows from before the gate existed)
    if str(row.get("passed")) == "False":
        print(
            f"note: run {row['run_id']} FAILED its usefulness gate and was not promoted; the curated_set "
            f"version it evaluated ({row.get('curated_run_id')}) was held back (not published); "
            f"the last good report: synth-assets report --spec {row['spec_name']} --good"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synth-assets",
        description="Synthetic text datasets as Dagster assets in DuckDB, with lineage and quality gates.",
    )
    parser.add_argument(
        "--db",
        help="warehouse: a DuckLake catalog file, its Parquet files in <it>.files/ (default: "
        "$SYNTH_ASSETS_DB or data/synth_assets.ducklake); an old-layout DuckDB file is imported on first use",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialize all five assets for one spec")
    run.add_argument("--spec", required=True, help="path of a spec YAML file")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="render the prompts, count calls and tokens, time a warm-up batch and estimate the run; "
        "writes nothing",
    )
    run.set_defaults(handler=command_run)

    lineage = commands.add_parser(
        "lineage",
        help="where a curated or rejected row came from: seed demos, prompt, LLM calls, decisions, runs",
    )
    lineage.add_argument("id", help="sample id (a unique prefix is enough)")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.add_argument(
        "--no-dagster", action="store_true", help="skip the run lookup in the Dagster instance"
    )
    lineage.set_defaults(handler=command_lineage)

    diff = commands.add_parser(
        "diff", help="rows added, removed and changed in curated_set between two versions, with causes"
    )
    diff.add_argument(
        "runs",
        nargs="*",
        help="A B: run ids or unique prefixes, or @N for the newest version as of DuckLake snapshot N "
        "(synth-assets versions lists them); default: the last two versions",
    )
    diff.add_argument("--spec", help="spec name (default: of the runs given, else the most recently curated)")
    diff.add_argument("--limit", type=int, default=10, help="rows to show per kind of change")
    diff.add_argument("--json", action="store_true", help="every change as JSON")
    diff.add_argument(
        "--no-dagster", action="store_true", help="skip the spec-fingerprint lookup in the Dagster instance"
    )
    diff.set_defaults(handler=command_diff)

    export = commands.add_parser(
        "export",
        help="write the published curated set (passed its GX gate and the usefulness gate) and a dataset "
        "card (README.md) to a folder",
    )
    export.add_argument("--spec", required=True, help="spec name")
    export.add_argument(
        "--format",
        choices=["parquet", "jsonl", "hf"],
        default="jsonl",
        help="hf: a Hugging Face datasets folder (datasets.load_from_disk)",
    )
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--spec-file", help="the spec YAML to describe in the card (default: found by name)")
    export.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    export.add_argument(
        "--at",
        metavar="VERSION",
        help="@N: the version published at DuckLake snapshot N; or a run id (prefix): that run's version "
        "as it was published (default: the version published now)",
    )
    export.set_defaults(handler=command_export)

    versions = commands.add_parser(
        "versions", help="every version of a stage for a spec: run id, DuckLake snapshot, rows, gate"
    )
    versions.add_argument("--spec", help="spec name (default: the most recently curated)")
    versions.add_argument(
        "--stage",
        default=Stage.CURATED_SET.value,
        choices=[str(stage) for stage in Stage],
        help="which stage (default: curated_set)",
    )
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    versions.set_defaults(handler=command_versions)

    report = commands.add_parser(
        "report", help="print the latest evaluation report (Markdown; metrics, deltas, gate verdict)"
    )
    report.add_argument("--spec", help="spec name (default: the latest report of any spec)")
    report.add_argument(
        "--good", action="store_true", help="the last report that passed its usefulness gate instead"
    )
    report.set_defaults(handler=command_report)
    add_browse_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()  # OMP_WAIT_POLICY and thread counts, before anything imports torch
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (SpecError, CliError, FileNotFoundError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder under a regular file, a full disk, no permission: one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
