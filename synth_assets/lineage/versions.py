"""Versions named by a run or by a DuckLake snapshot, pinned to the snapshot they are read at.

Every write of the warehouse is a DuckLake snapshot (`synth_assets/storage/`), and every version of a
stage records the snapshot that committed it. `diff` and `export` name a version in one of two ways:

- a run id, or a unique prefix of one (`994d`): that run's version, read at the snapshot that wrote it;
- `@N`: the warehouse as it was at snapshot N (`synth-assets versions` lists them): for `diff` the
  newest version of the stage written up to N, for `export` the version published at N. Run ids are
  UUIDs (hex digits and dashes), so `@` can never start one.

Either way the result is a `PinnedVersion` (run id + snapshot id), and the rows are read with DuckLake
time travel (`AT (VERSION => N)`) through the storage package's named reads. Versions imported from an
old-layout DuckDB file share the import's snapshot; a run reference still picks that run's rows (the
reads filter by run id at that snapshot), and `@N` of the import snapshot picks the newest of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from synth_assets.storage import GATED_STAGES, Stage, Warehouse

SNAPSHOT_MARK = "@"


class VersionError(LookupError):
    """A reference that names no version: unknown or ambiguous run, a snapshot that does not exist or
    holds no version of that spec and stage (one-line message naming what exists)."""


@dataclass(frozen=True)
class PinnedVersion:
    """A version of a stage (the run that wrote it) and the DuckLake snapshot it is read at."""

    run_id: str
    snapshot_id: int

    def __str__(self) -> str:
        return f"{self.run_id} @{self.snapshot_id}"


def snapshot_of(reference: str) -> int | None:
    """N for a snapshot reference `@N`, None for a run reference. Raises VersionError for `@` followed
    by anything but digits."""
    if not reference.startswith(SNAPSHOT_MARK):
        return None
    digits = reference[len(SNAPSHOT_MARK) :]
    if not digits.isdigit():
        raise VersionError(
            f"'{reference}' is not a snapshot: use @N with N a snapshot id (synth-assets versions lists them)"
        )
    return int(digits)


def version_table(store: Warehouse, spec_name: str, stage: str = Stage.CURATED_SET) -> pd.DataFrame:
    """Versions of `stage` for a spec, oldest first: run_id, snapshot_id (the DuckLake snapshot that
    committed it), materialized_at, rows, gate_passed (the newest verdict; None: never judged or a
    stage without a gate), promoted (the current one; for curated_set: the published one)."""
    gated = Stage(stage) in GATED_STAGES
    verdicts = store.gate_verdicts(stage, spec_name, read_only=True) if gated else {}
    current = store.promoted_version(stage, spec_name, read_only=True)
    return pd.DataFrame(
        [
            {
                "run_id": version.run_id,
                "snapshot_id": version.snapshot_id,
                "materialized_at": version.materialized_at,
                "rows": version.rows,
                "gate_passed": verdicts[version.run_id].passed if version.run_id in verdicts else None,
                "promoted": version.run_id == current,
            }
            for version in store.versions(stage, spec_name, read_only=True)
        ],
        columns=["run_id", "snapshot_id", "materialized_at", "rows", "gate_passed", "promoted"],
    )


def _listing(table: pd.DataFrame, limit: int = 8) -> str:
    """`run @snapshot, ...` of the newest versions, for error messages."""
    if table.empty:
        return "none"
    newest = table.iloc[::-1].head(limit)
    shown = ", ".join(
        f"{str(run)[:8]} @{snap}" for run, snap in zip(newest["run_id"], newest["snapshot_id"], strict=True)
    )
    return shown + (f" (+{len(table) - limit} older)" if len(table) > limit else "")


def check_snapshot(store: Warehouse, snapshot: int) -> None:
    """Raises VersionError (naming the catalog's snapshot range) unless snapshot `snapshot` exists."""
    first, latest = store.snapshot_ids(read_only=True)
    if not first <= snapshot <= latest:
        raise VersionError(
            f"snapshot @{snapshot} does not exist in {store.config.describe()}: "
            f"its snapshots run from @{first} to @{latest} (the latest)"
        )


def resolve_version(
    store: Warehouse,
    spec_name: str,
    reference: str,
    stage: str = Stage.CURATED_SET,
    table: pd.DataFrame | None = None,
) -> PinnedVersion:
    """The version of `stage` a reference names (see the module docstring), pinned to its snapshot.
    `table`: `version_table` already read. Raises VersionError (one line, listing the spec's versions)
    when it names none or several."""
    known = version_table(store, spec_name, stage) if table is None else table
    snapshot = snapshot_of(reference)
    if snapshot is not None:
        check_snapshot(store, snapshot)
        run_id = store.version_at(stage, spec_name, snapshot, read_only=True)
        if run_id is None:
            raise VersionError(
                f"snapshot @{snapshot} holds no {stage} version of spec '{spec_name}' (its versions, "
                f"newest first: {_listing(known)})"
            )
        return PinnedVersion(run_id, snapshot)
    runs = [str(r) for r in known["run_id"]]
    matches = [r for r in runs if r.startswith(reference)]
    if not matches:
        raise VersionError(
            f"run '{reference}' has no {stage} version for spec '{spec_name}' (its versions, newest "
            f"first: {_listing(known)})"
        )
    if len(matches) > 1:
        raise VersionError(f"run id '{reference}' is ambiguous: {len(matches)} runs start with it")
    row = known[known["run_id"] == matches[0]].iloc[-1]
    committed = row["snapshot_id"]
    if committed is None or pd.isna(committed):  # the catalog cannot say: read as it is now
        committed = store.snapshot_ids(read_only=True)[1]
    return PinnedVersion(matches[0], int(committed))


def resolve_published(store: Warehouse, spec_name: str, reference: str | None) -> int:
    """The snapshot to read a spec's published curated_set at: the latest one (no reference), `@N`
    when a version was published then, or the newest snapshot that published the run a run reference
    names. Raises VersionError (one line, naming the published versions) otherwise."""
    if reference is None:
        return store.snapshot_ids(read_only=True)[1]
    stage = Stage.CURATED_SET
    snapshot = snapshot_of(reference)
    if snapshot is not None:
        check_snapshot(store, snapshot)
        if store.promoted_version(stage, spec_name, read_only=True, snapshot=snapshot) is None:
            raise VersionError(
                f"snapshot @{snapshot}: spec '{spec_name}' had no published curated_set then "
                f"(published versions: {_published(store, spec_name)})"
            )
        return snapshot
    run_id = resolve_version(store, spec_name, reference, stage).run_id
    published = store.promotion_snapshot(stage, spec_name, run_id, read_only=True)
    if published is None:
        raise VersionError(
            f"curated_set run {run_id} of spec '{spec_name}' was never published, and export writes "
            f"published versions only (published versions: {_published(store, spec_name)})"
        )
    return published


def _published(store: Warehouse, spec_name: str, limit: int = 8) -> str:
    """`run @snapshot, ...` of the curated_set versions ever published (the snapshot that published
    each), newest version first, for error messages."""
    runs = reversed(version_table(store, spec_name)["run_id"].tolist())
    pinned = []
    for run in runs:
        published = store.promotion_snapshot(Stage.CURATED_SET, spec_name, str(run), read_only=True)
        if published is not None:
            pinned.append(f"{str(run)[:8]} @{published}")
        if len(pinned) == limit:
            break
    return ", ".join(pinned) or "none"


def spec_of(store: Warehouse, references: Sequence[str], stage: str = Stage.CURATED_SET) -> str | None:
    """The spec of the first run reference among `references` (VersionError when it matches no run
    or several), None when there is none (only snapshot references)."""
    for reference in references:
        if snapshot_of(reference) is not None:
            continue
        matches = store.resolve_prefix(reference, [stage], column="run_id", read_only=True)
        if not matches:
            raise VersionError(f"run '{reference}' has no {stage} version")
        runs = {run for _, run in matches}
        if len(runs) > 1:
            raise VersionError(f"run id '{reference}' is ambiguous: {len(runs)} runs start with it")
        return matches[0][0]
    return None


def format_versions(table: pd.DataFrame, spec_name: str, stage: str = Stage.CURATED_SET) -> str:
    """The `synth-assets versions` listing: one line per version, oldest first."""
    lines = [
        f"{stage} versions of '{spec_name}', oldest first (@N: the DuckLake snapshot that wrote it; "
        "diff and export take a run id prefix or @N)"
    ]
    if table.empty:
        return lines[0] + "\n  (none)"
    width = max(len(str(run)) for run in table["run_id"])
    for row in table.itertuples(index=False):
        snapshot = "?" if row.snapshot_id is None or pd.isna(row.snapshot_id) else int(row.snapshot_id)
        gate = {None: "", True: "gate passed", False: "gate FAILED"}[
            None if row.gate_passed is None or pd.isna(row.gate_passed) else bool(row.gate_passed)
        ]
        current = "published" if stage == Stage.CURATED_SET else "current"
        lines.append(
            f"  {row.run_id!s:<{width}}  @{snapshot:<5}  {str(row.materialized_at)[:19]}  "
            f"{int(row.rows):>6} rows  {gate:<11}  {current if row.promoted else ''}".rstrip()
        )
    return "\n".join(lines)
