"""Export the published curated set of a spec as Parquet, JSONL or a Hugging Face `datasets` folder,
with a dataset card (README.md).

"Published" = the `curated_set` table: per spec, the last version that passed its GX gate (staged)
and then the usefulness gate of the evaluation that judged it. A version that failed either gate, or
is staged but not yet evaluated, is only in `curated_set_history` and is never exported; the
`publications` table says why. Rows carry their lineage ids and the facts a user of the data needs
(model, parameters, conditions), so `synth-assets lineage <sample_id>` still answers "where did this
row come from" after the export.

Everything is read at one DuckLake snapshot (time travel): by default the latest when the export
starts, so a run writing meanwhile cannot mix two versions into one export; `snapshot=` (CLI `--at`)
exports what was published then.

Pure with respect to Dagster: DuckDB in, files out. `datasets` is imported only for the `hf` format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from synth_assets.evaluation.families import card_figures
from synth_assets.spec import GenerationSpec
from synth_assets.storage import ROW_STAGES, Stage, Warehouse

FORMATS = ("parquet", "jsonl", "hf")
# lineage and provenance columns joined onto each exported row (generated_samples / expanded_prompts)
GENERATION_COLUMNS = ["model", "model_fingerprint", "backend", "generation_params", "generation_seed"]
PROMPT_COLUMNS = ["attributes", "demo_ids"]
# figures shown first in the card when the report has them (the metric families declare them); the
# other scalar metrics follow
PREFERRED_FIGURES = card_figures()
LOCAL_MODEL_LICENSES = {"smollm2-135m-instruct": "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"}


class ExportError(LookupError):
    """Nothing to export, or an unusable target (one-line message)."""


@dataclass
class ExportData:
    spec_name: str
    rows: pd.DataFrame
    curated_run_id: str
    curated_at: str
    versions: int
    counts: dict[str, int]
    seed_splits: dict[str, int]
    labels: dict[str, int]
    rejections: dict[str, int]
    generation: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    evaluation: dict[str, Any] | None = None
    spec: GenerationSpec | None = None
    spec_text: str | None = None
    spec_fingerprint_at_curation: str | None = None
    notes: list[str] = field(default_factory=list)
    publication: str | None = None  # why this version is the published one (publications.reason)
    snapshot_id: int | None = None  # the DuckLake snapshot everything was read at


def _first(frame: pd.DataFrame, column: str) -> Any:
    return frame[column].iloc[0] if len(frame) and column in frame else None


def _reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    """Rows per rejection reason (a row counts once per reason it failed), most frequent first."""
    counts: dict[str, int] = {}
    for reasons in rejected.get("reasons", pd.Series(dtype=object)):
        for reason in reasons or []:
            counts[str(reason)] = counts.get(str(reason), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def load_export_data(
    store: Warehouse,
    spec_name: str,
    spec: GenerationSpec | None = None,
    spec_fingerprint_at_curation: str | None = None,
    *,
    snapshot: int | None = None,
) -> ExportData:
    """The published curated set of a spec with its lineage columns, and what the card reports, all
    read at DuckLake snapshot `snapshot` (default: the latest, pinned when the read starts).

    Raises ExportError (one line, saying why when a version was held back) when none is published."""
    if snapshot is None:
        snapshot = store.snapshot_id(read_only=True)
    at = {"read_only": True, "snapshot": snapshot}
    # the files keep JSON columns as the JSON text they are stored as (one string type per column
    # for every Parquet/JSONL/HF reader), so these rows are read undecoded
    curated = store.read_current(Stage.CURATED_SET, spec_name, **at)
    decisions = store.publications(spec_name, **at)
    if curated.empty:
        why = ""
        if len(decisions):
            newest = decisions.iloc[0]
            why = (
                f" (the newest evaluated version, run {newest['version_run_id']}, was held back: "
                f"{newest['reason']})"
                if not bool(newest["published"])
                else ""
            )
        raise ExportError(f"spec '{spec_name}' has no published curated_set to export{why}")
    run_id = str(curated["run_id"].iloc[0])
    generated, prompts = (
        store.rows_by_ids(stage, curated[key], spec_name, newest_only=True, decoded=False, **at)
        for stage, key in ((Stage.GENERATED_SAMPLES, "sample_id"), (Stage.EXPANDED_PROMPTS, "prompt_id"))
    )
    # text and label first: what a user of the dataset reads; then every curated column by name
    lead = [c for c in ("text", "label", "sample_id", "prompt_id") if c in curated]
    rows = curated[lead + [c for c in curated.columns if c not in lead]].copy()
    rows = rows.merge(
        generated[["sample_id", *[c for c in GENERATION_COLUMNS if c in generated]]],
        on="sample_id",
        how="left",
    )
    rows = rows.merge(
        prompts[["prompt_id", *[c for c in PROMPT_COLUMNS if c in prompts]]], on="prompt_id", how="left"
    )
    rows = rows.rename(columns={"run_id": "curated_run_id"})
    rows["materialized_at"] = rows["materialized_at"].astype(str)

    counts = {stage: store.row_count(stage, spec_name, **at) for stage in ROW_STAGES}
    rejected = store.read_version(Stage.REJECTED_SAMPLES, spec_name, run_id, decoded=True, **at)
    generation = (
        generated[
            [c for c in ("model", "backend", "model_fingerprint", "generation_params") if c in generated]
        ]
        .drop_duplicates()
        .to_dict("records")
    )
    data = ExportData(
        spec_name=spec_name,
        rows=rows,
        curated_run_id=run_id,
        curated_at=str(curated["materialized_at"].max())[:19],
        versions=len(store.versions(Stage.CURATED_SET, spec_name, **at)),
        counts=counts,
        seed_splits=store.value_counts(Stage.SEED_DATA, spec_name, "split", **at),
        labels={str(k): int(v) for k, v in curated["label"].value_counts().items()},
        rejections=_reason_counts(rejected),
        generation=generation,
        gates=store.gate_records(spec_name, run_id, **at),
        evaluation=_evaluation(store, spec_name, run_id, snapshot),
        spec=spec,
        spec_text=spec.source_path.read_text(encoding="utf-8")
        if spec is not None and spec.source_path is not None and spec.source_path.is_file()
        else None,
        spec_fingerprint_at_curation=spec_fingerprint_at_curation,
        publication=_publication(decisions, run_id),
        snapshot_id=snapshot,
    )
    # held back after this version was published (or at all, if it was published before decisions
    # were recorded): the user should know the newest data exists and why it is not in the export
    held = decisions[(decisions["version_run_id"] != run_id) & ~decisions["published"].astype(bool)]
    published_at = decisions.loc[decisions["version_run_id"] == run_id, "decided_at"].max()
    newer = held if pd.isna(published_at) else held[held["decided_at"] > published_at]
    if len(newer):
        data.notes.append(
            f"a newer curated_set version (run {newer.iloc[0]['version_run_id']}) was held back by the "
            f"usefulness gate and is not exported: {newer.iloc[0]['reason']}"
        )
    if data.evaluation is None:
        data.notes.append("no evaluation report for this spec yet")
    elif data.evaluation.get("curated_run_id") not in (None, run_id):
        data.notes.append(
            f"the promoted evaluation report evaluated curated_set run {data.evaluation['curated_run_id']}, "
            f"not the exported version ({run_id})"
        )
    if (
        spec is not None
        and spec_fingerprint_at_curation
        and spec.fingerprint() != spec_fingerprint_at_curation
    ):
        data.notes.append(
            f"the spec now has fingerprint {spec.fingerprint()}, this version was curated with "
            f"{spec_fingerprint_at_curation}: the spec file (or the defaults of the spec model) changed "
            "since; the card shows the spec as it is now"
        )
    return data


def _publication(decisions: pd.DataFrame, run_id: str) -> str | None:
    """The newest decision that published `run_id`, as a sentence (None: published before the
    publications table existed)."""
    mine = decisions[(decisions["version_run_id"] == run_id) & decisions["published"].astype(bool)]
    if mine.empty:
        return None
    row = mine.iloc[0]
    return (
        f"published by the evaluation in run `{row['decided_in_run_id']}` ({str(row['decided_at'])[:19]} "
        f"UTC): {row['reason']}"
    )


def _evaluation(store: Warehouse, spec_name: str, run_id: str, snapshot: int | None) -> dict[str, Any] | None:
    """The report of this curated version if one was made (a good one first: that is the one that
    published it), else the promoted one; as the warehouse held them at `snapshot`."""
    at = {"read_only": True, "snapshot": snapshot}
    history = store.history(Stage.EVALUATION_REPORT, spec_name, **at)
    if history.empty:
        return None
    if "curated_run_id" in history:
        same = history[history["curated_run_id"] == run_id]
    else:  # older reports: the report of the same run evaluated the curated set of that run
        same = history[history["run_id"] == run_id]
    good = set(store.good_versions(Stage.EVALUATION_REPORT, spec_name, **at))
    # stable sort: good reports first, newest first within each group
    same = same.assign(_good=same["run_id"].isin(good)).sort_values("_good", ascending=False, kind="stable")
    chosen = same.head(1)
    if chosen.empty:
        chosen = store.read_current(Stage.EVALUATION_REPORT, spec_name, decoded=True, **at).head(1)
    if chosen.empty:
        return None
    row = chosen.iloc[0].to_dict()
    passed = row.get("passed")
    return {
        "run_id": str(row["run_id"]),
        "materialized_at": str(row.get("materialized_at"))[:19],
        "curated_run_id": row.get("curated_run_id") or row["run_id"],
        "passed": None if passed is None or pd.isna(passed) else bool(passed),
        "gate_summary": row.get("gate_summary"),
        "metrics": row.get("metrics") if isinstance(row.get("metrics"), dict) else {},
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _figures(metrics: dict[str, Any], limit: int = 30) -> tuple[list[tuple[str, Any]], int]:
    """The scalar figures to show (preferred ones first, confidence bounds left to the report), and
    how many more the report has. A score withheld for too few rows shows "too few rows", not None."""
    scalar = {
        k: v
        for k, v in metrics.items()
        if (isinstance(v, int | float | str | bool) or v is None)
        and not k.endswith(("_ci_low", "_ci_high", "_status"))
    }
    for key in scalar:
        status = metrics.get(f"{key}_status")
        if scalar[key] is None and isinstance(status, str) and status:
            scalar[key] = status.split(":")[0]  # "too few rows"
    ordered = [k for k in PREFERRED_FIGURES if k in scalar]
    ordered += sorted(k for k in scalar if k not in ordered)
    return [(k, scalar[k]) for k in ordered[:limit]], max(0, len(ordered) - limit)


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def task_kind(spec: GenerationSpec | None) -> str:
    """'conversation' (multi-turn steps), 'description' or 'classification': what the rows are."""
    if spec is None:
        return "classification"
    declared = getattr(spec, "task_kind", None)  # a spec field, where the spec model has one
    if declared:
        return str(declared)
    if spec.steps:
        return "conversation"
    return "description" if "descri" in f"{spec.name} {spec.task}".lower() else "classification"


# Hugging Face Hub task categories (and task ids) per kind of labeled text this tool makes
_TASK_CATEGORIES = {
    "classification": (["text-classification"], []),
    "conversation": (["text-generation", "text-classification"], ["dialogue-modeling"]),
    "description": (["text-generation", "text-classification"], []),
}


def card_languages(data: ExportData) -> list[str]:
    """ISO 639-1 codes: the spec's `curation.language`, else the majority language py3langid finds
    in (up to 200 of) the rows; empty when neither says."""
    if data.spec is not None and data.spec.curation.language:
        return [data.spec.curation.language]
    if "text" not in data.rows or data.rows.empty:
        return []
    from synth_assets.curation.language import detect_languages

    found = pd.Series(
        [code for code, _ in detect_languages(data.rows["text"].astype(str).head(200).tolist())]
    )
    return [str(found.mode().iloc[0])] if len(found) else []


def card_front_matter(data: ExportData) -> str:
    """YAML front matter of the card from `huggingface_hub.DatasetCardData`, filled from the spec:
    task categories from its kind, `language:`, size category, license placeholder."""
    from huggingface_hub import DatasetCardData

    categories, task_ids = _TASK_CATEGORIES.get(task_kind(data.spec), _TASK_CATEGORIES["classification"])
    card_data = DatasetCardData(
        pretty_name=f"{data.spec_name} (synthetic)",
        license="other",
        language=card_languages(data) or None,
        task_categories=categories,
        task_ids=task_ids or None,
        size_categories=[_size_category(len(data.rows))],
        tags=["synthetic", "synth_assets"],
    )
    return f"---\n{card_data.to_yaml()}\n---\n"


def dataset_card(data: ExportData, file_names: list[str]) -> str:
    """README.md for the exported folder: Hugging Face card front matter, then the facts."""
    spec = data.spec
    title = f"{data.spec_name} (synthetic)"
    front = [card_front_matter(data)]
    lines = [f"# {title}", ""]
    if spec is not None and spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"{len(data.rows)} synthetic rows generated by an LLM from the spec `{data.spec_name}` with "
        "synth_assets (each stage a Dagster asset in DuckDB), curated by rules and gated by "
        "Great Expectations checks. This is the published version: the last one that passed its "
        "checks and whose evaluation found that it does not make a classifier trained on the real rows "
        "worse (the usefulness gate).",
        "",
        *([f"Publication: {data.publication}", ""] if data.publication else []),
        "## Files",
        "",
        *[f"- `{name}`" for name in file_names],
        "",
        "Columns: " + ", ".join(f"`{c}`" for c in data.rows.columns),
        "",
        "Labels: " + ", ".join(f"{label} {n}" for label, n in data.labels.items()),
        "",
        "## Spec",
        "",
    ]
    if spec is not None:
        lines += [
            f"- task: {spec.task.strip()}",
            f"- labels: {', '.join(spec.labels)}; attributes: "
            + (", ".join(f"{a.name} ({len(a.values)} values)" for a in spec.attributes) or "none"),
            f"- few-shot: k={spec.few_shot.k}, {spec.few_shot.strategy}; num_samples {spec.num_samples}; "
            f"random_seed {spec.random_seed}",
            f"- spec file: `{spec.source_path}` (fingerprint `{spec.fingerprint()}`)",
            f"- seed data: `{spec.seed_path}`"
            + (f", holdout `{spec.holdout_path}`" if spec.holdout_path else ""),
        ]
        if data.spec_text:
            lines += [
                "",
                "<details><summary>spec YAML</summary>",
                "",
                "```yaml",
                data.spec_text.rstrip(),
                "```",
                "",
                "</details>",
            ]
    else:
        lines.append("- spec file: not found (pass `--spec-file PATH` to include it)")
    lines += ["", "## Model", ""]
    for generation in data.generation:
        lines.append(
            f"- `{generation.get('model')}` via `{generation.get('backend')}` "
            f"(fingerprint `{generation.get('model_fingerprint')}`), parameters "
            f"`{generation.get('generation_params')}`"
        )
    if not data.generation:
        lines.append("- unknown (no generated_samples rows found for these ids)")
    seed = " / ".join(f"{split} {n}" for split, n in data.seed_splits.items())
    rejected = ", ".join(f"{reason} {n}" for reason, n in data.rejections.items()) or "none"
    lines += [
        "",
        "## Counts per stage",
        "",
        "| stage | rows |",
        "|---|---|",
        f"| seed_data | {data.counts[Stage.SEED_DATA]} ({seed}) |",
        f"| expanded_prompts | {data.counts[Stage.EXPANDED_PROMPTS]} |",
        f"| generated_samples | {data.counts[Stage.GENERATED_SAMPLES]} |",
        f"| curated_set | {data.counts[Stage.CURATED_SET]} |",
        f"| rejected_samples | {data.counts[Stage.REJECTED_SAMPLES]} ({rejected}) |",
        "",
        "## Evaluation",
        "",
    ]
    evaluation = data.evaluation
    if evaluation is None:
        lines.append("No evaluation report yet.")
    else:
        verdict = {None: "no gate", True: "passed", False: "FAILED"}[evaluation["passed"]]
        lines += [
            f"From `evaluation_report` of run `{evaluation['run_id']}` ({evaluation['materialized_at']}), "
            f"which evaluated curated_set run `{evaluation['curated_run_id']}`; usefulness gate: {verdict}"
            + (f" ({evaluation['gate_summary']})" if evaluation.get("gate_summary") else "")
            + ".",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        figures, more = _figures(evaluation["metrics"])
        lines += [f"| {key} | {_fmt(value)} |" for key, value in figures]
        if more:
            lines += ["", f"{more} more figures (and 95% CIs) in the report's `metrics` JSON."]
    gates = "; ".join(
        f"{g['asset']}:{g['check_name']} {'passed' if g['passed'] else 'FAILED'}" for g in data.gates
    )
    lines += [
        "",
        "## Lineage",
        "",
        f"- curated_set version: run `{data.curated_run_id}` ({data.curated_at} UTC), one of "
        f"{data.versions} version(s) kept in `curated_set_history`; gates in that run: {gates or 'n/a'}."
        + (
            f" Read at DuckLake snapshot `@{data.snapshot_id}` "
            f"(`synth-assets export --at @{data.snapshot_id}` writes the same rows again)."
            if data.snapshot_id is not None
            else ""
        ),
        "- Every id is a content hash: `prompt_id` = spec task/template + label + attributes + "
        "few-shot demos; `sample_id` = prompt + model fingerprint + parameters + seed. `demo_ids` are "
        "the seed rows each prompt showed the model.",
        "- `synth-assets lineage <sample_id>` prints a row's seed demos, prompt, LLM calls (with the Dagster "
        "run and materialization) and every curation decision; `synth-assets diff` shows what changed "
        "between versions and why.",
    ]
    if spec is not None:
        lines.append(
            f"- Reproduce: `synth-assets run --spec {spec.source_path}` (same spec and seed: same ids)."
        )
    model_names = sorted({str(g.get("model")) for g in data.generation})
    model_licenses = [
        f"`{m}`: {LOCAL_MODEL_LICENSES.get(m, 'see the model provider terms')}" for m in model_names
    ]
    lines += [
        "",
        "## License notes",
        "",
        "- The card says `license: other` because this tool cannot know the terms that apply: set it "
        "before publishing.",
        "- Seed data: the real rows shown to the model as demonstrations come from the spec's seed file; "
        "its license and any personal data in it govern what may be shared. Verbatim copies of demos are "
        "filtered (`echoes_prompt`), but paraphrases can remain.",
        "- Model outputs: "
        + ("; ".join(model_licenses) or "unknown model")
        + ". Check the model's license and usage policy for synthetic-data and training use.",
        "- Synthetic text can be wrong, biased or inconsistent with its label; read the evaluation above "
        "before training on it.",
    ]
    if data.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in data.notes]]
    return "".join(front) + "\n".join(lines) + "\n"


def scrub_export(data: ExportData) -> int:
    """Re-scan every text column of the rows about to leave the tool and scrub personal data in
    place (the curated set was scrubbed at curation, but a spec or detector may have changed since);
    return the number of values changed. Skipped only where the spec turns PII handling off and
    does not require a PII-free curated set."""
    spec = data.spec
    if spec is not None and spec.curation.pii == "off" and not spec.gates.require_no_pii:
        return 0
    from synth_assets.curation.pii import scrub_text

    changed = 0
    for column in data.rows.columns:
        dtype = data.rows[column].dtype
        # pandas 3 gives text columns the `str` dtype, not `object`: checking only for object let
        # personal data leave unscanned there (found trying pandas 3, issue 12)
        if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
            continue
        values = data.rows[column].tolist()
        cleaned = [scrub_text(v) if isinstance(v, str) else v for v in values]
        changed += sum(a != b for a, b in zip(values, cleaned, strict=True))
        data.rows[column] = cleaned
    if changed:
        data.notes.append(f"{changed} values held personal data at export and were scrubbed ([PHONE], ...)")
    return changed


def _outputs(fmt: str, spec_name: str, out_dir: Path) -> list[Path]:
    """Files an export of `fmt` writes into `out_dir` (the hf format's arrow shards by pattern)."""
    if fmt == "hf":
        existing = [p for p in out_dir.glob("data-*.arrow")] if out_dir.is_dir() else []
        names = [out_dir / "dataset_info.json", out_dir / "state.json", *existing]
    else:
        names = [out_dir / f"{spec_name}.{fmt}"]
    return [*names, out_dir / "README.md"]


def write_export(data: ExportData, fmt: str, out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write the rows in `fmt` and README.md into `out_dir`; return the paths written.

    Everything written is re-scanned for personal data first (`scrub_export`), the card included.
    Raises ExportError when a file it would write already exists, unless `overwrite`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (use {', '.join(FORMATS)})")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder")
    taken = [p for p in _outputs(fmt, data.spec_name, out_dir) if p.exists()]
    if taken and not overwrite:
        raise ExportError(
            f"{taken[0]}: already exists ({len(taken)} output file(s) in {out_dir}); "
            "pass --overwrite to replace them"
        )
    scrub_export(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt == "parquet":
        target = out_dir / f"{data.spec_name}.parquet"
        data.rows.to_parquet(target, index=False)
        written.append(target)
    elif fmt == "jsonl":
        target = out_dir / f"{data.spec_name}.jsonl"
        data.rows.to_json(target, orient="records", lines=True, force_ascii=False)
        written.append(target)
    else:
        import datasets

        datasets.disable_progress_bars()  # a CLI prints one line per file, not a progress bar
        # save_to_disk writes data-*.arrow, dataset_info.json and state.json; load_from_disk reads them
        datasets.Dataset.from_pandas(data.rows, preserve_index=False).save_to_disk(str(out_dir))
        written += sorted(p for p in out_dir.iterdir() if p.name != "README.md")
    from synth_assets.curation.pii import scrub_text

    card = out_dir / "README.md"
    card.write_text(scrub_text(dataset_card(data, [p.name for p in written])), encoding="utf-8")
    return [*written, card]
