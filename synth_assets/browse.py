"""`synth-assets browse`: every curated and rejected row of one curated_set version in Datasette.

One version (a curated_set run) of one spec is exported from DuckDB into a small SQLite file, then
served by Datasette (https://datasette.io), which gives facets, filters, sorting, full-text cells and
row pages without a hand-made web app:

- `samples`: one row per curated or rejected sample, with `status`, label, reasons, flags, scores,
  one `attr_<name>` column per spec attribute and the full text exactly as stored (HTML-escaped by
  Datasette, never rendered as Markdown, never cut: `truncate_cells_html` is 0);
- lineage tables the sample rows link to through foreign keys (Datasette renders them as links):
  `prompts` (prompt text and sampled conditions), `demos` with `prompt_demos` (which seed rows the
  prompt showed), `models` (model, backend, generation parameters) and `runs` (the generation and
  curation runs, with a link into the Dagster UI);
- a canned query `lineage` (one sample with its prompt, demos, model and runs); every sample row
  carries a link to it in its `lineage` column.

Facets come from the metadata file: status, label, reasons and flags (JSON arrays, faceted per
element) and each attribute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from synth_assets.columns import COLUMN_DESCRIPTIONS
from synth_assets.spec import SpecError, load_spec
from synth_assets.storage import Stage, Warehouse

DATABASE = "browse"  # the SQLite file's stem: Datasette's URL path of the database
DEFAULT_PORT = 8001
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
# lets long texts keep their line breaks in the table view (Datasette collapses whitespace otherwise)
CSS = "td.col-text, td.col-prompt_text, td.col-system_prompt { white-space: pre-wrap; min-width: 32em; }\n"

_CURATED, _REJECTED = COLUMN_DESCRIPTIONS[Stage.CURATED_SET], COLUMN_DESCRIPTIONS[Stage.REJECTED_SAMPLES]
# the columns of `samples`, in order, with the descriptions Datasette shows
SAMPLE_COLUMNS: dict[str, str] = {
    "sample_id": _CURATED["sample_id"],
    "status": "curated (kept) or rejected",
    "label": "final label (curated: differs from intended_label only when relabeled)",
    "intended_label": _CURATED["intended_label"],
    "predicted_label": _CURATED["predicted_label"],
    "reasons": _REJECTED["reasons"] + " (rejected rows)",
    "flags": _CURATED["flags"] + " (curated rows)",
    "text": "the sample text as stored (PII scrubbed), in full",
    **{name: _CURATED[name] for name in ("label_confidence", "relevance", "nearest_similarity")},
    **{name: _CURATED[name] for name in ("judge_score", "pii_hits")},
    "details": _REJECTED["details"] + " (rejected rows)",
    "prompt_id": "the prompt that produced the sample (link: prompt text, demos)",
    "model_fingerprint": "the model and parameters that wrote it (link)",
    "generated_in_run": "the run whose LLM call wrote the text (link)",
    "curated_in_run": "the curated_set version (run) shown here (link)",
    "lineage": "the whole chain of this row: prompt, demos, model, runs",
}
LINEAGE_SQL = """
SELECT s.sample_id, s.status, s.label, s.reasons, s.flags, s.text,
       p.prompt_text, p.system_prompt, p.attributes,
       (SELECT group_concat(d.seed_id || ' [' || d.label || '] ' || d.text, char(10))
          FROM prompt_demos pd JOIN demos d ON d.seed_id = pd.seed_id
         WHERE pd.prompt_id = s.prompt_id) AS demos,
       m.model, m.backend, m.generation_params,
       s.generated_in_run, g.dagster_run AS generation_run_in_dagster,
       s.curated_in_run, c.dagster_run AS curation_run_in_dagster
  FROM samples s
  LEFT JOIN prompts p ON p.prompt_id = s.prompt_id
  LEFT JOIN models m ON m.model_fingerprint = s.model_fingerprint
  LEFT JOIN runs g ON g.run_id = s.generated_in_run
  LEFT JOIN runs c ON c.run_id = s.curated_in_run
 WHERE s.sample_id = :sample_id
"""


class BrowseError(Exception):
    """Bad input to `browse`: printed as one line, exit code 2."""


@dataclass(frozen=True)
class BrowseExport:
    """What `export_browse_db` wrote: the SQLite file, its Datasette metadata and static folder,
    and the version it holds (`curated_rows` + `rejected_rows` rows in `samples`)."""

    database: Path
    metadata: Path
    static: Path
    spec_name: str
    run_id: str
    curated_rows: int
    rejected_rows: int


def spec_name_of(value: str) -> str:
    """A spec name as given, or the `name:` of a spec YAML file when `value` is a path to one."""
    if value.endswith((".yaml", ".yml")) or os.sep in value:
        return load_spec(value).name
    return value


def resolve_version(store: Warehouse, spec_name: str, version: str | None) -> str:
    """The curated_set run to browse: `version` (a run id or unique prefix), else the published one,
    else the newest. Raises BrowseError naming the known specs or versions when there is none."""
    ids = [v.run_id for v in reversed(store.versions(Stage.CURATED_SET, spec_name, read_only=True))]
    if not ids and not store.stage_exists(Stage.CURATED_SET, read_only=True):
        raise BrowseError(f"{store.path}: no curated_set table yet: run `synth-assets run --spec PATH` first")
    if not ids:
        known = store.specs_with(Stage.CURATED_SET, read_only=True)
        raise BrowseError(
            f"{store.path}: --spec: no curated_set version of spec '{spec_name}' "
            f"(specs with one: {', '.join(known) or 'none yet, run `synth-assets run --spec PATH`'})"
        )
    if version is None:
        published = store.published_run(Stage.CURATED_SET, spec_name, read_only=True)
        return published if published in ids else ids[0]
    matches = [run for run in ids if run.startswith(version)]
    if len(matches) != 1:
        problem = "matches no" if not matches else f"matches {len(matches)}"
        raise BrowseError(
            f"{store.path}: --version: '{version}' {problem} curated_set version of spec '{spec_name}' "
            f"(versions, newest first: {', '.join(run[:8] for run in ids[:10])})"
        )
    return matches[0]


def _samples_frame(frames: dict[str, pd.DataFrame], run_id: str, lineage_url: str) -> pd.DataFrame:
    """Curated and rejected rows side by side, with their attributes and lineage keys."""
    curated = frames["curated"].assign(status="curated")
    curated["reasons"] = [[] for _ in range(len(curated))]
    curated["details"] = [{} for _ in range(len(curated))]
    rejected = frames["rejected"].assign(status="rejected")
    rejected["flags"] = [[] for _ in range(len(rejected))]
    rows = pd.concat([curated, rejected], ignore_index=True)
    generated = frames["generated"].set_index("sample_id")
    prompts = frames["prompts"].set_index("prompt_id")
    for column in ("model_fingerprint", "generated_in_run"):
        rows[column] = rows["sample_id"].map(generated[column]) if len(generated) else None
    if "intended_label" not in rows or rows["intended_label"].isna().any():
        asked = rows["prompt_id"].map(prompts["label"]) if len(prompts) else rows["label"]
        rows["intended_label"] = rows.get("intended_label", asked).fillna(asked)
    attributes = rows["prompt_id"].map(prompts["attributes"]) if len(prompts) else pd.Series(dtype=object)
    parsed = [a if isinstance(a, dict) else {} for a in attributes.reindex(rows.index)]
    for name in sorted({key for attrs in parsed for key in attrs}):
        rows[f"attr_{name}"] = [attrs.get(name) for attrs in parsed]
    rows["curated_in_run"] = run_id
    rows["lineage"] = [f"{lineage_url}?sample_id={sample_id}" for sample_id in rows["sample_id"]]
    attribute_columns = [c for c in rows.columns if c.startswith("attr_")]
    ordered = [c for c in SAMPLE_COLUMNS if c in rows.columns]
    return rows[ordered[:8] + attribute_columns + ordered[8:]]


def _lineage_frames(frames: dict[str, pd.DataFrame], dagster_url: str) -> dict[str, pd.DataFrame]:
    """The tables sample rows link to: prompts, demos (+ prompt_demos), models, runs."""
    prompts = frames["prompts"][
        ["prompt_id", "label", "attributes", "demo_ids", "system_prompt", "prompt_text", "generation_seed"]
    ]
    prompt_demos = pd.DataFrame(
        [
            {"prompt_id": prompt_id, "position": position, "seed_id": seed_id}
            for prompt_id, demo_ids in zip(prompts["prompt_id"], prompts["demo_ids"], strict=True)
            for position, seed_id in enumerate(demo_ids or [])
        ],
        columns=["prompt_id", "position", "seed_id"],
    )
    demos = frames["demos"][["seed_id", "split", "label", "text", "source_file", "source_row"]]
    generated = frames["generated"]
    models = generated.drop_duplicates("model_fingerprint")[
        ["model_fingerprint", "model", "backend", "generation_params"]
    ]
    runs = pd.concat(
        [
            generated.groupby("generated_in_run")["materialized_at"]
            .max()
            .rename("materialized_at")
            .to_frame()
            .assign(role="generation")
            .rename_axis("run_id")
            .reset_index(),
            pd.DataFrame(
                {
                    "run_id": frames["curated"]["run_id"].head(1).tolist()
                    or frames["rejected"]["run_id"].head(1).tolist(),
                    "materialized_at": (
                        frames["curated"]["materialized_at"].head(1).tolist()
                        or frames["rejected"]["materialized_at"].head(1).tolist()
                    ),
                    "role": "curation",
                }
            ),
        ],
        ignore_index=True,
    ).drop_duplicates("run_id")
    runs["materialized_at"] = runs["materialized_at"].astype(str)
    runs["dagster_run"] = [f"{dagster_url.rstrip('/')}/runs/{run_id}" for run_id in runs["run_id"]]
    return {"prompts": prompts, "demos": demos, "prompt_demos": prompt_demos, "models": models, "runs": runs}


# (table, primary key, {column: referenced table}) in creation order
TABLES: list[tuple[str, str | None, dict[str, str]]] = [
    ("runs", "run_id", {}),
    ("models", "model_fingerprint", {}),
    ("demos", "seed_id", {}),
    ("prompts", "prompt_id", {}),
    ("prompt_demos", None, {"prompt_id": "prompts", "seed_id": "demos"}),
    (
        "samples",
        "sample_id",
        {
            "prompt_id": "prompts",
            "model_fingerprint": "models",
            "generated_in_run": "runs",
            "curated_in_run": "runs",
        },
    ),
]
PRIMARY_KEYS = {table: key for table, key, _ in TABLES if key}


def _sqlite_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return "INTEGER"
    return "REAL" if pd.api.types.is_float_dtype(series) else "TEXT"


def _write_sqlite(path: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Create the tables with primary and foreign keys (Datasette links rows through them)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for table, key, references in TABLES:
            frame = tables[table]
            columns = [
                f'"{c}" {_sqlite_type(frame[c])}{" PRIMARY KEY" if c == key else ""}' for c in frame.columns
            ]
            columns += [
                f'FOREIGN KEY ("{c}") REFERENCES "{target}" ("{PRIMARY_KEYS[target]}")'
                for c, target in references.items()
            ]
            connection.execute(f'CREATE TABLE "{table}" ({", ".join(columns)})')
            # SQLite has no list or object type: the warehouse's JSON columns go back to JSON text
            values = [
                [json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v for v in row]
                for row in frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
            ]
            marks = ", ".join("?" * len(frame.columns))
            connection.executemany(f'INSERT INTO "{table}" VALUES ({marks})', values)
        connection.commit()


def _metadata(export_title: str, attribute_columns: list[str]) -> dict[str, Any]:
    """Datasette metadata: facets, column descriptions, row labels and the lineage query."""
    return {
        "title": export_title,
        "databases": {
            DATABASE: {
                "tables": {
                    "samples": {
                        "description": "Every curated and rejected row of this version. Facet and filter "
                        "by status, label, reason, flag and attribute; open a prompt, model or run "
                        "through its link, or the whole chain through `lineage`.",
                        "facets": [
                            "status",
                            "label",
                            {"array": "reasons"},
                            {"array": "flags"},
                            *attribute_columns,
                        ],
                        "label_column": "sample_id",
                        "columns": SAMPLE_COLUMNS,
                    },
                    "prompts": {"label_column": "prompt_id", "facets": ["label"]},
                    "demos": {"label_column": "seed_id", "facets": ["label", "split"]},
                    "models": {"label_column": "model"},
                    "runs": {"label_column": "run_id"},
                },
                "queries": {
                    "lineage": {
                        "title": "Lineage of one sample",
                        "description": "The sample, the prompt it answered, the seed demos the prompt "
                        "showed, the model and parameters, and the runs (with links into Dagster).",
                        "sql": LINEAGE_SQL.strip(),
                    }
                },
            }
        },
    }


def export_browse_db(
    store: Warehouse,
    spec_name: str,
    folder: Path,
    version: str | None = None,
    browse_url: str = f"http://127.0.0.1:{DEFAULT_PORT}",
    dagster_url: str = DEFAULT_DAGSTER_URL,
) -> BrowseExport:
    """Write `<folder>/browse.db` (SQLite), `metadata.json` and `static/` for one curated_set
    version (`version`: run id or unique prefix; default: the published, else the newest).

    `browse_url` is where Datasette will answer (the `lineage` column links are absolute, so
    Datasette renders them as links); `dagster_url` is the Dagster UI the `runs` rows link to.
    Raises BrowseError for an unknown spec or version, FileNotFoundError without a DuckDB file.
    The previous export in `folder` is replaced only once the new one is complete."""
    run_id = resolve_version(store, spec_name, version)
    frames = store.version_with_upstream(spec_name, run_id)
    lineage_url = f"{browse_url.rstrip('/')}/{DATABASE}/lineage"
    tables = {"samples": _samples_frame(frames, run_id, lineage_url), **_lineage_frames(frames, dagster_url)}
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / f"{DATABASE}.db"
    partial = folder / f".{DATABASE}.db.partial"
    partial.unlink(missing_ok=True)
    _write_sqlite(partial, tables)
    partial.replace(database)
    static = folder / "static"
    static.mkdir(exist_ok=True)
    (static / "browse.css").write_text(CSS)
    attribute_columns = [c for c in tables["samples"].columns if c.startswith("attr_")]
    metadata = _metadata(f"{spec_name} · curated_set version {run_id[:8]}", attribute_columns)
    metadata["extra_css_urls"] = ["/static/browse.css"]
    metadata_path = folder / "metadata.json"
    metadata_path.write_text(json.dumps(metadata, indent=2))
    return BrowseExport(
        database, metadata_path, static, spec_name, run_id, len(frames["curated"]), len(frames["rejected"])
    )


def datasette_command(export: BrowseExport, host: str, port: int) -> list[str]:
    """The Datasette command line serving an export (read-only: `-i`, immutable)."""
    return [
        sys.executable,
        "-m",
        "datasette",
        "serve",
        "-i",
        str(export.database),
        "--metadata",
        str(export.metadata),
        "--static",
        f"static:{export.static}",
        "--setting",
        "truncate_cells_html",
        "0",  # full text in every cell, never cut
        "--setting",
        "default_facet_size",
        "30",
        "-h",
        host,
        "-p",
        str(port),
    ]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_browse_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `browse` on the `synth-assets` subcommands (the top-level parser has `--db`)."""
    browse = subparsers.add_parser(
        "browse",
        help="every curated and rejected row of a version in Datasette: facets, filters, full text, lineage",
    )
    browse.add_argument("--spec", required=True, help="spec name (or the path of its YAML file)")
    browse.add_argument(
        "--version", help="curated_set run id or unique prefix (default: the published version, else newest)"
    )
    browse.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    browse.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    browse.add_argument(
        "--out", help="folder for the SQLite export (default: browse/<spec> next to the DuckDB)"
    )
    browse.add_argument(
        "--dagster-url", default=DEFAULT_DAGSTER_URL, help="the Dagster UI the run links point to"
    )
    browse.add_argument(
        "--export-only", action="store_true", help="write the SQLite file and metadata, do not serve"
    )
    browse.set_defaults(handler=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    """Export the version and serve it until interrupted; 2 with a one-line error on bad input."""
    try:
        store = Warehouse(args.db) if getattr(args, "db", None) else Warehouse()
        spec_name = spec_name_of(args.spec)
        if not args.export_only and not _port_free(args.host, args.port):
            raise BrowseError(f"--port: {args.host}:{args.port} is already in use (pick another with --port)")
        url = f"http://{args.host}:{args.port}"
        folder = Path(args.out) if args.out else store.path.parent / "browse" / spec_name
        export = export_browse_db(store, spec_name, folder, args.version, url, args.dagster_url)
    except (BrowseError, SpecError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"spec '{spec_name}', curated_set version {export.run_id}: {export.curated_rows} curated, "
        f"{export.rejected_rows} rejected rows -> {export.database}",
        flush=True,
    )
    if args.export_only:
        return 0
    # SIGTERM stops Datasette too (as Ctrl-C does), never leaving it serving on its own
    signal.signal(signal.SIGTERM, _stop)
    process = subprocess.Popen(datasette_command(export, args.host, args.port))
    try:
        if _wait_until_up(f"{url}/-/versions.json", process):
            print(f"browse: {url}/{DATABASE}/samples  (Ctrl-C stops it)", flush=True)
        return_code = process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
    if return_code:
        print(f"error: datasette exited with code {return_code}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`synth-assets browse ...` on its own (the same arguments, with the top-level `--db`)."""
    parser = argparse.ArgumentParser(prog="synth-assets")
    parser.add_argument(
        "--db",
        help="warehouse: a DuckLake catalog file, its Parquet files in <it>.files/ (default: "
        "$SYNTH_ASSETS_DB or data/synth_assets.ducklake); an old-layout DuckDB file is imported on first use",
    )
    add_browse_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
