"""What changed in `curated_set` between two versions (runs) of a spec, and why.

Pure: DataFrames in (the rows of each version, the rejections of each version, the prompts and the
generation facts by sample id, JSON columns decoded), a `CuratedDiff` out. `load_diff` reads them
through the storage vocabulary, each version at its DuckLake snapshot (time travel; a version is
named by a run or by a snapshot `@N`, see `versions.py`).

Rows are matched by sample id first. A sample id is a content hash of prompt + model fingerprint +
parameters + seed, so a prompt that was answered differently keeps its prompt id but gets a new
sample id: such pairs are reported as one *changed* row, not one added and one removed.

Causes (one per row, with a detail line):
- added:   new prompt (the prompt id is not in run A) / no longer rejected (same sample, rules changed) /
           model or parameter change (its prompt's earlier sample was rejected)
- removed: prompt no longer generated (spec or seed change) / newly rejected by <filter> /
           dedup against an earlier version / not generated in run B (generation failed)
- changed: model or parameter change (fingerprint, parameters, seed) / same sample, new text
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from synth_assets.lineage.versions import PinnedVersion, resolve_version, version_table
from synth_assets.storage import Stage, Warehouse

NEW_PROMPT = "new prompt"
PROMPT_DROPPED = "prompt no longer generated (spec or seed change)"
MODEL_OR_PARAMS = "model or parameter change"
NO_LONGER_REJECTED = "no longer rejected (curation rules changed)"
DEDUP_EARLIER = "dedup against an earlier version"
NOT_GENERATED = "not generated in run B (generation failed)"
TEXT_CHANGED = "same sample id, new text (non-deterministic backend)"
UNKNOWN = "unknown"
# words in a reason code that mean "duplicates a row of another version" (curation/reasons.py has
# `seen_in_previous_version`)
_CROSS_VERSION_MARKERS = ("earlier", "previous", "version", "history", "cross")


def newly_rejected(reasons: list[str]) -> str:
    return f"newly rejected by {' + '.join(reasons) if reasons else 'an unnamed filter'}"


@dataclass(frozen=True)
class RunVersion:
    """One curated_set version: its rows, the rows curation rejected in that run, and (when the run
    also expanded prompts) the prompts it had; `spec_fingerprint` when known (Dagster metadata)."""

    run_id: str
    curated: pd.DataFrame
    rejected: pd.DataFrame
    prompts: pd.DataFrame | None = None
    spec_fingerprint: str | None = None
    materialized_at: str | None = None
    promoted_gate_passed: bool | None = None
    snapshot_id: int | None = None  # the DuckLake snapshot its rows were read at

    def prompt_ids(self) -> set[str]:
        """Every prompt this run's curation saw, or that the run expanded."""
        ids = set(self.curated["prompt_id"]) | set(self.rejected["prompt_id"])
        if self.prompts is not None and "prompt_id" in self.prompts:
            ids |= set(self.prompts["prompt_id"])
        return {str(i) for i in ids}


@dataclass(frozen=True)
class RowChange:
    change: str  # added | removed | changed
    cause: str
    detail: str
    prompt_id: str
    sample_id: str  # the row in run B (added, changed) or in run A (removed)
    label: str
    text: str
    previous_sample_id: str | None = None
    previous_text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class CuratedDiff:
    spec_name: str
    run_a: str
    run_b: str
    rows_a: int
    rows_b: int
    changes: list[RowChange] = field(default_factory=list)
    spec_changed: bool | None = None
    notes: list[str] = field(default_factory=list)
    snapshot_a: int | None = None  # the DuckLake snapshots the two versions were read at
    snapshot_b: int | None = None

    def of(self, change: str) -> list[RowChange]:
        return [c for c in self.changes if c.change == change]

    @property
    def unchanged(self) -> int:
        return self.rows_b - len(self.of("added")) - len(self.of("changed"))

    def summary(self) -> dict[str, int]:
        """Rows per cause, most frequent first."""
        return dict(Counter(c.cause for c in self.changes).most_common())

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec_name": self.spec_name,
            "run_a": self.run_a,
            "run_b": self.run_b,
            "snapshot_a": self.snapshot_a,
            "snapshot_b": self.snapshot_b,
            "rows_a": self.rows_a,
            "rows_b": self.rows_b,
            "added": len(self.of("added")),
            "removed": len(self.of("removed")),
            "changed": len(self.of("changed")),
            "unchanged": self.unchanged,
            "spec_changed": self.spec_changed,
            "summary": self.summary(),
            "notes": self.notes,
            "changes": [c.as_dict() for c in self.changes],
        }


def _by_sample(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {str(row["sample_id"]): row for row in frame.to_dict("records")}


def _rejection_cause(row: dict[str, Any], earlier_sample_ids: set[str]) -> tuple[str, str]:
    reasons = [str(r) for r in row.get("reasons") or []]
    details = row.get("details") or {}
    detail = "; ".join(f"{r}: {details[r]}" if r in details else r for r in reasons)
    for reason in reasons:
        name, cited = reason.lower(), str(details.get(reason, "")).lower()
        # curation's own code for it (e.g. `seen_in_previous_version`), or a duplicate whose detail
        # cites a row curated in an earlier version
        if any(marker in name for marker in _CROSS_VERSION_MARKERS):
            return DEDUP_EARLIER, detail
        if "dup" in name and any(sample.lower() in cited for sample in earlier_sample_ids):
            return DEDUP_EARLIER, detail
    return newly_rejected(reasons), detail


def _generation_change(old_id: str, new_id: str, generations: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """What differs between the generations of two samples of one prompt."""
    old, new = generations.get(old_id), generations.get(new_id)
    if old is None or new is None:
        return MODEL_OR_PARAMS, "generation facts not found for one side"
    parts = []
    if old.get("model_fingerprint") != new.get("model_fingerprint"):
        parts.append(f"model {old.get('model_fingerprint')} -> {new.get('model_fingerprint')}")
    old_params = old.get("generation_params") or {}
    new_params = new.get("generation_params") or {}
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key) != new_params.get(key):
            parts.append(f"{key} {old_params.get(key)} -> {new_params.get(key)}")
    if old.get("generation_seed") != new.get("generation_seed"):
        parts.append(f"seed {old.get('generation_seed')} -> {new.get('generation_seed')}")
    if old.get("backend") != new.get("backend"):
        parts.append(f"backend {old.get('backend')} -> {new.get('backend')}")
    # steps, structured output and output templates are part of the sample id without being a column
    return MODEL_OR_PARAMS, ", ".join(parts) or "generation settings outside the parameters (steps, output)"


def diff_versions(
    spec_name: str,
    before: RunVersion,
    after: RunVersion,
    generations: pd.DataFrame | None = None,
    earlier_sample_ids: set[str] | None = None,
) -> CuratedDiff:
    """Rows added, removed and changed from `before` to `after`, each with its cause.

    `generations`: generated rows (sample_id, model_fingerprint, generation_params, generation_seed,
    backend), to say which setting changed. `earlier_sample_ids`: curated sample ids of versions
    before `after`, to recognise a rejection as dedup against an earlier version.
    """
    generated = _by_sample(generations) if generations is not None and len(generations) else {}
    earlier = (earlier_sample_ids or set()) | {str(s) for s in before.curated["sample_id"]}
    curated_a, curated_b = _by_sample(before.curated), _by_sample(after.curated)
    rejected_a, rejected_b = _by_sample(before.rejected), _by_sample(after.rejected)
    prompts_a, prompts_b = before.prompt_ids(), after.prompt_ids()

    only_a = [s for s in curated_a if s not in curated_b]
    only_b = [s for s in curated_b if s not in curated_a]
    # a prompt curated on both sides under different sample ids is one changed row
    by_prompt_a: dict[str, list[str]] = {}
    for sample in only_a:
        by_prompt_a.setdefault(str(curated_a[sample]["prompt_id"]), []).append(sample)
    changes: list[RowChange] = []
    paired_a: set[str] = set()
    for sample in only_b:
        row = curated_b[sample]
        prompt = str(row["prompt_id"])
        candidates = [s for s in by_prompt_a.get(prompt, []) if s not in paired_a]
        if candidates:
            old = candidates[0]
            paired_a.add(old)
            cause, detail = _generation_change(old, sample, generated)
            changes.append(
                RowChange(
                    "changed",
                    cause,
                    detail,
                    prompt,
                    sample,
                    str(row["label"]),
                    str(row["text"]),
                    old,
                    str(curated_a[old]["text"]),
                )
            )
            continue
        if prompt not in prompts_a:
            cause, detail = NEW_PROMPT, f"prompt {prompt} is not in run {before.run_id}"
        elif sample in rejected_a:
            reasons = rejected_a[sample].get("reasons") or []
            cause, detail = NO_LONGER_REJECTED, f"rejected in run A by {' + '.join(reasons) or '?'}"
        else:
            earlier_rejected = [s for s, r in rejected_a.items() if str(r["prompt_id"]) == prompt]
            if earlier_rejected:
                _, change = _generation_change(earlier_rejected[0], sample, generated)
                reasons = rejected_a[earlier_rejected[0]].get("reasons") or []
                cause = MODEL_OR_PARAMS
                detail = f"{change}; the earlier sample {earlier_rejected[0]} was rejected by " + (
                    " + ".join(reasons) or "?"
                )
            else:
                cause, detail = NEW_PROMPT, f"prompt {prompt} had no sample in run {before.run_id}"
        changes.append(RowChange("added", cause, detail, prompt, sample, str(row["label"]), str(row["text"])))
    for sample in only_a:
        if sample in paired_a:
            continue
        row = curated_a[sample]
        prompt = str(row["prompt_id"])
        if sample in rejected_b:
            cause, detail = _rejection_cause(rejected_b[sample], earlier - {sample})
        elif prompt not in prompts_b:
            cause, detail = PROMPT_DROPPED, f"prompt {prompt} is not in run {after.run_id}"
        else:
            regenerated = [s for s, r in rejected_b.items() if str(r["prompt_id"]) == prompt]
            if regenerated:
                new = regenerated[0]
                cause, rejection = _rejection_cause(rejected_b[new], earlier)
                _, change = _generation_change(sample, new, generated)
                detail = f"regenerated as {new} ({change}), which was rejected: {rejection}"
            else:
                cause, detail = NOT_GENERATED, f"prompt {prompt} is in run B but has no sample there"
        changes.append(
            RowChange("removed", cause, detail, prompt, sample, str(row["label"]), str(row["text"]))
        )
    for sample in curated_a.keys() & curated_b.keys():
        old_text, new_text = str(curated_a[sample]["text"]), str(curated_b[sample]["text"])
        if old_text != new_text:
            row = curated_b[sample]
            changes.append(
                RowChange(
                    "changed",
                    TEXT_CHANGED,
                    "a new completion for the same prompt, model, parameters and seed",
                    str(row["prompt_id"]),
                    sample,
                    str(row["label"]),
                    new_text,
                    sample,
                    old_text,
                )
            )

    spec_changed = None
    if before.spec_fingerprint and after.spec_fingerprint:
        spec_changed = before.spec_fingerprint != after.spec_fingerprint
    return CuratedDiff(
        spec_name,
        before.run_id,
        after.run_id,
        len(curated_a),
        len(curated_b),
        changes,
        spec_changed,
        snapshot_a=before.snapshot_id,
        snapshot_b=after.snapshot_id,
    )


# --- reading versions from DuckDB ---------------------------------------------------------------


class DiffError(LookupError):
    """Bad run ids or too few versions (one-line message)."""


def curated_versions(store: Warehouse, spec_name: str) -> pd.DataFrame:
    """curated_set versions of a spec, oldest first: run_id, snapshot_id (the DuckLake snapshot that
    wrote it), materialized_at, rows, gate_passed (the newest GX verdict on the version, None when it
    was never judged), promoted (the published one); see `versions.version_table`."""
    return version_table(store, spec_name, Stage.CURATED_SET)


def latest_spec(store: Warehouse) -> str:
    """The spec whose curated_set was written last; DiffError when there is none."""
    name = store.newest_spec(Stage.CURATED_SET, read_only=True)
    if name is None:
        raise DiffError("no curated_set yet: run `synth-assets run --spec PATH` first")
    return name


def pick_versions(
    store: Warehouse, spec_name: str, references: list[str]
) -> tuple[PinnedVersion, PinnedVersion]:
    """Two versions from references (run ids or prefixes, or snapshots `@N`), or the last two versions
    when none are given, each pinned to the snapshot it is read at. Raises DiffError (or its
    versions.VersionError) with a one-line reason."""
    table = curated_versions(store, spec_name)
    if not references:
        if len(table) < 2:
            raise DiffError(f"spec '{spec_name}' has {len(table)} curated_set version(s); diff needs two")
        return tuple(  # type: ignore[return-value]
            resolve_version(store, spec_name, str(run), Stage.CURATED_SET, table)
            for run in table["run_id"].iloc[-2:]
        )
    if len(references) != 2:
        raise DiffError("diff takes two versions, run ids or @snapshots (or none for the last two)")
    first, second = (resolve_version(store, spec_name, ref, Stage.CURATED_SET, table) for ref in references)
    return first, second


def load_version(
    store: Warehouse,
    spec_name: str,
    run_id: str,
    spec_fingerprint: str | None = None,
    snapshot: int | None = None,
) -> RunVersion:
    """One curated_set version with its rejections and prompts (JSON decoded), and its gate verdict;
    the rows as the warehouse held them at `snapshot` (default: the snapshot that wrote the version),
    the verdict the newest one (a check may judge a version after it was written)."""
    if snapshot is None:
        snapshot = store.version_snapshot(Stage.CURATED_SET, run_id, spec_name, read_only=True)

    def read(stage: Stage) -> pd.DataFrame:
        return store.read_version(stage, spec_name, run_id, read_only=True, decoded=True, snapshot=snapshot)

    prompts, curated, rejected = (
        read(stage) for stage in (Stage.EXPANDED_PROMPTS, Stage.CURATED_SET, Stage.REJECTED_SAMPLES)
    )
    verdict = store.gate_verdict(Stage.CURATED_SET, spec_name, run_id, read_only=True)
    return RunVersion(
        run_id=run_id,
        curated=curated if len(curated.columns) else _empty_rows(),
        rejected=rejected if len(rejected.columns) else _empty_rows(),
        prompts=prompts if len(prompts) else None,
        spec_fingerprint=spec_fingerprint,
        materialized_at=str(curated["materialized_at"].max()) if len(curated) else None,
        promoted_gate_passed=None if verdict is None else verdict.passed,
        snapshot_id=snapshot,
    )


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(columns=["sample_id", "prompt_id", "label", "text"])


def load_diff(
    store: Warehouse,
    spec_name: str,
    run_a: str | PinnedVersion,
    run_b: str | PinnedVersion,
    spec_fingerprints: dict[str, str] | None = None,
) -> tuple[CuratedDiff, RunVersion, RunVersion]:
    """Read both versions, each at its snapshot (a run id: the snapshot that wrote its version), and
    what the causes need, then diff them. The generation facts and the earlier versions are read at
    the later of the two snapshots."""
    fingerprints = spec_fingerprints or {}
    pinned = [
        (ref.run_id, ref.snapshot_id) if isinstance(ref, PinnedVersion) else (ref, None)
        for ref in (run_a, run_b)
    ]
    before, after = (
        load_version(store, spec_name, run, fingerprints.get(run), snapshot) for run, snapshot in pinned
    )
    ids = {
        str(s)
        for frame in (before.curated, before.rejected, after.curated, after.rejected)
        for s in frame["sample_id"]
    }
    known = [s for s in (before.snapshot_id, after.snapshot_id) if s is not None]
    latest = max(known) if known else None
    generations = store.rows_by_ids(
        Stage.GENERATED_SAMPLES, sorted(ids), spec_name, newest_only=True, read_only=True, snapshot=latest
    )
    earlier = store.ids_before(Stage.CURATED_SET, spec_name, after.run_id, read_only=True, snapshot=latest)
    result = diff_versions(spec_name, before, after, generations if len(generations) else None, earlier)
    return result, before, after


def _short(text: Any, width: int = 100) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_diff(diff: CuratedDiff, before: RunVersion, after: RunVersion, limit: int = 10) -> str:
    def describe(version: RunVersion) -> str:
        gate = {None: "gate n/a", True: "gate passed", False: "gate FAILED, not promoted"}[
            version.promoted_gate_passed
        ]
        at = "" if version.snapshot_id is None else f"snapshot @{version.snapshot_id}, "
        return f"{version.run_id} ({at}{str(version.materialized_at or '?')[:19]}, {gate})"

    lines = [f"curated_set of '{diff.spec_name}'", f"  A: {describe(before)}", f"  B: {describe(after)}"]
    if diff.spec_changed is not None:
        lines.append(
            "  spec: changed between the runs (fingerprint "
            f"{before.spec_fingerprint} -> {after.spec_fingerprint})"
            if diff.spec_changed
            else "  spec: unchanged"
        )
    lines.append(
        f"rows {diff.rows_a} -> {diff.rows_b}: +{len(diff.of('added'))} added, "
        f"-{len(diff.of('removed'))} removed, ~{len(diff.of('changed'))} changed, {diff.unchanged} unchanged"
    )
    summary = diff.summary()
    if summary:
        width = max(len(cause) for cause in summary)
        lines += ["", "by cause:"] + [f"  {cause:<{width}}  {n}" for cause, n in summary.items()]
    for kind, sign in (("changed", "~"), ("added", "+"), ("removed", "-")):
        rows = diff.of(kind)
        if not rows:
            continue
        lines += ["", f"{kind} ({len(rows)}):"]
        for row in rows[:limit]:
            ids = f"{row.previous_sample_id} -> {row.sample_id}" if kind == "changed" else row.sample_id
            lines.append(f"{sign} {ids} [{row.label}] {row.cause}: {row.detail}")
            if kind == "changed":
                lines.append(f"    was: {_short(row.previous_text)}")
                lines.append(f"    now: {_short(row.text)}")
            else:
                lines.append(f"    {_short(row.text)}")
        if len(rows) > limit:
            lines.append(f"  ... {len(rows) - limit} more {kind} (--limit N, or --json)")
    for note in diff.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
